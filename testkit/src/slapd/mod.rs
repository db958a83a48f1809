//! A private OpenLDAP `slapd` on loopback, for tests that push real LDAP traffic through the
//! tunnel (and for the fixture's own tests).
//!
//! Every [`Slapd`] gets its own temporary directory (config, mdb database, log), its own port on
//! 127.0.0.1 and its own foreground child process; nothing touches the system slapd
//! (`/etc/ldap/slapd.d`, `/var/lib/ldap`, port 389), so instances can run in parallel, from several
//! test threads or test binaries at once. Dropping a [`Slapd`] kills the child and removes the
//! directory (unless `NC_KEEP_TEST_DIRS` is set).
//!
//! The port: slapd binds it itself and cannot take a listener from us, so [`Slapd::start`] picks
//! a port that is free at that moment and, if another process takes it before slapd binds it
//! (slapd then exits with "Address already in use"), tries another, up to 3 times.
//!
//! Needs the Debian packages `slapd` (slapd, slapadd, schemas, back_mdb module) and `ldap-utils`
//! (ldapsearch). Only `std` is used, so it works from sync and async tests alike (from async code,
//! call the blocking functions via `tokio::task::spawn_blocking` if the runtime must not stall).
//!
//! Directory loaded by [`Slapd::start`] (see [`PEOPLE_COUNT`] and friends):
//! - `dc=example,dc=org` (dcObject + organization)
//! - `ou=people`: `uid=user000` .. `uid=user049`, inetOrgPerson with cn, sn, givenName, mail,
//!   employeeNumber and a description of 0.5 to 3.6 KiB of mixed ASCII / non-ASCII UTF-8 (umlauts,
//!   Greek, Cyrillic, CJK, emoji); `uid=user025` ([`BIG_ENTRY_UID`]) has an extra ~96 KiB
//!   description value, so one LDAP message alone is larger than a loopback TCP segment.
//!   A full search of the people returns roughly 250 KiB of LDIF.
//! - `ou=groups`: `cn=staff` (groupOfNames, all people) and `cn=admins` (first three).
//!
//! [`Slapd::start_with`] takes [`Options`]: another loopback address (several servers on one
//! port, as domain controllers behind one connector), a fixed port, LDAPS with a certificate from
//! the test PKI. [`Slapd::stop`] and [`Slapd::start_again`] take a server down and bring it back on
//! the same address. [`Client`] runs ldapsearch against any URL, optionally trusting only a test CA
//! and resolving names through a private hosts file ([`crate::hosts`]).

mod client;
mod data;

pub use client::Client;
pub use data::{count_entries, directory_ldif, normalize_ldif, person_uid};

use std::fmt::Write as _;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::temp::TempDir;

/// Suffix of the test directory.
pub const BASE_DN: &str = "dc=example,dc=org";
/// Root DN (plain-text rootpw in the generated slapd.conf).
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=org";
/// Password of [`ADMIN_DN`].
pub const ADMIN_PW: &str = "nowconnect-test-secret";
/// Container of the inetOrgPerson entries.
pub const PEOPLE_BASE: &str = "ou=people,dc=example,dc=org";
/// Container of the groupOfNames entries.
pub const GROUPS_BASE: &str = "ou=groups,dc=example,dc=org";
/// Number of inetOrgPerson entries (`uid=user000` .. `uid=user049`).
pub const PEOPLE_COUNT: usize = 50;
/// Number of groupOfNames entries.
pub const GROUP_COUNT: usize = 2;
/// Every entry in the tree: base + 2 OUs + people + groups.
pub const TOTAL_ENTRIES: usize = 3 + PEOPLE_COUNT + GROUP_COUNT;
/// Filter matching exactly the people.
pub const PEOPLE_FILTER: &str = "(objectClass=inetOrgPerson)";
/// The person carrying an extra ~96 KiB description value.
pub const BIG_ENTRY_UID: &str = "user025";
/// Wall-clock limit for one `ldapsearch` run (it is killed afterwards).
pub const LDAPSEARCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `start` waits for slapd to answer a search, per port attempt.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Ports tried when slapd reports "Address already in use".
const BIND_ATTEMPTS: usize = 3;
/// Pause between readiness probes (polling, not a fixed startup delay).
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Where slapd and slapadd live on Debian and most other distributions, besides `PATH`.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/usr/local/sbin", "/sbin"];
/// Schema directories (Debian first, then upstream / RPM layouts).
const SCHEMA_DIRS: &[&str] = &[
    "/etc/ldap/schema",
    "/etc/openldap/schema",
    "/usr/local/etc/openldap/schema",
];
/// Directories holding dynamically built backends (Debian: /usr/lib/ldap/back_mdb.so).
const MODULE_DIRS: &[&str] = &[
    "/usr/lib/ldap",
    "/usr/lib64/openldap",
    "/usr/lib/openldap",
    "/usr/libexec/openldap",
    "/usr/local/libexec/openldap",
];

/// How [`Slapd::start_with`] runs the server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Loopback address to listen on (default 127.0.0.1); 127.0.0.2, ... let several servers
    /// share one port.
    pub ip: Option<Ipv4Addr>,
    /// Port to listen on (default: a free one). Fixed: one attempt, no retry on a taken port.
    pub port: Option<u16>,
    /// Serve LDAPS (`ldaps://`) with this certificate instead of plain LDAP.
    pub tls: Option<Tls>,
    /// Log every accepted connection (`-d stats`), so [`Slapd::connections`] can count them.
    pub log_connections: bool,
}

/// The server certificate of an LDAPS slapd (PEM files, e.g. from [`crate::pki::Leaf::write`]).
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A running private slapd. Killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Slapd {
    /// `<ip>:<port>` slapd listens on.
    pub addr: SocketAddr,
    /// Whether it speaks LDAPS.
    pub tls: bool,
    /// Debug level it runs at (`none`, or `stats` to log connections).
    debug: &'static str,
    /// Always [`BASE_DN`].
    pub base_dn: String,
    /// Always [`ADMIN_DN`].
    pub admin_dn: String,
    /// Always [`ADMIN_PW`].
    pub admin_pw: String,
    child: Child,
    log_path: PathBuf,
    /// Logs of the runs before [`Slapd::start_again`].
    logs: Vec<PathBuf>,
    restarts: u32,
    slapd_bin: PathBuf,
    conf_path: PathBuf,
    // Declared last: removed after the child is gone.
    dir: TempDir,
}

impl Slapd {
    /// Whether `slapd`, `slapadd` and `ldapsearch` are installed (in `PATH` or an sbin directory).
    /// The caller decides between skipping and failing (in CI, fail).
    pub fn binaries_present() -> bool {
        ["slapd", "slapadd", "ldapsearch"]
            .iter()
            .all(|name| find_binary(name).is_some())
    }

    /// Generates config and data in a fresh temporary directory, loads the data with slapadd and
    /// starts `slapd -d none` in the foreground on a free 127.0.0.1 port (up to 3 ports if the
    /// chosen one is taken meanwhile). Returns once slapd answers an authenticated search.
    pub fn start() -> Result<Slapd, String> {
        Self::start_with(&Options::default())
    }

    /// [`Slapd::start`] with `options` (address, port, LDAPS).
    pub fn start_with(options: &Options) -> Result<Slapd, String> {
        let slapd_bin = find_binary("slapd").ok_or("slapd not found in PATH or /usr/sbin")?;
        let slapadd_bin = find_binary("slapadd").ok_or("slapadd not found in PATH or /usr/sbin")?;
        if find_binary("ldapsearch").is_none() {
            return Err("ldapsearch not found in PATH (Debian package ldap-utils)".to_string());
        }
        let schema_dir = find_schema_dir()?;
        let module_dir = find_module_dir();

        let dir = TempDir::new("slapd");
        let db_dir = dir.path().join("db");
        std::fs::create_dir(&db_dir)
            .map_err(|e| format!("cannot create {}: {e}", db_dir.display()))?;
        let conf_path = dir.path().join("slapd.conf");
        let mut conf = slapd_conf(dir.path(), &db_dir, &schema_dir, module_dir.as_deref());
        if let Some(tls) = &options.tls {
            // Global directives: they must come before the first `database` line.
            let at = conf.find("database ").unwrap_or(conf.len());
            let q = |p: &Path| format!("\"{}\"", p.display());
            let tls_conf = format!(
                "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                q(&tls.cert_file),
                q(&tls.key_file)
            );
            conf.insert_str(at, &tls_conf);
        }
        std::fs::write(&conf_path, conf)
            .map_err(|e| format!("cannot write {}: {e}", conf_path.display()))?;
        let ldif_path = dir.path().join("data.ldif");
        std::fs::write(&ldif_path, directory_ldif())
            .map_err(|e| format!("cannot write {}: {e}", ldif_path.display()))?;

        let out = Command::new(&slapadd_bin)
            .arg("-q")
            .arg("-f")
            .arg(&conf_path)
            .arg("-l")
            .arg(&ldif_path)
            .env("LDAPNOINIT", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", slapadd_bin.display()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "slapadd failed ({}): {stderr}{}",
                out.status,
                permission_hint(&stderr)
            ));
        }

        let ip = options.ip.unwrap_or(Ipv4Addr::LOCALHOST);
        let attempts = if options.port.is_some() {
            1
        } else {
            BIND_ATTEMPTS
        };
        let mut last_error = String::new();
        for attempt in 1..=attempts {
            let port = match options.port {
                Some(p) => p,
                None => free_port(ip)?,
            };
            let addr = SocketAddr::from((ip, port));
            let tls = options.tls.is_some();
            let debug = if options.log_connections {
                "stats"
            } else {
                "none"
            };
            let log_path = dir.path().join(format!("slapd-{attempt}.log"));
            let mut child = spawn(&slapd_bin, &conf_path, addr, tls, debug, &log_path)?;
            match wait_ready(&mut child, addr, tls, &log_path) {
                Ok(()) => {
                    return Ok(Slapd {
                        addr,
                        tls,
                        debug,
                        base_dn: BASE_DN.to_string(),
                        admin_dn: ADMIN_DN.to_string(),
                        admin_pw: ADMIN_PW.to_string(),
                        child,
                        log_path,
                        logs: Vec::new(),
                        restarts: 0,
                        slapd_bin,
                        conf_path,
                        dir,
                    });
                }
                Err(Failure::PortInUse(log)) => {
                    reap(&mut child);
                    last_error = log;
                }
                Err(Failure::Fatal(msg)) => {
                    reap(&mut child);
                    return Err(msg);
                }
            }
        }
        Err(format!(
            "slapd could not bind a port in {attempts} attempt(s); last log:\n{last_error}"
        ))
    }

    /// Kills the server (its address then refuses connections); [`Slapd::start_again`] brings
    /// it back.
    pub fn stop(&mut self) {
        reap(&mut self.child);
    }

    /// Starts the stopped server again on the same address, with the same configuration and
    /// data; returns once it answers a search.
    pub fn start_again(&mut self) -> Result<(), String> {
        reap(&mut self.child);
        self.restarts += 1;
        let log_path = self
            .dir
            .path()
            .join(format!("slapd-again-{}.log", self.restarts));
        let (bin, conf) = (&self.slapd_bin, &self.conf_path);
        let mut child = spawn(bin, conf, self.addr, self.tls, self.debug, &log_path)?;
        match wait_ready(&mut child, self.addr, self.tls, &log_path) {
            Ok(()) => {
                self.child = child;
                self.logs
                    .push(std::mem::replace(&mut self.log_path, log_path));
                Ok(())
            }
            Err(Failure::PortInUse(log) | Failure::Fatal(log)) => {
                reap(&mut child);
                Err(format!("slapd did not start again on {}: {log}", self.addr))
            }
        }
    }

    /// Connections accepted so far, over every run (needs [`Options::log_connections`]; the
    /// readiness probes count too).
    pub fn connections(&self) -> usize {
        self.logs
            .iter()
            .chain(std::iter::once(&self.log_path))
            .map(|p| read_log(p).matches(" ACCEPT from ").count())
            .sum()
    }

    /// The URL clients use: `ldap://<addr>` or `ldaps://<addr>`.
    pub fn url(&self) -> String {
        url(self.addr, self.tls)
    }

    /// `ldapsearch -x -LLL -o ldif-wrap=no -H ldap://ADDR -b BASE -D ADMIN -w PW
    /// [-E pr=N/noprompt] FILTER ATTRS...`; returns stdout, or an error (with stderr) on a
    /// non-zero exit or after [`LDAPSEARCH_TIMEOUT`]. Entries are separated by blank lines; with
    /// paging the output also holds `# pagedresults: cookie=...` comment lines, which
    /// [`normalize_ldif`] drops. Config files are ignored (`LDAPNOINIT=1`). See [`Client`] for
    /// LDAPS and private name resolution.
    pub fn ldapsearch(
        addr: SocketAddr,
        base_dn: &str,
        admin_dn: &str,
        pw: &str,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        Client::new(url(addr, false)).search_as(base_dn, admin_dn, pw, filter, attrs, page_size)
    }

    /// [`Slapd::ldapsearch`] against this server with its base and credentials.
    pub fn search(
        &self,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        // Straight to its address: an LDAPS server's certificate is not checked here.
        Client::new(self.url())
            .insecure()
            .search(filter, attrs, page_size)
    }

    /// slapd's log so far (stdout + stderr at debug level "none": startup banner and errors).
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The temporary directory holding slapd.conf, data.ldif, db/ and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        reap(&mut self.child);
        // `dir` is removed when the fields drop, after this.
    }
}

/// `ldap://<addr>` or `ldaps://<addr>`.
fn url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "ldaps" } else { "ldap" })
}

/// Starts `slapd -d none` in the foreground on `addr`, logging into `log_path`.
fn spawn(
    slapd_bin: &Path,
    conf_path: &Path,
    addr: SocketAddr,
    tls: bool,
    debug: &str,
    log_path: &Path,
) -> Result<Child, String> {
    let log =
        File::create(log_path).map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot clone log file handle: {e}"))?;
    // `-d` keeps slapd in the foreground (no fork), so the child is the server process.
    // Level "none" only logs messages logged at any level, e.g. "bind(..) failed errno=98";
    // "stats" adds a line per connection and operation.
    // No -u/-g: slapd keeps our uid, which owns the data directory (root or not).
    Command::new(slapd_bin)
        .arg("-h")
        .arg(format!("{}/", url(addr, tls)))
        .arg("-f")
        .arg(conf_path)
        .arg("-d")
        .arg(debug)
        .env("LDAPNOINIT", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", slapd_bin.display()))
}

enum Failure {
    /// slapd exited because the port was taken; carries its log.
    PortInUse(String),
    Fatal(String),
}

/// Polls until slapd answers a search, exits, or [`START_DEADLINE`] passes.
fn wait_ready(
    child: &mut Child,
    addr: SocketAddr,
    tls: bool,
    log_path: &Path,
) -> Result<(), Failure> {
    let spawned = Instant::now();
    let deadline = spawned + START_DEADLINE;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let log = read_log(log_path);
                if log.contains("errno=98") || log.contains("Address already in use") {
                    return Err(Failure::PortInUse(log));
                }
                return Err(Failure::Fatal(format!(
                    "slapd exited ({status}) before answering on {addr}; log:\n{log}{}",
                    permission_hint(&log)
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(Failure::Fatal(format!("cannot poll slapd: {e}"))),
        }
        // slapd logs "slapd starting" once its listeners are bound. Until then the port may
        // belong to someone else (lost race), and probing that would only stall; the fallback
        // after a second covers a slapd that words it differently.
        let started = read_log(log_path).contains("slapd starting")
            || spawned.elapsed() >= Duration::from_secs(1);
        // Cheap TCP probe first, then a real (authenticated) search once the port is open.
        let probe_error = if !started {
            "slapd has not logged \"slapd starting\" yet".to_string()
        } else {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(_) => {
                    let probe = Client::new(url(addr, tls))
                        .insecure()
                        .timeout(Duration::from_secs(1));
                    let args = [
                        "-x",
                        "-LLL",
                        "-o",
                        "nettimeout=2",
                        "-H",
                        &url(addr, tls),
                        "-s",
                        "base",
                        "-b",
                        BASE_DN,
                        "-D",
                        ADMIN_DN,
                        "-w",
                        ADMIN_PW,
                        "(objectClass=*)",
                        "dn",
                    ]
                    .map(String::from);
                    match probe.run(&args) {
                        Ok(_) => return Ok(()),
                        Err(e) => e,
                    }
                }
                Err(e) => format!("connect {addr}: {e}"),
            }
        };
        if Instant::now() >= deadline {
            return Err(Failure::Fatal(format!(
                "slapd did not answer a search on {addr} within {START_DEADLINE:?} \
                 (last probe: {probe_error}); log:\n{}",
                read_log(log_path)
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

pub(crate) fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

fn permission_hint(log: &str) -> &'static str {
    if log.contains("Permission denied") {
        "\nhint: \"Permission denied\" on files in the temp directory usually means an AppArmor \
         (Ubuntu: /etc/apparmor.d/usr.sbin.slapd) or SELinux policy confines /usr/sbin/slapd; \
         e.g. `sudo aa-complain /usr/sbin/slapd` or `sudo apparmor_parser -R \
         /etc/apparmor.d/usr.sbin.slapd`"
    } else {
        ""
    }
}

/// A port on `ip` that was free a moment ago (the listener is dropped before slapd binds it; `start`
/// retries on the rare race).
fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    let listener = TcpListener::bind((ip, 0)).map_err(|e| format!("cannot bind {ip}:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read local address: {e}"))
}

pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn find_schema_dir() -> Result<PathBuf, String> {
    SCHEMA_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("core.schema").is_file() && d.join("inetorgperson.schema").is_file())
        .ok_or_else(|| format!("core.schema / inetorgperson.schema not found in {SCHEMA_DIRS:?}"))
}

/// None when back_mdb is not a loadable module (then it must be built into slapd).
fn find_module_dir() -> Option<PathBuf> {
    MODULE_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("back_mdb.so").exists() || d.join("back_mdb.la").exists())
}

fn slapd_conf(dir: &Path, db_dir: &Path, schema_dir: &Path, module_dir: Option<&Path>) -> String {
    let q = |p: &Path| format!("\"{}\"", p.display());
    let mut conf = String::from("# Generated by nowconnect-testkit (slapd.rs)\n");
    for schema in ["core", "cosine", "inetorgperson"] {
        let _ = writeln!(
            conf,
            "include {}",
            q(&schema_dir.join(format!("{schema}.schema")))
        );
    }
    let _ = writeln!(conf, "pidfile {}", q(&dir.join("slapd.pid")));
    let _ = writeln!(conf, "argsfile {}", q(&dir.join("slapd.args")));
    if let Some(m) = module_dir {
        let _ = writeln!(conf, "modulepath {}", q(m));
        let _ = writeln!(conf, "moduleload back_mdb");
    }
    let _ = writeln!(conf, "sizelimit unlimited");
    let _ = writeln!(conf, "database mdb");
    let _ = writeln!(conf, "maxsize 67108864");
    let _ = writeln!(conf, "suffix \"{BASE_DN}\"");
    let _ = writeln!(conf, "rootdn \"{ADMIN_DN}\"");
    let _ = writeln!(conf, "rootpw {ADMIN_PW}");
    let _ = writeln!(conf, "directory {}", q(db_dir));
    let _ = writeln!(conf, "index objectClass eq");
    let _ = writeln!(conf, "index uid eq");
    conf
}
