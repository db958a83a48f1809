//! What one benchmark run is asked to do: the settings behind `nowconnect-bench`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::burst::BurstSettings;
use super::fleet::FleetSettings;
use super::ldap;
use super::system::Options;
use super::wan_run::WanSettings;

/// Everything the run needs to know; see the `nowconnect-bench` flags.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bin_dir: PathBuf,
    /// The agent binary (default: `nowconnect-agent` in `bin_dir`).
    pub agent_bin: PathBuf,
    pub work_dir: PathBuf,
    pub protocol: String,
    pub agent_multi_thread: bool,
    /// `TOKIO_WORKER_THREADS` for the relay: workers of its accepting runtime and tunnel shards (None: one per core).
    pub relay_worker_threads: Option<usize>,
    pub log_level: String,
    /// Each throughput/latency workload runs this many times, direct and tunnel alternating.
    pub rounds: usize,
    pub bulk_secs: f64,
    pub bulk_cap: u64,
    pub streams: usize,
    pub pingpong_count: usize,
    pub pingpong_size: usize,
    pub idle_streams: usize,
    /// None: skip the LDAP workload.
    pub ldap: Option<LdapSettings>,
    /// Which workloads run (`--only`); the default is all of them.
    pub only: Workloads,
    /// Relay restarts in a row per signal (`restart`).
    pub restarts: usize,
    /// Failovers (`failover`).
    pub failovers: usize,
    /// Bursts of short connections (`burst`).
    pub burst: BurstSettings,
    /// Idle agent tunnels on one relay (`tunnels`).
    pub fleet: FleetSettings,
    /// The emulated WAN link (`wan`).
    pub wan: WanSettings,
    /// `limits.max_stream_window_bytes` of both processes (None: their default).
    pub max_stream_window_bytes: Option<u32>,
}

/// The workloads `--only` can pick.
#[derive(Debug, Clone, Copy)]
pub struct Workloads {
    pub memory: bool,
    pub pingpong: bool,
    /// Bulk transfers with one stream (up and down).
    pub bulk1: bool,
    /// Bulk transfers with `--streams` streams (up and down).
    pub bulk_n: bool,
    pub ldap: bool,
    /// Relay restarted in a row (SIGKILL, then SIGTERM): agent READY from the new start.
    pub restart: bool,
    /// The agent's relay SIGKILLed: READY on the other relay of its list.
    pub failover: bool,
    /// Relays A and B with a mesh: local streams on A against cross-relay ones through B.
    pub cross: bool,
    /// Bursts of short connections: relay RSS before, right after and each second after.
    pub burst: bool,
    /// Many idle agent tunnels on one relay: memory per tunnel, idle CPU, reconnect rate.
    pub tunnels: bool,
    /// One stream each way over an emulated WAN link: plain TCP, the fixed window, autotuning.
    pub wan: bool,
}

impl Workloads {
    /// Any workload of the relay + agent pair (the table against direct).
    pub fn tunnel(&self) -> bool {
        self.memory || self.pingpong || self.bulk1 || self.bulk_n || self.ldap
    }

    /// Parses `memory,pingpong,bulk,bulk1,ldap,restart,failover,cross,burst,tunnels,wan` (bulk =
    /// bulk1 + the multi-stream cases).
    pub fn parse(list: &str) -> anyhow::Result<Workloads> {
        let mut w = Workloads {
            memory: false,
            pingpong: false,
            bulk1: false,
            bulk_n: false,
            ldap: false,
            restart: false,
            failover: false,
            cross: false,
            burst: false,
            tunnels: false,
            wan: false,
        };
        for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match item {
                "memory" => w.memory = true,
                "pingpong" => w.pingpong = true,
                "bulk" => (w.bulk1, w.bulk_n) = (true, true),
                "bulk1" => w.bulk1 = true,
                "ldap" => w.ldap = true,
                "restart" => w.restart = true,
                "failover" => w.failover = true,
                "cross" => w.cross = true,
                "burst" => w.burst = true,
                "tunnels" => w.tunnels = true,
                "wan" => w.wan = true,
                other => anyhow::bail!(
                    "--only {other}: expected a list of memory, pingpong, bulk, bulk1, ldap, \
                     restart, failover, cross, burst, tunnels, wan"
                ),
            }
        }
        Ok(w)
    }
}

impl Settings {
    /// How the workloads start relay and agent: these settings, configs and logs in `dir`,
    /// `TOKIO_WORKER_THREADS` for the relay when `--relay-worker-threads` is set.
    pub fn options(&self, dir: PathBuf) -> Options {
        let relay_env = self
            .relay_worker_threads
            .map(|n| ("TOKIO_WORKER_THREADS".to_owned(), n.to_string()))
            .into_iter()
            .collect();
        Options {
            bin_dir: self.bin_dir.clone(),
            agent_bin: self.agent_bin.clone(),
            dir,
            protocol: self.protocol.clone(),
            agent_multi_thread: self.agent_multi_thread,
            relay_env,
            relay_tunnel_yaml: String::new(),
            log_level: self.log_level.clone(),
            wan: None,
            max_stream_window_bytes: self.max_stream_window_bytes,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LdapSettings {
    pub addr: SocketAddr,
    pub dn: String,
    pub password: String,
    pub search: ldap::Search,
    pub searches: usize,
}
