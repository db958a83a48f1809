//! Child processes (relay, agent) that never outlive the bench, and what `/proc` says about them.
//!
//! A [`Child`] is killed when dropped. Release builds abort on panic (no unwinding, so no
//! `Drop`), and a signal ends the process without running destructors either; so every live
//! child's pid is also kept in a registry that a panic hook and a SIGINT/SIGTERM watcher
//! ([`install_guards`]) kill before the bench goes away.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use anyhow::Context;

/// Pids of children not yet reaped. A pid stays valid while it is listed: we only reap (wait)
/// after removing it, so a listed pid can never belong to someone else.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<u32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Directory removed when the bench is interrupted (its configs, keys and logs).
static SCRATCH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remove `dir` if SIGINT/SIGTERM ends the bench (`None`: keep it).
pub fn remove_on_interrupt(dir: Option<PathBuf>) {
    *SCRATCH.lock().unwrap_or_else(|e| e.into_inner()) = dir;
}

/// SIGKILLs every registered child (via `kill(1)`: this crate forbids `unsafe`, so no libc).
pub fn kill_all() {
    let pids: Vec<String> = match LIVE.try_lock() {
        Ok(g) => g.iter().map(u32::to_string).collect(),
        Err(std::sync::TryLockError::Poisoned(e)) => {
            e.into_inner().iter().map(u32::to_string).collect()
        }
        // Held by a thread that is registering or reaping right now: nothing safe to do.
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

/// Panic hook and signal watcher that kill the children first. Call once at start.
pub fn install_guards() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            kill_all();
            default(info);
        }));
        // A small runtime of its own that only waits for SIGINT/SIGTERM.
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(|| {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut term) = signal(SignalKind::terminate()) else {
                        return;
                    };
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    eprintln!("nowconnect-bench: interrupted; stopping relay and agent");
                    kill_all();
                    if let Ok(g) = SCRATCH.try_lock() {
                        if let Some(dir) = g.as_ref() {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                    std::process::exit(130);
                });
            });
        if let Err(e) = spawned {
            eprintln!("nowconnect-bench: cannot watch signals ({e}); Ctrl-C may leave children");
        }
    });
}

/// How [`Child::stop`] ends a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: no goodbye (a crash, an OOM kill).
    Kill,
    /// SIGTERM: the graceful shutdown.
    Term,
}

/// A child process with its stderr/stdout in a log file; killed on drop.
#[derive(Debug)]
pub struct Child {
    name: &'static str,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `program args...` with an empty environment (only `PATH` and `env`), so the
    /// operator's `NC_*` / `NOWCONNECT_*` variables cannot change what is measured.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<Child> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("log file handle")?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        if let Some(path) = std::env::var_os("PATH") {
            cmd.env("PATH", path);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let mut guard = live();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        guard.push(child.id());
        Ok(Child {
            name,
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The exit status if the process has ended (it is reaped then).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let mut guard = live();
        match self.child.try_wait() {
            Ok(Some(status)) => {
                guard.retain(|&p| p != self.child.id());
                Some(status)
            }
            _ => None,
        }
    }

    /// Stops the process as an operator would: `Signal::Kill` (`kill -9`, a crash) or
    /// `Signal::Term` (`systemctl stop`, a graceful shutdown), then waits up to `timeout` for
    /// it to exit (reaped then).
    pub fn stop(&mut self, signal: Signal, timeout: Duration) -> anyhow::Result<ExitStatus> {
        match signal {
            Signal::Kill => self.child.kill().context("SIGKILL")?,
            Signal::Term => {
                let ok = Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .stderr(Stdio::null())
                    .status()
                    .context("running kill -TERM")?
                    .success();
                anyhow::ensure!(ok, "kill -TERM {} failed", self.child.id());
            }
        }
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            anyhow::ensure!(
                Instant::now() < end,
                "{} did not exit within {timeout:?} after {signal:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The last `max` bytes of the log, for error messages.
    pub fn log_tail(&self, max: u64) -> String {
        let Ok(mut f) = File::open(&self.log) else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let mut guard = live();
        let _ = self.child.kill();
        let _ = self.child.wait();
        guard.retain(|&p| p != self.child.id());
    }
}

/// Memory and CPU of one process at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Resident set (VmRSS), KiB.
    pub rss_kib: u64,
    /// Peak resident set (VmHWM), KiB.
    pub hwm_kib: u64,
    /// User + system CPU, clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/status` and `/proc/PID/stat`; `None` when the process is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(Sample {
        rss_kib: status_kib(&status, "VmRSS:")?,
        hwm_kib: status_kib(&status, "VmHWM:")?,
        cpu_ticks: stat_cpu_ticks(&stat)?,
    })
}

/// This process (client and targets of every workload).
pub fn sample_self() -> Option<Sample> {
    sample(std::process::id())
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime (fields 14 and 15; counted after the `)` that ends the command name, which
/// may itself contain spaces and parentheses).
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14, the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we run on).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|&t| t > 0.0)
        .unwrap_or(100.0)
}

/// Busy and total jiffies of the whole machine (`/proc/stat`, first line), to tell how loaded
/// the machine was while a workload ran.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// The 1-minute load average.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_name() {
        let stat = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15";
        assert_eq!(stat_cpu_ticks(stat), Some(333));
    }

    #[test]
    fn parses_status_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(1024));
        assert_eq!(status_kib(status, "VmHWM:"), Some(2048));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample_self().expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
    }
}
