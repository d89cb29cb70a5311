//! The parts of the kernel programs that also build on the host: the frame parser and the
//! protocol numbers it reads. The programs themselves are in `main.rs` (the `isolator`
//! binary, built for `bpfel-unknown-none`); the parser lives here so that it is unit-tested
//! (and can be fuzzed) on the host, where the same code runs on byte slices ([`packet::Bytes`]).
#![cfg_attr(not(test), no_std)]

pub mod packet;
pub mod proto;
