//! The slapd fixture itself: a private slapd answers ldapsearch directly (no tunnel), paged and
//! unpaged, and two instances run side by side without colliding.

use std::time::Instant;

use nowconnect_testkit::slapd::{self, Slapd};

/// False (skip) when the OpenLDAP binaries are missing; panics instead under CI=true.
fn slapd_available() -> bool {
    nowconnect_testkit::require(Slapd::binaries_present(), "slapd/slapadd/ldapsearch")
}

fn start_and_check(label: &str) {
    let started = Instant::now();
    let server = Slapd::start().expect("slapd starts");
    eprintln!(
        "[{label}] slapd on {} ready in {:?}",
        server.addr,
        started.elapsed()
    );

    let unpaged = server
        .search(slapd::PEOPLE_FILTER, &[], None)
        .expect("unpaged search");
    let paged = server
        .search(slapd::PEOPLE_FILTER, &[], Some(10))
        .expect("paged search");
    eprintln!(
        "[{label}] unpaged {} bytes, paged {} bytes",
        unpaged.len(),
        paged.len()
    );

    assert_eq!(slapd::count_entries(&unpaged), slapd::PEOPLE_COUNT);
    assert_eq!(slapd::count_entries(&paged), slapd::PEOPLE_COUNT);
    let paged_text = String::from_utf8_lossy(&paged);
    assert!(
        paged_text.matches("# pagedresults: cookie=").count() >= slapd::PEOPLE_COUNT / 10,
        "paged output should hold one cookie comment per page"
    );
    assert!(!String::from_utf8_lossy(&unpaged).contains("pagedresults"));
    let normalized = slapd::normalize_ldif(&unpaged);
    assert_eq!(normalized.len(), slapd::PEOPLE_COUNT);
    assert_eq!(normalized, slapd::normalize_ldif(&paged));
    // Non-ASCII values come back base64-encoded; the big entry makes the response > 64 KiB.
    assert!(normalized.iter().all(|e| e.contains("description:: ")));
    assert!(
        unpaged.len() > 200 * 1024,
        "response should span many segments"
    );

    // Attribute selection and the whole tree.
    let mails = server
        .search("(uid=user00*)", &["mail"], Some(3))
        .expect("mail search");
    assert_eq!(slapd::count_entries(&mails), 10);
    assert!(String::from_utf8_lossy(&mails).contains("mail: user007@example.org"));
    let all = server
        .search("(objectClass=*)", &["dn"], None)
        .expect("all");
    assert_eq!(slapd::count_entries(&all), slapd::TOTAL_ENTRIES);

    // Wrong password fails with an error, not a panic or hang.
    let denied = Slapd::ldapsearch(
        server.addr,
        &server.base_dn,
        &server.admin_dn,
        "wrong",
        "(objectClass=*)",
        &[],
        None,
    );
    assert!(denied.is_err_and(|e| e.contains("Invalid credentials")));

    let dir = server.dir().to_path_buf();
    let addr = server.addr;
    drop(server);
    assert!(!dir.exists(), "temp dir removed on drop");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "slapd killed on drop"
    );
}

#[test]
fn direct_search_paged_and_unpaged() {
    if slapd_available() {
        start_and_check("a");
    }
}

#[test]
fn second_instance_in_parallel() {
    if !slapd_available() {
        return;
    }
    let first = Slapd::start().expect("first slapd starts");
    let second = Slapd::start().expect("second slapd starts");
    assert_ne!(first.addr, second.addr);
    assert_ne!(first.dir(), second.dir());
    start_and_check("b");
    let a = first
        .search(slapd::PEOPLE_FILTER, &[], None)
        .expect("first");
    let b = second
        .search(slapd::PEOPLE_FILTER, &[], None)
        .expect("second");
    assert_eq!(slapd::normalize_ldif(&a), slapd::normalize_ldif(&b));
}
