//! A real Redis for the HA tests: Debian's `redis-server`, listening only on a unix socket in
//! a temp dir (`--port 0` turns TCP off, so there is no port to pick or race for), empty and
//! without persistence (`--save '' --appendonly no`), in the foreground and killed when
//! dropped. [`Redis::stop`] and [`Redis::start_again`] restart it on the same socket, empty,
//! as after a Redis restart without persistence. Missing binary: the test is skipped locally
//! and fails in CI (`CI=true`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::temp::TempDir;
use crate::wait::DEADLINE;

#[derive(Debug)]
pub struct Redis {
    bin: PathBuf,
    sock: PathBuf,
    /// `None` while stopped; killed when dropped (`kill_on_drop`), before `dir` goes.
    child: Option<Child>,
    dir: TempDir,
    runs: u32,
}

impl Redis {
    /// Starts redis-server, or returns `None` (skip) when it is not installed outside CI.
    pub async fn start() -> Option<Redis> {
        let bin = crate::program("redis-server");
        if !crate::require(bin.is_some(), "redis-server") {
            return None;
        }
        let dir = TempDir::new("redis");
        let mut r = Redis {
            bin: bin.expect("checked above"),
            sock: dir.join("redis.sock"),
            child: None,
            dir,
            runs: 0,
        };
        r.start_again().await;
        Some(r)
    }

    /// `unix://<dir>/redis.sock`: what `ha.redis_url` takes.
    pub fn url(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// Kills the server (as a crash would) and waits until it is gone; the socket is removed.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        let _ = std::fs::remove_file(&self.sock);
    }

    /// Starts the server (again) on the same socket, empty; returns once it answers.
    pub async fn start_again(&mut self) {
        self.stop().await;
        self.runs += 1;
        let log = std::fs::File::create(self.dir.join(&format!("redis-{}.log", self.runs)))
            .expect("create the redis log");
        let mut child = Command::new(&self.bin)
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.sock)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let start = tokio::time::Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server exited with {status} (see {})",
                    self.dir.path().display()
                );
            }
            if self.answers().await {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "redis-server did not answer on {} within {DEADLINE:?}",
                self.sock.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// PING over the socket answers PONG.
    async fn answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::UnixStream::connect(&self.sock).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"+PONG\r\n"
    }
}
