//! A real OpenLDAP server behind the agent: `ldapsearch` through the relay listener returns exactly
//! what it returns directly, with and without paging.

use nowconnect_testkit::slapd::Slapd;

use crate::{listener, ready_agent, relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldapsearch_through_the_tunnel_matches_direct() {
    if !nowconnect_testkit::require(Slapd::binaries_present(), "slapd or ldap-utils") {
        return;
    }
    let slapd = tokio::task::spawn_blocking(Slapd::start)
        .await
        .expect("join")
        .expect("slapd starts");
    let relay = relay(&["addomain"]).await;
    let _agent = ready_agent(&relay, "v2", &[("addomain", slapd.addr)]).await;
    let via = listener(&relay, "addomain");

    for (filter, attrs, page) in [
        ("(objectClass=*)", vec![], None),
        (
            "(objectClass=inetOrgPerson)",
            vec!["uid", "cn", "sn"],
            Some(10),
        ),
        ("(uid=user00*)", vec!["mail", "description"], None),
    ] {
        let (base, admin, pw) = (
            slapd.base_dn.clone(),
            slapd.admin_dn.clone(),
            slapd.admin_pw.clone(),
        );
        let direct_addr = slapd.addr;
        let attrs2 = attrs.clone();
        let (direct, tunneled) = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = attrs2.iter().map(|s| &**s).collect();
            (
                Slapd::ldapsearch(direct_addr, &base, &admin, &pw, filter, &a, page),
                Slapd::ldapsearch(via, &base, &admin, &pw, filter, &a, page),
            )
        })
        .await
        .expect("join");
        let direct = direct.expect("direct ldapsearch");
        let tunneled = tunneled.expect("ldapsearch through the tunnel");
        assert!(!direct.is_empty(), "{filter}: the directory answered");
        assert!(
            tunneled == direct,
            "{filter} {attrs:?} page {page:?}: tunnel output differs from direct"
        );
    }
}
