//! What a well-behaved VM's own stack does keeps working through the guards (case 8).

use super::*;

/// Case 8: what a well-behaved VM's own stack does keeps working through the guards: DHCP
/// discovery, duplicate address detection, ARP and neighbour discovery, link-local.
#[test]
fn legitimate_traffic_keeps_working() {
    let env = Guards::start("guard-legit", "enforce");
    let (w1, w2, w3, gw1, gw2) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("gw1"),
        env.node("gw2"),
    );
    let watched = [w1, w2, w3, gw1, gw2];
    let before = env.scrape();
    let mut bad = Vec::new();

    // DHCP discovery reaches the segment's DHCP server VM.
    let mut sc = env.scapy("gw2");
    bad.extend(
        shot(
            "DHCPDISCOVER to the segment's server",
            gw2,
            gw1,
            dhcp_discover(gw2),
            Outcome::Delivered,
        )
        .fire(&env, &mut sc)
        .0,
    );
    drop(sc);

    // ARP and IPv4 within the segment, from empty neighbour caches.
    for n in [w1, w2, w3] {
        ip_n(&n.ns, &["neigh", "flush", "dev", "eth0"]).unwrap();
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        if !ping(&a.vm(), b.v4.parse().unwrap()).unwrap() {
            bad.push(format!(
                "ping {} -> {} ({}) after flushing the ARP caches failed",
                a.name, b.name, b.v4
            ));
        }
        if neigh_mac(&a.ns, &b.v4).as_deref() != Some(b.mac.as_str()) {
            bad.push(format!(
                "{} resolved {} to {:?}, expected {}",
                a.name,
                b.v4,
                neigh_mac(&a.ns, &b.v4),
                b.mac
            ));
        }
    }
    // IPv6 neighbour discovery, global and link-local.
    for n in [w1, w2, w3] {
        ip_n(&n.ns, &["-6", "neigh", "flush", "dev", "eth0"]).unwrap();
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        let ok = ping_count(
            &a.ns,
            b.v6.parse().unwrap(),
            1,
            Duration::ZERO,
            Duration::from_secs(2),
        )
        .unwrap()
            == 1;
        if !ok {
            bad.push(format!(
                "ping6 {} -> {} ({}) after flushing the neighbour caches failed",
                a.name, b.name, b.v6
            ));
        }
    }
    for (a, b) in [(w1, w2), (w2, w1), (w3, w1)] {
        let target = format!("{}%eth0", b.ll);
        let out = env
            .lab()
            .exec(&a.ns, &["ping", "-6", "-c", "1", "-W", "2", &target])
            .unwrap();
        if !out.status.success() {
            bad.push(format!(
                "link-local ping {} -> {} ({target}) failed: {}{}",
                a.name,
                b.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    // Duplicate address detection: web2 adds an address WITH DAD. Its solicitation from ::
    // reaches web3 and the address becomes valid; an address web3 already holds fails DAD,
    // which needs web3's answer to come back through the guard too.
    sysctl(&w2.ns, "net.ipv6.conf.eth0.accept_dad", "1").unwrap();
    let fresh = "fd00:1:1::22";
    let cap = Capture::start(&w3.ns, "eth0").unwrap();
    ip_n(
        &w2.ns,
        &["-6", "addr", "add", &format!("{fresh}/64"), "dev", "eth0"],
    )
    .unwrap();
    let state = wait_dad(&w2.ns, fresh);
    let frames = cap.stop().unwrap();
    if state != "valid" {
        bad.push(format!("DAD of {fresh} on web2 did not complete: {state}"));
    }
    let (_, group_mac) = solicited_node(fresh);
    let fresh_ip: Ipv6Addr = fresh.parse().unwrap();
    let saw_ns = frames.iter().any(|f| {
        f.len() >= 78
            && fmt_mac(&f[0..6]) == group_mac
            && fmt_mac(&f[6..12]) == w2.mac
            && f[22..38] == [0u8; 16]
            && f[54] == 135
            && f[62..78] == fresh_ip.octets()
    });
    if !saw_ns {
        bad.push(format!(
            "web3 never received web2's DAD solicitation from :: for {fresh}; it got:\n  {}",
            frames
                .iter()
                .map(|f| describe(f))
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    ip_n(
        &w2.ns,
        &["-6", "addr", "add", &format!("{}/64", w3.v6), "dev", "eth0"],
    )
    .unwrap();
    let state = wait_dad(&w2.ns, &w3.v6);
    if state != "dadfailed" {
        bad.push(format!(
            "web2 added web3's address {} with DAD: expected `dadfailed` (web3 defends it), got {state}",
            w3.v6
        ));
    }
    let _ = ip_n(
        &w2.ns,
        &["-6", "addr", "del", &format!("{}/64", w3.v6), "dev", "eth0"],
    );

    // None of this was dropped anywhere on ingress.
    let after = env.scrape();
    for n in watched {
        let d = delta(
            &ingress_drops(&before, &n.vif),
            &ingress_drops(&after, &n.vif),
        );
        if !d.is_empty() {
            bad.push(format!(
                "legitimate traffic was dropped at {} (ingress): {}",
                n.vif,
                fmt_delta(&d)
            ));
        }
    }
    env.verdict("legitimate traffic", &bad);
}

/// Waits up to 5 s for DAD of `addr` on eth0 in `ns`: "valid", "dadfailed", or what it
/// last looked like.
fn wait_dad(ns: &str, addr: &str) -> String {
    let outcome = poll("DAD", Duration::from_secs(5), || {
        let out = ip_n(ns, &["-6", "-o", "addr", "show", "dev", "eth0"])?;
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {addr}/")))
            .unwrap_or("")
            .to_string();
        Ok(if line.contains("dadfailed") {
            Ok("dadfailed".to_string())
        } else if !line.is_empty() && !line.contains("tentative") {
            Ok("valid".to_string())
        } else {
            Err(format!("still {line:?}"))
        })
    });
    outcome.unwrap_or_else(|e| format!("{e:#}"))
}
