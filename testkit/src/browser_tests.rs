use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::http::{Reply, TestServer};
use crate::wait::wait_for;

/// How long a page may take.
const PAGE: Duration = Duration::from_secs(20);

/// Processes of process group `pgid` that are alive (not zombies), from /proc.
fn live_in_group(pgid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.len() > 2 && f[2] == pgid.to_string() && f[0] != "Z" && f[0] != "X"
        })
        .count()
}

#[test]
fn the_port_is_read_from_chromedriver_s_line() {
    assert_eq!(
        started_port("ChromeDriver was started successfully on port 41115."),
        Some(41115)
    );
    assert_eq!(started_port("Starting ChromeDriver 156.0 on port 0"), None);
}

#[test]
fn screenshots_go_under_the_target_dir() {
    let d = target_dir();
    assert!(!d.as_os_str().is_empty());
    if std::env::var_os("CARGO_TARGET_DIR").is_none() {
        assert!(
            !d.ends_with("deps") && !d.ends_with("debug"),
            "{}",
            d.display()
        );
    }
}

#[tokio::test]
async fn a_page_s_console_errors_and_screenshot_come_back_and_only_loopback_is_reached() {
    let page = TestServer::start(|_, path, _| match path {
        "/" => Reply::html(
            "<!doctype html><title>t</title><p id=p>hello</p>\
             <script>console.error('boom ' + (1 + 1))</script>",
        ),
        _ => Reply::status(404),
    })
    .await;
    // Stands in for the proxy: records what Chromium sends it.
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let a2 = asked.clone();
    let proxy = TestServer::start(move |_, target, _| {
        a2.lock().expect("asked").push(target.to_owned());
        Reply::html("<p>proxied</p>")
    })
    .await;

    let browser = Browser::start().await;
    let pgid = browser.pid;
    let c = browser.session().await;
    c.goto(&page.url("/")).await.expect("open the page");
    let p = c
        .wait()
        .at_most(PAGE)
        .for_element(fantoccini::Locator::Id("p"))
        .await
        .expect("the page rendered");
    assert_eq!(p.text().await.expect("text"), "hello");
    let seen = Arc::new(Mutex::new(Vec::new()));
    wait_for_async("the console error in the browser log", PAGE, || {
        let (c, seen) = (c.clone(), seen.clone());
        async move {
            let got = browser_log(&c).await;
            let mut seen = seen.lock().expect("seen");
            seen.extend(got);
            seen.iter()
                .any(|e: &LogEntry| e.level == "SEVERE" && e.message.contains("boom 2"))
        }
    })
    .await;
    let again = browser_log(&c).await;
    assert!(
        !again.iter().any(|e| e.message.contains("boom")),
        "each entry comes once: {again:?}"
    );
    let shot = screenshot(&c, "testkit-browser").await;
    let png = std::fs::read(&shot).expect("the screenshot file");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{}", shot.display());
    assert!(shot.ends_with("ui-screenshots/testkit-browser.png"));
    c.close().await.expect("close");

    // Through a proxy we hold: loopback goes direct, any other name goes to the proxy.
    let c = browser.session_through(&proxy.addr.to_string()).await;
    let before = page.hits();
    c.goto(&page.url("/")).await.expect("open the page");
    assert!(page.hits() > before, "loopback reached directly");
    c.goto("http://nowhere.invalid/x")
        .await
        .expect("open a name");
    let asked_now = asked.lock().expect("asked").clone();
    assert!(
        asked_now.iter().any(|t| t.contains("nowhere.invalid")),
        "the proxy saw {asked_now:?}"
    );
    assert!(
        !asked_now.iter().any(|t| t.contains("127.0.0.1")),
        "loopback went through the proxy: {asked_now:?}"
    );
    c.close().await.expect("close");

    assert!(live_in_group(pgid) > 0);
    drop(browser);
    wait_for("chromedriver and Chromium to be gone", PAGE, || {
        live_in_group(pgid) == 0
    })
    .await;
}
