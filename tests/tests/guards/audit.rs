//! The guards hold in audit mode too.

use isolator_common::verdict;

use isolator_tests::Expect;

use super::*;

/// The identity checks and guards hold in audit mode too (docs/policy.md, "Mode"): only the
/// rules between segments are audited. The same datagram with the sender's own identity
/// arrives (the twin).
#[test]
fn guards_are_enforced_in_audit_mode() {
    let env = Guards::start("guard-audit", "audit");
    let (w1, w2, w3, db) = (
        env.node("web1"),
        env.node("web2"),
        env.node("web3"),
        env.node("db1"),
    );
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");
    let before = env.scrape();
    fire_all(
        &env,
        &mut s,
        &[
            // The twin: the same path with web1's own identity arrives.
            shot(
                "web1's own MAC and address (twin)",
                w1,
                w3,
                udp4(w1, &w1.v4, w3, &w3.v4, "aud-twin"),
                Outcome::Delivered,
            ),
            shot(
                "another VM's MAC",
                w1,
                w3,
                format!(
                    "Ether(src='{}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'aud-mac')",
                    w2.mac, w3.mac, w1.v4, w3.v4
                ),
                Outcome::Dropped(verdict::SPOOFED_MAC),
            ),
            shot(
                "another VM's IPv4",
                w1,
                w3,
                udp4(w1, &w2.v4, w3, &w3.v4, "aud-ip"),
                Outcome::Dropped(verdict::SPOOFED_IP),
            ),
            shot(
                "gratuitous ARP for web2's address",
                w1,
                w3,
                format!(
                    "{}/ARP(op=1, hwsrc='{m}', psrc='{ip}', pdst='{ip}')",
                    w1.eth("ff:ff:ff:ff:ff:ff"),
                    m = w1.mac,
                    ip = w2.v4
                ),
                Outcome::Dropped(verdict::ARP_SPOOF),
            ),
            shot(
                "NA for web2's address",
                w1,
                w3,
                na(
                    w1,
                    ("ff02::1", "33:33:00:00:00:01"),
                    &w1.v6,
                    &w2.v6,
                    &w1.mac,
                ),
                Outcome::Dropped(verdict::ND_SPOOF),
            ),
            shot(
                "router advertisement",
                w1,
                w3,
                router_advertisement(w1, "fd00:1:1::"),
                Outcome::Dropped(verdict::RA_GUARD),
            ),
            shot(
                "DHCPOFFER",
                w1,
                w3,
                dhcp_offer(w1, w3),
                Outcome::Dropped(verdict::DHCP_GUARD),
            ),
            shot(
                "tag 200",
                w1,
                w3,
                format!(
                    "{}/Dot1Q(vlan=200)/IP(src='{}', dst='{}')/UDP(sport=40000, dport=9)/Raw(load=b'aud-vlan')",
                    w1.eth(&w3.mac),
                    w1.v4,
                    w3.v4
                ),
                Outcome::Dropped(verdict::VLAN),
            ),
            shot(
                "record route option",
                w1,
                w3,
                format!(
                    "{}/IP(src='{}', dst='{}', options=[IPOption_RR(routers=['0.0.0.0'])])/UDP(sport=40000, dport=9)/Raw(load=b'aud-rr')",
                    w1.eth(&w3.mac),
                    w1.v4,
                    w3.v4
                ),
                Outcome::Dropped(verdict::IP_OPTIONS),
            ),
        ],
        &mut bad,
    );
    let mid = env.scrape();
    let audits = Series::audits(&w1.vif, Dir::Ingress);
    let audited = mid
        .delta(&before, &audits)
        .unwrap_or_else(|e| panic!("{e:#}"));
    if audited != 0.0 {
        bad.push(format!(
            "guard drops were counted as audit verdicts on {}: {audits} grew by {audited}",
            w1.vif,
        ));
    }
    // Proof that the segment really is in audit mode: a cross-segment datagram is audited
    // (once, under web's labels) and passed by the sender's vif.
    let frame = s.build(&udp4(w1, &w1.v4, db, &db.v4, "aud-cross")).unwrap();
    s.send_bytes(&frame, 1).unwrap();
    let cross = Series::audit(&w1.vif, Dir::Ingress, verdict::CROSS_SEGMENT).of(TENANT, "web");
    if let Err(e) = env.daemon().expect(
        &mid,
        &Expect::new()
            .grows(cross, 1.0)
            .grows(Series::drops(&w1.vif, Dir::Ingress), 0.0),
    ) {
        bad.push(format!(
            "[control] web1 -> db1 in audit mode must be one audited cross_segment on {} and \
             no drop: the audit mode of the web segment is not in effect: {e:#}",
            w1.vif
        ));
    }
    env.verdict("guards in audit mode", &bad);
}
