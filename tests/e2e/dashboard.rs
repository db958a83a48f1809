//! The dashboard in a real headless Chromium over WebDriver: a test IdP (OpenID Connect with
//! PKCE) signs operators in, a real agent carries a live session, and the page steers the relay.
//! Screenshots of each page land in `<target>/ui-screenshots/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use nowconnect_relay::RelayHandle;
use nowconnect_testkit::browser::{self, Browser};
use nowconnect_testkit::http::request as api;
use nowconnect_testkit::idp::ec_key;
use nowconnect_testkit::metrics;
use nowconnect_testkit::mock_agent::{upgrade, MockAgent};
use nowconnect_testkit::net;
use nowconnect_testkit::oidc::{OidcProvider, User};
use nowconnect_testkit::target;
use nowconnect_testkit::temp::TempDir;
use nowconnect_testkit::wait::{wait_for_async, within, DEADLINE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{ready_agent, relay_yaml, start_relay};

/// Longest a page may take to show what the test waits for.
const UI: Duration = Duration::from_secs(20);
const CLIENT_ID: &str = "nc-dashboard";
/// Live sessions the sessions page must stay responsive with.
const MANY: usize = 1_000;

fn portal_yaml(idp: &OidcProvider, dir: &std::path::Path) -> String {
    format!(
        "{}limits:\n  max_conn_per_source: 5000\nportal:\n  jwks_url: {}\n  issuer: {}\n  oidc:\n    issuer: {}\n    client_id: {CLIENT_ID}\n    scopes: [openid, profile]\nstate_dir: {}\n",
        relay_yaml(&["echo", "bulk"]),
        idp.jwks_url(),
        idp.issuer(),
        idp.issuer(),
        dir.display()
    )
}

async fn wait_css(c: &Client, css: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(UI)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("`{css}` did not appear within {UI:?}: {e}"))
}

/// Clicks `css` once it is shown and enabled. A page redraws its tables every 5 s, so an
/// element found just before a redraw may be stale by the click: then it is found again.
async fn click(c: &Client, css: &str) {
    let end = tokio::time::Instant::now() + UI;
    loop {
        let last = match c.find(Locator::Css(css)).await {
            Ok(e) => {
                let ready = e.is_displayed().await.unwrap_or(false)
                    && e.is_enabled().await.unwrap_or(false);
                if ready {
                    match e.click().await {
                        Ok(()) => return,
                        Err(err) => err.to_string(),
                    }
                } else {
                    "hidden or disabled".to_owned()
                }
            }
            Err(err) => err.to_string(),
        };
        assert!(
            tokio::time::Instant::now() < end,
            "could not click `{css}` within {UI:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn text(c: &Client, css: &str) -> String {
    wait_css(c, css)
        .await
        .text()
        .await
        .unwrap_or_else(|e| panic!("text of `{css}`: {e}"))
}

/// How many elements match `css` now.
async fn count(c: &Client, css: &str) -> usize {
    c.execute(
        "return document.querySelectorAll(arguments[0]).length",
        vec![json!(css)],
    )
    .await
    .ok()
    .and_then(|v| v.as_u64())
    .unwrap_or(0) as usize
}

async fn wait_count(c: &Client, css: &str, want: usize) {
    let what = format!("{want} of `{css}`");
    wait_for_async(&what, UI, || async { count(c, css).await == want }).await;
}

async fn wait_text(c: &Client, css: &str, needle: &str) {
    let what = format!("`{css}` to show `{needle}`");
    wait_for_async(&what, UI, || async {
        match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.is_ok_and(|t| t.contains(needle)),
            Err(_) => false,
        }
    })
    .await;
}

/// Opens `page` from the nav and waits until it has rendered its data.
async fn open(c: &Client, page: &str) {
    click(c, &format!("a[data-nav=\"{page}\"]")).await;
    wait_css(c, &format!("#page[data-loaded=\"{page}\"]")).await;
}

/// Answers the confirmation dialog; returns what it said.
async fn confirm(c: &Client) -> String {
    let said = text(c, "#confirm-text").await;
    click(c, "#confirm-yes").await;
    said
}

/// Signs in through the IdP as whoever `idp` signs in next.
async fn sign_in(c: &Client, relay: &RelayHandle) {
    c.goto(&format!("http://{}/ui/", relay.portal_addr()))
        .await
        .expect("open the dashboard");
    click(c, "#signin-oidc").await;
}

/// Console entries at level SEVERE (errors, failed loads, CSP violations).
async fn severe(c: &Client) -> Vec<String> {
    browser::browser_log(c)
        .await
        .into_iter()
        .filter(|e| e.level == "SEVERE")
        .map(|e| e.message)
        .collect()
}

async fn csp_reports(relay: &RelayHandle) -> u64 {
    let page = api(relay.tunnel_addr(), "GET", "/metrics", None, None)
        .await
        .text;
    metrics::value(&page, "nowconnect_ui_csp_reports_total")
}

/// A client through the relay's `echo` listener, one round trip done.
async fn echo_client(relay: &RelayHandle) -> TcpStream {
    let mut s = net::connect(crate::listener(relay, "echo")).await;
    s.write_all(b"ping").await.expect("write");
    let mut back = [0u8; 4];
    within("the echo", DEADLINE, s.read_exact(&mut back))
        .await
        .expect("echo");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_sign_in_see_and_steer_the_relay_in_a_browser() {
    let key = ec_key("ui");
    let idp = OidcProvider::start(&key, CLIENT_ID).await;
    let dir = TempDir::new("dashboard");
    let relay = start_relay(&portal_yaml(&idp, dir.path())).await;
    let echo = target::echo().await;
    let _agent = ready_agent(&relay, "v2", &[("echo", echo.addr)]).await;
    // A second agent the scoped operator must not see, serving `bulk`.
    let ws = upgrade(relay.tunnel_addr(), None, None)
        .await
        .expect("upgrade");
    let mut other = MockAgent::v2(ws);
    other.hello("other-agent", &["bulk"]).await;
    let mut client = echo_client(&relay).await;

    let browser = Browser::start().await;

    // --- An administrator with a second factor signs in with PKCE.
    idp.set_user(User::admin("alice", &["pwd", "otp"]));
    let c = browser.session().await;
    sign_in(&c, &relay).await;
    wait_css(&c, "#page[data-loaded=\"overview\"]").await;
    assert_eq!(
        idp.exchanges(),
        1,
        "the code was exchanged once, with its verifier"
    );
    assert!(text(&c, "#whoami").await.contains("alice"));
    let url = c.current_url().await.expect("url");
    assert!(
        !url.as_str().contains("code="),
        "the code left the address bar: {url}"
    );
    wait_text(&c, "#ov-agents", "2").await;
    wait_text(&c, "#ov-sessions", "1").await;
    assert_eq!(count(&c, "#ov-chart").await, 1, "the traffic chart");
    browser::screenshot(&c, "overview").await;

    open(&c, "agents").await;
    wait_css(&c, "tr[data-agent=\"premise-01\"]").await;
    assert_eq!(
        count(
            &c,
            "tr[data-agent=\"premise-01\"] button[data-action=\"disconnect\"]"
        )
        .await,
        1
    );
    browser::screenshot(&c, "agents").await;
    open(&c, "connectors").await;
    wait_css(&c, "tr[data-connector=\"echo\"] svg.spark").await;
    browser::screenshot(&c, "connectors").await;

    // The live session, terminated from the page: the client's socket closes.
    open(&c, "sessions").await;
    wait_count(&c, "tr[data-cid]", 1).await;
    browser::screenshot(&c, "sessions").await;
    click(&c, "tr[data-cid] button[data-action=\"terminate\"]").await;
    confirm(&c).await;
    let mut buf = [0u8; 16];
    let closed = within(
        "the client's socket to close",
        DEADLINE,
        client.read(&mut buf),
    )
    .await;
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    wait_count(&c, "tr[data-cid]", 0).await;

    // A policy off and on again; the confirmation says what turning it off exposes.
    open(&c, "policies").await;
    let row = "tr[data-policy=\"pol-cidr-allowlists\"]";
    wait_text(&c, &format!("{row} td.state"), "on").await;
    click(&c, &format!("{row} button[data-action=\"toggle\"]")).await;
    let said = confirm(&c).await;
    assert!(said.to_lowercase().contains("any address"), "{said}");
    wait_text(&c, &format!("{row} td.state"), "off").await;
    click(&c, &format!("{row} button[data-action=\"toggle\"]")).await;
    confirm(&c).await;
    wait_text(&c, &format!("{row} td.state"), "on").await;
    browser::screenshot(&c, "policies").await;

    // The audit page shows both changes and the termination, with who.
    open(&c, "audit").await;
    let rows = audit_rows(&c).await;
    let toggles: Vec<_> = rows.iter().filter(|r| r[0] == "policy_toggled").collect();
    assert_eq!(toggles.len(), 2, "{rows:#?}");
    assert!(toggles.iter().all(|r| r[1].contains("alice")), "{rows:#?}");
    assert!(
        rows.iter()
            .any(|r| r[0] == "session_terminated" && r[1].contains("alice")),
        "{rows:#?}"
    );
    // Filtered: failures only.
    click(&c, "#audit-failures").await;
    click(&c, "#audit-apply").await;
    wait_for_async("only failures listed", UI, || async {
        let rows = audit_rows(&c).await;
        !rows.iter().any(|r| r[0] == "policy_toggled")
    })
    .await;
    click(&c, "#audit-failures").await;
    click(&c, "#audit-apply").await;
    wait_for_async("every record listed again", UI, || async {
        audit_rows(&c)
            .await
            .iter()
            .any(|r| r[0] == "policy_toggled")
    })
    .await;
    browser::screenshot(&c, "audit").await;

    // 1,000 live sessions: the sessions page pages them.
    let mut many = Vec::with_capacity(MANY);
    let bulk = crate::listener(&relay, "bulk");
    for _ in 0..MANY {
        many.push(net::connect(bulk).await);
    }
    let drain = tokio::spawn(async move {
        // The mock agent reads every OPEN (and never answers them): the streams stay live.
        while other.try_recv(Duration::from_secs(30)).await.is_some() {}
        other
    });
    let admin = idp.mint(&User::admin("alice", &["otp"]));
    wait_for_async("1,000 live sessions", DEADLINE, || async {
        let r = api(
            relay.portal_addr(),
            "GET",
            "/api/v1/sessions?connector=bulk",
            Some(&admin),
            None,
        )
        .await;
        r.status == 200 && r.array().len() >= MANY
    })
    .await;
    open(&c, "sessions").await;
    wait_text(&c, "#sessions-count", &format!("{MANY} sessions")).await;
    assert_eq!(count(&c, "tr[data-cid]").await, 100, "one page of 100 rows");
    click(&c, "#sessions-next").await;
    wait_css(&c, "#page[data-loaded=\"sessions\"]").await;
    assert_eq!(count(&c, "tr[data-cid]").await, 100);
    let filter = wait_css(&c, "#sessions-filter").await;
    filter.send_keys("echo").await.expect("type a filter");
    wait_text(&c, "#sessions-count", "0 sessions").await;
    browser::screenshot(&c, "sessions-many").await;
    drop(many);
    drain.abort();

    let errors = severe(&c).await;
    assert!(
        errors.is_empty(),
        "console errors in the admin session: {errors:#?}"
    );
    click(&c, "#signout").await;
    wait_css(&c, "#signin-oidc").await;
    c.close().await.expect("close");

    // --- A password-only sign-in is refused with the MFA message.
    idp.set_user(User::admin("mallory", &["pwd"]));
    let c = browser.session().await;
    sign_in(&c, &relay).await;
    wait_text(&c, "#signin-error", "did not use a second factor").await;
    assert_eq!(count(&c, "a[data-nav=\"agents\"]:not([hidden])").await, 0);
    c.close().await.expect("close");

    // --- A scoped operator sees only its agent, and no buttons.
    idp.set_user(User::scoped("bob", "premise-01"));
    let c = browser.session().await;
    sign_in(&c, &relay).await;
    wait_css(&c, "#page[data-loaded=\"agents\"]").await;
    wait_css(&c, "tr[data-agent=\"premise-01\"]").await;
    assert_eq!(count(&c, "tr[data-agent=\"other-agent\"]").await, 0);
    assert_eq!(
        count(&c, "button[data-action]").await,
        0,
        "no admin buttons"
    );
    assert_eq!(count(&c, "a[data-nav=\"policies\"]").await, 0);
    browser::screenshot(&c, "scoped-agents").await;
    let errors = severe(&c).await;
    assert!(
        errors.is_empty(),
        "console errors in the scoped session: {errors:#?}"
    );
    c.close().await.expect("close");

    assert_eq!(csp_reports(&relay).await, 0, "no CSP violation reported");
}

/// The audit table's rows as [action, actor, detail].
async fn audit_rows(c: &Client) -> Vec<Vec<String>> {
    let v: Value = c
        .execute(
            "return Array.from(document.querySelectorAll('tr[data-audit-id]')).map(r => \
             ['action', 'actor', 'detail'].map(k => (r.querySelector('td.' + k) || {}).textContent || ''))",
            vec![],
        )
        .await
        .unwrap_or(Value::Null);
    serde_json::from_value(v).unwrap_or_default()
}
