//! `isolator verify` (issue 10, points 1 and 2) and `isolator explain` (point 5), run beside
//! a daemon in the lab's host namespace with the daemon's state directory: a clean lab
//! verifies clean; a program detached by hand, a foreign XDP program, an unmanaged veth
//! on the tenant bridge and a map entry changed behind the daemon's back are each
//! reported; a missing policy interface is a warning; explain names the deciding entries.

use std::path::PathBuf;
use std::process::Output;

use isolator_tests::failclosed_lab::quiet_lab;
use isolator_tests::lab::BRIDGE;
use isolator_tests::netns::{in_netns, ip_n};
use isolator_tests::rawbpf::{
    attach_xdp_link, detach_pinned_link, load_xdp, map_lookup, map_update, obj_get,
    xdp_pass_program,
};
use isolator_tests::{Env, Lab, isolator_bin};
use serde_json::Value;

/// web and app of acme, and db of globex; a flow web -> app on TCP 8080; vvfy-gone is
/// named but never created.
const POLICY: &str = r#"version: 1
tenants:
  - name: acme
    flows:
      - {from: web, to: app, protocol: tcp, ports: 8080}
    segments:
      - name: web
        interfaces: ["vvfy-web*"]
        prefixes: [10.1.1.0/24]
      - name: app
        interfaces: ["vvfy-app*", "vvfy-gone"]
        prefixes: [10.1.2.0/24]
  - name: globex
    segments:
      - name: db
        interfaces: ["vvfy-db*"]
        prefixes: [10.2.1.0/24]
"#;

fn lab(hint: &str) -> Env {
    let (lab, _) = quiet_lab(
        hint,
        &[
            ("web1", "vvfy-web1", "10.1.1.2/24"),
            ("app1", "vvfy-app1", "10.1.2.2/24"),
            ("db1", "vvfy-db1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    Env::start(lab, POLICY).unwrap_or_else(|e| panic!("{e:#}"))
}

/// web1 and app1, with a daemon verifying the host every second.
fn verifying_daemon(hint: &str) -> Env {
    let (lab, _) = quiet_lab(
        hint,
        &[
            ("web1", "vvfy-web1", "10.1.1.2/24"),
            ("app1", "vvfy-app1", "10.1.2.2/24"),
        ],
        &[],
    )
    .expect("lab");
    Env::start_args(lab, POLICY, &["--verify-interval", "1"]).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `isolator ARGS` in the lab's host namespace.
fn isolator(env: &Env, args: &[&str]) -> Output {
    let bin = isolator_bin().unwrap_or_else(|e| panic!("{e:#}"));
    env.lab()
        .nsenter_host(&bin)
        .args(args)
        .output()
        .expect("running isolator")
}

fn state_dir(lab: &Lab) -> PathBuf {
    lab.state_dir().expect("state dir")
}

/// `isolator verify --config … --state-dir … [--json]`: its exit code and output.
fn verify(env: &Env, json: bool) -> (i32, String) {
    let config = env.config().to_string_lossy().into_owned();
    let state = state_dir(env.lab()).to_string_lossy().into_owned();
    let mut args = vec!["verify", "--config", &config, "--state-dir", &state];
    if json {
        args.push("--json");
    }
    let out = isolator(env, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A finding as (severity, kind, objects).
type Found = (String, String, Vec<String>);

/// The JSON report's findings.
fn findings(env: &Env) -> (i32, Vec<Found>, Value) {
    let (code, text) = verify(env, true);
    let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let list = json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            (
                f["severity"].as_str().expect("severity").to_string(),
                f["kind"].as_str().expect("kind").to_string(),
                f["objects"]
                    .as_array()
                    .expect("objects")
                    .iter()
                    .map(|o| o.as_str().expect("object").to_string())
                    .collect(),
            )
        })
        .collect();
    (code, list, json)
}

fn violations(list: &[Found]) -> Vec<(String, Vec<String>)> {
    list.iter()
        .filter(|(s, _, _)| s == "violation")
        .map(|(_, k, o)| (k.clone(), o.clone()))
        .collect()
}

fn ifindex(lab: &Lab, name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("name");
    in_netns(lab.host_ns(), || {
        // SAFETY: a valid NUL-terminated name.
        Ok(unsafe { libc::if_nametoindex(c.as_ptr()) })
    })
    .expect("ifindex")
}

/// Changes web1's entry in the daemon's pinned `VIFS` and `VIF_SLOTS` maps behind its
/// back, in the generation in force: web1 moved into segment 1 (app). Returns web1's
/// ifindex.
fn move_web1_into_app(env: &Env) -> u32 {
    move_web1_into_app_in(env, false)
}

/// [`move_web1_into_app`] in the generation in force, or (`other`) in the other one.
fn move_web1_into_app_in(env: &Env, other: bool) -> u32 {
    let web = ifindex(env.lab(), "vvfy-web1");
    let map_dir = state_dir(env.lab()).join(format!("maps-v{}", isolator_common::STATE_LAYOUT));
    let policy_dir = std::fs::read_dir(&map_dir)
        .expect("map dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("policy-"))
        .expect("a policy map directory")
        .path();
    let config = obj_get(&policy_dir.join("CONFIG")).unwrap_or_else(|e| panic!("{e:#}"));
    let mut generation = map_lookup(&config, &0u32.to_ne_bytes(), 4)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("CONFIG[0]");
    if other {
        generation[0] ^= 1;
    }
    let vifs = obj_get(&policy_dir.join("VIFS")).unwrap_or_else(|e| panic!("{e:#}"));
    // VifKey { generation, ifindex } => VifInfo { segment, … }.
    let key = [&generation[..], &web.to_ne_bytes()[..]].concat();
    let mut value = map_lookup(&vifs, &key, size_of::<isolator_common::VifInfo>())
        .unwrap_or_else(|e| panic!("{e:#}"))
        .expect("web1's entry");
    value[0..4].copy_from_slice(&1u32.to_ne_bytes());
    map_update(&vifs, &key, &value).expect("changing the entry");
    // The programs find web1 in VIF_SLOTS (its ifindex is small): the same change there.
    let generation = u32::from_ne_bytes(generation[..4].try_into().expect("4 bytes"));
    let slot = isolator_common::vif_slot(generation, web).expect("web1 has a slot");
    let slots = obj_get(&policy_dir.join("VIF_SLOTS")).unwrap_or_else(|e| panic!("{e:#}"));
    map_update(&slots, &slot.to_ne_bytes(), &value).expect("changing the slot");
    web
}

#[test]
fn a_clean_lab_verifies_clean_with_a_warning_for_the_missing_interface() {
    let env = lab("vfy-clean");
    let (code, text) = verify(&env, false);
    println!("{text}");
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("vvfy-web1") && text.contains("isolator_egress"),
        "the inventory lists the vifs and their programs:\n{text}"
    );
    assert!(
        text.contains("warning[missing_interface] vvfy-gone"),
        "{text}"
    );
    let (code, list, json) = findings(&env);
    assert_eq!(code, 0);
    assert_eq!(
        list,
        vec![(
            "warning".to_string(),
            "missing_interface".to_string(),
            vec!["vvfy-gone".to_string()]
        )]
    );
    assert_eq!(json["generation"], 1);
    let links = json["inventory"]["links"].as_array().expect("links");
    let web = links
        .iter()
        .find(|l| l["name"] == "vvfy-web1")
        .expect("web1 inventoried");
    assert_eq!(web["kind"], "veth");
    assert!(web["xdp"].as_u64().is_some(), "{web}");
    assert_eq!(web["tcx_egress"].as_array().map(Vec::len), Some(1), "{web}");
    assert!(
        web["link_netnsid"].as_i64().is_some(),
        "the peer's namespace: {web}"
    );

    // Without the daemon's state it could not look.
    let config = env.config().to_string_lossy().into_owned();
    let out = isolator(
        &env,
        &["verify", "--config", &config, "--state-dir", "/nonexistent"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_xdp_program_detached_by_hand_is_reported() {
    let env = lab("vfy-detach");
    let web = ifindex(env.lab(), "vvfy-web1");
    detach_pinned_link(&state_dir(env.lab()).join(format!("links/{web}-xdp")))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let (code, list, _) = findings(&env);
    assert_eq!(code, 1, "{list:?}");
    let found = violations(&list);
    assert!(
        found.contains(&("not_enforced".to_string(), vec!["vvfy-web1".to_string()])),
        "{found:?}"
    );
    // The bridge joins three segments, one port unjudged.
    assert!(
        found
            .iter()
            .any(|(k, o)| k == "shared_l2_unenforced" && o.contains(&"vvfy-web1".to_string())),
        "{found:?}"
    );
}

#[test]
fn a_foreign_xdp_program_on_a_vif_is_reported() {
    let env = lab("vfy-foreign");
    let app = ifindex(env.lab(), "vvfy-app1");
    detach_pinned_link(&state_dir(env.lab()).join(format!("links/{app}-xdp")))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let _foreign = in_netns(env.lab().host_ns(), || {
        let prog = load_xdp(&xdp_pass_program(), "a foreign XDP program")?;
        attach_xdp_link(&prog, "vvfy-app1", "a foreign XDP program")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (code, list, _) = findings(&env);
    assert_eq!(code, 1, "{list:?}");
    assert!(
        violations(&list).contains(&("foreign_program".to_string(), vec!["vvfy-app1".to_string()])),
        "{list:?}"
    );
}

#[test]
fn an_unmanaged_veth_on_the_tenant_bridge_is_reported() {
    let env = lab("vfy-stray");
    let host = env.lab().host_ns().to_string();
    ip_n(
        &host,
        &[
            "link",
            "add",
            "vfy-stray",
            "type",
            "veth",
            "peer",
            "name",
            "vfy-stray-p",
        ],
    )
    .expect("veth");
    ip_n(&host, &["link", "set", "vfy-stray", "master", BRIDGE]).expect("on the bridge");
    println!("{}", verify(&env, false).1);
    let (code, list, _) = findings(&env);
    assert_eq!(code, 1, "{list:?}");
    let found = violations(&list);
    assert!(
        found.contains(&(
            "unmanaged_port".to_string(),
            vec!["vfy-stray".to_string(), BRIDGE.to_string()]
        )),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(k, o)| k == "shared_l2_unenforced" && o.contains(&"vfy-stray".to_string())),
        "{found:?}"
    );
}

#[test]
fn a_map_entry_changed_behind_the_daemons_back_is_reported() {
    let env = lab("vfy-drift");
    let web = move_web1_into_app(&env);
    let (code, list, json) = findings(&env);
    assert_eq!(code, 1, "{list:?}");
    assert!(
        violations(&list).contains(&("map_drift".to_string(), vec!["VIFS".to_string()])),
        "{list:?}"
    );
    assert!(
        violations(&list).contains(&("map_drift".to_string(), vec!["VIF_SLOTS".to_string()])),
        "{list:?}"
    );
    let detail = json["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "map_drift")
        .and_then(|f| f["detail"].as_str())
        .expect("detail")
        .to_string();
    assert!(
        detail.contains(&format!("ifindex: {web}")) && detail.contains("expected"),
        "{detail}"
    );
}

/// A reload changes only what differs from the policy the generation not in force holds.
/// A change made there behind the daemon's back is found by the daemon's own
/// verification, and the next reload then reads that generation from the kernel and
/// rewrites what differs: nothing of the change comes into force. A reload that built on the changed generation would put web1 into
/// app (and `isolator verify` would then find the drift in force); one that was never
/// told of the change would not count it.
#[test]
fn a_change_to_the_generation_not_in_force_is_found_and_not_built_on() {
    use isolator_tests::Series;
    use isolator_tests::metrics::{TOPOLOGY_VIOLATIONS, poll};
    let env = verifying_daemon("vfy-other");
    // After a reload both generations hold the policy.
    env.reload(POLICY, true).unwrap_or_else(|e| panic!("{e:#}"));
    let drift = Series::new(TOPOLOGY_VIOLATIONS, &[("kind", "map_drift")]);
    let wait_for = |what: &str, n: f64| {
        poll(what, std::time::Duration::from_secs(15), || {
            let v = env.daemon().scrape()?.value(&drift).unwrap_or(-1.0);
            Ok(if v == n {
                Ok(())
            } else {
                Err(format!("map_drift {v}"))
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.daemon().log()))
    };
    wait_for("the first verification", 0.0);
    let web = move_web1_into_app_in(&env, true);
    // VIFS and VIF_SLOTS.
    wait_for("the change in the other generation", 2.0);
    let log = env.daemon().log();
    assert!(
        log.contains("generation not in force") && log.contains(&format!("ifindex: {web}")),
        "the daemon names the generation and the entry:\n{log}"
    );
    env.reload(POLICY, true).unwrap_or_else(|e| panic!("{e:#}"));
    let (_, list, _) = findings(&env);
    assert!(
        !list.iter().any(|(_, kind, _)| kind == "map_drift"),
        "the reload rewrote what differs: nothing of the change is in force: {list:?}"
    );
    wait_for("the drift resolved", 0.0);
}

/// `isolator explain ARGS --config … --state-dir …`: exit code, stdout, stderr.
fn explain(env: &Env, args: &[&str]) -> (i32, String, String) {
    let config = env.config().to_string_lossy().into_owned();
    let state = state_dir(env.lab()).to_string_lossy().into_owned();
    let mut all = vec!["explain", "--config", &config, "--state-dir", &state];
    all.extend_from_slice(args);
    let out = isolator(env, &all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn explain_names_the_deciding_entries_and_says_when_the_kernel_disagrees() {
    let env = lab("vfy-explain");
    let config = env.config().to_string_lossy().into_owned();

    // Across tenants: dropped at web1's ingress, for the two segments (POLICY's lines 7
    // and 15).
    let (code, out, err) = explain(
        &env,
        &[
            "--from",
            "vvfy-web1",
            "--to",
            "10.2.1.2",
            "--proto",
            "tcp",
            "--port",
            "443",
        ],
    );
    println!("{out}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: drop cross_tenant"), "{out}");
    assert!(
        out.contains(&format!("{config}:7: segment acme/web")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{config}:15: segment globex/db")),
        "{out}"
    );

    // A flow: passes both programs, the flow (line 5) named at each.
    let (code, out, err) = explain(
        &env,
        &[
            "--from", "10.1.1.2", "--to", "10.1.2.2", "--port", "8080", "--json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let json: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["verdict"], "pass", "{json}");
    assert_eq!(json["disagree"], false, "{json}");
    let steps = json["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "ingress at web1, egress at app1: {json}");
    let flow = format!("{config}:5: flow acme/web -> acme/app: tcp 8080");
    for (step, (direction, device)) in steps
        .iter()
        .zip([("ingress", "vvfy-web1"), ("egress", "vvfy-app1")])
    {
        assert_eq!(step["direction"], direction, "{step}");
        assert_eq!(step["device"], device, "{step}");
        assert_eq!(step["live"], "pass", "{step}");
        assert_eq!(step["agree"], true, "{step}");
        let cited: Vec<&str> = step["decided_by"]
            .as_array()
            .expect("decided_by")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(cited, [flow.as_str()], "{step}");
    }
    // Another port of app: the flow does not admit it (the same frame as a hex dump).
    let hex = json["frame"]
        .as_str()
        .expect("hex")
        .replacen("1f90", "1f91", 1);
    let (code, out, err) = explain(&env, &["--from", "vvfy-web1", "--hex", &hex]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: drop cross_segment"), "{out}");

    // web1's entry changed behind the daemon's back (it now claims app's segment): the
    // live program passes what the policy drops, and explain says so.
    move_web1_into_app(&env);
    let (code, out, err) = explain(
        &env,
        &["--from", "vvfy-web1", "--to", "10.1.2.2", "--port", "443"],
    );
    println!("{out}{err}");
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("DISAGREEMENT"), "{err}");
    assert!(out.contains("DISAGREES"), "{out}");
}

/// The policy of the matrix tests: POLICY's segments (app still segment 1) with IPv6
/// prefixes for web and app, app's 10.1.2.2 exposed on TCP 443, web's egress denied, and a
/// management prefix.
const MATRIX_POLICY: &str = r#"version: 1
management:
  - prefix: 192.168.200.0/24
tenants:
  - name: acme
    flows:
      - {from: web, to: app, protocol: tcp, ports: 8080}
    segments:
      - name: web
        interfaces: ["vvfy-web*"]
        prefixes: [10.1.1.0/24, "fd00:1:1::/64"]
        egress: deny
      - name: app
        interfaces: ["vvfy-app*"]
        prefixes: [10.1.2.0/24, "fd00:1:2::/64"]
        expose:
          - {address: 10.1.2.2, protocol: tcp, ports: 443}
  - name: globex
    segments:
      - name: db
        interfaces: ["vvfy-db*"]
        prefixes: [10.2.1.0/24]
"#;

/// `isolator verify --matrix`: exit code, stdout, stderr, and with `json` the object.
fn verify_matrix(env: &Env, json: bool) -> (i32, String, String, Value) {
    let config = env.config().to_string_lossy().into_owned();
    let state = state_dir(env.lab()).to_string_lossy().into_owned();
    let mut args = vec![
        "verify",
        "--matrix",
        "--config",
        &config,
        "--state-dir",
        &state,
    ];
    if json {
        args.push("--json");
    }
    let out = isolator(env, &args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let value = if json {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"))
    } else {
        Value::Null
    };
    (out.status.code().unwrap_or(-1), stdout, stderr, value)
}

/// The matrix's cell `from -> to`.
fn cell<'a>(json: &'a Value, from: &str, to: &str) -> &'a Value {
    json["matrix"]["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .find(|c| c["from"] == from && c["to"] == to)
        .unwrap_or_else(|| panic!("no cell {from} -> {to}"))
}

fn list<'a>(cell: &'a Value, key: &str) -> Vec<&'a str> {
    cell[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key}: {cell}"))
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

/// Issue 10, point 3: the live reachability matrix beside the policy's. On a clean lab
/// they agree everywhere: the flow's service and the exposure pass, an unexposed port,
/// other tenants, management and (web's egress being denied) outside are dropped. With
/// web1's `VIFS` entry moved into app behind the daemon's back, the attached programs pass
/// what the policy drops between web and app, and the matrix says so, with exit 1.
#[test]
fn the_live_reachability_matrix_agrees_with_the_policy_until_a_map_is_changed() {
    let (lab, _) = quiet_lab(
        "vfy-matrix",
        &[
            ("web1", "vvfy-web1", "10.1.1.2/24"),
            ("app1", "vvfy-app1", "10.1.2.2/24"),
            ("db1", "vvfy-db1", "10.2.1.2/24"),
        ],
        &[],
    )
    .expect("lab");
    let env = Env::start(lab, MATRIX_POLICY).unwrap_or_else(|e| panic!("{e:#}"));

    let (code, out, err, _) = verify_matrix(&env, false);
    println!("{out}{err}");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reachability, live"), "{out}");
    assert!(out.contains("reachability, policy"), "{out}");
    assert!(out.contains("0 of "), "no probe disagrees: {out}");
    assert!(!out.contains("disagreements:"), "{out}");

    let (code, out, err, json) = verify_matrix(&env, true);
    assert_eq!(code, 0, "{out}{err}");
    let m = &json["matrix"];
    assert_eq!(m["disagreements"], 0, "{m}");
    assert!(m["probes"].as_u64().is_some_and(|n| n > 20), "{m}");
    assert_eq!(
        m["rows"],
        serde_json::json!(["acme/web", "acme/app", "globex/db", "outside"])
    );
    assert_eq!(
        m["columns"],
        serde_json::json!(["acme/web", "acme/app", "globex/db", "management", "outside"])
    );
    for c in m["cells"].as_array().expect("cells") {
        assert_eq!(c["agree"], true, "{c}");
        assert_eq!(c["live"], c["model"], "{c}");
    }
    // web -> app: the flow (both families) and the exposure pass; what neither admits
    // does not, and each probe says why.
    let web_app = cell(&json, "acme/web", "acme/app");
    assert_eq!(list(web_app, "live"), ["tcp/443", "tcp/8080"], "{web_app}");
    let probes = web_app["probes"].as_array().expect("probes");
    let tcp9 = probes
        .iter()
        .find(|p| p["service"] == "tcp/9" && p["family"] == "ipv4")
        .expect("a TCP sample");
    assert_eq!(tcp9["why"], "not_allowed");
    assert_eq!(tcp9["live"], "drop cross_segment", "{tcp9}");
    assert_eq!(tcp9["model"], "drop cross_segment", "{tcp9}");
    let flow = probes
        .iter()
        .find(|p| p["service"] == "tcp/8080" && p["family"] == "ipv6")
        .expect("the flow over IPv6");
    let steps: Vec<&str> = flow["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["device"].as_str().expect("device"))
        .collect();
    assert_eq!(
        steps,
        ["vvfy-web1", "vvfy-app1"],
        "ingress, then egress: {flow}"
    );
    // Across tenants, to management and (denied) outside: nothing.
    for to in ["globex/db", "management", "outside"] {
        let c = cell(&json, "acme/web", to);
        assert_eq!(c["status"], "probed", "{c}");
        assert!(list(c, "live").is_empty(), "{c}");
        assert!(!c["probes"].as_array().expect("probes").is_empty(), "{c}");
    }
    let management = cell(&json, "acme/web", "management");
    assert!(
        management["probes"]
            .as_array()
            .expect("probes")
            .iter()
            .all(|p| p["live"] == "drop management"),
        "{management}"
    );
    // app's egress is allowed; from outside only the exposure passes.
    assert_eq!(
        list(cell(&json, "acme/app", "outside"), "live"),
        ["tcp/443", "udp/53", "icmp"]
    );
    assert_eq!(
        list(cell(&json, "outside", "acme/app"), "live"),
        ["tcp/443"]
    );
    assert_eq!(cell(&json, "outside", "management")["status"], "not_judged");

    // web1 moved into app behind the daemon's back: its source guard now takes web's
    // addresses for spoofed ones, and the live programs drop what the policy lets web
    // send (the flow, the exposure, egress to app's... ), which the matrix says.
    move_web1_into_app(&env);
    let (code, out, err, _) = verify_matrix(&env, false);
    println!("{out}{err}");
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("disagreements:"), "{out}");
    assert!(
        out.contains("! acme/web -> acme/app: tcp/8080 10.1.1.1 -> 10.1.2.1 (flow)"),
        "{out}"
    );
    assert!(
        out.contains("live drop spoofed_ip, model pass  <-- DISAGREES"),
        "{out}"
    );
    assert!(err.contains("DISAGREEMENT"), "{err}");
    let (code, out, err, json) = verify_matrix(&env, true);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        json["matrix"]["disagreements"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{}",
        json["matrix"]
    );
    let web_app = cell(&json, "acme/web", "acme/app");
    assert_eq!(web_app["agree"], false, "{web_app}");
    assert!(list(web_app, "live").is_empty(), "{web_app}");
    assert_eq!(list(web_app, "model"), ["tcp/443", "tcp/8080"], "{web_app}");
    let flow = web_app["probes"]
        .as_array()
        .expect("probes")
        .iter()
        .find(|p| p["service"] == "tcp/8080" && p["family"] == "ipv4")
        .expect("the flow's probe");
    assert_eq!(flow["agree"], false, "{flow}");
    assert_eq!(flow["live"], "drop spoofed_ip", "{flow}");
    assert_eq!(flow["model"], "pass", "{flow}");
    // What app itself sends is judged as before.
    assert_eq!(cell(&json, "acme/app", "outside")["agree"], true);
}

/// The daemon verifies the host itself (issue 10, point 4): at start, after every change
/// of interfaces and every `--verify-interval`; each new finding is logged and on record
/// once, each that goes away too; the metrics count them by kind.
#[test]
fn the_daemon_verifies_after_each_change_and_records_new_and_resolved_findings() {
    use isolator_tests::Series;
    use isolator_tests::metrics::{LAST_VERIFY, TOPOLOGY_VIOLATIONS, poll};
    let env = verifying_daemon("vfy-auto");
    let kind = |k: &'static str| Series::new(TOPOLOGY_VIOLATIONS, &[("kind", k)]);
    let wait_for = |what: &str, k: &'static str, n: f64| {
        poll(what, std::time::Duration::from_secs(15), || {
            let m = env.daemon().scrape()?;
            let last = m.value(&Series::new(LAST_VERIFY, &[]))?;
            // Until the first verification has finished, the kinds have no series yet.
            let Ok(v) = m.value(&kind(k)) else {
                return Ok(Err(format!("no {k} series yet, last verify {last}")));
            };
            Ok(if v == n && last > 0.0 {
                Ok(())
            } else {
                Err(format!("{k} {v}, last verify {last}"))
            })
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.daemon().log()))
    };
    wait_for("the first verification", "missing_interface", 1.0);
    let m = env.daemon().scrape().expect("scrape");
    for k in [
        "not_enforced",
        "unmanaged_port",
        "map_drift",
        "foreign_program",
    ] {
        assert_eq!(
            m.value(&kind(k)).expect("series"),
            0.0,
            "{k} on a clean lab"
        );
    }

    // A stray veth on the tenant bridge: found after the link event.
    let host = env.lab().host_ns().to_string();
    ip_n(
        &host,
        &[
            "link",
            "add",
            "vfy-auto-x",
            "type",
            "veth",
            "peer",
            "name",
            "vfy-auto-xp",
        ],
    )
    .expect("veth");
    ip_n(&host, &["link", "set", "vfy-auto-x", "master", BRIDGE]).expect("on the bridge");
    wait_for("the stray port", "unmanaged_port", 1.0);
    // Several periodic verifications later it is still on record once.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let audit = env.daemon().log_path().with_file_name("audit.jsonl");
    let records = || -> Vec<Value> {
        std::fs::read_to_string(&audit)
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect()
    };
    let about = |r: &Value, kind: &str| {
        r["kind"] == kind
            && r["objects"]
                .as_array()
                .is_some_and(|o| o.iter().any(|x| x == "vfy-auto-x"))
    };
    let found = records()
        .iter()
        .filter(|r| about(r, "topology_violation"))
        .count();
    assert_eq!(
        found, 2,
        "unmanaged_port and shared_l2_unenforced, each once"
    );
    assert!(
        env.daemon().log().matches("topology: ").count() >= 2,
        "each new finding is logged: {}",
        env.daemon().log()
    );

    // It goes: resolved, on record.
    ip_n(&host, &["link", "del", "vfy-auto-x"]).expect("del");
    wait_for("the stray port gone", "unmanaged_port", 0.0);
    assert!(
        records().iter().any(|r| about(r, "topology_resolved")),
        "the resolution is on record"
    );
}

/// New links that come while `isolator verify` looks (a burst of VMs: the daemon attaches
/// to each and adds its entries within milliseconds) are no drift of the maps and no
/// unenforced interface: a look during which the host's links changed looks again, and
/// at the last look leaves them to the next verification. Links come every 15 ms here,
/// so every look overlaps one; a verification that compared the maps with the plan of
/// another moment reports `map_drift` (and the daemon's own would read its maps again).
#[test]
fn links_that_come_while_verifying_are_no_drift() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let env = lab("vfy-churn");
    let host = env.lab().host_ns().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) && k < 400 {
                let (name, peer) = (format!("vvfy-web{}", 100 + k), format!("vfc{k}"));
                ip_n(
                    &host,
                    &[
                        "link", "add", "name", &name, "type", "veth", "peer", "name", &peer,
                    ],
                )
                .expect("a new vif");
                k += 1;
                std::thread::sleep(std::time::Duration::from_millis(15));
            }
            k
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (_, list, _) = findings(&env);
    stop.store(true, Ordering::Relaxed);
    let created = churn.join().expect("churn");
    let churned: Vec<&Found> = list
        .iter()
        .filter(|(_, kind, _)| kind == "map_drift" || kind == "not_enforced")
        .collect();
    assert!(
        churned.is_empty(),
        "{created} links came while verifying; reported: {churned:?}"
    );
    // Once the links stop coming, the daemon's maps match the policy.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (_, list, _) = findings(&env);
    assert!(
        list.iter()
            .all(|(_, kind, _)| kind != "map_drift" && kind != "not_enforced"),
        "after the churn: {list:?}"
    );
}
