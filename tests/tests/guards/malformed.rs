//! Malformed IPv4, IP options, IPv6 extension header chains (case 7).

use isolator_common::verdict;

use super::*;

/// Case 7, headers: malformed IPv4, IP options, IPv6 extension header chains.
#[test]
fn malformed_and_evasive_headers_are_dropped() {
    let env = Guards::start("guard-malformed", "enforce");
    let (w1, w3) = (env.node("web1"), env.node("web3"));
    let eth = w1.eth(&w3.mac);
    let ip = format!("src='{}', dst='{}'", w1.v4, w3.v4);
    let ip6 = format!("src='{}', dst='{}'", w1.v6, w3.v6);
    let udp = "UDP(sport=40000, dport=9)";
    let mut bad = Vec::new();
    let mut s = env.scapy("web1");
    let d = |what, expr: String, reason| shot(what, w1, w3, expr, Outcome::Dropped(reason));
    let ok = |what, expr: String| shot(what, w1, w3, expr, Outcome::Delivered);
    fire_all(
        &env,
        &mut s,
        &[
            ok("well-formed UDP (control)", format!("{eth}/IP({ip})/{udp}/Raw(load=b'mal-ok')")),
            d(
                "IPv4 header cut after 10 bytes",
                format!("Ether(src='{}', dst='{}', type=0x0800)/Raw(load=bytes(IP({ip})/{udp})[:10])", w1.mac, w3.mac),
                verdict::MALFORMED,
            ),
            d("IHL 4 (16-byte header)", format!("{eth}/IP({ip}, ihl=4)/{udp}/Raw(load=b'mal-ihl4')"), verdict::MALFORMED),
            d(
                "IHL 15, beyond the datagram",
                format!("{eth}/IP({ip}, ihl=15)/{udp}/Raw(load=b'mal-ihl15')"),
                verdict::MALFORMED,
            ),
            d(
                "IHL 15 and total length 60, beyond the frame",
                format!("{eth}/IP({ip}, ihl=15, len=60)/{udp}/Raw(load=b'mal-ihl15b')"),
                verdict::MALFORMED,
            ),
            d(
                "total length beyond the frame",
                format!("{eth}/IP({ip}, len=1000)/{udp}/Raw(load=b'mal-len1000')"),
                verdict::MALFORMED,
            ),
            d(
                "total length shorter than the header",
                format!("{eth}/IP({ip}, len=12)/{udp}/Raw(load=b'mal-len12')"),
                verdict::MALFORMED,
            ),
            d(
                "IPv4 version 6 in an IPv4 EtherType",
                format!("{eth}/IP({ip}, version=6)/{udp}/Raw(load=b'mal-ver6')"),
                verdict::MALFORMED,
            ),
            d(
                "record route option",
                format!("{eth}/IP({ip}, options=[IPOption_RR(routers=['0.0.0.0'])])/{udp}/Raw(load=b'opt-rr')"),
                verdict::IP_OPTIONS,
            )
            .times(2),
            d(
                "router alert followed by record route",
                format!(
                    "{eth}/IP({ip}, options=[IPOption_Router_Alert(), IPOption_RR(routers=['0.0.0.0'])])/{udp}/Raw(load=b'opt-ra-rr')"
                ),
                verdict::IP_OPTIONS,
            ),
            d(
                "loose source route option",
                format!("{eth}/IP({ip}, options=[IPOption_LSRR(routers=['{}'])])/{udp}/Raw(load=b'opt-lsrr')", w3.v4),
                verdict::IP_OPTIONS,
            ),
            ok(
                "a lone router alert option",
                format!("{eth}/IP({ip}, options=[IPOption_Router_Alert()])/{udp}/Raw(load=b'opt-ra')"),
            ),
            ok(
                "IPv6 with 4 extension headers",
                format!("{eth}/IPv6({ip6})/{}{udp}/Raw(load=b'ext-4')", "IPv6ExtHdrDestOpt()/".repeat(4)),
            ),
            d(
                "IPv6 with 5 extension headers",
                format!("{eth}/IPv6({ip6})/{}{udp}/Raw(load=b'ext-5')", "IPv6ExtHdrDestOpt()/".repeat(5)),
                verdict::IPV6_EXTENSIONS,
            ),
            d(
                "IPv6 with 8 extension headers",
                format!(
                    "{eth}/IPv6({ip6})/IPv6ExtHdrHopByHop()/{}IPv6ExtHdrRouting()/{udp}/Raw(load=b'ext-8')",
                    "IPv6ExtHdrDestOpt()/".repeat(6)
                ),
                verdict::IPV6_EXTENSIONS,
            ),
            d(
                "IPv6 header cut after 20 bytes",
                format!("Ether(src='{}', dst='{}', type=0x86dd)/Raw(load=bytes(IPv6({ip6})/{udp})[:20])", w1.mac, w3.mac),
                verdict::MALFORMED,
            ),
            d(
                "IPv6 payload length beyond the frame",
                format!("{eth}/IPv6({ip6}, plen=500)/{udp}/Raw(load=b'mal-plen')"),
                verdict::MALFORMED,
            ),
        ],
        &mut bad,
    );
    env.verdict("malformed and evasive headers", &bad);
}
