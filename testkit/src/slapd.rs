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

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
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

/// A running private slapd. Killed (and its directory removed) on drop.
#[derive(Debug)]
pub struct Slapd {
    /// `127.0.0.1:<port>` slapd listens on.
    pub addr: SocketAddr,
    /// Always [`BASE_DN`].
    pub base_dn: String,
    /// Always [`ADMIN_DN`].
    pub admin_dn: String,
    /// Always [`ADMIN_PW`].
    pub admin_pw: String,
    child: Child,
    log_path: PathBuf,
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
        let conf = slapd_conf(dir.path(), &db_dir, &schema_dir, module_dir.as_deref());
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

        let mut last_error = String::new();
        for attempt in 1..=BIND_ATTEMPTS {
            let port = free_port()?;
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log_path = dir.path().join(format!("slapd-{attempt}.log"));
            let log = File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let log_err = log
                .try_clone()
                .map_err(|e| format!("cannot clone log file handle: {e}"))?;
            // `-d` keeps slapd in the foreground (no fork), so `child` owns the server process.
            // Level "none" only logs messages logged at any level, e.g. "bind(..) failed errno=98".
            // No -u/-g: slapd keeps our uid, which owns the data directory (root or not).
            let mut child = Command::new(&slapd_bin)
                .arg("-h")
                .arg(format!("ldap://{addr}/"))
                .arg("-f")
                .arg(&conf_path)
                .arg("-d")
                .arg("none")
                .env("LDAPNOINIT", "1")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err)
                .spawn()
                .map_err(|e| format!("cannot run {}: {e}", slapd_bin.display()))?;
            match wait_ready(&mut child, addr, &log_path) {
                Ok(()) => {
                    return Ok(Slapd {
                        addr,
                        base_dn: BASE_DN.to_string(),
                        admin_dn: ADMIN_DN.to_string(),
                        admin_pw: ADMIN_PW.to_string(),
                        child,
                        log_path,
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
            "slapd could not bind a free port in {BIND_ATTEMPTS} attempts; last log:\n{last_error}"
        ))
    }

    /// `ldapsearch -x -LLL -o ldif-wrap=no -H ldap://ADDR -b BASE -D ADMIN -w PW
    /// [-E pr=N/noprompt] FILTER ATTRS...`; returns stdout, or an error (with stderr) on a
    /// non-zero exit or after [`LDAPSEARCH_TIMEOUT`]. Entries are separated by blank lines; with
    /// paging the output also holds `# pagedresults: cookie=...` comment lines, which
    /// [`normalize_ldif`] drops. Config files are ignored (`LDAPNOINIT=1`).
    pub fn ldapsearch(
        addr: SocketAddr,
        base_dn: &str,
        admin_dn: &str,
        pw: &str,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        let mut args: Vec<String> = vec![
            "-x".into(),
            "-LLL".into(),
            "-o".into(),
            "ldif-wrap=no".into(),
            "-o".into(),
            "nettimeout=10".into(),
            "-H".into(),
            format!("ldap://{addr}"),
            "-b".into(),
            base_dn.into(),
            "-D".into(),
            admin_dn.into(),
            "-w".into(),
            pw.into(),
        ];
        if let Some(n) = page_size {
            args.push("-E".into());
            args.push(format!("pr={n}/noprompt"));
        }
        args.push(filter.into());
        args.extend(attrs.iter().map(|a| a.to_string()));
        run_ldapsearch(&args, LDAPSEARCH_TIMEOUT)
    }

    /// [`Slapd::ldapsearch`] against this server with its base and credentials.
    pub fn search(
        &self,
        filter: &str,
        attrs: &[&str],
        page_size: Option<u32>,
    ) -> Result<Vec<u8>, String> {
        Self::ldapsearch(
            self.addr,
            &self.base_dn,
            &self.admin_dn,
            &self.admin_pw,
            filter,
            attrs,
            page_size,
        )
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

/// Splits LDIF (ldapsearch output) into entries, drops `#` comment lines (e.g. paged-results
/// cookies) and blank lines, and sorts the entries, so outputs of the same search compare equal
/// regardless of entry order and paging. Attribute order inside an entry is kept as is.
pub fn normalize_ldif(ldif: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(ldif);
    let mut entries = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.starts_with('#') {
            continue;
        }
        let boundary = line.trim().is_empty() || line.starts_with("dn:");
        if boundary && !current.is_empty() {
            entries.push(std::mem::take(&mut current));
        }
        if !line.trim().is_empty() {
            current.push_str(line);
            current.push('\n');
        }
    }
    if !current.is_empty() {
        entries.push(current);
    }
    entries.sort();
    entries
}

/// Number of entries (`dn:` / `dn::` lines) in LDIF output.
pub fn count_entries(ldif: &[u8]) -> usize {
    String::from_utf8_lossy(ldif)
        .lines()
        .filter(|l| l.starts_with("dn:"))
        .count()
}

/// The LDIF loaded into every instance (base, OUs, people, groups), for tests that want to
/// compare against the source data.
pub fn directory_ldif() -> String {
    let mut out = String::new();
    entry(
        &mut out,
        BASE_DN,
        &[
            ("objectClass", "top"),
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("dc", "example"),
            ("o", "Example Organisation — Überprüfung"),
        ],
    );
    entry(
        &mut out,
        PEOPLE_BASE,
        &[
            ("objectClass", "top"),
            ("objectClass", "organizationalUnit"),
            ("ou", "people"),
        ],
    );
    entry(
        &mut out,
        GROUPS_BASE,
        &[
            ("objectClass", "top"),
            ("objectClass", "organizationalUnit"),
            ("ou", "groups"),
        ],
    );
    const GIVEN: &[&str] = &[
        "Zoë", "Jürgen", "Ægir", "Søren", "José", "Chloé", "Ana", "Lukas",
    ];
    const SURNAMES: &[&str] = &[
        "Müller",
        "Ångström",
        "Nuñez",
        "Dvořák",
        "Smith",
        "Øberg",
        "Łukasiewicz",
        "Ivanov",
    ];
    for i in 0..PEOPLE_COUNT {
        let uid = person_uid(i);
        let dn = format!("uid={uid},{PEOPLE_BASE}");
        let given = GIVEN[i % GIVEN.len()];
        let sn = SURNAMES[(i / GIVEN.len() + i) % SURNAMES.len()];
        let cn = format!("{given} {sn} {i:03}");
        let mail = format!("{uid}@example.org");
        let number = i.to_string();
        let description = long_text(i, 512 + i * 64);
        let big = (uid == BIG_ENTRY_UID).then(|| long_text(i + 7, 96 * 1024));
        let mut attrs = vec![
            ("objectClass", "top"),
            ("objectClass", "person"),
            ("objectClass", "organizationalPerson"),
            ("objectClass", "inetOrgPerson"),
            ("uid", uid.as_str()),
            ("cn", cn.as_str()),
            ("sn", sn),
            ("givenName", given),
            ("mail", mail.as_str()),
            ("employeeNumber", number.as_str()),
            ("description", description.as_str()),
        ];
        if let Some(big) = &big {
            attrs.push(("description", big.as_str()));
        }
        entry(&mut out, &dn, &attrs);
    }
    let staff: Vec<String> = (0..PEOPLE_COUNT)
        .map(|i| format!("uid={},{PEOPLE_BASE}", person_uid(i)))
        .collect();
    let mut attrs = vec![
        ("objectClass", "top"),
        ("objectClass", "groupOfNames"),
        ("cn", "staff"),
        ("description", "Alle Mitarbeiter — tous les employés — 全员"),
    ];
    attrs.extend(staff.iter().map(|m| ("member", m.as_str())));
    entry(&mut out, &format!("cn=staff,{GROUPS_BASE}"), &attrs);
    let mut attrs = vec![
        ("objectClass", "top"),
        ("objectClass", "groupOfNames"),
        ("cn", "admins"),
    ];
    attrs.extend(staff.iter().take(3).map(|m| ("member", m.as_str())));
    entry(&mut out, &format!("cn=admins,{GROUPS_BASE}"), &attrs);
    out
}

/// `user000`, `user001`, ...
pub fn person_uid(i: usize) -> String {
    format!("user{i:03}")
}

enum Failure {
    /// slapd exited because the port was taken; carries its log.
    PortInUse(String),
    Fatal(String),
}

/// Polls until slapd answers a search, exits, or [`START_DEADLINE`] passes.
fn wait_ready(child: &mut Child, addr: SocketAddr, log_path: &Path) -> Result<(), Failure> {
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
                    let args = [
                        "-x",
                        "-LLL",
                        "-o",
                        "nettimeout=2",
                        "-H",
                        &format!("ldap://{addr}"),
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
                    match run_ldapsearch(&args, Duration::from_secs(1)) {
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

/// Runs ldapsearch with `args`, reading stdout/stderr on threads (no pipe deadlock) and killing
/// it after `timeout`.
fn run_ldapsearch(args: &[String], timeout: Duration) -> Result<Vec<u8>, String> {
    let bin = find_binary("ldapsearch").ok_or("ldapsearch not found in PATH")?;
    let mut child = Command::new(&bin)
        .args(args)
        .env("LDAPNOINIT", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                reap(&mut child);
                break Err(format!("ldapsearch timed out after {timeout:?}"));
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
    match status {
        Ok(status) if status.success() => Ok(out),
        Ok(status) => Err(format!("ldapsearch {args:?} failed ({status}): {err}")),
        Err(e) => Err(format!("{e}: {err}")),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn reap(child: &mut Child) {
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

/// A port that was free a moment ago (the listener is dropped before slapd binds it; `start`
/// retries on the rare race).
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read local address: {e}"))
}

fn find_binary(name: &str) -> Option<PathBuf> {
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

/// Appends one LDIF entry; values that are not LDIF SAFE-STRINGs (non-ASCII etc.) are base64.
fn entry(out: &mut String, dn: &str, attrs: &[(&str, &str)]) {
    ldif_line(out, "dn", dn);
    for (name, value) in attrs {
        ldif_line(out, name, value);
    }
    out.push('\n');
}

fn ldif_line(out: &mut String, name: &str, value: &str) {
    let safe = value
        .bytes()
        .all(|b| b.is_ascii() && b != b'\n' && b != b'\r' && b != 0)
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        let _ = writeln!(out, "{name}: {value}");
    } else {
        let _ = writeln!(out, "{name}:: {}", base64(value.as_bytes()));
    }
}

/// Deterministic text of about `len` bytes (cut at a char boundary), mixing ASCII with 2-, 3- and
/// 4-byte UTF-8 sequences.
fn long_text(seed: usize, len: usize) -> String {
    const PHRASES: &[&str] = &[
        "Grüße aus Köln",
        "plain ASCII filler so that not everything is exotic",
        "Ærøskøbing Fähre",
        "Ελληνικά γράμματα",
        "Привет, мир",
        "日本語のテキスト",
        "naïve café crème brûlée",
        "rocket 🚀 and globe 🌍",
        "Zażółć gęślą jaźń",
    ];
    let mut s = format!("Entry {seed:03}: ");
    let mut i = seed;
    while s.len() < len {
        s.push_str(PHRASES[i % PHRASES.len()]);
        s.push_str(" — ");
        i += 1;
    }
    let mut cut = len.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s.trim_end().to_string()
}

fn base64(data: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| char::from(TABLE[((n >> shift) & 63) as usize]);
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}
