//! `cargo xtask package`: a Debian package of isolator, staged and built with
//! `dpkg-deb` (docs/operations.md, "Installing the package").
//!
//! | path | what |
//! |---|---|
//! | `/usr/bin/isolator` | the binary (release build unless `--bin`) |
//! | `/lib/systemd/system/isolator.service` | `packaging/isolator.service` |
//! | `/etc/isolator/policy.yaml` | `packaging/policy.yaml`, a commented example (conffile) |
//! | `/usr/share/man/man1/isolator*.1.gz` | generated from the command line (clap_mangen) |
//! | `/usr/share/{bash-completion,zsh,fish}/…` | shell completions (clap_complete) |
//! | `/usr/share/doc/isolator/` | README and docs |
//! | `/usr/share/isolator/` | the Grafana dashboard and the Prometheus alert rules with their tests |
//!
//! Maintainer scripts (`packaging/debian/`): an upgrade restarts a running daemon, which
//! keeps enforcing across it (`--persist`); a removal stops it and runs
//! `isolator teardown`; a purge removes the audit log too.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run_cmd;

pub struct PackageOptions {
    /// The binary to package (`None`: build the release binary).
    pub bin: Option<PathBuf>,
    /// The Debian revision (`0.1.0-REVISION`).
    pub revision: u32,
    pub out: PathBuf,
    /// Skip compression (the tests' packages: a debug binary takes a minute to xz).
    pub uncompressed: bool,
}

/// Builds the package; returns its path.
pub fn run(opts: &PackageOptions) -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    let bin = match &opts.bin {
        Some(bin) => bin.clone(),
        None => {
            println!("package: building isolator (release)");
            run_cmd(crate::cargo().args([
                "build",
                "--release",
                "--package",
                "isolator-user",
                "--bin",
                "isolator",
            ]))?;
            crate::target_dir().join("release/isolator")
        }
    };
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    let version = format!("{}-{}", env!("CARGO_PKG_VERSION"), opts.revision);
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let stage = opts.out.join(format!("isolator_{version}_stage"));
    let _ = std::fs::remove_dir_all(&stage);
    let put = |from: &Path, to: &str, mode: u32| -> anyhow::Result<()> {
        let dest = stage.join(to);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let packaging = root.join("packaging");
    put(&bin, "usr/bin/isolator", 0o755)?;
    put(
        &packaging.join("isolator.service"),
        "lib/systemd/system/isolator.service",
        0o644,
    )?;
    put(
        &packaging.join("policy.yaml"),
        "etc/isolator/policy.yaml",
        0o640,
    )?;
    for file in [
        "grafana-dashboard.json",
        "prometheus-alerts.yml",
        "prometheus-alerts.test.yml",
    ] {
        put(
            &packaging.join(file),
            &format!("usr/share/isolator/{file}"),
            0o644,
        )?;
    }
    put(
        &root.join("README.md"),
        "usr/share/doc/isolator/README.md",
        0o644,
    )?;
    for doc in std::fs::read_dir(root.join("docs"))? {
        let doc = doc?.path();
        if doc.extension().is_some_and(|e| e == "md") {
            let name = doc
                .file_name()
                .expect("a file")
                .to_string_lossy()
                .into_owned();
            put(&doc, &format!("usr/share/doc/isolator/{name}"), 0o644)?;
        }
    }
    std::fs::write(
        stage.join("usr/share/doc/isolator/copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: isolator\n\nFiles: *\nCopyright: the isolator authors\n\
         License: MIT or GPL-2.0 (the kernel programs: Dual MIT/GPL)\n",
    )?;

    // Manual pages and completions, from the binary's own command line.
    let generated = opts.out.join(format!("isolator_{version}_generated"));
    let _ = std::fs::remove_dir_all(&generated);
    run_cmd(
        Command::new(&bin)
            .arg("generate-docs")
            .arg("--man")
            .arg(generated.join("man"))
            .arg("--completions")
            .arg(generated.join("completions")),
    )?;
    for page in std::fs::read_dir(generated.join("man"))? {
        let page = page?.path();
        let name = page
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .into_owned();
        put(&page, &format!("usr/share/man/man1/{name}"), 0o644)?;
        run_cmd(
            Command::new("gzip")
                .args(["-9n"])
                .arg(stage.join(format!("usr/share/man/man1/{name}"))),
        )?;
    }
    let completions = generated.join("completions");
    put(
        &completions.join("isolator.bash"),
        "usr/share/bash-completion/completions/isolator",
        0o644,
    )?;
    put(
        &completions.join("_isolator"),
        "usr/share/zsh/vendor-completions/_isolator",
        0o644,
    )?;
    put(
        &completions.join("isolator.fish"),
        "usr/share/fish/vendor_completions.d/isolator.fish",
        0o644,
    )?;

    // Control files.
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &packaging.join("debian").join(script),
            &format!("DEBIAN/{script}"),
            0o755,
        )?;
    }
    std::fs::write(debian.join("conffiles"), "/etc/isolator/policy.yaml\n")?;
    let installed_kib = du_kib(&stage)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: isolator\n\
             Version: {version}\n\
             Architecture: amd64\n\
             Maintainer: isolator developers <isolator@localhost>\n\
             Section: net\n\
             Priority: optional\n\
             Installed-Size: {installed_kib}\n\
             Depends: libc6 (>= 2.36)\n\
             Recommends: systemd\n\
             Description: eBPF/XDP isolation of tenants and services on a hypervisor\n \
             isolator attaches XDP and TC programs to the host side of every virtual\n \
             interface and drops, at line rate, each packet that would cross a tenant or\n \
             service boundary; its daemon follows interfaces as VMs come and go, keeps an\n \
             audit log, and exports drop counters for NOC dashboards.\n"
        ),
    )?;
    let deb = opts.out.join(format!("isolator_{version}_amd64.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(if opts.uncompressed { "-Znone" } else { "-Zxz" })
            .arg(&stage)
            .arg(&deb),
    )?;
    let _ = std::fs::remove_dir_all(&stage);
    let _ = std::fs::remove_dir_all(&generated);
    println!("package: {}", deb.display());
    Ok(deb)
}

/// The size of a tree in KiB, as `Installed-Size` wants it.
fn du_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    Ok(bytes.div_ceil(1024))
}
