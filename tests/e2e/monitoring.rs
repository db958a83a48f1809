//! What operators import (deploy/grafana, deploy/prometheus) against what the binaries export:
//! promtool checks and unit-tests the alert rules, and every metric a board or a rule names is
//! one a running relay or agent actually serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use nowconnect_testkit::http::get;
use nowconnect_testkit::target;
use serde_json::Value;

use crate::{relay, start_agent};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: install Debian's `prometheus` package (scripts/install-deps.sh does)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_shipped_alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = deploy().join("prometheus");
    let rules: Vec<String> = files(&dir, "yml")
        .into_iter()
        .filter(|p| !p.to_string_lossy().ends_with(".test.yml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(!rules.is_empty(), "no rule file in {}", dir.display());
    let mut args = vec!["check", "rules"];
    args.extend(rules.iter().map(String::as_str));
    let checked = promtool(&args, &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tests: Vec<String> = files(&dir, "yml")
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".test.yml"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !tests.is_empty(),
        "no promtool unit test in {}",
        dir.display()
    );
    let mut args = vec!["test", "rules"];
    args.extend(tests.iter().map(String::as_str));
    let tested = promtool(&args, &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test that fires it, and a runbook note.
    let text = std::fs::read_to_string(&tests[0]).expect("test file");
    for rule in rule_list(&rules) {
        let name = rule["alert"].as_str().expect("alert name");
        assert!(
            text.contains(&format!("alertname: {name}")),
            "no promtool test fires {name}"
        );
        assert!(
            rule["annotations"]["runbook"]
                .as_str()
                .is_some_and(|r| r.len() > 40),
            "{name} has no runbook note"
        );
    }
}

fn rule_list(files: &[String]) -> Vec<Value> {
    files
        .iter()
        .flat_map(|f| {
            let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(f).expect("rules"))
                .unwrap_or_else(|e| panic!("{f}: {e}"));
            doc["groups"]
                .as_array()
                .expect("groups")
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every PromQL expression in a dashboard (any `expr` at any depth) or a rule file.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// `nowconnect_*` names in an expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("nowconnect_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

/// The sample names a scrape can hold: from each `# TYPE` line, the name itself and, for a
/// counter `_total`, for a histogram `_bucket`, `_sum` and `_count`.
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for l in page.lines() {
        let Some(rest) = l.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            }
            _ => {}
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boards_and_rules_name_only_metrics_the_binaries_export() {
    let relay = relay(&["addomain"]).await;
    let echo = target::echo().await;
    let yaml = format!(
        "{}metrics: {{host: 127.0.0.1, port: 0}}\n",
        crate::agent_yaml(relay.tunnel_addr(), "v2", &[("addomain", echo.addr)])
    );
    let agent = start_agent(&yaml).await;
    let metrics = agent.metrics_addr().expect("the agent serves metrics");
    let (status, agent_page) = get(metrics, "/metrics").await;
    assert_eq!(status, 200, "{agent_page}");
    let (status, relay_page) = get(relay.tunnel_addr(), "/metrics").await;
    assert_eq!(status, 200, "{relay_page}");
    let relay_names = exported(&relay_page);
    let agent_names = exported(&agent_page);
    assert!(
        relay_names.contains("nowconnect_tcp_bytes_total"),
        "{relay_page}"
    );
    assert!(
        agent_names.contains("nowconnect_agent_tunnel_up"),
        "{agent_page}"
    );

    let mut checked = 0;
    let mut sources: Vec<(PathBuf, Value)> = Vec::new();
    for f in files(&deploy().join("grafana"), "json") {
        let v = serde_json::from_str(&std::fs::read_to_string(&f).expect("board"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        sources.push((f, v));
    }
    for f in files(&deploy().join("prometheus"), "yml") {
        if f.to_string_lossy().ends_with(".test.yml") {
            continue;
        }
        let v = serde_yaml::from_str(&std::fs::read_to_string(&f).expect("rules"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        sources.push((f, v));
    }
    assert!(sources.len() >= 3, "two boards and the rules");
    for (f, v) in &sources {
        let mut all = Vec::new();
        exprs(v, &mut all);
        assert!(!all.is_empty(), "{} has no expression", f.display());
        for e in &all {
            for name in names_in(e) {
                assert!(
                    relay_names.contains(&name) || agent_names.contains(&name),
                    "{} names `{name}`, which neither the relay nor the agent exports (in `{e}`)",
                    f.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 40, "only {checked} metric references found");
    drop(agent);
}
