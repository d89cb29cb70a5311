//! Builds the kernel programs (isolator-ebpf) for `bpfel-unknown-none` with the nightly
//! toolchain and copies the object into OUT_DIR, from where `src/dataplane.rs` embeds it.
//!
//! This is what `aya_build::build_ebpf` does, plus the code generation options it has no
//! place for (it sets the inner build's flags itself, so neither `RUSTFLAGS` nor a cargo
//! configuration reaches the inner build):
//!
//! - `-C target-cpu=v3`: the BPF instruction set of 32-bit ALU operations and 32-bit
//!   conditional jumps (kernel 5.1 on; TCX, which isolator needs, came with 6.6). Without
//!   it the code generator's default (`generic`, the v1 set) widens every 32-bit value
//!   with two shifts and compares it in 64 bits.
//! - `allows-misaligned-mem-access` (a CPU feature of bpf-linker, built against LLVM 22): a field of a frame at any offset
//!   is read with one load rather than byte by byte. The verifier allows misaligned
//!   packet and map value access where the architecture does (x86-64, arm64); it refuses
//!   misaligned stack access, which the programs never ask for (the verdict tests load
//!   every program).
//!
//! `docs/benchmarks.md` ("The v3 instruction set") has what this changed.
use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message};

/// The BPF target; the kernel programs are little-endian, as the hosts are.
const TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "isolator-ebpf")
        .ok_or_else(|| anyhow!("isolator-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("isolator-ebpf manifest has no parent directory"))?;
    // The binaries are not a dependency cargo tracks (only the library is).
    println!("cargo:rerun-if-changed={root_dir}");

    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if std::env::var("CARGO_CFG_TARGET_ENDIAN").as_deref() != Ok("little") {
        bail!("the kernel programs are built for little-endian hosts only ({TARGET})");
    }
    // Which architecture's kernel structures (`pt_regs` and the like) aya-ebpf uses.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;

    let mut flags = OsString::new();
    for (i, flag) in [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Ctarget-cpu=v3".to_owned(),
        // To the linker, which generates the code (rustc hands it bitcode); as a rustc
        // flag it would be reported as unstable on every build.
        "-Clink-arg=--cpu-features=+allows-misaligned-mem-access".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\x1f");
        }
        flags.push(flag);
    }

    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build"])
        .args(["--package", "isolator-ebpf", "--bins", "--release"])
        .args(["--message-format=json", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        // Apart from OUT_DIR's own files: a binary named like the package would collide.
        .arg("--target-dir")
        .arg(out_dir.join("ebpf-target"))
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        // The outer build's compiler and wrappers are not the nightly toolchain's.
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {cmd:?} (is rustup installed? `cargo xtask setup`)"))?;

    // The inner build's diagnostics, as warnings of this one.
    let stderr = BufReader::new(child.stderr.take().expect("piped"));
    let stderr = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            println!("cargo:warning={line}");
        }
    });
    let mut executables = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().expect("piped"))) {
        match message.context("the inner cargo's JSON messages")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(executable),
                target,
                ..
            }) => executables.push((target.name, executable.into_std_path_buf())),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                for line in message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            Message::TextLine(line) => println!("cargo:warning={line}"),
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    stderr
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    if !status.success() {
        bail!("building the kernel programs failed ({status}): {cmd:?}");
    }
    for (name, binary) in executables {
        let to = out_dir.join(&name);
        std::fs::copy(&binary, &to)
            .with_context(|| format!("copying {} to {}", binary.display(), to.display()))?;
    }
    Ok(())
}
