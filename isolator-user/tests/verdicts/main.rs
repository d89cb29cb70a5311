//! Verdict tables run through BPF_PROG_TEST_RUN (aya's `TestRun`): one test binary, one
//! table file per feature, one generic runner ([`fixture`]). Needs root.
//!
//! | module   | what                                                                  |
//! |----------|-----------------------------------------------------------------------|
//! | `basic`  | segments and tenants apart, parse errors, fail closed, swaps, pins    |
//! | `guards` | source and layer-2 guards (I2), malformed and evasive frames, fragments|
//! | `policy` | management, exposures, flows, egress, audit, connection tracking      |
//! | `conntrack`| UDP conversations, ICMP echo, FIN closing, idle timeouts and the sweep |
//! | `attacks`| what an attacker sends, each next to its twin: the host, gateways,    |
//! |          | link-scope exceptions, uplinks, quarantine, fragments per vif          |
//! | `events` | reports: management attempts within a budget, drops only for a monitor |
//! | `faults` | a full counter map: counted by verdict, the fault counted and logged    |
//! | `short_way` | the short way to a drop, each row next to twins the story keeps |
//! | `swap`   | I6 during the swap: a thousand swaps under a hammer of test runs        |
//! | `differential` | random policies × frames, the kernel against `isolator::model`  |

mod attacks;
mod basic;
mod conntrack;
mod differential;
mod events;
mod faults;
mod fixture;
mod guards;
mod policy;
mod short_way;
mod swap;
