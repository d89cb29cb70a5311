//! `isolator check` and `isolator diff`: the certification verbs, as text or JSON.
//!
//! The JSON shapes are documented in docs/policy.md ("Findings") and
//! docs/operations.md ("What a policy change does"); keep them stable.

use std::path::Path;
use std::process::ExitCode;

use isolator::policy::diff::{self, Diff};
use isolator::policy::findings::{self, Finding, Severity};
use isolator::policy::{self, Diagnostic, Policy};
use serde_json::{Value, json};

/// `isolator check [--strict] [--json] [--trusted-keys DIR] FILE`.
pub fn run(file: &Path, trusted_keys: Option<&Path>, strict: bool, json: bool) -> ExitCode {
    let (policy, locations) = match policy::load_located(file) {
        Ok(located) => located,
        Err(diagnostics) => {
            if json {
                let findings: Vec<Value> = diagnostics.iter().map(diagnostic_json).collect();
                print_json(&json!({
                    "file": file.display().to_string(),
                    "valid": false,
                    "strict": strict,
                    "errors": findings.len(),
                    "warnings": 0,
                    "findings": findings,
                }));
            } else {
                eprint!("{diagnostics}");
                eprintln!(
                    "{}: invalid: {} error(s)",
                    file.display(),
                    diagnostics.len()
                );
            }
            return ExitCode::FAILURE;
        }
    };
    let mut signature_error = None;
    let mut signed_by = None;
    if let Some(dir) = trusted_keys {
        let signed = std::fs::read(file)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| isolator::signing::TrustedKeys::load(dir)?.verify(file, &bytes));
        match signed {
            Ok(id) => signed_by = Some(id.to_string()),
            // As text, a bad signature ends the check, as it always did.
            Err(e) if !json => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
            Err(e) => signature_error = Some(format!("{e:#}")),
        }
    }
    let found = findings::check(&policy, &locations, strict);
    let errors = found
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count()
        + usize::from(signature_error.is_some());
    let warnings = found.len() + usize::from(signature_error.is_some()) - errors;
    let maps = kernel_maps(&policy);

    if json {
        let mut listed: Vec<Value> = Vec::new();
        if let Some(e) = &signature_error {
            listed.push(json!({
                "code": "signature", "severity": "error", "file": file.display().to_string(),
                "line": 0, "column": 0, "message": e,
                "help": "sign the policy with a key whose public half is among the trusted keys",
            }));
        }
        listed.extend(found.iter().map(finding_json));
        let s = policy.summary();
        print_json(&json!({
            "file": file.display().to_string(),
            "valid": true,
            "strict": strict,
            "summary": {
                "tenants": s.tenants, "segments": s.segments, "interfaces": s.interfaces,
                "prefixes": s.prefixes, "exposed": s.exposed, "flows": s.flows,
                "management": s.management, "gateways": s.gateways, "uplinks": s.uplinks,
            },
            "signed_by": signed_by,
            "kernel_maps": maps.iter().map(|(map, entries, capacity, bytes)| json!({
                "map": map, "entries": entries, "capacity": capacity, "bytes": bytes,
            })).collect::<Vec<_>>(),
            "errors": errors,
            "warnings": warnings,
            "findings": listed,
        }));
    } else {
        if let Some(id) = &signed_by {
            println!("{}: signed by key {id}", file.display());
        }
        println!("{}: valid: {}", file.display(), policy.summary());
        if !maps.is_empty() {
            // What the kernel maps take for it (without the host's own links and
            // addresses, which the daemon adds).
            let total: u64 = maps.iter().map(|(.., bytes)| bytes).sum();
            println!(
                "kernel maps sized for it (about {:.1} MiB once in force):",
                total as f64 / f64::from(1 << 20)
            );
            for (map, count, capacity, bytes) in &maps {
                println!(
                    "  {map}: {count} entries, capacity {capacity} (both generations and room \
                     to grow), about {:.1} MiB",
                    *bytes as f64 / f64::from(1 << 20)
                );
            }
        }
        for finding in &found {
            eprintln!("{finding}");
        }
        if !found.is_empty() {
            eprintln!(
                "{}: {} finding(s): {errors} error(s), {warnings} warning(s){}",
                file.display(),
                found.len(),
                if strict { " (--strict)" } else { "" }
            );
        }
    }
    if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// What the kernel maps take for `policy` without the host's links; empty when it does
/// not fit them (an `exceeds-kernel-capacity` finding says why).
fn kernel_maps(policy: &Policy) -> Vec<(&'static str, usize, u32, u64)> {
    match isolator::compile::Plan::new(policy, isolator::compile::HostView::default()) {
        Ok(plan) => isolator::dataplane::Sizes::for_plan(&plan).estimate(&plan),
        Err(_) => Vec::new(),
    }
}

fn finding_json(f: &Finding) -> Value {
    json!({
        "code": f.code.as_str(),
        "severity": f.severity.as_str(),
        "file": f.file,
        "line": f.line,
        "column": f.column,
        "message": f.message,
        "help": f.help,
    })
}

/// A validation error, in the shape of a finding (code `invalid`).
fn diagnostic_json(d: &Diagnostic) -> Value {
    json!({
        "code": "invalid",
        "severity": "error",
        "file": d.file,
        "line": d.line,
        "column": d.column,
        "message": d.message,
        "help": d.help,
    })
}

/// Prints `value` on stdout; a closed pipe (`| head`) is not an error.
fn print_json(value: &Value) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{value:#}");
}

/// `isolator diff [--json] OLD NEW`.
pub fn diff(old: &Path, new: &Path, json: bool) -> ExitCode {
    let load = |path: &Path| {
        policy::load(path).map_err(|diagnostics| {
            eprint!("{diagnostics}");
            eprintln!(
                "{}: invalid: {} error(s)",
                path.display(),
                diagnostics.len()
            );
        })
    };
    let (Ok(a), Ok(b)) = (load(old), load(new)) else {
        return ExitCode::from(diff::EXIT_ERROR);
    };
    let changes: Diff = diff::diff(&a, &b);
    if json {
        print_json(&json!({
            "old": old.display().to_string(),
            "new": new.display().to_string(),
            "widened": changes.count(diff::Effect::Widened),
            "narrowed": changes.count(diff::Effect::Narrowed),
            "other": changes.count(diff::Effect::Changed),
            "changes": changes.changes,
        }));
    } else {
        print!("{changes}");
        if changes.is_empty() {
            println!("{} -> {}: no change", old.display(), new.display());
        } else {
            println!(
                "{} -> {}: {}{}",
                old.display(),
                new.display(),
                changes.summary(),
                if changes.widens() {
                    ": reachability widened"
                } else {
                    ""
                }
            );
        }
    }
    ExitCode::from(changes.exit_status())
}
