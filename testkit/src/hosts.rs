//! Name resolution of a test's own: a hosts file that only the commands a test starts see, by
//! running them in a private mount namespace with the file bind-mounted over `/etc/hosts`
//! (`unshare --mount`; as a non-root user also `--map-root-user`). Clients can then use real
//! names (`ldaps://dc1.corp.test:<port>`) that resolve to loopback, and check certificates for
//! them, without touching the machine's resolver.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::temp::TempDir;

/// A hosts file in a temporary directory (removed on drop).
#[derive(Debug)]
pub struct HostsFile {
    path: PathBuf,
    _dir: TempDir,
}

impl HostsFile {
    /// `localhost` plus each `(address, name)`.
    pub fn new(entries: &[(IpAddr, &str)]) -> HostsFile {
        let dir = TempDir::new("hosts");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (ip, name) in entries {
            text.push_str(&format!("{ip} {name}\n"));
        }
        let path = dir.write("hosts", &text);
        HostsFile { path, _dir: dir }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `unshare` is installed (util-linux); the caller decides between skip and fail.
    pub fn available() -> bool {
        Command::new("unshare")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A command that runs `program` (add its arguments to the result) with this file as
    /// `/etc/hosts`. The namespace ends with the command.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("unshare");
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            cmd.arg("--map-root-user");
        }
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&self.path)
            .arg(program.as_ref());
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_resolves_only_inside() {
        if !crate::require(HostsFile::available(), "unshare (util-linux)") {
            return;
        }
        let hosts = HostsFile::new(&[("127.0.0.7".parse().expect("ip"), "dc9.nc-hosts.test")]);
        let out = hosts
            .command("getent")
            .args(["hosts", "dc9.nc-hosts.test"])
            .output()
            .expect("run getent in the namespace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("127.0.0.7"),
            "inside: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let outside = Command::new("getent")
            .args(["hosts", "dc9.nc-hosts.test"])
            .output()
            .expect("run getent");
        assert!(!outside.status.success(), "the name leaked to the machine");
    }
}
