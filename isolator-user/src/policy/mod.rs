//! Policy file, format version 1 (YAML): parsing and validation.
//!
//! A pure module: apart from [`load`] reading the file, nothing here touches the system.
//! [`parse`] returns either a fully validated [`Policy`] or every problem found, each
//! with file, line and column. The format is documented for operators in
//! `docs/policy.md`.
//!
//! Layout: `raw` holds the serde types as written (with source positions), `validate`
//! turns them into the model below, `pattern` implements interface name patterns.

mod pattern;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;
use std::path::Path;

use ipnet::IpNet;
use serde_saphyr::{
    DuplicateKeyPolicy, Localizer, Location, RenderOptions, SnippetMode, UserMessageFormatter,
};

pub use pattern::{IFNAME_MAX_BYTES, InterfacePattern, PatternError};

/// The policy format version this module reads.
pub const POLICY_VERSION: u64 = 1;

/// Longest tenant or segment name, in characters.
pub const NAME_MAX_LEN: usize = 63;

/// A validated policy. Source positions are stripped.
///
/// Guarantees: tenant names are unique, segment names are unique within their tenant,
/// names follow the name rules, no interface name can be matched by entries of two
/// segments, and no address lies in prefixes of two segments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub tenants: Vec<Tenant>,
}

/// A customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    pub segments: Vec<Segment>,
}

/// One service (private subnetwork) of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub name: String,
    /// Exact interface names and glob patterns, in file order.
    pub interfaces: Vec<InterfacePattern>,
    /// Canonical prefixes (no host bits set), in file order.
    pub prefixes: Vec<IpNet>,
}

impl Policy {
    /// Counts for a one-line report.
    pub fn summary(&self) -> Summary {
        let segments = || self.tenants.iter().flat_map(|t| &t.segments);
        Summary {
            tenants: self.tenants.len(),
            segments: segments().count(),
            interfaces: segments().map(|s| s.interfaces.len()).sum(),
            prefixes: segments().map(|s| s.prefixes.len()).sum(),
        }
    }

    /// The segment that manages the interface named `ifname`, if any. Validation
    /// guarantees at most one segment matches.
    pub fn segment_for_interface(&self, ifname: &str) -> Option<(&Tenant, &Segment)> {
        self.tenants.iter().find_map(|tenant| {
            tenant
                .segments
                .iter()
                .find(|segment| segment.interfaces.iter().any(|p| p.matches(ifname)))
                .map(|segment| (tenant, segment))
        })
    }
}

/// Counts of a policy's elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    pub tenants: usize,
    pub segments: usize,
    /// Interface entries (exact names and patterns).
    pub interfaces: usize,
    pub prefixes: usize,
}

impl fmt::Display for Summary {
    /// E.g. `2 tenants, 4 segments, 6 interface patterns, 8 prefixes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn count(n: usize, one: &str, many: &str) -> String {
            format!("{n} {}", if n == 1 { one } else { many })
        }
        write!(
            f,
            "{}, {}, {}, {}",
            count(self.tenants, "tenant", "tenants"),
            count(self.segments, "segment", "segments"),
            count(self.interfaces, "interface pattern", "interface patterns"),
            count(self.prefixes, "prefix", "prefixes"),
        )
    }
}

/// One problem in a policy file. `line` and `column` are 1-based; both are 0 when the
/// problem has no position (e.g. the file cannot be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    /// What is wrong, quoting the offending value.
    pub message: String,
    /// What to do about it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `FILE:LINE:COL: error: MESSAGE`, then `  help: HELP` on a second line if present.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

/// All problems found in a policy file, sorted by position. Never empty when returned
/// by [`parse`] or [`load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    /// Each diagnostic on its own line (two lines with help), every line terminated by
    /// `\n`, so `eprint!("{diagnostics}")` prints a complete report.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for diagnostic in &self.0 {
            writeln!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Parses and validates a policy. `file_name` is only used in diagnostics.
///
/// # Errors
///
/// YAML syntax errors, unknown keys, duplicate keys and wrong value types stop parsing
/// and yield one diagnostic; otherwise every semantic problem is reported, sorted by
/// position.
pub fn parse(source: &str, file_name: &str) -> Result<Policy, Diagnostics> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        duplicate_keys: DuplicateKeyPolicy::Error,
    };
    let raw: raw::RawPolicy = serde_saphyr::from_str_with_options(source, options)
        .map_err(|e| Diagnostics(vec![yaml_diagnostic(&e, file_name)]))?;
    validate::validate(&raw, file_name).map_err(Diagnostics)
}

/// Reads and parses a policy file. Diagnostics name the file as `path` displays.
///
/// # Errors
///
/// As [`parse`]; an unreadable file yields one diagnostic at line 0, column 0.
pub fn load(path: &Path) -> Result<Policy, Diagnostics> {
    let file_name = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file_name.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read policy file: {e}"),
            help: Some("check the path and permissions".to_owned()),
        }])
    })?;
    parse(&source, &file_name)
}

/// Renders messages without serde-saphyr's "at line X, column Y" suffix: the position
/// goes in front, as in every other diagnostic.
struct NoLocationSuffix;

impl Localizer for NoLocationSuffix {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _loc: Location) -> Cow<'a, str> {
        base
    }
}

fn yaml_diagnostic(error: &serde_saphyr::Error, file_name: &str) -> Diagnostic {
    let formatter = UserMessageFormatter.with_localizer(&NoLocationSuffix);
    let mut options = RenderOptions::new(&formatter);
    options.snippets = SnippetMode::Off;
    let message = error.render_with_options(options);
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    Diagnostic {
        file: file_name.to_owned(),
        line,
        column,
        help: yaml_help(error, &message),
        message,
    }
}

fn yaml_help(error: &serde_saphyr::Error, message: &str) -> Option<String> {
    use serde_saphyr::Error as E;
    let help = match error.without_snippet() {
        E::Eof { .. } => "the policy file is empty; it needs at least `version: 1` and `tenants:`",
        E::Unexpected {
            expected: "sequence start",
            ..
        } => "a list is expected here: `[a, b]`, or one `- item` per line",
        E::Unexpected {
            expected: "mapping start",
            ..
        } => "a mapping is expected here: `key: value` entries",
        E::NullIntoString { .. } => "write a value after the colon",
        E::MultipleDocuments { .. } => {
            "a policy file holds exactly one YAML document; remove the `---` separator"
        }
        _ if message.starts_with("unknown field") => {
            "remove the key or fix its spelling; the message lists the keys allowed here \
             (see docs/policy.md)"
        }
        _ if message.starts_with("duplicate mapping key") => {
            "each key may appear only once in a mapping; remove or merge the repeated key"
        }
        _ => return None,
    };
    Some(help.to_owned())
}
