//! The `isolator` binary: `isolator check FILE`, `isolator diff OLD NEW` and
//! `isolator run --config FILE`.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use isolator::daemon;
use tracing_subscriber::EnvFilter;

mod check;

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
    /// Validate a policy file and report findings (exposures of whole segments, flows
    /// to every port, cross-tenant flows, redundant entries, reachable management
    /// services, interface entries no link can match, kernel capacity; see
    /// docs/policy.md, "Findings"). Exit 0: valid, no finding of severity error (warnings
    /// are printed); 1: invalid, or a finding of severity error.
    Check {
        /// The policy file (YAML, see docs/policy.md).
        file: PathBuf,
        /// Also check that FILE.sig is a valid signature by one of the public keys in DIR.
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
        /// Every finding is an error (exit 1), not a warning.
        #[arg(long)]
        strict: bool,
        /// Print one JSON object on stdout instead of text (see docs/policy.md).
        #[arg(long)]
        json: bool,
    },
    /// Show what changing from policy OLD to policy NEW makes reachable (+) and what it
    /// stops (-). Exit 0: no change; 1: something becomes reachable (widened); 2: the
    /// policies differ, nothing widened; 3: a policy cannot be read or is invalid.
    Diff {
        /// The policy in force.
        old: PathBuf,
        /// The policy to compare with it.
        new: PathBuf,
        /// Print one JSON object on stdout instead of text (see docs/operations.md).
        #[arg(long)]
        json: bool,
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
        Command::Check {
            file,
            trusted_keys,
            strict,
            json,
        } => check::run(&file, trusted_keys.as_deref(), strict, json),
        Command::Diff { old, new, json } => check::diff(&old, &new, json),
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
