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
mod inspect;

/// mimalloc, not glibc's malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// `isolator run`'s fleet source: a policy bundle in etcd instead of a file.
#[derive(clap::Args)]
struct FleetRunArgs {
    /// Follow a signed policy bundle in etcd instead of a file:
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for TLS). The daemon reads
    /// PREFIX/policy/GROUP, watches it, puts each new revision into effect as a reload,
    /// caches the last good one (--fleet-cache) for starts while etcd is away, and
    /// keeps its status under PREFIX/status/HOST (docs/operations.md, "Fleet").
    #[arg(long, value_name = "URL")]
    policy_source: Option<String>,
    /// The group whose bundle this host follows (a canary group, or a group of one)
    /// [default: default].
    #[arg(long, value_name = "NAME", requires = "policy_source")]
    fleet_group: Option<String>,
    /// This host's name in the fleet (its status key) [default: the host name].
    #[arg(long, value_name = "NAME", requires = "policy_source")]
    fleet_host: Option<String>,
    /// Where the last good bundle is kept, for a start while etcd is unreachable
    /// [default: /var/lib/isolator/fleet].
    #[arg(long, value_name = "DIR", requires = "policy_source")]
    fleet_cache: Option<PathBuf>,
    /// How long the host's status outlives the daemon in etcd (its lease), in seconds
    /// [default: 15].
    #[arg(long, value_name = "SECONDS", requires = "policy_source",
          value_parser = clap::value_parser!(i64).range(3..=3600))]
    fleet_lease_seconds: Option<i64>,
    /// How long to wait for etcd at start before enforcing the cached bundle, in seconds
    /// [default: 5].
    #[arg(long, value_name = "SECONDS", requires = "policy_source")]
    fleet_start_timeout: Option<f64>,
    #[command(flatten)]
    etcd_tls: isolator::fleet::TlsArgs,
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Every host with the revision, policy and generation it runs, its interfaces and
    /// its last error, flagged ok, behind (older than its group's bundle), failing
    /// (refused bundle or interfaces, verification findings) or gone (status expired).
    /// Exit 0: all ok; 1: some host is not; 2: etcd could not be read.
    Status {
        #[arg(long, value_name = "URL")]
        etcd: String,
        #[command(flatten)]
        etcd_tls: isolator::fleet::TlsArgs,
        #[arg(long)]
        json: bool,
    },
    /// Remove a host that left the fleet for good (no longer listed as gone).
    Forget {
        #[arg(long, value_name = "URL")]
        etcd: String,
        #[command(flatten)]
        etcd_tls: isolator::fleet::TlsArgs,
        host: String,
    },
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
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "policy_source",
            conflicts_with = "policy_source"
        )]
        config: Option<PathBuf>,
        #[command(flatten)]
        fleet: Box<FleetRunArgs>,
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
        /// A link that comes while the daemon runs is attached at once with its TC
        /// programs as cls_bpf filters (no wait for an RCU grace period), then handed over
        /// to TCX once no new link has come for this many milliseconds (each handover
        /// holds the RTNL lock for a grace period). See docs/operations.md.
        #[arg(long, value_name = "MS", default_value_t = daemon::DEFAULT_HANDOVER_QUIET_MS,
              value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
        handover_quiet_ms: u64,
        /// Trust only policies signed by one of the public keys (*.pub) in DIR: a policy
        /// without a valid signature (FILE.sig) is refused at start and at reload, and the
        /// running one stays in force.
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
        /// The audit log: append-only JSON lines, each carrying the SHA-256 of the one
        /// before (check it with `isolator audit verify`).
        #[arg(long, value_name = "FILE", default_value = isolator::audit::DEFAULT_PATH)]
        audit_log: PathBuf,
        /// The size beyond which the audit log is rotated (FILE.1, FILE.2, ...).
        #[arg(long, value_name = "BYTES", default_value_t = isolator::audit::DEFAULT_MAX_BYTES)]
        audit_max_bytes: u64,
        /// Rotated audit log files kept.
        #[arg(long, value_name = "N", default_value_t = isolator::audit::DEFAULT_KEEP)]
        audit_keep: usize,
        /// A secret key (from `isolator keygen`) that signs a checkpoint of the audit log
        /// every 1000 records and at start and stop.
        #[arg(long, value_name = "KEY")]
        audit_key: Option<PathBuf>,
        /// The control socket (`isolator status`, `isolator reload`).
        #[arg(long, value_name = "PATH", default_value = isolator::control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
        /// A group (name or number) whose members may use the control socket besides
        /// root (mode 0660); without it, root only (0600).
        #[arg(long, value_name = "GROUP")]
        control_group: Option<String>,
        /// Attempts to reach management recorded in the audit log per interface, CPU
        /// and second, at most (the rest are counted in
        /// isolator_audit_events_dropped_total and noted with the next record).
        #[arg(long, value_name = "N", default_value_t = 10)]
        audit_management_rate: u32,
        /// Drops shown to `isolator monitor` per interface, CPU and second, at most.
        #[arg(long, value_name = "N", default_value_t = 100)]
        monitor_rate: u32,
        /// The per-interface metric families one series per interface (`device`), or
        /// summed per segment (`segment`: for hosts with many vifs; the `device` label is
        /// left empty, `isolator_interface_enforced` stays per interface).
        #[arg(long, value_enum, default_value_t = isolator::metrics::Detail::Device)]
        metrics_detail: isolator::metrics::Detail,
        /// Verify the host against the policy (as `isolator verify`) every SECONDS as well
        /// as after every reload and change of interfaces; 0: only after changes.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        verify_interval: u64,
        /// Links (names or `*` patterns) that may share a bridge with tenant vifs without
        /// being managed (for the verification).
        #[arg(long, value_name = "PATTERN")]
        infrastructure: Vec<String>,
    },
    /// Watch drops live, as the kernel samples them while a monitor is connected (and
    /// every attempt to reach management): time, device, tenant, segment, direction,
    /// reason, protocol, addresses and ports. Runs until interrupted.
    Monitor {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Only this interface's.
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        segment: Option<String>,
        /// Only this drop reason (`cross_tenant`, `management`, ...: the `reason` label of
        /// the metrics).
        #[arg(long)]
        reason: Option<String>,
        /// Report one drop in N (each interface also has a budget per second, see `run
        /// --monitor-rate`).
        #[arg(long, value_name = "N", default_value_t = 1)]
        every: u32,
        /// Stop after N reports.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// What the running daemon enforces: policy (hash, signer), generation, each
    /// interface's state and mode, the last reload, counters.
    Status {
        /// The daemon's control socket.
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon reload its policy file (as SIGHUP does) and say how it
    /// went: exit 0 if the new policy is in force, 1 if it was refused (the running one
    /// stays).
    Reload {
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Publish a policy to the fleet: validate FILE, check its signature (FILE.sig) against
    /// --trusted-keys, show what changes against the bundle in etcd, and write the new
    /// bundle in one transaction that fails if someone published meanwhile. Exit 0:
    /// published (or shown, with --dry-run); 1: someone published meanwhile, nothing was
    /// written; 2: invalid, unsigned or unreachable, nothing was written.
    Publish {
        /// The cluster and prefix: etcd://HOST:PORT[,HOST:PORT...]/PREFIX (etcds:// for
        /// TLS).
        #[arg(long, value_name = "URL")]
        etcd: String,
        #[command(flatten)]
        etcd_tls: isolator::fleet::TlsArgs,
        /// The group to publish to (hosts follow their --fleet-group).
        #[arg(long, value_name = "NAME", default_value = isolator::fleet::DEFAULT_GROUP)]
        group: String,
        /// The public keys FILE's signature must be by (the hosts' --trusted-keys).
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
        /// Publish without a signature, for a fleet whose daemons run without
        /// --trusted-keys.
        #[arg(long)]
        unsigned: bool,
        /// Publish only if the bundle in etcd is still at this revision (0: none), as
        /// shown by an earlier --dry-run.
        #[arg(long, value_name = "REVISION")]
        expect_revision: Option<i64>,
        /// Show the diff against the bundle in etcd, write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// The policy file.
        file: PathBuf,
    },
    /// The fleet's hosts as they report themselves in etcd.
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Remove the enforcement a stopped daemon left in place (`isolator run --persist`,
    /// as the systemd unit runs it): release every pinned link, which detaches the
    /// programs from the interfaces, and remove the state directory. Refused while a
    /// daemon answers on the control socket (stop it first).
    Teardown {
        #[arg(long, value_name = "DIR", default_value = daemon::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The running daemon's control socket, to refuse while it runs.
        #[arg(long, value_name = "PATH", default_value = isolator::control::DEFAULT_SOCKET)]
        control_socket: PathBuf,
    },
    /// Inventory the host's virtual network (links, bridges, VLANs, VNIs, veth peers,
    /// addresses, XDP and TCX programs, the daemon's live maps) and compare it with the
    /// policy; with --matrix, also the live reachability matrix. Exit 0: as the policy says
    /// (warnings may be printed); 1: violations, or the live matrix disagrees with the
    /// policy's; 2: could not look (no daemon state, unreadable policy, netlink or BPF
    /// refused).
    Verify {
        /// The policy file the daemon enforces.
        #[arg(long, value_name = "FILE", default_value = "/etc/isolator/policy.yaml")]
        config: PathBuf,
        /// The daemon's state directory (`isolator run --state-dir`).
        #[arg(long, value_name = "DIR", default_value = daemon::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Links (names or `*` patterns) that may share a bridge with tenant vifs without
        /// being managed: routers, bonds, the host's uplink. A segment's `uplinks` are
        /// declared already.
        #[arg(long, value_name = "PATTERN")]
        infrastructure: Vec<String>,
        /// Also probe the reachability matrix: representative frames between every two
        /// segments, to management, to and from outside, through the attached programs (a
        /// test run on the live maps: nothing is sent, but the probes are counted at the
        /// vifs) and through the policy model, side by side.
        #[arg(long)]
        matrix: bool,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one frame through the programs attached on this host (a test run on the live
    /// maps: nothing is sent, but the frame is counted at the vif) and through the policy
    /// model: the verdict, the reason, and the policy entries that decided it (file:line),
    /// on ingress at the sender's vif and, if it passes, on egress at the receiver's.
    /// Exit 0: it ran (the verdict is in the output); 2: it could not; 3: the live
    /// programs and the policy model disagree.
    Explain {
        #[arg(long, value_name = "FILE", default_value = "/etc/isolator/policy.yaml")]
        config: PathBuf,
        #[arg(long, value_name = "DIR", default_value = daemon::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// The sender: a vif's name, or an address (the vif that declares it or whose
        /// segment holds it; outside every segment: the host's stack).
        #[arg(long, value_name = "VIF|ADDR")]
        from: Option<String>,
        /// The destination address.
        #[arg(long, value_name = "ADDR")]
        to: Option<std::net::IpAddr>,
        /// The source address when --from is a vif (default: its declared address, else
        /// the first address of its segment).
        #[arg(long, value_name = "ADDR")]
        src: Option<std::net::IpAddr>,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: isolator::verify::explain::Proto,
        /// The destination port (TCP, UDP).
        #[arg(long, default_value_t = 443)]
        port: u16,
        /// The source port (TCP, UDP), or the ICMP echo identifier.
        #[arg(long, default_value_t = 40000)]
        sport: u16,
        /// A whole Ethernet frame in hex (with --from: the vif that sends it).
        #[arg(long, value_name = "HEX")]
        hex: Option<String>,
        /// The first frame of a pcap file (with --from: the vif that sends it).
        #[arg(long, value_name = "FILE")]
        pcap: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write the manual pages (isolator.1, isolator-SUBCOMMAND.1) and the shell
    /// completions (bash, zsh, fish) into directories (`cargo xtask package` does).
    #[command(hide = true)]
    GenerateDocs {
        #[arg(long, value_name = "DIR")]
        man: PathBuf,
        #[arg(long, value_name = "DIR")]
        completions: PathBuf,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of an audit log: exit 0 if whole, 1 naming the first broken
    /// record, 2 if it could not be read. Give the rotated files too, oldest first, or
    /// --all to take FILE's rotated files beside it.
    Verify {
        /// The audit log file(s), oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also verify FILE.N .. FILE.1 beside the (single) FILE.
        #[arg(long)]
        all: bool,
        /// Check the checkpoints' signatures against the public keys (*.pub) in DIR.
        #[arg(long, value_name = "DIR")]
        trusted_keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // The fault injection points the tests set through FAILPOINTS: the rehearsal build
    // only; the normal build has none and ignores the variable.
    // Before anything large is allocated (see `isolator::memory`).
    let small_pages = isolator::memory::small_pages_only();
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
            fleet,
            metrics_addr,
            state_dir,
            persist,
            netlink_receive_buffer,
            resync_seconds,
            handover_quiet_ms,
            trusted_keys,
            audit_log,
            audit_max_bytes,
            audit_keep,
            audit_key,
            control_socket,
            control_group,
            audit_management_rate,
            monitor_rate,
            metrics_detail,
            verify_interval,
            infrastructure,
        } => {
            let infrastructure = match infrastructure
                .iter()
                .map(|p| p.parse::<isolator::policy::InterfacePattern>())
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(patterns) => patterns,
                Err(e) => {
                    eprintln!("error: --infrastructure: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let control_group = match control_group.as_deref().map(isolator::control::group_id) {
                None => None,
                Some(Ok(gid)) => Some(gid),
                Some(Err(e)) => {
                    eprintln!("error: --control-group: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let FleetRunArgs {
                policy_source,
                fleet_group,
                fleet_host,
                fleet_cache,
                fleet_lease_seconds,
                fleet_start_timeout,
                etcd_tls,
            } = *fleet;
            let fleet_given = fleet_group.is_some()
                || fleet_host.is_some()
                || fleet_cache.is_some()
                || fleet_lease_seconds.is_some()
                || fleet_start_timeout.is_some()
                || etcd_tls.etcd_ca.is_some()
                || etcd_tls.etcd_cert.is_some()
                || etcd_tls.etcd_domain.is_some();
            let fleet = match policy_source {
                None if fleet_given => {
                    eprintln!(
                        "error: the --fleet-* and --etcd-* options are for --policy-source \
                         etcd://...; a daemon following --config FILE takes none of them"
                    );
                    return ExitCode::FAILURE;
                }
                None => None,
                Some(url) => match fleet_options(
                    &url,
                    etcd_tls,
                    fleet_group,
                    fleet_host,
                    fleet_cache,
                    fleet_lease_seconds,
                    fleet_start_timeout,
                ) {
                    Ok(fleet) => Some(fleet),
                    Err(e) => {
                        eprintln!("error: --policy-source: {e:#}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let config = match (config, &fleet) {
                (Some(config), _) => config,
                (None, Some(fleet)) => {
                    PathBuf::from(format!("{}/policy/{}", fleet.location, fleet.group))
                }
                (None, None) => {
                    eprintln!("error: give --config FILE or --policy-source URL");
                    return ExitCode::FAILURE;
                }
            };
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .init();
            if let Err(e) = &small_pages {
                tracing::warn!(error = %e, "could not turn transparent huge pages off for the daemon; a large policy loads and reloads more slowly");
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(daemon::RunOptions {
                config,
                fleet,
                metrics_addr,
                state_dir,
                persist,
                netlink_receive_buffer,
                resync_interval: std::time::Duration::from_secs(resync_seconds),
                handover_quiet: std::time::Duration::from_millis(handover_quiet_ms),
                trusted_keys,
                audit: isolator::audit::Options {
                    path: audit_log,
                    max_bytes: audit_max_bytes,
                    keep: audit_keep,
                    key: audit_key,
                },
                control_socket,
                control_group,
                management_rate: audit_management_rate,
                monitor_rate,
                metrics_detail,
                verify_interval: (verify_interval > 0)
                    .then(|| std::time::Duration::from_secs(verify_interval)),
                infrastructure,
            })) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { socket, json } => {
            control_command(socket, isolator::control::Request::Status, json)
        }
        Command::Reload { socket, json } => {
            control_command(socket, isolator::control::Request::Reload, json)
        }
        Command::Monitor {
            socket,
            device,
            tenant,
            segment,
            reason,
            every,
            count,
            json,
        } => {
            let request = isolator::control::Request::Monitor {
                filter: isolator::events::Filter {
                    device,
                    tenant,
                    segment,
                    reason,
                },
                every: Some(every.max(1)),
            };
            let socket = isolator::control::socket_path(socket);
            let mut seen = 0u64;
            let outcome = isolator::control::monitor(&socket, &request, |line| {
                use isolator::control::MonitorLine;
                match (&line, json) {
                    (_, true) => match serde_json::to_string(&line) {
                        Ok(text) => println!("{text}"),
                        Err(e) => eprintln!("error: {e}"),
                    },
                    (MonitorLine::Report(r), false) => println!("{}", isolator::events::render(r)),
                    (MonitorLine::Missed { missed }, false) => {
                        println!("({missed} report(s) missed: this monitor fell behind)")
                    }
                }
                if matches!(line, MonitorLine::Report(_)) {
                    seen += 1;
                }
                count.is_none_or(|c| seen < c)
            });
            match outcome {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Publish {
            etcd,
            etcd_tls,
            group,
            trusted_keys,
            unsigned,
            expect_revision,
            dry_run,
            json,
            file,
        } => {
            let location = match etcd.parse::<isolator::fleet::Location>() {
                Ok(location) => location,
                Err(e) => {
                    eprintln!("error: --etcd: {e:#}");
                    return ExitCode::from(isolator::fleet::cli::FAILED);
                }
            };
            block_on(isolator::fleet::cli::publish(
                isolator::fleet::cli::Publish {
                    location: &location,
                    tls: &etcd_tls,
                    group: &group,
                    file: &file,
                    trusted_keys: trusted_keys.as_deref(),
                    unsigned,
                    expect_revision,
                    dry_run,
                    json,
                },
            ))
        }
        Command::Fleet { command } => match command {
            FleetCommand::Status {
                etcd,
                etcd_tls,
                json,
            } => match etcd.parse::<isolator::fleet::Location>() {
                Ok(location) => block_on(isolator::fleet::cli::status(&location, &etcd_tls, json)),
                Err(e) => {
                    eprintln!("error: --etcd: {e:#}");
                    ExitCode::from(2)
                }
            },
            FleetCommand::Forget {
                etcd,
                etcd_tls,
                host,
            } => match etcd.parse::<isolator::fleet::Location>() {
                Ok(location) => block_on(isolator::fleet::cli::forget(&location, &etcd_tls, &host)),
                Err(e) => {
                    eprintln!("error: --etcd: {e:#}");
                    ExitCode::from(2)
                }
            },
        },
        Command::Teardown {
            state_dir,
            control_socket,
        } => {
            if std::os::unix::net::UnixStream::connect(&control_socket).is_ok() {
                eprintln!(
                    "error: a daemon answers on {}: stop it first (systemctl stop isolator); \
                     teardown removes the enforcement a stopped daemon left",
                    control_socket.display()
                );
                return ExitCode::FAILURE;
            }
            match isolator::dataplane::teardown(&state_dir) {
                Ok(done) if !done.removed => {
                    println!(
                        "nothing to tear down: {} does not exist",
                        state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(done) => {
                    println!(
                        "released {} link(s) on {} interface(s) (ifindex {}); removed {}: \
                         nothing is enforced until `isolator run` starts again",
                        done.links,
                        done.interfaces.len(),
                        done.interfaces
                            .iter()
                            .map(u32::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        state_dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", isolator::error_chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Verify {
            config,
            state_dir,
            infrastructure,
            matrix,
            json,
        } => inspect::verify(&config, &state_dir, &infrastructure, matrix, json),
        Command::Explain {
            config,
            state_dir,
            from,
            to,
            src,
            proto,
            port,
            sport,
            hex,
            pcap,
            json,
        } => match inspect::explain_input(from, to, src, proto, port, sport, hex, pcap) {
            Ok(input) => inspect::explain(&config, &state_dir, &input, json),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::GenerateDocs { man, completions } => match generate_docs(&man, &completions) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Audit {
            command:
                AuditCommand::Verify {
                    files,
                    all,
                    trusted_keys,
                    json,
                },
        } => audit_verify(files, all, trusted_keys, json),
    }
}

/// `isolator status` and `isolator reload`: one request to the daemon, its answer printed.
fn control_command(
    socket: Option<PathBuf>,
    request: isolator::control::Request,
    json: bool,
) -> ExitCode {
    let socket = isolator::control::socket_path(socket);
    // A reload waits for the swap: a large policy takes seconds.
    let timeout = std::time::Duration::from_secs(120);
    let response = match isolator::control::ask(&socket, request, timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        match serde_json::to_string_pretty(&response) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        if let Some(status) = &response.status {
            print!("{}", isolator::control::render_status(status));
        }
        if let Some(reload) = &response.reload {
            match &reload.error {
                None => println!(
                    "reloaded: policy sha256 {}{} in force",
                    reload.sha256,
                    reload
                        .signer
                        .as_ref()
                        .map(|s| format!(" (signed by key {s})"))
                        .unwrap_or_default()
                ),
                Some(e) => eprintln!("reload refused (the running policy stays in force): {e}"),
            }
        } else if let Some(e) = &response.error {
            eprintln!("error: {e}");
        }
    }
    if response.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `isolator audit verify`.
fn audit_verify(
    files: Vec<PathBuf>,
    all: bool,
    trusted_keys: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let files = match (all, files.as_slice()) {
        (true, [one]) => isolator::audit::files_of(one),
        (true, _) => {
            eprintln!(
                "error: --all takes one FILE (the current log); its rotated files are found beside it"
            );
            return ExitCode::from(2);
        }
        (false, _) => files,
    };
    let trusted = match trusted_keys
        .as_deref()
        .map(isolator::signing::TrustedKeys::load)
    {
        None => None,
        Some(Ok(keys)) => Some(keys),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let verified = match isolator::audit::verify(&files, trusted.as_ref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if json {
        let broken = verified.broken.as_ref().map(|(file, line, why)| {
            serde_json::json!({ "file": file.display().to_string(), "line": line, "error": why })
        });
        let out = serde_json::json!({
            "ok": verified.broken.is_none(),
            "records": verified.records,
            "checkpoints_verified": verified.checkpoints,
            "checkpoints_unchecked": verified.unchecked_checkpoints,
            "continues_from": verified.continues,
            "head": verified.head,
            "broken": broken,
        });
        println!("{out}");
    } else {
        match &verified.broken {
            Some((file, line, why)) => eprintln!(
                "{}:{line}: the chain is broken here: {why} ({} record(s) before it are whole)",
                file.display(),
                verified.records
            ),
            None => {
                println!(
                    "ok: {} record(s), chain whole; head {}",
                    verified.records,
                    verified.head.as_deref().unwrap_or("(empty)")
                );
                if let Some(prev) = &verified.continues {
                    println!(
                        "  continues a chain from {prev} (earlier files not given or rotated away)"
                    );
                }
                if trusted.is_some() {
                    println!("  {} signed checkpoint(s) verified", verified.checkpoints);
                } else if verified.unchecked_checkpoints > 0 {
                    println!(
                        "  {} signed checkpoint(s) not checked (give --trusted-keys DIR)",
                        verified.unchecked_checkpoints
                    );
                }
            }
        }
    }
    if verified.broken.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The manual pages and shell completions, generated from the command line's definition.
fn generate_docs(man: &std::path::Path, completions: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    for dir in [man, completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), man)
        .with_context(|| format!("writing manual pages into {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "isolator", completions).with_context(
            || format!("writing {shell} completions into {}", completions.display()),
        )?;
    }
    Ok(())
}

/// Runs a client command's future on a runtime of its own.
fn block_on(future: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(future),
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::from(2)
        }
    }
}

/// `isolator run`'s fleet options, checked, defaults filled in.
fn fleet_options(
    url: &str,
    tls: isolator::fleet::TlsArgs,
    group: Option<String>,
    host: Option<String>,
    cache_dir: Option<PathBuf>,
    lease_seconds: Option<i64>,
    start_timeout: Option<f64>,
) -> anyhow::Result<daemon::FleetOptions> {
    let location: isolator::fleet::Location = url.parse()?;
    let group = group.unwrap_or_else(|| isolator::fleet::DEFAULT_GROUP.to_string());
    isolator::fleet::check_name("--fleet-group", &group)?;
    let host = match host {
        Some(host) => host,
        None => isolator::fleet::hostname()?,
    };
    isolator::fleet::check_name("--fleet-host", &host)?;
    let start_timeout = start_timeout.unwrap_or(5.0);
    if !(0.1..=3600.0).contains(&start_timeout) {
        anyhow::bail!("--fleet-start-timeout {start_timeout}: give 0.1 to 3600 seconds");
    }
    Ok(daemon::FleetOptions {
        location,
        tls,
        group,
        host,
        cache_dir: cache_dir.unwrap_or_else(|| PathBuf::from(isolator::fleet::DEFAULT_CACHE_DIR)),
        lease_seconds: lease_seconds.unwrap_or(isolator::fleet::DEFAULT_LEASE_SECONDS),
        start_timeout: std::time::Duration::from_secs_f64(start_timeout),
    })
}
