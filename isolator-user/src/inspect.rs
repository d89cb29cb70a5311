//! `isolator verify` and `isolator explain`: their output, as text or JSON, and exit codes.

use std::path::Path;
use std::process::ExitCode;

use isolator::policy::InterfacePattern;
use isolator::verify::{Severity, live};

/// `verify`'s exit codes: clean, violations, could not look.
const CLEAN: u8 = 0;
const VIOLATED: u8 = 1;
const COULD_NOT: u8 = 2;

/// `isolator verify`.
pub fn verify(config: &Path, state_dir: &Path, infrastructure: &[String], json: bool) -> ExitCode {
    let patterns: Result<Vec<InterfacePattern>, _> = infrastructure
        .iter()
        .map(|p| InterfacePattern::new(p))
        .collect();
    let patterns = match patterns {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --infrastructure: {e}");
            return ExitCode::from(COULD_NOT);
        }
    };
    let report = match live::verify(config, state_dir, &patterns) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not verify the host: {e:#}");
            return ExitCode::from(COULD_NOT);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(COULD_NOT);
            }
        }
    } else {
        print!("{}", render_inventory(&report.inventory));
        println!();
        for finding in &report.findings {
            println!("{finding}");
        }
        let count = |s| report.findings.iter().filter(|f| f.severity == s).count();
        println!(
            "{}: generation {}: {} violation(s), {} warning(s){}",
            report.config.display(),
            report.generation,
            count(Severity::Violation),
            count(Severity::Warning),
            if report.violated() {
                ""
            } else {
                ": the host is as the policy says"
            }
        );
    }
    ExitCode::from(if report.violated() { VIOLATED } else { CLEAN })
}

/// The inventory as a table: one line per link.
fn render_inventory(inv: &isolator::verify::Inventory) -> String {
    let program = |id: &u32| match inv.programs.get(id) {
        Some(name) => format!("{name}#{id}"),
        None => format!("#{id}"),
    };
    let mut out = String::from("links:\n");
    for link in &inv.links {
        let mut parts = vec![format!(
            "  {:>4} {:<16} {:<7}",
            link.ifindex,
            link.name,
            if link.kind.is_empty() {
                "-"
            } else {
                &link.kind
            }
        )];
        if let Some(m) = link.master {
            let name = inv.links.iter().find(|l| l.ifindex == m);
            parts.push(format!(
                "master {}",
                name.map_or(m.to_string(), |l| l.name.clone())
            ));
        }
        if let Some(v) = link.vlan_id {
            parts.push(format!("vlan {v}"));
        }
        if let Some(v) = link.vni {
            parts.push(format!("vni {v}"));
        }
        if let Some(l) = link.link {
            let ns = link
                .link_netnsid
                .map_or(String::new(), |n| format!(" in netns id {n}"));
            parts.push(format!("link {l}{ns}"));
        }
        if !link.addresses.is_empty() {
            parts.push(format!("addr {}", link.addresses.join(",")));
        }
        if let Some(id) = link.xdp {
            parts.push(format!("xdp {}", program(&id)));
        }
        for (hook, ids) in [("tcx-in", &link.tcx_ingress), ("tcx-out", &link.tcx_egress)] {
            if !ids.is_empty() {
                let names: Vec<String> = ids.iter().map(program).collect();
                parts.push(format!("{hook} {}", names.join(",")));
            }
        }
        out.push_str(&parts.join(" "));
        out.push('\n');
    }
    out
}
