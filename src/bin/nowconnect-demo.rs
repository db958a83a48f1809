//! `cargo run --bin nowconnect-demo`: relay + agent + echo target on loopback; prints what to try.

use clap::Parser;

/// NowConnect demo: everything on 127.0.0.1, nothing to install.
#[derive(Debug, Parser)]
struct Args {
    /// Port of the relay listener clients connect to (0 = any free port).
    #[arg(long, default_value_t = 7389)]
    port: u16,
    /// Start, send one message through the tunnel, print the result and exit.
    #[arg(long)]
    check: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NC_LOG_LEVEL")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let demo = nowconnect::demo::start(args.port).await?;
    let rtt = demo.self_check(b"hello through the tunnel\n").await?;
    demo.dashboard_check().await?;
    let tunnel = demo.relay.tunnel_addr();
    println!(
        "NowConnect demo is running on loopback (self-check round trip: {} us)\n",
        rtt.as_micros()
    );
    println!(
        "  client  -> relay listener  {}   (connector \"echo\")",
        demo.client
    );
    println!("  relay   <- agent tunnel    ws://{tunnel}/tunnel   (protocol nowconnect.v2)");
    println!("  agent   -> echo target     {}", demo.target);
    println!(
        "  agent health port          {}   (answers READY)",
        demo.agent.health_addr()
    );
    println!("  relay health and metrics   http://{tunnel}/healthz  http://{tunnel}/metrics");
    println!("  dashboard (signed in as the demo's admin; demo only, the token is minted here):");
    println!("    {}\n", demo.dashboard_url);
    println!("Try it:");
    println!(
        "  nc {} {}                  # type a line: it comes back through the tunnel",
        demo.client.ip(),
        demo.client.port()
    );
    println!("  curl -s http://{tunnel}/metrics | grep nowconnect_tcp");
    println!(
        "  nc {} {}                  # agent health",
        demo.agent.health_addr().ip(),
        demo.agent.health_addr().port()
    );
    if args.check {
        println!("\ncheck passed");
        return Ok(());
    }
    println!("\nCtrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
