//! Signed policies: ed25519 keys, detached signatures beside the policy file, and the
//! check that a policy was signed by a trusted key (docs/operations.md, "Signed
//! policies").
//!
//! Every file is three lines of text: a header naming what it is, a `key:` line with the
//! key id, and the bytes in standard base64.
//!
//! | file | header | bytes |
//! |---|---|---|
//! | `NAME.key` (secret, mode 0600) | `isolator ed25519 secret key` | the 32-byte seed |
//! | `NAME.pub` | `isolator ed25519 public key` | the 32-byte public key |
//! | `POLICY.sig` | `isolator ed25519 signature` | the 64-byte signature of the policy file's bytes |
//!
//! A key id is the first 16 hex digits of the SHA-256 of the public key.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

const SECRET_HEADER: &str = "isolator ed25519 secret key";
const PUBLIC_HEADER: &str = "isolator ed25519 public key";
const SIGNATURE_HEADER: &str = "isolator ed25519 signature";

/// The id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a policy file's bytes, in hex: what the daemon reports as the policy in
/// force.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a policy file's detached signature is: `FILE.sig` beside it.
pub fn signature_path(policy: &Path) -> PathBuf {
    let mut name = policy.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Makes a new key pair in `dir`: `NAME.key` (secret, readable by its owner only) and
/// `NAME.pub`; refuses to overwrite either. Returns the key id.
pub fn keygen(dir: &Path, name: &str) -> anyhow::Result<String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("reading randomness for a key: {e}"))?;
    let secret = SigningKey::from_bytes(&seed);
    let public = secret.verifying_key();
    let id = key_id(&public);
    let secret_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    for path in [&secret_path, &public_path] {
        if path.exists() {
            bail!(
                "{} exists already: keygen never overwrites a key (choose another --name)",
                path.display()
            );
        }
    }
    write_new(&secret_path, &render(SECRET_HEADER, &id, &seed), 0o600)?;
    write_new(
        &public_path,
        &render(PUBLIC_HEADER, &id, public.as_bytes()),
        0o644,
    )?;
    Ok(id)
}

/// Signs the policy file `policy` with the secret key file `key`: writes `POLICY.sig`.
/// Returns the key id.
pub fn sign(key: &Path, policy: &Path) -> anyhow::Result<String> {
    let secret = read_secret(key)?;
    let bytes = std::fs::read(policy).with_context(|| format!("reading {}", policy.display()))?;
    let id = key_id(&secret.verifying_key());
    let signature = secret.sign(&bytes);
    let path = signature_path(policy);
    std::fs::write(&path, render(SIGNATURE_HEADER, &id, &signature.to_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

/// The public keys in `dir` (every `*.pub` file), by key id.
#[derive(Debug)]
pub struct TrustedKeys {
    dir: PathBuf,
    keys: Vec<(String, VerifyingKey)>,
}

impl TrustedKeys {
    /// Reads every `*.pub` file of `dir`. A directory with no key, or a key file that is
    /// not one, is an error: a daemon told to trust keys must not trust nothing by
    /// mistake.
    pub fn load(dir: &Path) -> anyhow::Result<TrustedKeys> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading the trusted keys directory {}", dir.display()))?;
        let mut keys = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "pub") {
                let (id, bytes) = parse_file(&path, PUBLIC_HEADER)?;
                let bytes: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| anyhow!("{}:3: a public key is 32 bytes", path.display()))?;
                let key = VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| anyhow!("{}:3: not an ed25519 public key: {e}", path.display()))?;
                if key_id(&key) != id {
                    bail!(
                        "{}:2: the key id {id} is not this key's ({})",
                        path.display(),
                        key_id(&key)
                    );
                }
                keys.push((id, key));
            }
        }
        if keys.is_empty() {
            bail!(
                "{} holds no public key (*.pub): make one with `isolator keygen`",
                dir.display()
            );
        }
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(TrustedKeys {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    /// Checks that `bytes` (the policy file `policy` as read) carry a valid signature,
    /// beside the file, by one of these keys; returns the signer's key id.
    pub fn verify(&self, policy: &Path, bytes: &[u8]) -> anyhow::Result<String> {
        let path = signature_path(policy);
        if !path.exists() {
            bail!(
                "{} is not signed: no {} (sign it with `isolator sign --key KEY {}`)",
                policy.display(),
                path.display(),
                policy.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        self.verify_signature(
            &policy.display().to_string(),
            bytes,
            &path.display().to_string(),
            &text,
        )
    }

    /// Checks that `signature` (the text of a signature file, named `signature_name` in
    /// errors) is a valid signature of `bytes` (the policy `what`) by one of these keys;
    /// returns the signer's key id. For policies that do not come from a file (a fleet
    /// bundle).
    pub fn verify_signature(
        &self,
        what: &str,
        bytes: &[u8],
        signature_name: &str,
        signature: &str,
    ) -> anyhow::Result<String> {
        let (id, sig) = parse_text(signature_name, signature, SIGNATURE_HEADER)?;
        let sig: [u8; 64] = sig
            .try_into()
            .map_err(|_| anyhow!("{signature_name}:3: a signature is 64 bytes"))?;
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == id) else {
            bail!(
                "{what} is signed by key {id}, which is not among the trusted keys in {}",
                self.dir.display()
            );
        };
        key.verify_strict(bytes, &Signature::from_bytes(&sig))
            .map_err(|_| {
                anyhow!(
                    "{what}'s signature by key {id} does not match its contents (changed after \
                     signing?)"
                )
            })?;
        Ok(id)
    }
}

impl TrustedKeys {
    /// Checks that `signature` (base64) is key `id`'s signature of `message`, `id` being
    /// one of these keys (the audit log's checkpoints).
    pub fn verify_message(&self, id: &str, message: &[u8], signature: &str) -> anyhow::Result<()> {
        let Some((_, key)) = self.keys.iter().find(|(k, _)| k == id) else {
            bail!(
                "signed by key {id}, which is not among the trusted keys in {}",
                self.dir.display()
            );
        };
        let sig: [u8; 64] = BASE64
            .decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("the signature is not 64 bytes in base64"))?;
        key.verify_strict(message, &Signature::from_bytes(&sig))
            .map_err(|_| anyhow!("key {id}'s signature does not match what it covers"))
    }
}

/// Reads a secret key file (from `isolator keygen`): its key id and the key.
pub fn read_secret_key(path: &Path) -> anyhow::Result<(String, SigningKey)> {
    let key = read_secret(path)?;
    Ok((key_id(&key.verifying_key()), key))
}

fn render(header: &str, id: &str, bytes: &[u8]) -> String {
    format!("{header}\nkey: {id}\n{}\n", BASE64.encode(bytes))
}

/// A key or signature file: its key id and bytes, after checking its header.
fn parse_file(path: &Path, header: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_text(&path.display().to_string(), &text, header)
}

/// The text of a key or signature file (`name` in errors): its key id and bytes, after
/// checking its header.
fn parse_text(name: &str, text: &str, header: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    if first != header {
        bail!("{name}:1: expected {header:?}, found {first:?}");
    }
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("key: "))
        .filter(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| anyhow!("{name}:2: expected \"key: \" and 16 hex digits"))?
        .to_string();
    let bytes = lines
        .next()
        .and_then(|l| BASE64.decode(l.trim()).ok())
        .ok_or_else(|| anyhow!("{name}:3: expected the bytes in base64"))?;
    if lines.any(|l| !l.trim().is_empty()) {
        bail!("{name}:4: nothing may follow the third line");
    }
    Ok((id, bytes))
}

fn read_secret(path: &Path) -> anyhow::Result<SigningKey> {
    let (id, bytes) = parse_file(path, SECRET_HEADER)?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow!("{}:3: a secret key is 32 bytes", path.display()))?;
    let key = SigningKey::from_bytes(&seed);
    if key_id(&key.verifying_key()) != id {
        bail!("{}:2: the key id {id} is not this key's", path.display());
    }
    Ok(key)
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Dir {
        fn new(hint: &str) -> Dir {
            let d = std::env::temp_dir()
                .join(format!("isolator-signing-{hint}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn signed(dir: &Path) -> (PathBuf, String) {
        let id = keygen(dir, "ops").unwrap();
        let policy = dir.join("policy.yaml");
        std::fs::write(&policy, "version: 1\ntenants: []\n").unwrap();
        assert_eq!(sign(&dir.join("ops.key"), &policy).unwrap(), id);
        (policy, id)
    }

    #[test]
    fn a_signed_policy_verifies_with_its_signers_key() {
        let d = Dir::new("ok");
        let (policy, id) = signed(&d.0);
        let trusted = TrustedKeys::load(&d.0).unwrap();
        let bytes = std::fs::read(&policy).unwrap();
        assert_eq!(trusted.verify(&policy, &bytes).unwrap(), id);
        // The secret key is its owner's only.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d.0.join("ops.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn tampered_unsigned_and_untrusted_policies_are_refused() {
        let d = Dir::new("refused");
        let (policy, _) = signed(&d.0);
        let trusted = TrustedKeys::load(&d.0).unwrap();
        // Tampered: one byte more than was signed.
        let mut bytes = std::fs::read(&policy).unwrap();
        bytes.push(b'\n');
        let e = trusted.verify(&policy, &bytes).unwrap_err().to_string();
        assert!(e.contains("does not match its contents"), "{e}");
        // Unsigned.
        let other = d.0.join("other.yaml");
        std::fs::write(&other, "version: 1\n").unwrap();
        let e = trusted
            .verify(&other, b"version: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not signed"), "{e}");
        // Signed by a key that is not trusted.
        let elsewhere = Dir::new("elsewhere");
        keygen(&elsewhere.0, "stranger").unwrap();
        sign(&elsewhere.0.join("stranger.key"), &other).unwrap();
        let e = trusted
            .verify(&other, b"version: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not among the trusted keys"), "{e}");
    }

    #[test]
    fn a_signature_carried_as_text_verifies_like_a_file_and_names_what_it_covers() {
        let d = Dir::new("text");
        let (policy, id) = signed(&d.0);
        let keys = TrustedKeys::load(&d.0).unwrap();
        let bytes = std::fs::read(&policy).unwrap();
        let text = std::fs::read_to_string(signature_path(&policy)).unwrap();
        assert_eq!(
            keys.verify_signature("etcd:/p/policy/default@7", &bytes, "sig", &text)
                .unwrap(),
            id
        );
        let mut changed = bytes.clone();
        changed.push(b'\n');
        let e = keys
            .verify_signature("etcd:/p/policy/default@7", &changed, "sig", &text)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("etcd:/p/policy/default@7's signature")
                && e.contains("changed after signing"),
            "{e}"
        );
        let e = keys
            .verify_signature(
                "b",
                &bytes,
                "etcd:/p/policy/default@7 (signature)",
                "garbage",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("etcd:/p/policy/default@7 (signature):1:"),
            "{e}"
        );
    }

    #[test]
    fn keygen_never_overwrites_and_key_files_are_checked() {
        let d = Dir::new("files");
        keygen(&d.0, "ops").unwrap();
        assert!(
            keygen(&d.0, "ops")
                .unwrap_err()
                .to_string()
                .contains("never overwrites")
        );
        let empty = Dir::new("empty");
        assert!(
            TrustedKeys::load(&empty.0)
                .unwrap_err()
                .to_string()
                .contains("no public key")
        );
        std::fs::write(
            d.0.join("bad.pub"),
            "isolator ed25519 public key\nkey: zz\nAAAA\n",
        )
        .unwrap();
        let e = TrustedKeys::load(&d.0).unwrap_err().to_string();
        assert!(e.contains("bad.pub:2"), "{e}");
    }
}
