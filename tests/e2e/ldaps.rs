//! LDAPS end to end: a real slapd with its own CA and a certificate for a test name behind the
//! agent; `ldapsearch -H ldaps://<name>:<relay port>` resolves the name to the relay through a
//! hosts file of its own, trusts only the test CA, verifies the directory's certificate through the
//! tunnel and returns what it returns directly. The relay holds no key: it relays TLS bytes.

use std::net::{IpAddr, SocketAddr};

use nowconnect_testkit::hosts::HostsFile;
use nowconnect_testkit::pki::Ca;
use nowconnect_testkit::slapd::{self, Client, Options, Slapd, Tls};
use nowconnect_testkit::temp::TempDir;

use crate::{listener, ready_agent, relay};

/// An LDAPS slapd on `ip` (any free port, or `port`) with a certificate for `name` from `ca`.
pub fn ldaps_slapd(ca: &Ca, name: &str, ip: IpAddr, port: Option<u16>, dir: &TempDir) -> Slapd {
    let (cert_file, key_file) = ca.issue(&[name]).write(dir.path(), name);
    let IpAddr::V4(ip) = ip else {
        panic!("slapd fixture listens on IPv4 loopback")
    };
    Slapd::start_with(&Options {
        ip: Some(ip),
        port,
        tls: Some(Tls {
            cert_file,
            key_file,
        }),
        ..Options::default()
    })
    .expect("LDAPS slapd starts")
}

/// True when slapd, ldapsearch and unshare are there (panics in CI when they are not).
pub fn ldaps_tools() -> bool {
    nowconnect_testkit::require(Slapd::binaries_present(), "slapd or ldap-utils")
        && nowconnect_testkit::require(HostsFile::available(), "unshare (util-linux)")
}

/// `ldapsearch -H ldaps://<name>:<port>`, names from `hosts`, trusting only `ca_file`.
pub async fn search_by_name(
    hosts: &HostsFile,
    ca_file: &std::path::Path,
    name: &str,
    port: u16,
    filter: &'static str,
) -> Result<Vec<u8>, String> {
    let url = format!("ldaps://{name}:{port}");
    // ldapsearch blocks; `hosts` is borrowed, so block this worker rather than spawn.
    tokio::task::block_in_place(|| {
        Client::new(url)
            .trust_only(ca_file)
            .resolve_with(hosts)
            .search(filter, &[], None)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldaps_through_the_tunnel_verifies_the_directory_certificate() {
    if !ldaps_tools() {
        return;
    }
    let dir = TempDir::new("ldaps");
    let ca = Ca::new("NowConnect test directory CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let name = "dc1.corp.test";
    let slapd = tokio::task::block_in_place(|| {
        ldaps_slapd(&ca, name, "127.0.0.1".parse().expect("ip"), None, &dir)
    });
    let relay = relay(&["addomain"]).await;
    let _agent = ready_agent(&relay, "v2", &[("addomain", slapd.addr)]).await;
    let via: SocketAddr = listener(&relay, "addomain");
    // The name points at loopback, where both the relay's listener and slapd listen (on their
    // own ports), so one hosts file serves the direct and the tunneled search.
    let hosts = HostsFile::new(&[(via.ip(), name)]);

    for filter in ["(objectClass=*)", slapd::PEOPLE_FILTER] {
        let direct = search_by_name(&hosts, &ca_file, name, slapd.addr.port(), filter)
            .await
            .expect("direct LDAPS search by name");
        let tunneled = search_by_name(&hosts, &ca_file, name, via.port(), filter)
            .await
            .expect("LDAPS search through the tunnel, certificate verified");
        assert!(slapd::count_entries(&direct) > 0, "{filter}: entries");
        assert_eq!(
            slapd::normalize_ldif(&tunneled),
            slapd::normalize_ldif(&direct),
            "{filter}: the tunnel returned other entries than the directory"
        );
    }

    // The check is real: by address the certificate's name does not match, and a client that
    // trusts another CA refuses the directory too.
    let by_ip = tokio::task::block_in_place(|| {
        Client::new(format!("ldaps://{via}"))
            .trust_only(&ca_file)
            .search("(objectClass=*)", &["dn"], None)
    });
    let by_ip = by_ip.expect_err("a certificate for the name was accepted for the address");
    eprintln!("by address: {by_ip}");
    let other_ca = Ca::new("someone else").write(dir.path(), "other-ca.pem");
    let foreign = search_by_name(&hosts, &other_ca, name, via.port(), "(objectClass=*)").await;
    let foreign = foreign.expect_err("a client trusting another CA accepted the directory");
    eprintln!("other CA: {foreign}");
}
