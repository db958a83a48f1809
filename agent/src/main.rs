//! `nowconnect-agent`: configuration, logging, runtime and signals around [`nowconnect_agent::start`].
//! SIGTERM / SIGINT stop it gracefully; SIGHUP reloads the configuration from the same sources
//! (see [`nowconnect_agent::AgentHandle::reload`]).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use nowconnect_agent::cli::Cli;
use nowconnect_agent::config::{log_filter, AgentConfig, LogFormat, ProcessEnv};
use nowconnect_agent::Notifier;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How long a graceful stop may take before the remaining tasks are dropped.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match cli.load(&ProcessEnv) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("nowconnect-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        // The proxy prints without its password.
        let proxy = match &cfg.proxy {
            Some(p) if cfg.no_proxy.matches(&cfg.url.host, cfg.url.port) => {
                format!("{p} (bypassed for the relay by no_proxy)")
            }
            Some(p) => p.to_string(),
            None => "none".into(),
        };
        let relays = cfg
            .urls
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "configuration OK: agent_id={} relay={} connectors={} health={} metrics={} proxy={proxy}",
            cfg.agent_id,
            if relays.is_empty() {
                cfg.url.to_string()
            } else {
                relays
            },
            cfg.connectors().collect::<Vec<_>>().join(","),
            cfg.health_addr(),
            cfg.metrics_addr
                .map_or_else(|| "off".to_string(), |a| a.to_string())
        );
        return ExitCode::SUCCESS;
    }
    init_logging(&cfg);
    let runtime = if cli.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(run(&cli, cfg)),
        Err(e) => {
            eprintln!("nowconnect-agent: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, cfg: AgentConfig) -> ExitCode {
    // systemd (Type=notify) sets NOTIFY_SOCKET and, with WatchdogSec=, WATCHDOG_USEC.
    let notify = Notifier::from_env(&ProcessEnv);
    let mut stop = StopSignals::register();
    let handle = match nowconnect_agent::start_with(cfg, notify).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("nowconnect-agent: {e}");
            return ExitCode::from(if e.is_config() { 2 } else { 1 });
        }
    };
    while stop.next().await == Event::Reload {
        tracing::info!("SIGHUP: reloading the configuration");
        handle.reload(cli.load(&ProcessEnv));
    }
    tracing::info!(event = "agent_stopping", "stopping");
    handle.shutdown();
    if tokio::time::timeout(STOP_GRACE, handle.wait())
        .await
        .is_err()
    {
        tracing::warn!("graceful stop timed out");
    }
    ExitCode::SUCCESS
}

/// What a signal asks for.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    Stop,
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, registered before the agent starts: a stop that arrives while it
/// connects (systemd's stop right after start, say) is graceful and a SIGHUP then is a reload
/// once it runs, never death by the signal's default action.
struct StopSignals {
    term: Option<Signal>,
    int: Option<Signal>,
    hup: Option<Signal>,
}

impl StopSignals {
    /// Must run inside the runtime.
    fn register() -> StopSignals {
        let one = |kind: SignalKind, name: &str| {
            signal(kind)
                .map_err(|e| tracing::warn!(error = %e, "cannot watch {name}"))
                .ok()
        };
        StopSignals {
            term: one(SignalKind::terminate(), "SIGTERM"),
            int: one(SignalKind::interrupt(), "SIGINT"),
            hup: one(SignalKind::hangup(), "SIGHUP"),
        }
    }

    async fn next(&mut self) -> Event {
        async fn of(s: Option<&mut Signal>) {
            if let Some(s) = s {
                s.recv().await;
            } else {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            _ = of(self.term.as_mut()) => Event::Stop,
            _ = of(self.int.as_mut()) => Event::Stop,
            _ = of(self.hup.as_mut()) => Event::Reload,
        }
    }
}

fn init_logging(cfg: &AgentConfig) {
    // Validated already; the fallback only guards a config built without validation.
    let filter = log_filter(&cfg.log_level).unwrap_or_else(|_| {
        tracing_subscriber::filter::Targets::new()
            .with_default(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    let result = match cfg.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Plain => builder
            .with_ansi(std::io::stderr().is_terminal())
            .finish()
            .with(filter)
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("nowconnect-agent: cannot set up logging: {e}");
    }
}
