//! How the process takes memory from the kernel.
//!
//! mimalloc (the binary's allocator, see Cargo.toml) asks for transparent huge pages on
//! its arenas and gives freed memory back in pieces of 64 KiB. A load or reload of a
//! cloud-scale policy makes and frees a few GB of small values, and with huge pages the
//! kernel faults and zeroes 2 MB for every piece touched again: a profile of the loader
//! at 100 000 segments spent 60 % of its samples in the kernel's `clear_page_erms` under
//! huge page faults, and the policy's parse and validation took 2.6 times as long as
//! with small pages (docs/benchmarks.md, "Huge pages"). The daemon holds no data that
//! huge pages would speed up (the maps are the kernel's), so it turns them off for
//! itself.

/// Turns transparent huge pages off for this process (and processes it starts), as
/// `MIMALLOC_ALLOW_THP=0` would: the memory already mapped and all mapped later is
/// faulted in small pages. Call it first thing in `main`. An error (a kernel without
/// the setting) leaves the process as it was: slower at scale, nothing else.
pub fn small_pages_only() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes no memory of
    // this process.
    let status = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether transparent huge pages are off for this process.
pub fn small_pages_only_is_set() -> std::io::Result<bool> {
    // SAFETY: PR_GET_THP_DISABLE takes integer arguments only.
    let status = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if status < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(status == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_turned_off_for_the_process() {
        small_pages_only().expect("prctl(PR_SET_THP_DISABLE)");
        assert!(small_pages_only_is_set().expect("prctl(PR_GET_THP_DISABLE)"));
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
            "/proc/self/status does not say THP_enabled: 0:\n{status}"
        );
    }
}
