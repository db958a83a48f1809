//! This test process as the kernel sees it: resident memory, open descriptors, and the
//! descriptor limit a test holding thousands of sockets raises first. The relay runs in-process,
//! so these include it.

/// Resident memory of this process, in KiB (`VmRSS` in `/proc/self/status`).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Descriptors open in this process now (entries of `/proc/self/fd`).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// Raises the soft `RLIMIT_NOFILE` to at least `n` (up to the hard limit); panics, naming the
/// limit, when the hard limit is lower, so a test never silently runs with fewer sockets.
pub fn raise_nofile(n: u64) {
    let got = rlimit::increase_nofile_limit(n).expect("setrlimit(RLIMIT_NOFILE)");
    assert!(
        got >= n,
        "RLIMIT_NOFILE can only be raised to {got}, the test needs {n} (ulimit -Hn)"
    );
}

/// Sends `sig` (`-HUP`, `-TERM`, ...) to process `pid` with kill(1); panics when it fails.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Waits up to `timeout` for `child` to exit; returns its exit code (`None`: ended by a
/// signal). Panics, naming the child, when it is still running at the deadline.
pub fn wait_exit(child: &mut std::process::Child, timeout: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("poll the child") {
            return s.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "process {} did not exit within {timeout:?}",
            child.id()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_descriptors_and_memory() {
        raise_nofile(256);
        let before = open_fds();
        let files: Vec<_> = (0..10)
            .map(|_| std::fs::File::open("/proc/self/status").expect("open"))
            .collect();
        assert!(open_fds() >= before + 10);
        drop(files);
        assert!(open_fds() < before + 10);
        assert!(rss_kib() > 0);
    }
}
