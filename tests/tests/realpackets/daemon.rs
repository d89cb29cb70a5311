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
/// once). isolator fails closed all the same: what web2 sends is judged on its TC ingress
/// (after the other program) by the same story, and what reaches it on its TC egress; it
/// says so: `/healthz` answers 503 naming web2 and only web2, and
/// `isolator_interfaces_refused{device="vacme-web2",reason="xdp_taken"}` is 1. web2's
/// frame to another tenant drops (`ingress cross_tenant`, counted on web2) and does not
/// arrive, its twin to web1 arrives; web1 stays enforced as ever. Once the foreign program
/// is gone, the next reconcile (a link event) moves web2 to XDP: `/healthz` 200, the
/// refusal gone, isolator's XDP link pinned and the TC judge's removed.
#[test]
fn a_vif_whose_xdp_hook_is_taken_is_judged_at_tc_and_reported() {
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
            bad.check(body.contains("another program holds its XDP hook"), || {
                format!("/healthz must say that another program holds the XDP hook: {body:?}")
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
            &[("device", device), ("reason", "xdp_taken")],
        )
    };
    match m.value(&refused(&web2.vif)) {
        Ok(v) => bad.check(v == 1.0, || format!("{} is {v}, not 1", refused(&web2.vif))),
        Err(e) => bad.push(format!("{e:#}")),
    }
    bad.check(m.select(&refused(&web1.vif)).is_empty(), || {
        format!("web1 is enforced at XDP, yet {} exists", refused(&web1.vif))
    });
    let pins = |kind: &str| {
        let dir = fx
            .lab()
            .state_dir()
            .expect("harness: state dir")
            .join("links");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("harness: {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(&format!("-{kind}"))
            })
            .count()
    };
    // web1's and gweb1's xdp, tc and tags; web2's tc and judge (its xdp is the foreign
    // one).
    bad.check(
        pins("judge") == 1 && pins("xdp") == 2 && pins("tc") == 3,
        || {
            format!(
                "pinned links: {} judge (1 expected), {} xdp (2), {} tc (3)",
                pins("judge"),
                pins("xdp"),
                pins("tc")
            )
        },
    );
    bad.check(
        fx.daemon()
            .log()
            .contains("judging what the VM sends at TC ingress instead"),
        || "the log must say where the interface is judged, and why".into(),
    );
    let _sinks = udp_sinks(&[web1, web2, gweb1], PORT).expect("harness: UDP sinks");
    let vifs = [web1.vif.as_str(), web2.vif.as_str(), gweb1.vif.as_str()];
    for (from, to, moves, arrives) in [
        (
            web1,
            gweb1,
            vec![(&web1.vif, "ingress cross_tenant", 1.0)],
            false,
        ),
        (
            web1,
            web2,
            vec![
                (&web1.vif, "ingress pass", 1.0),
                (&web2.vif, "egress pass", 1.0),
            ],
            true,
        ),
        (
            web2,
            gweb1,
            vec![(&web2.vif, "ingress cross_tenant", 1.0)],
            false,
        ),
        (
            web2,
            web1,
            vec![
                (&web2.vif, "ingress pass", 1.0),
                (&web1.vif, "egress pass", 1.0),
            ],
            true,
        ),
    ] {
        let moves: Vec<(&str, &str, f64)> =
            moves.iter().map(|(v, k, n)| (v.as_str(), *k, *n)).collect();
        shot(&mut bad, fx.daemon(), &vifs, from, to, &moves, arrives);
    }
    // The cause removed, the next link event (here a new alias) brings a reconcile that
    // moves web2 to XDP: 503 and the refusal go.
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
        format!(
            "once web2 is enforced at XDP, {} must be gone",
            refused(&web2.vif)
        )
    });
    let programs = fx.lab().vif_programs(&web2.vif).expect("harness: programs");
    bad.check(programs == ISOLATOR, || {
        format!("once the foreign program is gone, web2 carries {programs:?}")
    });
    bad.check(
        pins("judge") == 0 && pins("xdp") == 3 && pins("tags") == 3,
        || {
            format!(
                "after the move to XDP: {} judge (0 expected), {} xdp (3), {} tags (3)",
                pins("judge"),
                pins("xdp"),
                pins("tags")
            )
        },
    );
    shot(
        &mut bad,
        fx.daemon(),
        &vifs,
        web2,
        gweb1,
        &[(&web2.vif, "ingress cross_tenant", 1.0)],
        false,
    );
    bad.finish("a vif whose XDP hook is taken", POLICY, &fx.log_tail());
}

/// Item 6, across a restart: a daemon killed while it judges web2 at TC ingress leaves
/// the judge's link pinned; the next daemon takes that link over (the kernel's ids: the
/// same link, a new program inside) and web2 stays judged without a gap: its frame to
/// another tenant drops and is counted, its twin arrives.
#[test]
fn a_vif_judged_at_tc_stays_judged_across_a_restart() {
    let (lab, vms) = lab("rp-attach-restart");
    let (web1, web2, gweb1) = (vm(&vms, "web1"), vm(&vms, "web2"), vm(&vms, "gweb1"));
    let vif2 = web2.vif.clone();
    let _foreign = in_netns(lab.host_ns(), move || {
        let prog = load_xdp(&xdp_pass_program(), "a foreign XDP program")?;
        let link = attach_xdp_link(&prog, &vif2, "a foreign XDP program")?;
        Ok((prog, link))
    })
    .unwrap_or_else(|e| panic!("harness: {e:#}"));
    // /healthz answers 503 (web2 is judged at TC, and says so): the daemon is started
    // directly, not through `Env`, which waits for 200.
    let tmp = TempDir::new("isot-rp").expect("harness: temp dir");
    let config = tmp.write("policy.yaml", POLICY).expect("harness: policy");
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    let start = || {
        let d = Daemon::start(&lab, &bin, &config, METRICS_PORT, tmp.path(), &[])
            .unwrap_or_else(|e| panic!("harness: {e:#}"));
        poll("the daemon answers", Duration::from_secs(20), || {
            Ok(d.get("/healthz").map(|_| ()).map_err(|e| format!("{e:#}")))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log()));
        await_health(&d, 503, &[&web2.vif], Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}\n{}", d.log()));
        d
    };
    let mut bad = Problems::new();
    let links = lab.state_dir().expect("harness: state dir").join("links");
    let judge_pin = || {
        std::fs::read_dir(&links)
            .unwrap_or_else(|e| panic!("harness: {}: {e}", links.display()))
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with("-judge"))
            .map(|e| e.path())
            .expect("web2's judge is pinned")
    };
    let mut old = start();
    let before = isolator_tests::rawbpf::pinned_link_ids(&judge_pin()).expect("link ids");
    old.signal(libc::SIGKILL).unwrap();
    old.wait_exit(Duration::from_secs(10)).unwrap();
    drop(old);
    let daemon = start();
    let after = isolator_tests::rawbpf::pinned_link_ids(&judge_pin()).expect("link ids");
    bad.check(
        after.link == before.link && after.program != before.program,
        || {
            format!(
                "the same judge link with a new program inside: before {before:?}, after {after:?}"
            )
        },
    );
    let _sinks = udp_sinks(&[web1, gweb1], PORT).expect("harness: UDP sinks");
    let vifs = [web1.vif.as_str(), web2.vif.as_str(), gweb1.vif.as_str()];
    shot(
        &mut bad,
        &daemon,
        &vifs,
        web2,
        gweb1,
        &[(&web2.vif, "ingress cross_tenant", 1.0)],
        false,
    );
    shot(
        &mut bad,
        &daemon,
        &vifs,
        web2,
        web1,
        &[
            (&web2.vif, "ingress pass", 1.0),
            (&web1.vif, "egress pass", 1.0),
        ],
        true,
    );
    bad.finish(
        "a vif judged at TC, across a restart",
        POLICY,
        &daemon.log(),
    );
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
