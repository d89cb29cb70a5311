//! `bench --loader`: the userspace path of a policy load at cloud scale, without the
//! kernel: read the file, parse the YAML, validate, compile the plan for a host, encode its
//! kernel entries. Needs no privileges and no network namespace.
//!
//! The policies come from `isolator::policy::synthetic`, valid by construction: for each
//! size, `segments` segments of 2 prefixes (IPv4 and IPv6) and 2 exposed endpoints each,
//! plus a variant of the largest size with 10 prefixes a segment (1 000 000 prefixes at
//! 100 000 segments). The host has `--vifs` vifs of segments spread over the policy, 64
//! uplinks and 2 other links. Each figure is the median of `--runs` runs, in
//! milliseconds; the file is written once and read from the page cache.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use isolator::compile::{HostView, Link, Plan};
use isolator::policy::{self, synthetic};

/// What to measure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Segment counts, one row each (cloud shape).
    pub sizes: Vec<usize>,
    /// Also the 10-prefixes-a-segment variant at the largest size.
    pub million: bool,
    pub runs: usize,
    /// vifs of the host the plan is compiled for.
    pub vifs: usize,
}

/// A count written with optional `_` separators (`100_000`).
pub fn number(what: &str, v: &str) -> anyhow::Result<usize> {
    v.replace('_', "")
        .parse()
        .with_context(|| format!("{what} {v:?}: a number"))
}

/// `--sizes N,N,...`.
pub fn sizes(v: &str) -> anyhow::Result<Vec<usize>> {
    v.split(',').map(|n| number("--sizes", n)).collect()
}

impl Config {
    pub fn full() -> Config {
        Config {
            sizes: vec![1_000, 10_000, 100_000],
            million: true,
            runs: 5,
            vifs: 1_000,
        }
    }

    /// Tiny sizes: proves the path runs, measures nothing.
    pub fn smoke() -> Config {
        Config {
            sizes: vec![20, 60],
            million: true,
            runs: 1,
            vifs: 10,
        }
    }

    pub const USAGE: &str = "usage: bench --loader [--smoke] [--sizes N,N,...] [--runs N] \
                             [--vifs N] [--no-million]";

    pub fn from_args(args: impl Iterator<Item = String>) -> anyhow::Result<Config> {
        let mut config = Config::full();
        let mut args = args.peekable();
        while let Some(arg) = args.next() {
            let mut value =
                |what: &str| args.next().with_context(|| format!("{what} needs a value"));
            match arg.as_str() {
                "--smoke" => config = Config::smoke(),
                "--sizes" => config.sizes = sizes(&value("--sizes")?)?,
                "--runs" => config.runs = number("--runs", &value("--runs")?)?.max(1),
                "--vifs" => config.vifs = number("--vifs", &value("--vifs")?)?,
                "--no-million" => config.million = false,
                "--help" | "-h" => {
                    println!("{}", Self::USAGE);
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?}; {}", Self::USAGE),
            }
        }
        if config.sizes.is_empty() {
            bail!("--sizes lists no size");
        }
        Ok(config)
    }

    /// The rows: (label, shape).
    fn shapes(&self) -> Vec<(&'static str, synthetic::Shape)> {
        let mut shapes: Vec<(&str, synthetic::Shape)> = self
            .sizes
            .iter()
            .map(|&n| ("cloud", synthetic::Shape::cloud(n)))
            .collect();
        if self.million {
            let largest = *self.sizes.iter().max().expect("sizes is not empty");
            let mut shape = synthetic::Shape::cloud(largest);
            shape.prefixes_per_segment = 10;
            shapes.push(("10 prefixes/seg", shape));
        }
        shapes
    }
}

/// One row of the table: medians.
#[derive(Clone, Debug)]
pub struct Row {
    pub label: &'static str,
    pub shape: synthetic::Shape,
    pub bytes: usize,
    pub read: Duration,
    pub parse: Duration,
    pub validate: Duration,
    pub compile: Duration,
    /// The plan's kernel entries (`encode`), as a swap makes them.
    pub encode: Duration,
    /// Reading the file again through a `policy::Cache` after one segment changed (the
    /// YAML of one tenant, and validation of the whole), and the reload's `diff` of the
    /// two policies.
    pub reread: Duration,
    pub diff: Duration,
    /// `ok (N vifs)`, or why the plan was refused (after all of its work).
    pub plan: String,
}

impl Row {
    pub fn total(&self) -> Duration {
        self.read + self.parse + self.validate + self.compile + self.encode
    }
}

/// The host: `vifs` links of segments spread evenly over the policy (every other one by
/// its exact name, the others through their segment's pattern), the 64 uplinks, and two
/// links of the host's own.
pub fn host(shape: &synthetic::Shape, vifs: usize) -> HostView {
    let mut links = vec![Link::veth("lo", 1), Link::veth("eth0", 2)];
    links[0].kind = String::new();
    links[1].kind = String::new();
    let mut ifindex = 3;
    for i in 0..vifs.min(shape.segments) {
        let g = i * shape.segments / vifs.min(shape.segments);
        let name = if i % 2 == 0 {
            synthetic::vif_name(g)
        } else {
            format!("{}-{i}", synthetic::vif_name(g))
        };
        links.push(Link::veth(&name, ifindex));
        ifindex += 1;
    }
    for u in 0..64 {
        links.push(Link {
            name: synthetic::uplink_name(u),
            ifindex,
            kind: "vxlan".to_owned(),
        });
        ifindex += 1;
    }
    HostView {
        links,
        addresses: vec!["192.0.2.1".parse().expect("an address")],
        ..HostView::default()
    }
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Measures every row.
pub fn measure(config: &Config) -> anyhow::Result<Vec<Row>> {
    let dir = std::env::temp_dir().join(format!("isolator-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = config
        .shapes()
        .into_iter()
        .map(|(label, shape)| measure_one(config, &dir, label, shape))
        .collect();
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    result
}

fn measure_one(
    config: &Config,
    dir: &std::path::Path,
    label: &'static str,
    shape: synthetic::Shape,
) -> anyhow::Result<Row> {
    let path = dir.join(format!("policy-{}.yaml", shape.segments));
    let text = synthetic::generate(&shape);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    let bytes = text.len();
    drop(text);
    let host = host(&shape, config.vifs);
    let file_name = path.display().to_string();
    let (mut read, mut parse, mut validate, mut compile) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut reread, mut diffs, mut encoding) = (Vec::new(), Vec::new(), Vec::new());
    let mut plan_status = String::new();
    // The file with segment 0 given one more prefix: each run reads the other one of the
    // two through the cache, which holds the last one read.
    let original = std::fs::read_to_string(&path)?;
    let marker = "prefixes: [\"10.0.0.0/28\"";
    if !original.contains(marker) {
        bail!("the synthetic policy's first segment changed: no {marker}");
    }
    let changed = original.replacen(marker, "prefixes: [\"10.0.0.0/28\", \"10.255.255.0/28\"", 1);
    let mut cache = policy::Cache::new();
    let _ = cache.parse_timed(&original, &file_name);
    drop(original);
    for run in 0..config.runs {
        let started = Instant::now();
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        read.push(started.elapsed());
        let (policy, times) = policy::parse_timed(&source, &file_name);
        drop(source);
        parse.push(times.yaml);
        validate.push(times.validate);
        let policy = match policy {
            Ok(policy) => policy,
            Err(diagnostics) => {
                // Reported in the table: the loader refuses a valid policy.
                let first = diagnostics.iter().next().map(|d| d.message.clone());
                plan_status = format!(
                    "policy refused ({} errors): {}",
                    diagnostics.len(),
                    first.unwrap_or_default()
                );
                compile.push(Duration::ZERO);
                encoding.push(Duration::ZERO);
                continue;
            }
        };
        let started = Instant::now();
        let plan = Plan::new(&policy, &host);
        compile.push(started.elapsed());
        plan_status = match &plan {
            Ok(plan) => format!("ok ({} vifs)", plan.vifs.len()),
            Err(e) => format!("refused: {e}"),
        };
        if let Ok(plan) = &plan {
            let started = Instant::now();
            let entries = isolator::encode::encode(plan, 0);
            encoding.push(started.elapsed());
            drop(entries);
        } else {
            encoding.push(Duration::ZERO);
        }
        // Freed outside the measurements: the daemon keeps both.
        drop(plan);
        let source = if run % 2 == 0 {
            &changed
        } else {
            &std::fs::read_to_string(&path)?
        };
        let started = Instant::now();
        let (again, _, reuse) = cache.parse_timed(source, &file_name);
        reread.push(started.elapsed());
        let again = again.map_err(|d| anyhow::anyhow!("{d}"))?;
        if reuse.whole || reuse.parsed != 1 || !reuse.delta {
            bail!(
                "the changed file was read whole, more than one tenant parsed, or the whole \
                 policy validated: {reuse:?}"
            );
        }
        let started = Instant::now();
        let changes = isolator::policy::diff::diff(&policy, &again);
        diffs.push(started.elapsed());
        drop(changes);
        drop(again);
        drop(policy);
    }
    Ok(Row {
        label,
        shape,
        bytes,
        read: median(&mut read),
        parse: median(&mut parse),
        validate: median(&mut validate),
        compile: median(&mut compile),
        encode: median(&mut encoding),
        reread: median(&mut reread),
        diff: median(&mut diffs),
        plan: plan_status,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub fn print(config: &Config, rows: &[Row]) {
    println!(
        "policy loader (read, parse, validate, compile, encode; no kernel), median of {} run(s), {} \
         vifs on the host, {} build, {} CPUs",
        config.runs,
        config.vifs,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<16} {:>8} {:>9} {:>8} {:>7} {:>8} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>8}  plan",
        "shape",
        "segments",
        "prefixes",
        "exposed",
        "MB",
        "read ms",
        "parse ms",
        "validate ms",
        "compile ms",
        "encode ms",
        "total ms",
        "reread ms",
        "diff ms"
    );
    for row in rows {
        println!(
            "{:<16} {:>8} {:>9} {:>8} {:>7.1} {:>8} {:>9} {:>11} {:>10} {:>9} {:>9} {:>9} {:>8}  {}",
            row.label,
            row.shape.segments,
            row.shape.prefixes(),
            row.shape.exposed(),
            row.bytes as f64 / 1e6,
            ms(row.read),
            ms(row.parse),
            ms(row.validate),
            ms(row.compile),
            ms(row.encode),
            ms(row.total()),
            ms(row.reread),
            ms(row.diff),
            row.plan
        );
    }
}

pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let config = Config::from_args(args)?;
    let rows = measure(&config)?;
    print(&config, &rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader benchmark at tiny sizes, so that it cannot rot: every row's policy is
    /// accepted and compiled for a host whose vifs it classifies. Asserts no timing.
    #[test]
    fn loader_smoke() {
        let config = Config::from_args(["--smoke".to_owned()].into_iter()).expect("--smoke");
        let rows = measure(&config).expect("the loader benchmark ran");
        print(&config, &rows);
        assert_eq!(rows.len(), config.sizes.len() + 1);
        for row in &rows {
            assert_eq!(row.plan, "ok (10 vifs)", "{row:?}");
            assert!(row.bytes > 0);
        }
        assert_eq!(rows.last().map(|r| r.shape.prefixes()), Some(600));
    }

    #[test]
    fn loader_arguments() {
        let args = |a: &[&str]| Config::from_args(a.iter().map(|s| (*s).to_owned()));
        let config = args(&["--sizes", "5,1_000", "--runs", "0", "--no-million"]).expect("valid");
        assert_eq!(config.sizes, vec![5, 1000]);
        assert_eq!(config.runs, 1, "at least one run");
        assert!(!config.million);
        assert!(args(&["--sizes"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
