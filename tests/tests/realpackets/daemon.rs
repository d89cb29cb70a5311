//! Items 6, 7 and 8: what the daemon says and leaves behind when it cannot enforce, cannot
//! start, or is told to let a vif go. Read from the kernel (`ip -d link`, TCX queries),
//! from `/healthz` and `/metrics`, next to frames that prove the rest stays enforced.

use std::net::TcpListener;
use std::time::Duration;

use isolator_tests::env::METRICS_PORT;
use isolator_tests::failclosed_lab::{FrameSender, Watched, await_health, quiet_lab, udp_sinks};
use isolator_tests::metrics::{INTERFACES_REFUSED, poll};
use isolator_tests::netns::{in_netns, ip_n};
use isolator_tests::rawbpf::{attach_xdp_link, load_xdp, xdp_pass_program};
use isolator_tests::{Daemon, Env, Lab, Scrape, Series, TempDir, Vm, isolator_bin};

use super::{static_fdb_all, vm, watched};
use crate::failclosed::{Problems, captured, carrying, expect_exactly, settle, udp_frame};

const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    segments:
      - name: web
        interfaces: ["vacme-web*"]
        prefixes: [10.1.1.0/24]
  - name: globex
    segments:
      - name: web
        interfaces: ["vglobex-web*"]
        prefixes: [10.2.1.0/24]
"#;

const PORT: u16 = 9;
const ISOLATOR: [&str; 3] = ["xdp", "tcx ingress", "tcx egress"];

/// web1, web2 (acme/web) and gweb1 (globex/web), IPv4 only, with permanent neighbour and
/// bridge forwarding entries.
fn lab(hint: &str) -> (Lab, Vec<Vm>) {
    let (lab, vms) = quiet_lab(
        hint,
        &[
            ("web1", "vacme-web1", "10.1.1.2/24"),
            ("web2", "vacme-web2", "10.1.1.3/24"),
            ("gweb1", "vglobex-web1", "10.2.1.2/24"),
        ],
        &[],
    )
    .unwrap_or_else(|e| panic!("harness: lab: {e:#}"));
    static_fdb_all(&lab, &vms);
    (lab, vms)
}

/// One UDP frame from `from` to `to`, with the exact counter changes it must cause on
/// `vifs` and whether it must arrive at `to` (a capture there).
fn shot(
    bad: &mut Problems,
    daemon: &Daemon,
    vifs: &[&str],
    from: &Vm,
    to: &Vm,
    moves: &[(&str, &str, f64)],
    arrives: bool,
) {
    let what = format!("UDP from {} to {}", from.name, to.name);
    let marker = format!("rp {what}");
    let sender = FrameSender::open(&from.ns, "eth0").expect("harness: sender");
    let before = settle(vifs, Duration::from_millis(300), || {
        daemon
            .scrape()
            .unwrap_or_else(|e| panic!("scraping /metrics: {e:#}"))
    });
    let (_, frames) = captured(&[&to.ns], || {
        sender
            .send(&udp_frame(from, &to.mac, to.v4(), PORT, &marker))
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
        expect_exactly(bad, daemon, vifs, &before, moves, &what)
    });
    let (arrived, wanted) = (carrying(&frames[0], &marker), usize::from(arrives));
    bad.check(arrived == wanted, || {
        format!("{what}: {wanted} copy expected, {arrived} arrived")
    });
}

/// Item 6. Before the daemon starts, another program holds web2's XDP hook (a native-mode
/// XDP bpf_link, as another tool on the host would attach it): the kernel lets isolator
/// attach neither natively (it replaces no link) nor in generic mode (never both modes at
/// once). `/healthz` answers 503 naming web2 and only web2, `isolator_interfaces_refused
/// {device="vacme-web2",reason="attach_failed"}` is 1, web2 carries none of isolator's
/// programs (all or none: no TC program either), and web1 stays enforced: its frame to
/// another tenant drops (`ingress cross_tenant`) and does not arrive, its twin to web2
/// passes and arrives. Once the foreign program is gone, the next link event attaches
/// isolator to web2 and `/healthz` answers 200 again.
#[test]
fn a_vif_whose_xdp_hook_is_taken_is_reported_and_the_rest_enforced() {
    let (lab, vms) = lab("rp-attach");
    let (web1, web2, gweb1) = (vm(&vms, "web1"), vm(&vms, "web2"), vm(&vms, "gweb1"));
    let vif2 = web2.vif.clone();
    let foreign = in_netns(lab.host_ns(), move || {
        let prog = load_xdp(&xdp_pass_program(), "a foreign XDP program")?;
        let link = attach_xdp_link(&prog, &vif2, "a foreign XDP program")?;
        Ok((prog, link))
    })
    .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let fx = Watched::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    match await_health(fx.daemon(), 503, &[&web2.vif], Duration::from_secs(10)) {
        Ok(body) => {
            bad.check(body.contains("attaching failed"), || {
                format!("/healthz must say that attaching failed: {body:?}")
            });
            bad.check(!body.contains(&web1.vif), || {
                format!("/healthz names web1, which is enforced: {body:?}")
            });
        }
        Err(e) => bad.push(format!("{e:#}")),
    }
    let m = fx.scrape();
    let refused = |device: &str| {
        Series::new(
            INTERFACES_REFUSED,
            &[("device", device), ("reason", "attach_failed")],
        )
    };
    match m.value(&refused(&web2.vif)) {
        Ok(v) => bad.check(v == 1.0, || format!("{} is {v}, not 1", refused(&web2.vif))),
        Err(e) => bad.push(format!("{e:#}")),
    }
    bad.check(m.select(&refused(&web1.vif)).is_empty(), || {
        format!("web1 is enforced, yet {} exists", refused(&web1.vif))
    });
    for (v, wanted) in [(web1, &ISOLATOR[..]), (web2, &["xdp"][..])] {
        let programs = fx.lab().vif_programs(&v.vif).expect("harness: programs");
        bad.check(programs == wanted, || {
            format!(
                "{}: programs {programs:?}, expected {wanted:?} (web2's xdp is the foreign one)",
                v.vif
            )
        });
    }
    bad.check(fx.daemon().log().contains("NOT enforcing"), || {
        "the log must say which interface is not enforced".into()
    });
    let _sinks = udp_sinks(&[web2, gweb1], PORT).expect("harness: UDP sinks");
    let vifs = [web1.vif.as_str(), gweb1.vif.as_str()];
    shot(
        &mut bad,
        fx.daemon(),
        &vifs,
        web1,
        gweb1,
        &[(&web1.vif, "ingress cross_tenant", 1.0)],
        false,
    );
    shot(
        &mut bad,
        fx.daemon(),
        &vifs,
        web1,
        web2,
        &[(&web1.vif, "ingress pass", 1.0)],
        true,
    );
    // The cause removed, the next link event (here a new alias) brings a reconcile that
    // attaches: 503 and the refusal go, web2 carries isolator's programs.
    drop(foreign);
    ip_n(
        fx.lab().host_ns(),
        &["link", "set", "dev", &web2.vif, "alias", "released"],
    )
    .unwrap_or_else(|e| panic!("harness: {e:#}"));
    if let Err(e) = await_health(fx.daemon(), 200, &[], Duration::from_secs(10)) {
        bad.push(format!("once the foreign program is gone: {e:#}"));
    }
    let m = fx.scrape();
    bad.check(m.select(&refused(&web2.vif)).is_empty(), || {
        format!("once web2 is enforced, {} must be gone", refused(&web2.vif))
    });
    let programs = fx.lab().vif_programs(&web2.vif).expect("harness: programs");
    bad.check(programs == ISOLATOR, || {
        format!("once the foreign program is gone, web2 carries {programs:?}")
    });
    bad.finish("a vif whose XDP hook is taken", POLICY, &fx.log_tail());
}

/// Item 7. The metrics port is taken (a listener on 127.0.0.1:9464 in the lab's host
/// namespace, where the daemon runs): `isolator run` exits non-zero, saying so, before it
/// attaches or pins anything (no program on any vif, no state directory). The twin: the
/// same daemon on the same lab, once the port is free, starts, attaches and enforces.
#[test]
fn a_taken_metrics_port_fails_the_start_before_anything_is_attached() {
    let (lab, vms) = lab("rp-port");
    let (web1, gweb1) = (vm(&vms, "web1"), vm(&vms, "gweb1"));
    let tmp = TempDir::new("isot-rp").expect("harness: temp dir");
    let config = tmp.write("policy.yaml", POLICY).expect("harness: policy");
    let squatter = in_netns(lab.host_ns(), || {
        Ok(TcpListener::bind(("127.0.0.1", METRICS_PORT))?)
    })
    .unwrap_or_else(|e| panic!("harness: taking the metrics port: {e:#}"));
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let mut daemon = Daemon::start(&lab, &bin, &config, METRICS_PORT, tmp.path(), &[])
        .unwrap_or_else(|e| panic!("harness: {e:#}"));
    let mut bad = Problems::new();
    match daemon.wait_exit(Duration::from_secs(20)) {
        Ok(status) => bad.check(!status.success(), || {
            format!("isolator must fail with the metrics port taken, it exited {status}")
        }),
        Err(e) => bad.push(format!(
            "isolator kept running with its metrics port taken: {e:#}"
        )),
    }
    let log = daemon.log();
    let wanted = format!("binding the metrics address 127.0.0.1:{METRICS_PORT}");
    bad.check(log.contains(&wanted), || {
        format!("the error must say {wanted:?}; the output:\n{log}")
    });
    for v in &vms {
        let programs = lab.vif_programs(&v.vif).expect("harness: programs");
        bad.check(programs.is_empty(), || {
            format!(
                "{} carries programs after the failed start: {programs:?}",
                v.vif
            )
        });
    }
    let state = lab.state_dir().expect("harness: state dir");
    bad.check(!state.exists(), || {
        format!(
            "the failed start left its state directory {}",
            state.display()
        )
    });
    drop(daemon);
    drop(squatter);
    // Twin: the port free, the same start enforces.
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    for v in &vms {
        let programs = env.lab().vif_programs(&v.vif).expect("harness: programs");
        bad.check(programs == ISOLATOR, || {
            format!("{} after the start with the port free: {programs:?}", v.vif)
        });
    }
    bad.check(state.exists(), || {
        format!("the started daemon keeps its state in {}", state.display())
    });
    let _sinks = udp_sinks(&[gweb1], PORT).expect("harness: UDP sink");
    shot(
        &mut bad,
        env.daemon(),
        &watched(&vms),
        web1,
        gweb1,
        &[(&web1.vif, "ingress cross_tenant", 1.0)],
        false,
    );
    bad.finish("a taken metrics port", POLICY, &env.log_tail());
}

/// Item 8. A SIGHUP reload with a policy whose acme/web names only `vacme-web1`: web2's
/// vif is let go. Read from the kernel, it carries no program any more; `/metrics` has no
/// series of it (it had before) and `isolator_interfaces{acme,web}` goes from 2 to 1.
/// web1 stays enforced: its frame to another tenant drops (`ingress cross_tenant`), its
/// twin to web2 passes (`ingress pass`) and arrives, where nothing judges it any more.
#[test]
fn a_reload_that_stops_matching_a_vif_detaches_it_and_drops_its_series() {
    let (lab, vms) = lab("rp-letgo");
    let (web1, web2, gweb1) = (vm(&vms, "web1"), vm(&vms, "web2"), vm(&vms, "gweb1"));
    let env = Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"));
    let mut bad = Problems::new();
    let of_web2 = |m: &Scrape| -> Vec<String> {
        m.samples
            .iter()
            .filter(|s| s.labels.get("device") == Some(&web2.vif))
            .map(|s| format!("{}{:?}", s.name, s.labels))
            .collect()
    };
    let gauge = Series::interfaces("acme", "web");
    let m = env.scrape();
    bad.check(!of_web2(&m).is_empty(), || {
        "before the reload, /metrics must have series of vacme-web2".into()
    });
    bad.check(m.value(&gauge).ok() == Some(2.0), || {
        format!(
            "before the reload: {gauge} = {:?}, not 2",
            m.value(&gauge).ok()
        )
    });
    let programs = env
        .lab()
        .vif_programs(&web2.vif)
        .expect("harness: programs");
    bad.check(programs == ISOLATOR, || {
        format!("before the reload, web2 carries {programs:?}")
    });

    let narrowed = POLICY.replacen(r#"["vacme-web*"]"#, r#"["vacme-web1"]"#, 1);
    env.reload(&narrowed, true)
        .unwrap_or_else(|e| panic!("{e:#}"));
    if let Err(e) = poll(
        "vacme-web2 loses every program",
        Duration::from_secs(5),
        || {
            let p = env.lab().vif_programs(&web2.vif)?;
            Ok(if p.is_empty() {
                Ok(())
            } else {
                Err(format!("{p:?}"))
            })
        },
    ) {
        bad.push(format!(
            "{e:#}\n{}",
            env.lab().vif_details(&web2.vif).unwrap_or_default()
        ));
    }
    let m = env.scrape();
    let left = of_web2(&m);
    bad.check(left.is_empty(), || {
        format!("after the reload, /metrics still has series of vacme-web2: {left:#?}")
    });
    bad.check(m.value(&gauge).ok() == Some(1.0), || {
        format!(
            "after the reload: {gauge} = {:?}, not 1",
            m.value(&gauge).ok()
        )
    });
    let programs = env
        .lab()
        .vif_programs(&web1.vif)
        .expect("harness: programs");
    bad.check(programs == ISOLATOR, || {
        format!("after the reload, web1 carries {programs:?}")
    });
    let _sinks = udp_sinks(&[web2, gweb1], PORT).expect("harness: UDP sinks");
    let vifs = watched(&vms);
    shot(
        &mut bad,
        env.daemon(),
        &vifs,
        web1,
        gweb1,
        &[(&web1.vif, "ingress cross_tenant", 1.0)],
        false,
    );
    shot(
        &mut bad,
        env.daemon(),
        &vifs,
        web1,
        web2,
        &[(&web1.vif, "ingress pass", 1.0)],
        true,
    );
    bad.finish(
        "a reload that stops matching a vif",
        &narrowed,
        &env.log_tail(),
    );
}
