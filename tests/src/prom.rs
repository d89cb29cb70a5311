//! A Prometheus text-format (0.0.4) reader, good enough for `name{labels} value` lines, and
//! `promtool check metrics`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(label, value)` of `filter` is on this sample.
    pub fn matches(&self, filter: &[(&str, &str)]) -> bool {
        filter
            .iter()
            .all(|(k, v)| self.labels.get(*k).is_some_and(|x| x == v))
    }
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `# TYPE` of each metric family.
    pub types: HashMap<String, String>,
    /// `# HELP` of each metric family.
    pub help: HashMap<String, String>,
}

impl Metrics {
    /// Parses the text exposition format. Fails on lines it cannot read.
    pub fn parse(text: &str) -> Result<Metrics> {
        let mut m = Metrics::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut parts = rest.trim_start().splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("TYPE"), Some(name), Some(t)) => {
                        m.types.insert(name.into(), t.trim().into());
                    }
                    (Some("HELP"), Some(name), help) => {
                        m.help.insert(name.into(), help.unwrap_or("").into());
                    }
                    _ => {}
                }
                continue;
            }
            let s =
                parse_sample(line).with_context(|| format!("metrics line {}: {line:?}", i + 1))?;
            m.samples.push(s);
        }
        Ok(m)
    }

    /// The value of the sample `name` whose label set is exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels.len() == labels.len() && s.matches(labels))
            .map(|s| s.value)
    }

    /// All samples of `name` that carry every label of `filter`.
    pub fn find(&self, name: &str, filter: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.matches(filter))
            .collect()
    }

    /// Sum over [`Metrics::find`] (0 if none).
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        // A fold from +0.0: `Sum` of no f64 is -0.0, which prints as "-0".
        self.find(name, filter)
            .iter()
            .fold(0.0, |acc, s| acc + s.value)
    }

    /// The non-zero samples of `name`, one per line, sorted, for error messages.
    pub fn dump(&self, name: &str) -> String {
        let all: Vec<&Sample> = self.samples.iter().filter(|s| s.name == name).collect();
        let mut lines: Vec<String> = all
            .iter()
            .filter(|s| s.value != 0.0)
            .map(|s| {
                let labels: Vec<String> =
                    s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
                format!("  {}{{{}}} {}\n", s.name, labels.join(","), s.value)
            })
            .collect();
        lines.sort();
        let zero = all.len() - lines.len();
        let mut out = lines.concat();
        out.push_str(&format!("  ({zero} more samples of {name} are 0)\n"));
        out
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_string();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // skip separators
            while let Some(&(_, c)) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated label set")
            };
            if c == '}' {
                end = start + 1;
                break;
            }
            let mut key_end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' {
                    key_end = i;
                    break;
                }
                chars.next();
            }
            let key = after[start..key_end].trim().to_string();
            chars.next(); // '='
            match chars.next() {
                Some((_, '"')) => {}
                _ => bail!("label {key}: expected '\"'"),
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated label value"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(key, value);
        }
        rest = &after[end..];
    }
    let value_str = rest.split_whitespace().next().context("no value")?;
    let value = match value_str {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Runs `promtool check metrics` on `text`; Ok(output) if it passes, Err(output) otherwise.
/// Errors too if promtool is missing.
pub fn promtool_check(text: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn promtool (Debian package `prometheus`)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("promtool check metrics failed ({}):\n{msg}", out.status);
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_and_escapes() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                    a_total{device=\"v1\",reason=\"x\\\"y\\\\z\"} 3\n\
                    b 1.5e3\n\
                    c{} 7 1700000000\n";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(m.types["a_total"], "counter");
        assert_eq!(
            m.get("a_total", &[("device", "v1"), ("reason", "x\"y\\z")]),
            Some(3.0)
        );
        assert_eq!(m.get("b", &[]), Some(1500.0));
        assert_eq!(m.get("c", &[]), Some(7.0));
        assert_eq!(m.sum("a_total", &[("device", "v1")]), 3.0);
        assert_eq!(m.sum("a_total", &[("device", "v2")]), 0.0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Metrics::parse("a{b=\"c\" 1\n").is_err());
        assert!(Metrics::parse("a notanumber\n").is_err());
    }
}
