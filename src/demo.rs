//! A complete system on loopback: relay, agent and a sample echo target, wired together.
//!
//! Nothing leaves 127.0.0.1, the relay runs with the development auth bypass (loopback only) and
//! the agent dials it over plain `ws://`, which is allowed here for the same reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nowconnect_agent::{AgentConfig, AgentHandle};
use nowconnect_relay::{RelayConfig, RelayHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running demo; dropping it stops everything.
#[derive(Debug)]
pub struct Demo {
    pub relay: RelayHandle,
    pub agent: AgentHandle,
    /// Where the sample echo target listens (the agent's side of the tunnel).
    pub target: SocketAddr,
    /// Where a client connects (the relay's listener for connector `echo`).
    pub client: SocketAddr,
    target_task: JoinHandle<()>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.target_task.abort();
    }
}

/// Starts the three parts; `listen_port` is the relay listener's port (0 = any free port).
pub async fn start(listen_port: u16) -> anyhow::Result<Demo> {
    let (target, target_task) = echo_target().await?;
    let relay_yaml = format!(
        "tunnel:\n  host: 127.0.0.1\n  port: 0\nsecurity:\n  dev_bypass: true\n\
         listeners:\n  - name: echo\n    bind: 127.0.0.1:{listen_port}\n    connector: echo\n"
    );
    let relay = nowconnect_relay::start(RelayConfig::from_yaml_str(&relay_yaml)?)
        .await
        .context("starting the relay")?;
    let agent_yaml = format!(
        "tunnel:\n  url: ws://{}/tunnel\n  agent_id: demo-agent\n  allow_insecure_ws: true\n  \
         exported_connectors: [echo]\nhealth:\n  host: 127.0.0.1\n  port: 0\n\
         targets:\n  echo:\n    host: 127.0.0.1\n    port: {}\n",
        relay.tunnel_addr(),
        target.port()
    );
    let agent = nowconnect_agent::start(AgentConfig::from_yaml_str(&agent_yaml)?)
        .await
        .context("starting the agent")?;
    let client = relay
        .listener_addr("echo")
        .context("relay has no `echo` listener")?;
    let demo = Demo {
        relay,
        agent,
        target,
        client,
        target_task,
    };
    demo.wait_ready(Duration::from_secs(10)).await?;
    Ok(demo)
}

impl Demo {
    /// Waits until the agent's health port says READY.
    pub async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + within;
        loop {
            if health(self.agent.health_addr()).await.as_deref() == Some("READY\n") {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("the agent did not become READY within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `msg` through the tunnel and checks it comes back; returns the round-trip time.
    pub async fn self_check(&self, msg: &[u8]) -> anyhow::Result<Duration> {
        let start = Instant::now();
        let mut s = TcpStream::connect(self.client)
            .await
            .context("connecting to the relay listener")?;
        s.set_nodelay(true)?;
        s.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .context("no echo within 5 s")??;
        if back != msg {
            bail!("the echo differs from what was sent");
        }
        Ok(start.elapsed())
    }
}

async fn health(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

/// The sample target: echoes every byte back, half-closes after the client's EOF.
pub async fn echo_target() -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the echo target")?;
    let addr = l.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok((addr, task))
}
