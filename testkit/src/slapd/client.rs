//! `ldapsearch` as a client: plain LDAP or LDAPS, trusting only a test CA, and optionally resolving
//! names through a private hosts file, so a test can use `ldaps://dc1.corp.test:<relay port>` and
//! have the client check the server certificate's name as a real one would.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{find_binary, reap, ADMIN_DN, ADMIN_PW, BASE_DN, LDAPSEARCH_TIMEOUT};
use crate::hosts::HostsFile;

/// One ldapsearch configuration: the URL and how the client trusts and resolves.
#[derive(Debug, Clone)]
pub struct Client<'a> {
    url: String,
    /// The only CA the client trusts (`LDAPTLS_CACERT`, `LDAPTLS_REQCERT=demand`).
    ca_file: Option<PathBuf>,
    /// Accept any server certificate (readiness probes only).
    insecure: bool,
    /// Resolve host names through this file, in a private mount namespace.
    hosts: Option<&'a HostsFile>,
    timeout: Duration,
}

impl<'a> Client<'a> {
    /// A client for `url` (`ldap://host:port` or `ldaps://host:port`) that reads no LDAP
    /// configuration file.
    pub fn new(url: impl Into<String>) -> Client<'a> {
        Client {
            url: url.into(),
            ca_file: None,
            insecure: false,
            hosts: None,
            timeout: LDAPSEARCH_TIMEOUT,
        }
    }

    /// Trust only the CA in `pem_file` and require a valid certificate for the URL's host name.
    pub fn trust_only(mut self, pem_file: &Path) -> Client<'a> {
        self.ca_file = Some(pem_file.to_path_buf());
        self
    }

    /// Accept any server certificate.
    pub fn insecure(mut self) -> Client<'a> {
        self.insecure = true;
        self
    }

    /// Resolve names through `hosts` (see [`HostsFile::command`]).
    pub fn resolve_with(mut self, hosts: &'a HostsFile) -> Client<'a> {
        self.hosts = Some(hosts);
        self
    }

    /// Kill ldapsearch after `timeout` (default [`LDAPSEARCH_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Client<'a> {
        self.timeout = timeout;
        self
    }

    /// A search as the test directory's admin under its base; see [`Client::search_as`].
    pub fn search(
        &self,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        self.search_as(BASE_DN, ADMIN_DN, ADMIN_PW, filter, attrs, page_size)
    }

    /// `ldapsearch -x -LLL -o ldif-wrap=no -H URL -b BASE -D DN -w PW [-E pr=N/noprompt]
    /// FILTER ATTRS...`; stdout, or an error with stderr on a non-zero exit or a timeout.
    pub fn search_as(
        &self,
        base_dn: &str,
        bind_dn: &str,
        pw: &str,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        let mut args: Vec<String> = [
            "-x",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-o",
            "nettimeout=10",
            "-H",
            &self.url,
            "-b",
            base_dn,
            "-D",
            bind_dn,
            "-w",
            pw,
        ]
        .map(String::from)
        .to_vec();
        if let Some(n) = page_size {
            args.push("-E".into());
            args.push(format!("pr={n}/noprompt"));
        }
        args.push(filter.into());
        args.extend(attrs.iter().map(|a| a.to_string()));
        self.run(&args)
    }

    /// Runs ldapsearch with `args`, reading stdout/stderr on threads (no pipe deadlock) and
    /// killing it after the timeout.
    pub(super) fn run(&self, args: &[String]) -> Result<Vec<u8>, String> {
        let bin = find_binary("ldapsearch").ok_or("ldapsearch not found in PATH")?;
        let mut cmd = match self.hosts {
            Some(h) => h.command(&bin),
            None => Command::new(&bin),
        };
        cmd.args(args);
        // Plain LDAP reads no configuration at all (LDAPNOINIT). LDAPNOINIT would also ignore
        // the LDAPTLS_* variables, so with TLS the system ldap.conf is read, but these variables
        // override its TLS settings (a client trusting only the test CA, as issue 21 asks), and
        // LDAPRC names a file that does not exist (no ~/.ldaprc).
        match (&self.ca_file, self.insecure) {
            (Some(ca), _) => {
                cmd.env("LDAPTLS_CACERT", ca)
                    .env("LDAPTLS_REQCERT", "demand");
                cmd.env("LDAPRC", "nc-no-ldaprc");
            }
            (None, true) => {
                cmd.env("LDAPTLS_REQCERT", "never")
                    .env("LDAPRC", "nc-no-ldaprc");
            }
            (None, false) => {
                cmd.env("LDAPNOINIT", "1");
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    reap(&mut child);
                    break Err(format!("ldapsearch timed out after {:?}", self.timeout));
                }
                Ok(None) => thread::sleep(Duration::from_millis(2)),
                Err(e) => {
                    reap(&mut child);
                    break Err(format!("cannot wait for ldapsearch: {e}"));
                }
            }
        };
        let out = stdout
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let err = stderr
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let err = String::from_utf8_lossy(&err);
        // The password is in `args`: name the URL only.
        match status {
            Ok(status) if status.success() => Ok(out),
            Ok(status) => Err(format!(
                "ldapsearch -H {} failed ({status}): {err}",
                self.url
            )),
            Err(e) => Err(format!("{e}: {err}")),
        }
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}
