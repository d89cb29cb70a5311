//! The `isolator` binary: `isolator check FILE` and `isolator run --config FILE`.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isolator::{daemon, policy};
use tracing_subscriber::EnvFilter;

/// The version `--version` prints; a rehearsal build (see Cargo.toml) says so.
const VERSION: &str = if cfg!(feature = "rehearsal") {
    concat!(env!("CARGO_PKG_VERSION"), "+rehearsal")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "isolator",
    version = VERSION,
    about = "eBPF/XDP tenant and segment isolation for hypervisor hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a policy file: exit 0 with a summary, or 1 with every error found.
    Check {
        /// The policy file (YAML, see docs/policy.md).
        file: PathBuf,
        /// Also check that FILE.sig is a valid signature by one of the public keys in DIR.
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
    },
    /// Make an ed25519 key pair for signing policies: DIR/NAME.key (secret, mode 0600)
    /// and DIR/NAME.pub (to put among the hosts' trusted keys).
    Keygen {
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        #[arg(long, default_value = "isolator")]
        name: String,
    },
    /// Sign a policy file with a secret key: writes FILE.sig beside it.
    Sign {
        /// The secret key file (from `isolator keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// The policy file.
        file: PathBuf,
    },
    /// Enforce a policy on this host's interfaces, following them as they come and go;
    /// SIGHUP reloads the policy, SIGINT/SIGTERM detaches everything and exits.
    Run {
        /// The policy file (YAML, see docs/policy.md).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Address for /metrics and /healthz.
        #[arg(long, value_name = "ADDR", default_value = daemon::DEFAULT_METRICS_ADDR)]
        metrics_addr: SocketAddr,
        /// Directory on bpffs for the pinned maps and links that keep enforcement running
        /// if the daemon dies; a daemon started with the same directory takes them over.
        #[arg(long, value_name = "DIR", default_value = daemon::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// On SIGINT/SIGTERM keep enforcing (leave the programs attached and pinned) for
        /// the next daemon, as for an upgrade; without it everything is detached.
        #[arg(long)]
        persist: bool,
        /// The receive buffer of the netlink socket that brings link events, in bytes: a
        /// burst of VM starts larger than it loses events, which the daemon then catches
        /// up on with a full listing (see isolator_netlink_overruns_total).
        #[arg(long, value_name = "BYTES", default_value_t = daemon::DEFAULT_NETLINK_RECEIVE_BUFFER)]
        netlink_receive_buffer: usize,
        /// How often, in seconds, every link and address of the host is listed again even
        /// without any event (what no event reported is caught up with then).
        #[arg(long, value_name = "SECONDS", default_value_t = daemon::DEFAULT_RESYNC_SECONDS,
              value_parser = clap::value_parser!(u64).range(1..=86_400))]
        resync_seconds: u64,
        /// Trust only policies signed by one of the public keys (*.pub) in DIR: a policy
        /// without a valid signature (FILE.sig) is refused at start and at reload, and the
        /// running one stays in force.
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // The fault injection points the tests set through FAILPOINTS: the rehearsal build
    // only; the normal build has none and ignores the variable.
    #[cfg(feature = "rehearsal")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file, trusted_keys } => match policy::load(&file) {
            Ok(policy) => {
                if let Some(dir) = trusted_keys {
                    let signed =
                        std::fs::read(&file)
                            .map_err(anyhow::Error::from)
                            .and_then(|bytes| {
                                isolator::signing::TrustedKeys::load(&dir)?.verify(&file, &bytes)
                            });
                    match signed {
                        Ok(id) => println!("{}: signed by key {id}", file.display()),
                        Err(e) => {
                            eprintln!("error: {e:#}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                println!("{}: valid: {}", file.display(), policy.summary());
                // What the kernel maps take for it (without the host's own links and
                // addresses, which the daemon adds).
                match isolator::compile::Plan::new(&policy, isolator::compile::HostView::default())
                {
                    Ok(plan) => {
                        let sizes = isolator::dataplane::Sizes::for_plan(&plan);
                        let estimate = sizes.estimate(&plan);
                        let total: u64 = estimate.iter().map(|(.., bytes)| bytes).sum();
                        println!(
                            "kernel maps sized for it (about {:.1} MiB once in force):",
                            total as f64 / f64::from(1 << 20)
                        );
                        for (map, count, capacity, bytes) in estimate {
                            println!(
                                "  {map}: {count} entries, capacity {capacity} (both generations \
                                 and room to grow), about {:.1} MiB",
                                bytes as f64 / f64::from(1 << 20)
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!(
                            "error: {}: the policy cannot be put into the kernel maps: {e}",
                            file.display()
                        );
                        return ExitCode::FAILURE;
                    }
                }
                ExitCode::SUCCESS
            }
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                eprintln!(
                    "{}: invalid: {} error(s)",
                    file.display(),
                    diagnostics.0.len()
                );
                ExitCode::FAILURE
            }
        },
        Command::Keygen { out, name } => match isolator::signing::keygen(&out, &name) {
            Ok(id) => {
                println!(
                    "key {id}: secret {}, public {}",
                    out.join(format!("{name}.key")).display(),
                    out.join(format!("{name}.pub")).display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Sign { key, file } => match isolator::signing::sign(&key, &file) {
            Ok(id) => {
                println!(
                    "{}: signed by key {id}",
                    isolator::signing::signature_path(&file).display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            config,
            metrics_addr,
            state_dir,
            persist,
            netlink_receive_buffer,
            resync_seconds,
            trusted_keys,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(daemon::RunOptions {
                config,
                metrics_addr,
                state_dir,
                persist,
                netlink_receive_buffer,
                resync_interval: std::time::Duration::from_secs(resync_seconds),
                trusted_keys,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
