//! `nowconnect-relay --config cloud.yaml` (or `NC_CONFIG`).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a configuration that cannot
//! work, 1 for anything else that stops start-up (e.g. a port already in use).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nowconnect_relay::config::ProcessEnv;
use nowconnect_relay::notify::{self, Notifier};
use nowconnect_relay::{start_sharded, RelayConfig, Shards, StartError};
use tracing::{info, warn};

mod alloc;

#[derive(Debug, Parser)]
#[command(
    name = "nowconnect-relay",
    version,
    about = "NowConnect relay (cloud hub): agent tunnels on /tunnel, one TCP listener per connector",
    long_about = "nowconnect-relay accepts the tunnels of NowConnect agents on /tunnel (JWT from \
the IdP's JWKS), binds one TCP listener per connector and relays every client connection on a \
listener through the tunnel of an agent that exported that connector. It also serves /healthz, \
/readyz, /metrics and the portal API (/api/v1).",
    after_long_help = "FILES:\n  \
/etc/nowconnect/cloud.yaml   configuration (the package's unit passes it with --config)\n  \
/etc/nowconnect/relay.env    environment overrides for the systemd unit (NOWCONNECT_*)\n  \
/var/lib/nowconnect          state_dir: portal state (StateDirectory= of the unit)\n  \
/var/log/nowconnect          audit trail, audit.jsonl (LogsDirectory= of the unit)\n\n\
SIGNALS:\n  \
SIGTERM, SIGINT  stop accepting, let open streams finish (limits.shutdown_grace_ms), exit 0\n\n\
SYSTEMD:\n  \
Type=notify: READY=1 once every listener is bound and /tunnel serves; WATCHDOG=1; STATUS=.\n\n\
EXIT STATUS:\n  \
0 clean stop or --check passed; 2 the configuration cannot work; 1 any other failure.\n\n\
SEE ALSO:\n  \
systemctl status nowconnect-relay, journalctl -u nowconnect-relay, README.md"
)]
struct Args {
    /// Relay configuration (YAML).
    #[arg(long, env = "NC_CONFIG", default_value = "config/cloud.yaml")]
    config: PathBuf,
    /// Validate the configuration and exit (0: valid).
    #[arg(long)]
    check: bool,
}

fn init_logging(default_level: &str) {
    let filter = std::env::var("NC_LOG_LEVEL")
        .ok()
        .and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(default_level).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("NC_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

/// SIGTERM and SIGINT, watched from before start-up: a stop that arrives while the relay starts
/// (systemd's stop right after start, say) is a graceful one too, not death by signal.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

/// SIGHUP (`systemctl reload`), watched from before start-up like [`Signals`]: it never kills
/// the relay; it reloads the configuration.
struct Hangups {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Hangups {
    /// Must run inside the runtime.
    fn watch() -> Hangups {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Hangups {
                hup: signal(SignalKind::hangup())
                    .inspect_err(|e| warn!(error = %e, "cannot watch SIGHUP"))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Hangups {}
    }

    /// The next SIGHUP (never, where there is none).
    async fn recv(&mut self) {
        #[cfg(unix)]
        next(&mut self.hup).await;
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}

impl Signals {
    /// Must run inside the runtime.
    fn watch() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    warn!(error = %e, "cannot watch {name}");
                    None
                }
            };
            Signals {
                term: watch(SignalKind::terminate(), "SIGTERM"),
                int: watch(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or SIGINT.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = next(&mut self.term) => {}
                _ = next(&mut self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The next signal of `s` (cancel safe); never when it could not be watched.
#[cfg(unix)]
async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

fn main() -> ExitCode {
    let alloc_refused = alloc::configure();
    let args = Args::parse();
    let cfg = match RelayConfig::load(&args.config, &ProcessEnv) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("nowconnect-relay: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        println!("configuration OK: {}", args.config.display());
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg.observability.log_level);
    info!(allocator = alloc::NAME, "allocator");
    for r in alloc_refused {
        warn!(allocator = alloc::NAME, setting = %r, "allocator setting refused; its default stays");
    }
    // tokio reads the same variable and panics on a bad value: refuse it here, in one line.
    let threads = match thread_count() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("nowconnect-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nowconnect-relay: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let shards = match Shards::start(threads) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nowconnect-relay: cannot start the tunnel threads: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async {
        let mut signals = Signals::watch();
        let mut hangups = Hangups::watch();
        // Type=notify: systemd sets NOTIFY_SOCKET (and WATCHDOG_USEC with WatchdogSec=).
        let notify = Notifier::from_env(&ProcessEnv);
        let handle = match start_sharded(cfg, Some(shards.clone())).await {
            Ok(h) => h,
            Err(e @ StartError::Config(_)) => {
                eprintln!("nowconnect-relay: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("nowconnect-relay: {e}");
                return ExitCode::from(1);
            }
        };
        info!(
            shards = shards.len(),
            "tunnels run on one thread each, spread over the shards"
        );
        {
            // Every listener is bound and the tunnel HTTP server serves.
            let status = || notify::status_line(handle.agents_connected(), handle.open_connections());
            notify.ready(&status());
            let keep_alive = notify.keep_alive(status);
            tokio::pin!(keep_alive);
            loop {
                tokio::select! {
                    _ = signals.recv() => break,
                    _ = &mut keep_alive => {}
                    _ = hangups.recv() => {
                        info!(config = %args.config.display(), "SIGHUP: reloading the configuration");
                        // Logged, audited and counted inside; a refused file leaves everything as is.
                        // A stop signal during a reload (which may wait on an IdP) wins: a reload
                        // swaps nothing before its last step, so dropping it changes nothing.
                        tokio::select! {
                            _ = handle.reload(&args.config, &ProcessEnv) => {}
                            _ = &mut keep_alive => {}
                            _ = signals.recv() => break,
                        }
                    }
                }
            }
        }
        info!(event = "shutdown_requested", "signal received: graceful shutdown (a second signal stops at once)");
        notify.stopping("stopping: open streams may finish (limits.shutdown_grace_ms)");
        handle.shutdown();
        tokio::select! {
            _ = handle.wait() => {}
            _ = signals.recv() => warn!("second signal: stopping now"),
            _ = notify.keep_alive(|| "stopping".to_string()) => {}
        }
        ExitCode::SUCCESS
    });
    shards.stop();
    code
}

/// Tunnel threads: `TOKIO_WORKER_THREADS` when set (the same knob sizes the runtime that
/// accepts clients), else one per core.
fn thread_count() -> Result<usize, String> {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if (1..=1024).contains(&n) => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS must be a whole number from 1 to 1024, got {v:?}"
            )),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}
