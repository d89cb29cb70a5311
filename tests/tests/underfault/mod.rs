//! Invariants I6 (a policy change is all-or-nothing) and I7 (enforcement survives the
//! daemon) proven while the event happens, with traffic running through it.
//!
//! | module     | what |
//! |------------|------|
//! | `swaps`    | a hundred SIGHUP reloads under continuous same-segment traffic lose nothing and count no `no_policy`; a reload the kernel refuses keeps the old policy and is counted |

mod swaps;
