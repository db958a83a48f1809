//! `nowconnect-relay --config cloud.yaml` (or `NC_CONFIG`).
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for a configuration that cannot
//! work, 1 for anything else that stops start-up (e.g. a port already in use).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nowconnect_relay::config::ProcessEnv;
use nowconnect_relay::{start, RelayConfig, StartError};
use tracing::{info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "nowconnect-relay",
    version,
    about = "NowConnect relay (cloud hub)"
)]
struct Args {
    /// Relay configuration (YAML).
    #[arg(long, env = "NC_CONFIG", default_value = "config/cloud.yaml")]
    config: PathBuf,
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
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(unix)]
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn terminated() {
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match RelayConfig::load(&args.config, &ProcessEnv) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("nowconnect-relay: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&cfg.observability.log_level);
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
    rt.block_on(async {
        let handle = match start(cfg).await {
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
        terminated().await;
        info!("signal received: graceful shutdown (a second signal stops at once)");
        handle.shutdown();
        tokio::select! {
            _ = handle.wait() => {}
            _ = terminated() => warn!("second signal: stopping now"),
        }
        ExitCode::SUCCESS
    })
}
