//! The audit chronicle: an append-only JSON-lines file in which each record carries the
//! SHA-256 of the one before it, so that a record changed, removed or inserted afterwards
//! breaks the chain at that point (docs/operations.md, "Audit log").
//!
//! Every record is one line, one JSON object, written with one `write(2)` to a file
//! opened for appending:
//!
//! ```json
//! {"seq":7,"time":"2026-12-02T07:41:09.123Z","prev":"<64 hex>","kind":"reload",...}
//! ```
//!
//! - `seq` counts records from 0, across rotations and restarts;
//! - `prev` is the SHA-256 (hex) of the previous record's line (its bytes without the
//!   newline); the very first record's is 64 zeros ([`GENESIS`]);
//! - `kind` says what the record is about; the other fields depend on it.
//!
//! A restarted daemon reads the file's last record and goes on from it. When the file
//! grows beyond its limit it is renamed `FILE.1` (older ones shift to `FILE.2`, ...; the
//! oldest beyond the number kept is removed) and the new file's first record, `rotated`,
//! carries on the chain. With a signing key, a `checkpoint` record signs the chain's
//! head every [`CHECKPOINT_EVERY`] records, at least hourly while records are written,
//! and at start and stop: whoever holds the
//! public key can tell that the chain up to there was written by the daemon, not rebuilt
//! by someone who rewrote the file and its hashes.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context as _, anyhow, bail};
use ed25519_dalek::SigningKey;
use serde_json::{Map, Value, json};

use crate::signing;

/// `prev` of the first record ever written.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Records between two signed checkpoints (with a key).
pub const CHECKPOINT_EVERY: u64 = 1000;

/// The longest time between two signed checkpoints while records are written.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Where the chronicle is written unless `--audit-log` says otherwise.
pub const DEFAULT_PATH: &str = "/var/log/isolator/audit.jsonl";

/// The size beyond which the file is rotated, unless told otherwise.
pub const DEFAULT_MAX_BYTES: u64 = 64 << 20;

/// Rotated files kept beside the current one, unless told otherwise.
pub const DEFAULT_KEEP: usize = 8;

/// What a checkpoint's signature covers: this text, then the sequence number and the
/// hash of the record it follows.
const CHECKPOINT_DOMAIN: &str = "isolator audit checkpoint";

/// How the chronicle is written.
#[derive(Clone, Debug)]
pub struct Options {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: usize,
    /// The secret key that signs checkpoints (from `isolator keygen`).
    pub key: Option<PathBuf>,
}

/// The chronicle, shared by every part of the daemon that records something.
pub struct Chronicle {
    inner: Mutex<Writer>,
}

struct Writer {
    path: PathBuf,
    file: File,
    /// The next record's number.
    seq: u64,
    /// The hash of the last record written.
    prev: String,
    size: u64,
    max_bytes: u64,
    keep: usize,
    key: Option<(String, SigningKey)>,
    since_checkpoint: u64,
    last_checkpoint: std::time::Instant,
    /// Records that could not be written.
    failures: u64,
}

impl Chronicle {
    /// Opens (or creates, with its directory) the chronicle and finds where its chain
    /// stands. A last line that is no record of ours is an error: appending after it would
    /// hide the damage.
    pub fn open(options: &Options) -> anyhow::Result<Chronicle> {
        let key = match &options.key {
            Some(path) => Some(signing::read_secret_key(path)?),
            None => None,
        };
        if let Some(dir) = options.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the audit log's directory {}", dir.display()))?;
        }
        let file = open_append(&options.path)?;
        let size = file.metadata()?.len();
        let (seq, prev) = match last_line(&options.path)? {
            None => (0, GENESIS.to_string()),
            Some(line) => {
                let record = parse_record(&line).with_context(|| {
                    format!(
                        "{}: the last line is not a complete audit record; move the file \
                         aside (and keep it: `isolator audit verify` tells what is wrong) \
                         before starting again",
                        options.path.display()
                    )
                })?;
                (record.seq + 1, sha256_hex(line.as_bytes()))
            }
        };
        Ok(Chronicle {
            inner: Mutex::new(Writer {
                path: options.path.clone(),
                file,
                seq,
                prev,
                size,
                max_bytes: options.max_bytes.max(4096),
                keep: options.keep.max(1),
                key,
                since_checkpoint: 0,
                last_checkpoint: std::time::Instant::now(),
                failures: 0,
            }),
        })
    }

    /// Appends a record of `kind` with `fields` (an object). A record that cannot be
    /// written is counted ([`Chronicle::failures`]) and returned as an error; enforcement
    /// never waits on it.
    pub fn record(&self, kind: &str, fields: Value) -> anyhow::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let outcome = w.append(kind, fields).and_then(|()| {
            let due = w.since_checkpoint >= CHECKPOINT_EVERY
                || w.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
            if w.key.is_some() && due {
                w.checkpoint()
            } else {
                Ok(())
            }
        });
        if outcome.is_err() {
            w.failures += 1;
        }
        outcome
    }

    /// Signs the chain's head now (with a key; nothing without one).
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if w.key.is_none() {
            return Ok(());
        }
        let outcome = w.checkpoint();
        if outcome.is_err() {
            w.failures += 1;
        }
        outcome
    }

    /// Records that could not be written since the daemon started.
    pub fn failures(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
    }

    /// The chain's head: the next record's number and the last record's hash.
    pub fn head(&self) -> (u64, String) {
        let w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (w.seq, w.prev.clone())
    }

    pub fn path(&self) -> PathBuf {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path
            .clone()
    }
}

impl Writer {
    fn append(&mut self, kind: &str, fields: Value) -> anyhow::Result<()> {
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        self.write_line(kind, fields)
    }

    fn write_line(&mut self, kind: &str, fields: Value) -> anyhow::Result<()> {
        let mut record = Map::new();
        record.insert("seq".into(), json!(self.seq));
        record.insert("time".into(), json!(now_rfc3339()));
        record.insert("prev".into(), json!(self.prev));
        record.insert("kind".into(), json!(kind));
        match fields {
            Value::Object(fields) => {
                for (k, v) in fields {
                    if !record.contains_key(&k) {
                        record.insert(k, v);
                    }
                }
            }
            Value::Null => {}
            other => {
                record.insert("value".into(), other);
            }
        }
        let line = serde_json::to_string(&Value::Object(record))?;
        let mut bytes = line.clone().into_bytes();
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .with_context(|| format!("writing to the audit log {}", self.path.display()))?;
        self.size += bytes.len() as u64;
        self.seq += 1;
        self.prev = sha256_hex(line.as_bytes());
        self.since_checkpoint += 1;
        Ok(())
    }

    fn checkpoint(&mut self) -> anyhow::Result<()> {
        let Some((id, key)) = &self.key else {
            return Ok(());
        };
        let message = checkpoint_message(self.seq, &self.prev);
        let signature = ed25519_dalek::Signer::sign(key, message.as_bytes());
        let fields = json!({
            "key": id,
            "signature": base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                signature.to_bytes()
            ),
        });
        self.write_line("checkpoint", fields)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = std::time::Instant::now();
        Ok(())
    }

    /// FILE → FILE.1 (FILE.1 → FILE.2, ...), then a new FILE whose first record carries
    /// the chain on.
    fn rotate(&mut self) -> anyhow::Result<()> {
        let rotated = |n: usize| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let _ = std::fs::remove_file(rotated(self.keep));
        for n in (1..self.keep).rev() {
            let from = rotated(n);
            if from.exists() {
                std::fs::rename(&from, rotated(n + 1))
                    .with_context(|| format!("rotating {}", from.display()))?;
            }
        }
        std::fs::rename(&self.path, rotated(1))
            .with_context(|| format!("rotating {}", self.path.display()))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let previous = rotated(1).display().to_string();
        self.write_line("rotated", json!({ "previous_file": previous }))
    }
}

fn open_append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .with_context(|| format!("opening the audit log {}", path.display()))
}

/// The message a checkpoint signs.
fn checkpoint_message(seq: u64, prev: &str) -> String {
    format!("{CHECKPOINT_DOMAIN}\n{seq}\n{prev}\n")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    signing::digest(bytes)
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The file's last line (without its newline), if it has any. A file that does not end
/// in a newline ends in a line cut short: that line is returned, and fails to parse.
fn last_line(path: &Path) -> anyhow::Result<Option<String>> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    // Records are short; read back far enough to hold the longest one.
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let complete = tail.last() == Some(&b'\n');
    if complete {
        tail.pop();
    }
    let line = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => &tail[i + 1..],
        None if start == 0 => &tail[..],
        None => bail!("{}: the last line is longer than 1 MiB", path.display()),
    };
    let line = String::from_utf8(line.to_vec())
        .map_err(|_| anyhow!("{}: the last line is not UTF-8", path.display()))?;
    if !complete {
        bail!(
            "{}: the last line was cut short (no newline): {line:?}",
            path.display()
        );
    }
    Ok(Some(line))
}

/// The fields every record has.
struct Record {
    seq: u64,
    prev: String,
    kind: String,
    fields: Map<String, Value>,
}

fn parse_record(line: &str) -> anyhow::Result<Record> {
    let value: Value = serde_json::from_str(line).context("not JSON")?;
    let Value::Object(fields) = value else {
        bail!("not a JSON object");
    };
    let seq = fields
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("no \"seq\" number"))?;
    let prev = fields
        .get("prev")
        .and_then(Value::as_str)
        .filter(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("no \"prev\" hash (64 hex digits)"))?
        .to_string();
    let kind = fields
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("no \"kind\""))?
        .to_string();
    Ok(Record {
        seq,
        prev,
        kind,
        fields,
    })
}

/// What `isolator audit verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub records: u64,
    /// Checkpoints whose signature was checked (with trusted keys).
    pub checkpoints: u64,
    /// Checkpoints not checked (no trusted keys given).
    pub unchecked_checkpoints: u64,
    /// The first record's `prev` when it is not [`GENESIS`]: the files continue a chain
    /// whose earlier part was not given.
    pub continues: Option<String>,
    /// The hash of the last record: the head to compare with a later verification.
    pub head: Option<String>,
    /// The first broken record: (file, line, what is wrong). Nothing after it is checked.
    pub broken: Option<(PathBuf, u64, String)>,
}

/// Checks the chain through `files`, in order (the oldest rotated file first, the current
/// one last): each record's `prev` is the hash of the record before it and its `seq` the
/// next number; each checkpoint's signature, by one of `trusted`, covers the chain up to
/// it. Stops at the first broken record.
pub fn verify(
    files: &[PathBuf],
    trusted: Option<&signing::TrustedKeys>,
) -> anyhow::Result<Verified> {
    let mut out = Verified::default();
    let mut expect: Option<(u64, String)> = None;
    for path in files {
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut number = 0u64;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            number += 1;
            let mut broken = |why: String| {
                out.broken = Some((path.clone(), number, why));
            };
            if buf.last() != Some(&b'\n') {
                broken("the line was cut short (no newline at the end of the file)".into());
                return Ok(out);
            }
            buf.pop();
            let Ok(line) = std::str::from_utf8(&buf) else {
                broken("not UTF-8".into());
                return Ok(out);
            };
            let record = match parse_record(line) {
                Ok(r) => r,
                Err(e) => {
                    broken(format!("not an audit record: {e:#}"));
                    return Ok(out);
                }
            };
            match &expect {
                Some((seq, prev)) => {
                    if record.prev != *prev {
                        broken(format!(
                            "\"prev\" is {} but the record before it hashes to {prev}: a \
                             record before this one was changed, removed or inserted",
                            record.prev
                        ));
                        return Ok(out);
                    }
                    if record.seq != *seq {
                        broken(format!("\"seq\" is {} where {seq} was due", record.seq));
                        return Ok(out);
                    }
                }
                None => {
                    if record.prev != GENESIS {
                        out.continues = Some(record.prev.clone());
                    } else if record.seq != 0 {
                        broken(format!(
                            "the chain's first record (\"prev\" all zeros) has \"seq\" {}",
                            record.seq
                        ));
                        return Ok(out);
                    }
                }
            }
            if record.kind == "checkpoint" {
                match trusted {
                    Some(keys) => {
                        let id = record.fields.get("key").and_then(Value::as_str);
                        let signature = record.fields.get("signature").and_then(Value::as_str);
                        let (Some(id), Some(signature)) = (id, signature) else {
                            broken("a checkpoint without \"key\" and \"signature\"".into());
                            return Ok(out);
                        };
                        let message = checkpoint_message(record.seq, &record.prev);
                        if let Err(e) = keys.verify_message(id, message.as_bytes(), signature) {
                            broken(format!("the checkpoint's signature: {e:#}"));
                            return Ok(out);
                        }
                        out.checkpoints += 1;
                    }
                    None => out.unchecked_checkpoints += 1,
                }
            }
            out.records += 1;
            let hash = sha256_hex(line.as_bytes());
            expect = Some((record.seq + 1, hash.clone()));
            out.head = Some(hash);
        }
    }
    Ok(out)
}

/// The files of a chronicle at `path`, oldest first: its rotated files that exist
/// (`FILE.N` .. `FILE.1`), then `FILE`.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", name.to_string_lossy());
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Some(n) = file
                    .strip_prefix(&prefix)
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    rotated.push((n, path.with_file_name(&file)));
                }
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    files.push(path.to_path_buf());
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let path =
                std::env::temp_dir().join(format!("isolator-audit-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("temp dir");
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn options(dir: &Dir) -> Options {
        Options {
            path: dir.0.join("audit.jsonl"),
            max_bytes: DEFAULT_MAX_BYTES,
            keep: 3,
            key: None,
        }
    }

    fn write(chronicle: &Chronicle, n: u64) {
        for i in 0..n {
            chronicle
                .record("test", json!({ "i": i, "who": "tester" }))
                .expect("recorded");
        }
    }

    #[test]
    fn a_chain_verifies_and_goes_on_across_a_restart() {
        let dir = Dir::new("restart");
        let opts = options(&dir);
        write(&Chronicle::open(&opts).expect("open"), 5);
        let reopened = Chronicle::open(&opts).expect("reopen");
        assert_eq!(reopened.head().0, 5, "goes on from the last record");
        write(&reopened, 3);
        let v = verify(std::slice::from_ref(&opts.path), None).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.records, 8);
        assert_eq!(v.continues, None);
        assert_eq!(v.head.as_deref(), Some(reopened.head().1.as_str()));
    }

    /// Rewrites line `n` (1-based) of the file with `edit`.
    fn tamper(path: &Path, n: usize, edit: impl Fn(&str) -> String) {
        let text = std::fs::read_to_string(path).expect("read");
        let lines: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == n { edit(l) } else { l.to_string() })
            .collect();
        std::fs::write(path, lines.join("\n") + "\n").expect("write");
    }

    #[test]
    fn a_changed_removed_or_inserted_record_is_named() {
        let dir = Dir::new("tamper");
        let opts = options(&dir);
        write(&Chronicle::open(&opts).expect("open"), 6);
        let original = std::fs::read_to_string(&opts.path).expect("read");
        let check = |what: &str, line: u64| {
            let v = verify(std::slice::from_ref(&opts.path), None).expect("verify");
            let (_, at, why) = v.broken.unwrap_or_else(|| panic!("{what}: not found"));
            assert_eq!(at, line, "{what}: {why}");
        };
        // Changed: the next record's `prev` no longer matches.
        tamper(&opts.path, 3, |l| l.replace("tester", "someone"));
        check("changed", 4);
        // Removed.
        std::fs::write(&opts.path, &original).expect("restore");
        tamper(&opts.path, 3, |_| String::new());
        check("removed", 3);
        let lines: Vec<&str> = original.lines().collect();
        let without: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| *l)
            .collect();
        std::fs::write(&opts.path, without.join("\n") + "\n").expect("write");
        check("removed", 3);
        // Inserted (a copy of a record).
        let mut with: Vec<&str> = lines.clone();
        with.insert(4, lines[1]);
        std::fs::write(&opts.path, with.join("\n") + "\n").expect("write");
        check("inserted", 5);
        // Cut short.
        std::fs::write(&opts.path, &original[..original.len() - 5]).expect("write");
        check("cut", 6);
        assert!(
            Chronicle::open(&opts).is_err(),
            "a daemon does not append after a cut record"
        );
        // Untouched.
        std::fs::write(&opts.path, &original).expect("restore");
        let v = verify(std::slice::from_ref(&opts.path), None).expect("verify");
        assert!(v.broken.is_none());
    }

    #[test]
    fn the_chain_survives_rotation() {
        let dir = Dir::new("rotate");
        let mut opts = options(&dir);
        opts.max_bytes = 4096;
        let chronicle = Chronicle::open(&opts).expect("open");
        write(&chronicle, 200);
        let files = files_of(&opts.path);
        assert_eq!(
            files.len(),
            4,
            "three rotated files kept, and the current one"
        );
        assert_eq!(files.last(), Some(&opts.path));
        let v = verify(&files, None).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert!(v.continues.is_some(), "the oldest files were removed");
        // The current file alone continues the chain from its first record.
        let current = std::fs::read_to_string(&opts.path).expect("read");
        assert!(
            current
                .lines()
                .next()
                .expect("a record")
                .contains("\"rotated\"")
        );
        // Files out of order break it.
        let mut swapped = files.clone();
        swapped.swap(1, 2);
        let v = verify(&swapped, None).expect("verify");
        assert!(v.broken.is_some());
    }

    #[test]
    fn checkpoints_are_signed_and_checked() {
        let dir = Dir::new("checkpoint");
        let id = signing::keygen(&dir.0, "audit").expect("keygen");
        let keys_dir = dir.0.join("trusted");
        std::fs::create_dir_all(&keys_dir).expect("dir");
        std::fs::copy(dir.0.join("audit.pub"), keys_dir.join("audit.pub")).expect("copy");
        let mut opts = options(&dir);
        opts.key = Some(dir.0.join("audit.key"));
        let chronicle = Chronicle::open(&opts).expect("open");
        write(&chronicle, CHECKPOINT_EVERY + 2);
        chronicle.checkpoint().expect("checkpoint");
        let trusted = signing::TrustedKeys::load(&keys_dir).expect("keys");
        let v = verify(std::slice::from_ref(&opts.path), Some(&trusted)).expect("verify");
        assert!(v.broken.is_none(), "{:?}", v.broken);
        assert_eq!(v.checkpoints, 2);
        let text = std::fs::read_to_string(&opts.path).expect("read");
        assert!(text.contains(&format!("\"key\":\"{id}\"")));
        // A chain rebuilt with consistent hashes still fails at its checkpoint.
        let rebuilt = rehash(&text.replace("tester", "someone"));
        std::fs::write(&opts.path, rebuilt).expect("write");
        let v = verify(std::slice::from_ref(&opts.path), None).expect("verify");
        assert!(v.broken.is_none(), "the hashes alone agree again");
        let v = verify(std::slice::from_ref(&opts.path), Some(&trusted)).expect("verify");
        let (_, line, why) = v.broken.expect("the signature does not");
        assert_eq!(line, CHECKPOINT_EVERY + 1, "{why}");
    }

    /// What a forger does: recompute every `prev` after editing.
    fn rehash(text: &str) -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for line in text.lines() {
            let mut value: Value = serde_json::from_str(line).expect("json");
            value["prev"] = json!(prev);
            let line = serde_json::to_string(&value).expect("json");
            prev = sha256_hex(line.as_bytes());
            out.push_str(&line);
            out.push('\n');
        }
        out
    }
}
