//! A real etcd (Debian's etcd-server) for the fleet tests, in a network namespace of its
//! own: it listens on that namespace's loopback (for the test's own requests and the
//! `isolator` CLI run there) and on a bridge that each hypervisor lab joins with a veth
//! (its "management network"). Nothing leaves the namespaces; the data directory is
//! removed with the harness.
//!
//! The test talks to etcd through its JSON gateway (`/v3/kv/...`) from inside the
//! namespace: raw writes (a bundle no `isolator publish` would write), compaction, reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::lab::Lab;
use crate::netns::{in_netns, ip_n};

/// The etcd namespace's address on its bridge, and the client port.
pub const ADDR: &str = "10.250.0.1";
pub const PORT: u16 = 2379;
const BRIDGE: &str = "br0";

/// etcd's server certificate and key, and the CA its clients' certificates must be
/// signed by (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// etcd in a namespace, and the hypervisor labs linked to it.
pub struct Etcd {
    tls: Option<Tls>,
    /// The namespace (a [`Lab`] with only its host namespace: removed with it).
    lab: Lab,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Links made so far (to number the next).
    links: usize,
}

impl Etcd {
    /// Starts etcd with a fresh data directory under `dir`; waits until it answers.
    pub fn start(dir: &Path) -> Result<Etcd> {
        Etcd::start_with(dir, None)
    }

    /// [`Etcd::start`], speaking TLS only and asking clients for a certificate when `tls`
    /// is given (then it only waits until the port is open: the JSON gateway needs a
    /// client certificate too).
    pub fn start_with(dir: &Path, tls: Option<Tls>) -> Result<Etcd> {
        let lab = Lab::new("etcd")?;
        let ns = lab.host_ns().to_string();
        ip_n(&ns, &["link", "set", "lo", "up"])?;
        ip_n(&ns, &["addr", "add", &format!("{ADDR}/16"), "dev", BRIDGE])?;
        let mut etcd = Etcd {
            tls,
            lab,
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
            child: None,
            links: 0,
        };
        etcd.run()?;
        Ok(etcd)
    }

    /// The namespace etcd runs in (where `etcd://127.0.0.1:2379/...` reaches it).
    pub fn ns(&self) -> &str {
        self.lab.host_ns()
    }

    /// `etcd://ADDR:PORT/PREFIX` (`etcds://` with TLS), as the hypervisors reach it.
    pub fn url(&self, prefix: &str) -> String {
        format!("{}://{ADDR}:{PORT}/{prefix}", self.scheme())
    }

    /// `etcd://127.0.0.1:PORT/PREFIX`, for commands run in etcd's namespace.
    pub fn local_url(&self, prefix: &str) -> String {
        format!("{}://127.0.0.1:{PORT}/{prefix}", self.scheme())
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "etcds" } else { "etcd" }
    }

    fn run(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.ns(), "etcd", "--name", "fleet"])
            .arg("--data-dir")
            .arg(&self.data);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{PORT},{scheme}://{ADDR}:{PORT}"),
                "--advertise-client-urls",
                &format!("{scheme}://{ADDR}:{PORT}"),
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "fleet=http://127.0.0.1:2380",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian's etcd-server; cargo xtask setup installs it)")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = match self.tls {
                None => self.revision().is_ok(),
                Some(_) => in_netns(self.ns(), || {
                    Ok(std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok())
                })?,
            };
            if ready {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("etcd exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("etcd did not answer within 20 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL), keeping its data.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing etcd")?;
            child.wait().context("waiting for etcd")?;
        }
        Ok(())
    }

    /// Starts etcd again on the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.run()
    }

    /// Links a hypervisor lab's host namespace to etcd's bridge (a veth `fleet0` there,
    /// address 10.250.x.y/16); returns that address.
    pub fn link(&mut self, lab: &Lab) -> Result<String> {
        self.links += 1;
        let n = self.links;
        let addr = format!("10.250.{}.{}", n / 250 + 1, n % 250 + 1);
        let peer = self.peer(n);
        ip_n(
            lab.host_ns(),
            &[
                "link",
                "add",
                "fleet0",
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                self.ns(),
            ],
        )?;
        ip_n(self.ns(), &["link", "set", &peer, "master", BRIDGE])?;
        ip_n(self.ns(), &["link", "set", &peer, "up"])?;
        ip_n(
            lab.host_ns(),
            &["addr", "add", &format!("{addr}/16"), "dev", "fleet0"],
        )?;
        ip_n(lab.host_ns(), &["link", "set", "fleet0", "up"])?;
        Ok(addr)
    }

    /// etcd's end of the `n`-th link (1-based, in the order of [`Etcd::link`]).
    fn peer(&self, n: usize) -> String {
        format!("fleet{n}")
    }

    /// Cuts (`false`) or heals (`true`) the `n`-th lab's link: a partition.
    pub fn set_link(&self, n: usize, up: bool) -> Result<()> {
        ip_n(
            self.ns(),
            &["link", "set", &self.peer(n), if up { "up" } else { "down" }],
        )?;
        Ok(())
    }

    /// One request to the JSON gateway, from inside the namespace (plain etcd only).
    fn post(&self, path: &str, body: &str) -> Result<serde_json::Value> {
        anyhow::ensure!(
            self.tls.is_none(),
            "the JSON gateway is used without TLS only"
        );
        let url = format!("http://127.0.0.1:{PORT}{path}");
        let body = body.to_string();
        let text = in_netns(self.ns(), move || {
            let response = minreq::post(&url)
                .with_header("Content-Type", "application/json")
                .with_body(body)
                .with_timeout(5)
                .send()
                .with_context(|| format!("POST {url}"))?;
            let text = response.as_str().unwrap_or_default().to_string();
            if response.status_code != 200 {
                bail!("POST {url}: {} {text}", response.status_code);
            }
            Ok(text)
        })?;
        serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text}"))
    }

    /// The store's revision now.
    pub fn revision(&self) -> Result<i64> {
        let v = self.post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64(b"/")))?;
        number(&v["header"]["revision"])
    }

    /// Writes `value` at `key` as is; the store's revision after it.
    pub fn put_raw(&self, key: &str, value: &[u8]) -> Result<i64> {
        let v = self.post(
            "/v3/kv/put",
            &format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64(key.as_bytes()),
                b64(value)
            ),
        )?;
        number(&v["header"]["revision"])
    }

    /// Compacts the history up to `revision` (watches from before it are refused).
    pub fn compact(&self, revision: i64) -> Result<()> {
        self.post(
            "/v3/kv/compaction",
            &format!(r#"{{"revision":"{revision}","physical":true}}"#),
        )?;
        Ok(())
    }

    /// Every key under `prefix` with its value.
    pub fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.post(
            "/v3/kv/range",
            &format!(
                r#"{{"key":"{}","range_end":"{}"}}"#,
                b64(prefix.as_bytes()),
                b64(&end)
            ),
        )?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = unb64(kv["key"].as_str().unwrap_or_default())?;
            let value = unb64(kv["value"].as_str().unwrap_or_default())?;
            out.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
        Ok(out)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        crate::daemon::tail(&text, 30)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Certificates for a TLS etcd, made with openssl: a CA, etcd's server certificate (for
/// [`ADDR`] and 127.0.0.1) and a client certificate signed by it, and a client certificate
/// signed by another CA (a stranger's).
pub struct Certs {
    pub ca: PathBuf,
    pub server: Tls,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    crate::netns::run_ok(Command::new("openssl").current_dir(dir).args(args))
        .with_context(|| format!("openssl {}", args.join(" ")))?;
    Ok(())
}

/// `openssl req` making a P-256 key `NAME.key` and, with `output`, a self-signed
/// certificate (`-x509`) or a request for `CN=NAME`.
fn request(dir: &Path, name: &str, output: &[&str]) -> Result<()> {
    let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
    let mut args = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &subject,
    ];
    args.extend(output);
    openssl(dir, &args)
}

/// A CA `NAME.pem`/`NAME.key`.
fn make_ca(dir: &Path, name: &str) -> Result<()> {
    request(
        dir,
        name,
        &["-x509", "-days", "2", "-out", &format!("{name}.pem")],
    )
}

/// A certificate `NAME.pem`/`NAME.key` signed by the CA `ca`, with extensions `ext`.
fn make_cert(dir: &Path, ca: &str, name: &str, ext: &str) -> Result<()> {
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    request(dir, name, &["-out", &format!("{name}.csr")])?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}

impl Certs {
    pub fn make(dir: &Path) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        make_ca(dir, "ca")?;
        make_ca(dir, "other-ca")?;
        make_cert(
            dir,
            "ca",
            "etcd",
            &format!("subjectAltName=IP:{ADDR},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        )?;
        make_cert(dir, "ca", "isolator", "extendedKeyUsage=clientAuth\n")?;
        make_cert(dir, "other-ca", "stranger", "extendedKeyUsage=clientAuth\n")?;
        Ok(Certs {
            ca: dir.join("ca.pem"),
            server: Tls {
                cert: dir.join("etcd.pem"),
                key: dir.join("etcd.key"),
                ca: dir.join("ca.pem"),
            },
            client_cert: dir.join("isolator.pem"),
            client_key: dir.join("isolator.key"),
            stranger_cert: dir.join("stranger.pem"),
            stranger_key: dir.join("stranger.key"),
        })
    }
}

/// A number the gateway writes as a JSON string (int64) or a number.
fn number(v: &serde_json::Value) -> Result<i64> {
    match v {
        serde_json::Value::String(s) => Ok(s.parse()?),
        serde_json::Value::Number(n) => n.as_i64().context("not an integer"),
        // The gateway leaves out zero values.
        serde_json::Value::Null => Ok(0),
        other => bail!("not a revision: {other}"),
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (the gateway's encoding of bytes).
pub fn b64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut n = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|a| *a == c)
            .with_context(|| format!("not base64: {text}"))? as u32;
        n = n << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
            n &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_round_trips() {
        for text in [
            "",
            "f",
            "fo",
            "foo",
            "foob",
            "fooba",
            "foobar",
            "/isolator/policy/",
        ] {
            let encoded = super::b64(text.as_bytes());
            assert_eq!(
                super::unb64(&encoded).unwrap(),
                text.as_bytes(),
                "{encoded}"
            );
        }
        assert_eq!(super::b64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::b64(b"fo"), "Zm8=");
    }
}
