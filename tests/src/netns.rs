//! Running code inside a network namespace, and the `ip` commands the lab is built with.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Path of the bind-mounted namespace file that `ip netns add NAME` creates.
pub fn netns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

/// Runs `f` on a fresh thread that has joined network namespace `ns` (`setns(2)` on that thread
/// only; the calling thread and the rest of the process are untouched). Sockets created inside
/// `f` stay in `ns` for their whole life, so they may be returned and used from any thread.
/// A panic inside `f` is propagated to the caller.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let path = netns_path(ns);
    std::thread::scope(|scope| {
        let handle = scope.spawn(move || -> Result<T> {
            let file = File::open(&path).with_context(|| format!("open {path}"))?;
            // SAFETY: plain syscall on a valid fd; affects only this (new) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Sets interface `ifname` of namespace `ns` up from this process (`SIOCSIFFLAGS`), without
/// the tens of milliseconds that starting `ip` takes on a busy machine: for a test that must
/// act in the moment right after another step.
pub fn set_up_now(ns: &str, ifname: &str) -> Result<()> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!(
            "interface name {ifname:?}: 1 to {} bytes",
            libc::IFNAMSIZ - 1
        );
    }
    in_netns(ns, || {
        // SAFETY: plain syscall; the fd is owned at once.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: an all-zero ifreq is valid (empty name, zero flags).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (to, from) in req.ifr_name.iter_mut().zip(name) {
            *to = *from as libc::c_char;
        }
        // SAFETY: `req` is a valid ifreq naming the interface; the kernel fills the flags.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
            bail!(
                "SIOCGIFFLAGS {ifname} in {ns}: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
        unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
        // SAFETY: as above.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
            bail!(
                "SIOCSIFFLAGS {ifname} in {ns}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })
}

/// Runs a command to completion and returns its output; spawning failures become errors, a
/// non-zero exit does not (see [`run_ok`]).
pub fn run(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(std::process::Stdio::null());
    cmd.output()
        .with_context(|| format!("spawn {}", describe(cmd)))
}

/// Runs a command, fails with its stderr unless it exits 0, returns its stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`, which must succeed.
pub fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

/// `ip -n NS ARGS...`, which must succeed.
pub fn ip_n(ns: &str, args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").arg("-n").arg(ns).args(args))
}

/// A command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Writes a sysctl of namespace `ns` (`key` in dotted form, e.g. `net.ipv6.conf.all.forwarding`).
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(ns, || {
        std::fs::write(&path, value).with_context(|| format!("write {path} = {value}"))
    })
    .with_context(|| format!("sysctl {key}={value} in netns {ns}"))
}

/// Names of all network namespaces (`ip netns list`), without the `(id: N)` suffix.
pub fn list_netns() -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Pids of all processes whose network namespace is `ns` (`ip netns pids`).
pub fn netns_pids(ns: &str) -> Vec<i32> {
    match run(Command::new("ip").args(["netns", "pids", ns])) {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether process `pid` exists.
pub fn pid_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `BPF_TCX_INGRESS` / `BPF_TCX_EGRESS` of `enum bpf_attach_type`.
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// `BPF_PROG_QUERY` of `enum bpf_cmd`.
const BPF_PROG_QUERY: libc::c_long = 16;

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BpfProgQuery {
    target_ifindex: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// How many BPF programs are attached to `ifname` in namespace `ns` through TCX (kernel 6.6
/// and later; what aya uses for TC programs there), for the ingress and the egress hook.
/// `ip link` and Debian's bpftool 7.1 do not show these.
pub fn tcx_prog_counts(ns: &str, ifname: &str) -> Result<(u32, u32)> {
    let name = std::ffi::CString::new(ifname)?;
    in_netns(ns, || {
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            bail!("no interface {ifname}");
        }
        tcx_prog_counts_of(ifindex)
    })
    .with_context(|| format!("TCX programs of {ifname} in netns {ns}"))
}

/// [`tcx_prog_counts`] of the interface `ifindex` of the calling thread's namespace.
pub fn tcx_prog_counts_of(ifindex: u32) -> Result<(u32, u32)> {
    let mut counts = [0u32; 2];
    for (i, attach_type) in [BPF_TCX_INGRESS, BPF_TCX_EGRESS].into_iter().enumerate() {
        let mut q = BpfProgQuery {
            target_ifindex: ifindex,
            attach_type,
            ..Default::default()
        };
        // SAFETY: bpf(BPF_PROG_QUERY) with a valid, fully initialised attr of that size;
        // prog_ids is NULL, so the kernel only writes the counts into `q`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut q as *mut BpfProgQuery,
                std::mem::size_of::<BpfProgQuery>() as u32,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOENT) {
                continue; // nothing attached
            }
            bail!("BPF_PROG_QUERY ifindex {ifindex} attach type {attach_type}: {err}");
        }
        counts[i] = q.prog_cnt;
    }
    Ok((counts[0], counts[1]))
}
