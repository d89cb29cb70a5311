//! The lab itself, without the daemon: the shared bridge connects every VM (so only isolator
//! can keep them apart), and the RAII guards remove every namespace and process, also when a
//! test panics or construction fails half-way. Needs root.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use isolator_tests::lab::{self, Lab};
use isolator_tests::netns::{self, pid_alive};
use isolator_tests::{ping, tcp_probe, topology};

use crate::common::capture;

fn exists(ns: &str) -> bool {
    Path::new(&netns::netns_path(ns)).exists()
        || netns::list_netns().unwrap().iter().any(|n| n == ns)
}

#[test]
fn bridge_connects_every_vm_v4_and_v6() {
    let mut lab = Lab::new("smoke").expect("build lab");
    let vms = topology::build(&mut lab).expect("add VMs");
    let mut failures = Vec::new();
    for from in &vms {
        for to in &vms {
            if from.name == to.name {
                continue;
            }
            for dst in [to.v4(), to.v6()] {
                if !ping(from, dst).unwrap() {
                    failures.push(format!("{} -> {} ({dst})", from.name, to.name));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "without isolator every VM must reach every other over the shared bridge; \
         these pings got no reply:\n  {}",
        failures.join("\n  ")
    );
    // Negative control: the ping helper does not invent replies, and one that cannot even
    // send (no route to the address) is a harness error, not "blocked".
    let a = lab.vm("acme-web1");
    for dst in ["10.1.1.99", "fd00:1:1::99"] {
        assert!(
            !ping(a, dst.parse().unwrap()).unwrap(),
            "reply from absent {dst}?"
        );
    }
    for dst in ["192.0.2.1", "2001:db8::1"] {
        // No route: the VMs have on-link routes for the lab's ranges only.
        let Err(err) = ping(a, dst.parse().unwrap()) else {
            panic!("a ping to {dst}, which acme-web1 has no route to, did not fail");
        };
        assert!(
            format!("{err:#}").contains("could not send"),
            "{dst}: {err:#}"
        );
    }
    // The same for a scan: nmap would report the ports of an unroutable target filtered.
    let err = isolator_tests::nmap::tcp_connect_scan(&a.ns, &["203.0.113.10"], &[22])
        .expect_err("a scan of 203.0.113.10, which acme-web1 has no route to, must fail");
    assert!(format!("{err:#}").contains("no route"), "{err:#}");
    // The capture sees what arrives: a ping's request at the target.
    let b = lab.vm("acme-web2");
    let (pinged, frames) = capture(&b.ns, "eth0", || ping(a, b.v4()).unwrap());
    assert!(pinged);
    assert!(
        !crate::common::about(&frames, &a.mac, b.v4()).is_empty(),
        "the echo request to {} was not captured: {frames:?}",
        b.v4()
    );
    // TCP works too (v4 and v6), across tenants: nothing but isolator separates them.
    let (a, b) = (lab.vm("acme-web1"), lab.vm("globex-db1"));
    for dst in [b.v4(), b.v6()] {
        let out = tcp_probe(&a.ns, &b.ns, dst, 8080, Duration::from_millis(1500)).unwrap();
        assert!(out.delivered(), "TCP {} -> {dst}: {out:?}", a.name);
    }
    // No VM has a default route, and no vif has a BPF program yet.
    for vm in &vms {
        for fam in ["-4", "-6"] {
            let routes = netns::ip_n(&vm.ns, &[fam, "route", "show", "default"]).unwrap();
            assert!(
                routes.trim().is_empty(),
                "{} has a default route: {routes}",
                vm.name
            );
        }
        let progs = lab.vif_programs(&vm.vif).unwrap();
        assert!(progs.is_empty(), "{}: {progs:?}", vm.vif);
        assert!(lab.vif_details(&vm.vif).unwrap().contains("master br0"));
    }
    let names: Vec<String> = lab.namespaces().to_vec();
    assert_eq!(names.len(), 1 + vms.len());
    lab.destroy().expect("destroy lab");
    for ns in &names {
        assert!(!exists(ns), "netns {ns} still exists after destroy()");
    }
}

#[test]
fn drop_removes_every_namespace_and_process() {
    let (names, pid) = {
        let mut lab = Lab::new("drop").unwrap();
        lab.add_vm("a", "va", &["10.9.0.2/24"]).unwrap();
        lab.add_vm("b", "vb", &["fd00:9::2/64"]).unwrap();
        // A long-running process inside a VM namespace, not tracked by the lab: the guard must
        // kill it too (it kills whatever lives in its namespaces).
        let mut sleeper = lab.nsenter(&lab.vm("a").ns, "sleep");
        sleeper.arg("600");
        let child = sleeper.spawn().unwrap();
        let pid = child.id() as i32;
        std::mem::forget(child); // deliberately leaked; the lab must kill it
        for ns in lab.namespaces() {
            assert!(exists(ns), "netns {ns} missing while the lab lives");
        }
        (lab.namespaces().to_vec(), pid)
    };
    for ns in &names {
        assert!(
            !exists(ns),
            "netns {ns} still exists after the lab was dropped"
        );
    }
    // The process was killed (a zombie until reaped: check its state, then reap it).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "process {pid} in a lab namespace survived the lab: {state}"
    );
    // SAFETY: reaping our own child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    assert!(!pid_alive(pid));
}

#[test]
fn panicking_test_body_still_removes_namespaces() {
    let names: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let tracked_pid: Mutex<Option<u32>> = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let mut lab = Lab::new("panic").unwrap();
        lab.add_vm("a", "va", &["10.9.0.2/24", "fd00:9::2/64"])
            .unwrap();
        lab.add_vm("b", "vb", &["10.9.0.3/24", "fd00:9::3/64"])
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.vm("b").ns, "sleep", "600"]);
        *tracked_pid.lock().unwrap() = Some(lab.spawn(cmd).unwrap());
        *names.lock().unwrap() = lab.namespaces().to_vec();
        panic!("deliberate panic inside a lab");
    });
    assert!(result.is_err(), "the closure must have panicked");
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3);
    for ns in &names {
        assert!(!exists(ns), "netns {ns} survived a panic in the test body");
    }
    let pid = tracked_pid.into_inner().unwrap().unwrap();
    assert!(
        !pid_alive(pid as i32),
        "tracked child {pid} survived the panic"
    );
}

#[test]
fn half_built_lab_is_removed() {
    let mut lab = Lab::new("half").unwrap();
    lab.add_vm("a", "va", &["10.9.0.2/24"]).unwrap();
    // The VM namespace is created, then the veth cannot be: its name is the bridge's.
    let err = lab
        .add_vm("b", lab::BRIDGE, &["10.9.0.3/24"])
        .expect_err("a vif called like the bridge must fail");
    assert!(format!("{err:#}").contains("VM b"), "{err:#}");
    // Bad input is rejected before anything is created.
    assert!(lab.add_vm("c", "a-vif-name-too-long", &[]).is_err());
    assert!(lab.add_vm("d", "vd", &["10.9.0.4"]).is_err());
    let names = lab.namespaces().to_vec();
    assert_eq!(names.len(), 3, "host, a, and the half-built b: {names:?}");
    drop(lab);
    for ns in &names {
        assert!(!exists(ns), "netns {ns} survived a failed construction");
    }
}

#[test]
fn labs_in_parallel_get_unique_names() {
    let labs: Vec<Lab> = (0..3)
        .map(|i| Lab::new(&format!("par{i}")).unwrap())
        .collect();
    let mut all: Vec<&str> = labs.iter().map(|l| l.host_ns()).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3);
    for l in &labs {
        assert!(l.host_ns().starts_with(lab::NS_PREFIX));
        assert!(l.host_ns().len() <= 24, "keep names short: {}", l.host_ns());
    }
}
