//! Invariants I6 (a policy change is all-or-nothing) and I7 (enforcement survives the
//! daemon) proven while the event happens, with traffic running through it.
//!
//! | module     | what |
//! |------------|------|
//! | `swaps`    | a hundred SIGHUP reloads under continuous same-segment traffic lose nothing and count no `no_policy`; a reload the kernel refuses keeps the old policy and is counted |
//! | `counters` | connection tracking event counts survive `kill -9` + restart, neither reset nor inflated |
//! | `restarts` | `kill -9` + restart, an upgrade to another build, a state-layout change: with pings, a UDP flow, a held connection and a cross-tenant SYN stream running through each; program ids from the kernel |

mod counters;
mod restarts;
mod swaps;
