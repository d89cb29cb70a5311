//! `isolator verify` and `isolator explain`: their output, as text or JSON, and exit codes.

use std::path::Path;
use std::process::ExitCode;

use isolator::policy::InterfacePattern;
use isolator::verify::{Severity, explain, live, matrix};

/// `verify`'s exit codes: clean, violations, could not look.
const CLEAN: u8 = 0;
const VIOLATED: u8 = 1;
const COULD_NOT: u8 = 2;

/// `isolator verify`, with `matrix` the live reachability matrix too.
pub fn verify(
    config: &Path,
    state_dir: &Path,
    infrastructure: &[String],
    matrix: bool,
    json: bool,
) -> ExitCode {
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
    let matrix = if matrix {
        match explain::Live::load(config, state_dir) {
            Ok(live) => Some(matrix::run(&live)),
            Err(e) => {
                eprintln!("error: could not probe the reachability matrix: {e:#}");
                return ExitCode::from(COULD_NOT);
            }
        }
    } else {
        None
    };
    let disagreements = matrix.as_ref().map_or(0, |m| m.disagreements);
    if json {
        let mut value = match serde_json::to_value(&report) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(COULD_NOT);
            }
        };
        if let (Some(m), Some(object)) = (&matrix, value.as_object_mut()) {
            match serde_json::to_value(m) {
                Ok(m) => {
                    object.insert("matrix".into(), m);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(COULD_NOT);
                }
            }
        }
        if let Err(code) = print_json(&value) {
            return code;
        }
    } else {
        print!("{}", render_inventory(&report.inventory));
        println!();
        for finding in &report.findings {
            println!("{finding}");
        }
        if let Some(m) = &matrix {
            println!();
            print!("{}", render_matrix(m));
        }
        let count = |s| report.findings.iter().filter(|f| f.severity == s).count();
        let probed = matrix.as_ref().map_or(String::new(), |m| {
            format!(
                ", {} of {} probe(s) disagree with the policy",
                m.disagreements, m.probes
            )
        });
        println!(
            "{}: generation {}: {} violation(s), {} warning(s){probed}{}",
            report.config.display(),
            report.generation,
            count(Severity::Violation),
            count(Severity::Warning),
            if report.violated() || disagreements > 0 {
                ""
            } else {
                ": the host is as the policy says"
            }
        );
    }
    if disagreements > 0 {
        eprintln!(
            "DISAGREEMENT: {disagreements} probe(s) of the reachability matrix are judged \
             otherwise by the attached programs than by the policy"
        );
    }
    ExitCode::from(if report.violated() || disagreements > 0 {
        VIOLATED
    } else {
        CLEAN
    })
}

/// The matrix as two tables, what passes live and what the policy model passes (`!`
/// before a cell with a probe on which they disagree), then each disagreeing probe.
fn render_matrix(m: &matrix::Matrix) -> String {
    let text = |cell: &matrix::Cell, list: &[String]| {
        let body = match cell.status {
            matrix::Status::NoVif => "no vif".to_string(),
            matrix::Status::NotJudged => "n/a".to_string(),
            matrix::Status::Probed if list.is_empty() => "-".to_string(),
            matrix::Status::Probed => list.join(" "),
        };
        if cell.agree {
            body
        } else {
            format!("! {body}")
        }
    };
    let table = |title: &str, pick: &dyn Fn(&matrix::Cell) -> &[String]| {
        let mut grid: Vec<Vec<String>> = vec![
            std::iter::once("from \\ to".to_string())
                .chain(m.columns.iter().cloned())
                .collect(),
        ];
        for (r, row) in m.rows.iter().enumerate() {
            let cells = &m.cells[r * m.columns.len()..(r + 1) * m.columns.len()];
            grid.push(
                std::iter::once(row.clone())
                    .chain(cells.iter().map(|c| text(c, pick(c))))
                    .collect(),
            );
        }
        let widths: Vec<usize> = (0..grid[0].len())
            .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = format!("{title}\n");
        for row in &grid {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str("  ");
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    };
    let mut out = table(
        "reachability, live (what the attached programs pass):",
        &|c| &c.live,
    );
    out.push_str(&table(
        "reachability, policy (what the policy model passes):",
        &|c| &c.model,
    ));
    let notes: Vec<String> = m
        .cells
        .iter()
        .filter_map(|c| Some(format!("  {} -> {}: {}", c.from, c.to, c.note.as_ref()?)))
        .collect();
    if !notes.is_empty() {
        out.push_str("notes:\n");
        for note in notes {
            out.push_str(&note);
            out.push('\n');
        }
    }
    let disagreeing: Vec<_> = m.disagreeing().collect();
    if !disagreeing.is_empty() {
        out.push_str("disagreements:\n");
    }
    for (cell, p) in disagreeing {
        out.push_str(&format!(
            "  ! {} -> {}: {} {} -> {} ({})\n",
            cell.from, cell.to, p.service, p.probe.src, p.probe.dst, p.probe.why
        ));
        for step in &p.steps {
            out.push_str(&format!(
                "      {} on {}, program {}: live {}, model {}{}\n",
                step.direction,
                step.device,
                step.program,
                step.live,
                step.model,
                if step.agree { "" } else { "  <-- DISAGREES" }
            ));
            for entry in &step.decided_by {
                out.push_str(&format!("        model decided by {entry}\n"));
            }
        }
        out.push_str(&format!(
            "      live: {}; policy model: {}\n",
            p.live, p.model
        ));
        if !p.frame.is_empty() {
            out.push_str(&format!("      frame: {}\n", p.frame));
        }
    }
    out
}

/// Prints `value` as pretty JSON on stdout; on failure says why and gives the exit code.
fn print_json(value: &impl serde::Serialize) -> Result<(), ExitCode> {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(COULD_NOT))
        }
    }
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
        for (hook, ids) in [
            ("tcx-in", &link.tcx_ingress),
            ("tcx-out", &link.tcx_egress),
            ("tc-in", &link.filters_ingress),
            ("tc-out", &link.filters_egress),
        ] {
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

/// `explain`'s exit codes: it ran (the verdict is in the output), could not, or the live
/// programs and the model disagree.
const RAN: u8 = 0;
const DISAGREE: u8 = 3;

/// `isolator explain`.
pub fn explain(config: &Path, state_dir: &Path, input: &explain::Input, json: bool) -> ExitCode {
    let found = match explain::explain(config, state_dir, input) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: could not explain the frame: {e:#}");
            return ExitCode::from(COULD_NOT);
        }
    };
    if json {
        if let Err(code) = print_json(&found) {
            return code;
        }
    } else {
        println!("frame: {}", found.summary);
        for note in &found.notes {
            println!("  note: {note}");
        }
        for step in &found.steps {
            println!(
                "{} on {} ({}), program {}: {}",
                step.direction,
                step.device,
                step.segment.as_deref().unwrap_or("-"),
                step.program,
                step.live
            );
            if let Some(note) = &step.note {
                println!("  note: {note}");
            }
            println!(
                "  model: {}{}",
                step.model,
                if step.agree { "" } else { "  <-- DISAGREES" }
            );
            if !step.decided_by.is_empty() {
                println!("  decided by:");
                for entry in &step.decided_by {
                    println!("    {entry}");
                }
            }
        }
        if found.verdict == found.model_verdict {
            println!("verdict: {}", found.verdict);
        } else {
            println!(
                "verdict: {}  (the model: {})  <-- DISAGREES",
                found.verdict, found.model_verdict
            );
        }
    }
    if found.disagree {
        for step in found.steps.iter().filter(|s| !s.agree) {
            eprintln!(
                "DISAGREEMENT: on {} ({}) the live program says {}, the policy model says {}: \
                 the kernel is not judging as the policy says (run isolator verify)",
                step.device, step.direction, step.live, step.model
            );
        }
        return ExitCode::from(DISAGREE);
    }
    ExitCode::from(RAN)
}

/// The frame `explain` is given: from fields, hex or a pcap file.
#[expect(
    clippy::too_many_arguments,
    reason = "the command line's options, each named"
)]
pub fn explain_input(
    from: Option<String>,
    to: Option<std::net::IpAddr>,
    src: Option<std::net::IpAddr>,
    proto: explain::Proto,
    port: u16,
    sport: u16,
    hex: Option<String>,
    pcap: Option<std::path::PathBuf>,
) -> Result<explain::Input, String> {
    let frame = match (hex, pcap) {
        (Some(_), Some(_)) => return Err("give --hex or --pcap, not both".into()),
        (Some(hex), None) => {
            let clean: String = hex
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            if !clean.len().is_multiple_of(2) {
                return Err("--hex: an odd number of digits".into());
            }
            let bytes: Result<Vec<u8>, _> = (0..clean.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&clean[i..i + 2], 16))
                .collect();
            Some(bytes.map_err(|e| format!("--hex: {e}"))?)
        }
        (None, Some(path)) => {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            Some(
                explain::first_pcap_frame(&bytes)
                    .map_err(|e| format!("{}: {e:#}", path.display()))?,
            )
        }
        (None, None) => None,
    };
    match (frame, from, to) {
        (Some(frame), from, None) => Ok(explain::Input::Bytes { from, frame }),
        (Some(_), _, Some(_)) => {
            Err("--to describes a frame from fields; a whole frame has its own".into())
        }
        (None, Some(from), Some(to)) => Ok(explain::Input::Fields {
            from,
            to,
            src,
            protocol: proto,
            port,
            sport,
        }),
        (None, _, _) => {
            Err("give --from and --to (and --proto, --port), or --hex, or --pcap".into())
        }
    }
}
