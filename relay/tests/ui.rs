//! The dashboard's server side without a browser: `/ui/` assets and their headers, the CSP
//! report endpoint, `/ui/config.json`, `/ui/token`'s input checks, and the three portal
//! operations the page adds (`/api/v1/me`, `/status`, `/history`). The browser flow itself is
//! tests/e2e/dashboard.rs.

use std::time::Duration;

use nowconnect_relay::RelayHandle;
use nowconnect_testkit::http::{request as api, Reply, TestServer};
use nowconnect_testkit::idp::{admin_token, ec_key, mint, portal_claims, Idp};
use nowconnect_testkit::metrics;
use nowconnect_testkit::net;
use nowconnect_testkit::temp::TempDir;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "support/portal.rs"]
mod support;
use support::{agent, portal_relay};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'; report-uri /ui/csp-report";

#[tokio::test]
async fn assets_are_embedded_and_served_with_a_strict_policy() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("ui-assets");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();

    let moved = api(addr, "GET", "/ui", None, None).await;
    assert_eq!(moved.status, 308);
    assert_eq!(moved.header("location"), Some("/ui/"));
    for (path, kind, needle) in [
        ("/ui/", "text/html; charset=utf-8", "app.js"),
        ("/ui/app.js", "text/javascript; charset=utf-8", "use strict"),
        ("/ui/app.css", "text/css; charset=utf-8", "{"),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        let r = api(addr, "GET", path, None, None).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(kind), "{path}");
        assert_eq!(r.header("content-security-policy"), Some(CSP), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"), "{path}");
        assert!(r.text.contains(needle), "{path} holds `{needle}`");
        // No third-party request: nothing is loaded from another origin.
        // (The SVG namespace name in app.js is an identifier, never fetched.)
        if path != "/ui/favicon.svg" {
            let text = r.text.replace("'http://www.w3.org/2000/svg'", "");
            for foreign in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(foreign), "{path} refers to {foreign}");
            }
        }
    }
    let page = api(addr, "GET", "/ui/", None, None).await.text;
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline code in the page"
    );
    assert_eq!(api(addr, "GET", "/ui/nope", None, None).await.status, 404);
    let wrong = api(addr, "DELETE", "/ui/", None, None).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    assert_eq!(
        api(addr, "GET", "/ui/token", None, None)
            .await
            .header("allow"),
        Some("POST")
    );

    // A browser's violation report is counted (and the page's own headers carry the policy).
    let m = format!("http://{}/metrics", relay.tunnel_addr());
    let before = metrics::value(&scrape(&relay).await, "nowconnect_ui_csp_reports_total");
    let report = json!({"csp-report": {"document-uri": "http://relay/ui/", "effective-directive": "script-src-elem", "blocked-uri": "inline"}});
    let r = api(
        addr,
        "POST",
        "/ui/csp-report",
        None,
        Some(&report.to_string()),
    )
    .await;
    assert_eq!(r.status, 204);
    let after = metrics::value(&scrape(&relay).await, "nowconnect_ui_csp_reports_total");
    assert_eq!(after, before + 1, "{m}");

    // Without portal.oidc the page is told to offer the paste-a-token sign-in only.
    let cfg = api(addr, "GET", "/ui/config.json", None, None).await;
    assert_eq!(cfg.status, 200);
    assert_eq!(cfg.body["oidc"], json!(null));
    assert_eq!(cfg.body["version"], env!("CARGO_PKG_VERSION"));
    let t = api(addr, "POST", "/ui/token", None, Some("{}")).await;
    assert_eq!(
        (t.status, t.body["error"].as_str()),
        (404, Some("not_configured"))
    );
}

async fn scrape(relay: &RelayHandle) -> String {
    api(relay.tunnel_addr(), "GET", "/metrics", None, None)
        .await
        .text
}

#[tokio::test]
async fn me_status_and_history_show_the_relay_to_admins_only() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    let dir = TempDir::new("ui-status");
    let relay = portal_relay(&idp, dir.path(), "").await;
    let addr = relay.portal_addr();
    let admin = admin_token(&key, &["pwd", "otp"]);
    let scoped = mint(
        &key,
        &portal_claims("bob", &["otp"], json!({"agent_id": "agent-a"})),
    );

    let me = api(addr, "GET", "/api/v1/me", Some(&admin), None).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["admin"], true);
    assert_eq!(me.body["agent_id"], json!(null));
    let me = api(addr, "GET", "/api/v1/me", Some(&scoped), None).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(
        (me.body["admin"].clone(), me.body["agent_id"].clone()),
        (json!(false), json!("agent-a"))
    );
    assert_eq!(me.body["subject"], "bob");
    for path in ["/api/v1/status", "/api/v1/history"] {
        let r = api(addr, "GET", path, Some(&scoped), None).await;
        assert_eq!(r.status, 403, "{path} is admin-only: {}", r.body);
    }

    // An agent for `addomain`, none for `db`; one session moving bytes; one refused token.
    let mut a = agent(&relay, &key, "agent-a", &["addomain"]).await;
    let mut client = net::connect(relay.listener_addr("ldap").expect("ldap")).await;
    let id = a.expect_open("addomain").await;
    a.ping_pong(&mut client, id).await;
    let refused = api(addr, "GET", "/api/v1/agents", Some("not-a-token"), None).await;
    assert_eq!(refused.status, 401);

    let s = api(addr, "GET", "/api/v1/status", Some(&admin), None).await;
    assert_eq!(s.status, 200, "{}", s.body);
    assert_eq!(s.body["agents_connected"], 1);
    assert_eq!(s.body["active_sessions"], 1);
    assert_eq!(
        s.body["connectors"],
        json!([{"name": "addomain", "agents": 1}, {"name": "db", "agents": 0}])
    );
    assert!(
        s.body["auth_failures_last_hour"].as_u64().expect("n") >= 1,
        "{}",
        s.body
    );
    assert_eq!(s.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s.body["policies"].as_array().expect("policies").len(), 4);

    let h = api(addr, "GET", "/api/v1/history", Some(&admin), None).await;
    assert_eq!(h.status, 200, "{}", h.body);
    assert_eq!(h.body["interval_sec"], 60);
    let buckets = h.body["buckets"].as_array().expect("buckets");
    let last = buckets.last().expect("the current minute");
    assert!(last["bytes_c2a"].as_u64().expect("n") >= 4, "{last}");
    assert!(last["bytes_a2c"].as_u64().expect("n") >= 4, "{last}");
    assert!(last["streams"].as_u64().expect("n") >= 1, "{last}");
    let sum: u64 = buckets
        .iter()
        .map(|b| b["auth_failures"].as_u64().expect("n"))
        .sum();
    assert!(sum >= 1, "{}", h.body);
    let ldap = h.body["connectors"]["addomain"]
        .as_array()
        .expect("per connector");
    assert!(
        ldap.last().expect("minute")["bytes_c2a"]
            .as_u64()
            .expect("n")
            >= 4
    );
    assert_eq!(
        h.body["connectors"]["db"]
            .as_array()
            .expect("db")
            .last()
            .expect("m")["bytes_c2a"],
        0
    );

    // The connector list shows each listener's allowlist.
    let c = api(addr, "GET", "/api/v1/connectors", Some(&admin), None).await;
    assert_eq!(
        c.body[0]["listeners"][0]["allow_cidrs"],
        json!([]),
        "{}",
        c.body
    );
    drop(client);
}

/// Reads one answer to a raw request (bodies the testkit client would not send).
async fn raw(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = net::connect(addr).await;
    s.write_all(req).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn sign_in_endpoints_refuse_bad_input_and_a_foreign_discovery_document() {
    let key = ec_key("k1");
    let idp = Idp::start(&[&key]).await;
    // An "IdP" whose discovery document names another issuer (a mix-up or a hijacked DNS name).
    let fake = TestServer::start(|_, path, _| {
        if path == "/.well-known/openid-configuration" {
            Reply::ok(
                json!({"issuer": "https://elsewhere.test", "authorization_endpoint": "https://elsewhere.test/a", "token_endpoint": "https://elsewhere.test/t"})
                    .to_string(),
            )
        } else {
            Reply::status(404)
        }
    })
    .await;
    let dir = TempDir::new("ui-token");
    let extra = format!(
        "portal:\n  oidc:\n    issuer: {}\n    client_id: nc-dashboard\n",
        fake.url("")
    );
    let relay = portal_relay(&idp, dir.path(), &extra).await;
    let addr = relay.portal_addr();
    let cfg = api(addr, "GET", "/ui/config.json", None, None).await;
    assert_eq!(cfg.body["oidc"], json!(null), "{}", cfg.body);
    let why = cfg.body["oidc_error"].as_str().expect("a reason");
    assert!(why.contains("issuer"), "{why}");
    // Cached: a second page load does not refetch.
    let hits = fake.hits();
    api(addr, "GET", "/ui/config.json", None, None).await;
    assert_eq!(fake.hits(), hits);

    let verifier = "v".repeat(43);
    for (body, says) in [
        ("not json".to_owned(), "body must be"),
        (json!({"code": "c", "code_verifier": "short", "redirect_uri": "http://r/ui/"}).to_string(), "code_verifier"),
        (json!({"code": "c", "code_verifier": verifier, "redirect_uri": "https://evil.test/cb"}).to_string(), "redirect_uri"),
        (json!({"code": "c", "code_verifier": verifier, "redirect_uri": "http://r/ui/", "client_secret": "x"}).to_string(), "body must be"),
    ] {
        let r = api(addr, "POST", "/ui/token", None, Some(&body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body["reason"].as_str().expect("reason").contains(says), "{}", r.body);
    }
    // A valid-looking grant: the IdP's document is refused, so nothing is posted anywhere.
    let grant =
        json!({"code": "c", "code_verifier": verifier, "redirect_uri": "http://r/ui/"}).to_string();
    let r = api(addr, "POST", "/ui/token", None, Some(&grant)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(
        fake.hits(),
        hits,
        "no request to a token endpoint of a foreign issuer"
    );

    // A 64 KiB body is refused after 8 KiB, not buffered.
    let mut req = format!(
        "POST /ui/token HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        64 * 1024
    )
    .into_bytes();
    req.extend(std::iter::repeat_n(b'x', 64 * 1024));
    let answer = raw(addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("larger than 8 KiB"), "{answer}");
}
