//! The Kubernetes manifests under `deploy/kubernetes/` cannot drift from the binaries: the relay's
//! `cloud.yaml` and the agent's `premise.yaml` in their ConfigMaps load with the binaries' own
//! validation (the relay with the env the Deployment sets per pod), every file the configs name
//! lies under a volume the pod mounts, and the ports the configs bind are the ports the pod and
//! its probes declare. Schema validation of the rendered manifests is `scripts/k8s-check.sh`.

use std::path::Path;

use nowconnect_agent::config::AgentConfig;
use nowconnect_relay::config::HaMode;
use nowconnect_relay::RelayConfig;
use serde_yaml::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// Every YAML document of `deploy/kubernetes/<rel>`.
fn docs(rel: &str) -> Vec<Value> {
    let path = Path::new(DIR).join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML document"))
        .collect()
}

/// The one resource of `kind` named `name` in `rel`.
fn resource(rel: &str, kind: &str, name: &str) -> Value {
    docs(rel)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{rel}: no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The first container of a Deployment.
fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

/// The container's env with `$(VAR)` references expanded as the kubelet does, the downward-API
/// fields given the values of one example pod.
fn pod_env(c: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_sequence().expect("env") {
        let name = str_of(&e["name"]).to_owned();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => "nowconnect-relay-6d5f7c9b8-x2x9z".to_owned(),
            Some("status.podIP") => "10.42.0.17".to_owned(),
            Some(other) => panic!("fieldRef {other} not modelled"),
            None => {
                let mut v = str_of(&e["value"]).to_owned();
                for (n, val) in &out {
                    v = v.replace(&format!("$({n})"), val);
                }
                v
            }
        };
        out.push((name, value));
    }
    out
}

fn mount_paths(c: &Value) -> Vec<String> {
    c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .map(|m| str_of(&m["mountPath"]).to_owned())
        .collect()
}

fn assert_mounted(c: &Value, path: &Path, what: &str) {
    let mounts = mount_paths(c);
    assert!(
        mounts.iter().any(|m| path.starts_with(m)),
        "{what} {} is not under a volume mount ({mounts:?})",
        path.display()
    );
}

/// The containerPort of a named port.
fn port(c: &Value, name: &str) -> u16 {
    c["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port {name}")) as u16
}

/// The config file the container's `--config` argument names.
fn config_arg(c: &Value) -> String {
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(str_of)
        .collect();
    let i = args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config");
    args[i + 1].to_owned()
}

#[test]
fn relay_configmap_loads_with_the_deployments_env() {
    let cm = resource("relay-config.yaml", "ConfigMap", "nowconnect-relay-config");
    let yaml = str_of(&cm["data"]["cloud.yaml"]);
    let dep = resource("relay-deployment.yaml", "Deployment", "nowconnect-relay");
    let c = container(&dep);
    let env = pod_env(c);
    let lookup = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let cfg = RelayConfig::from_yaml_str_with_env(yaml, &lookup)
        .unwrap_or_else(|e| panic!("deploy/kubernetes/relay-config.yaml cloud.yaml: {e}"));
    assert!(cfg.warnings.is_empty(), "warnings: {:?}", cfg.warnings);

    // HA: one ConfigMap, a replica_id and a mesh URL of each pod's own.
    assert_eq!(cfg.ha.mode, HaMode::Active);
    assert_eq!(
        cfg.ha.replica_id,
        "nowconnect-relay-6d5f7c9b8-x2x9z.relays.nowconnect"
    );
    assert_eq!(
        cfg.ha.mesh.advertise_url.as_deref(),
        Some("wss://10.42.0.17:9443/mesh")
    );
    let redis = cfg.ha.redis_url.as_deref().expect("redis_url");
    let redis_svc = resource("redis.yaml", "Service", "nowconnect-redis");
    let redis_port = redis_svc["spec"]["ports"][0]["port"]
        .as_u64()
        .expect("redis port");
    assert_eq!(redis, format!("redis://nowconnect-redis:{redis_port}/0"));

    // Files: config, certificates and state live on the pod's volumes (read-only root).
    assert_mounted(c, Path::new(&config_arg(c)), "--config");
    let cm_mount = Path::new(&config_arg(c)).parent().expect("dir").to_owned();
    assert!(cm_mount.join("cloud.yaml").ends_with("config/cloud.yaml"));
    let tls = cfg.tunnel.tls.as_ref().expect("tunnel.tls");
    assert_mounted(c, &tls.cert_file, "tunnel.tls.cert_file");
    assert_mounted(c, &tls.key_file, "tunnel.tls.key_file");
    let mesh = cfg.ha.mesh.tls.as_ref().expect("ha.mesh.tls");
    assert_mounted(c, &mesh.ca_bundle, "ha.mesh.tls.ca_bundle");
    assert_mounted(c, &mesh.cert_file, "ha.mesh.tls.cert_file");
    assert_mounted(c, &mesh.key_file, "ha.mesh.tls.key_file");
    assert_mounted(c, cfg.state_dir.as_deref().expect("state_dir"), "state_dir");

    // Ports: what the relay binds is what the pod declares, the probes and Services use.
    assert_eq!(cfg.tunnel.port, port(c, "tunnel"));
    assert_eq!(
        cfg.ha.mesh.listen.expect("mesh.listen").port(),
        port(c, "mesh")
    );
    for l in &cfg.listeners {
        assert_eq!(l.bind.port(), port(c, &l.name), "listener {}", l.name);
        assert!(
            l.bind.port() > 1024,
            "{}: no capability to bind below 1024",
            l.name
        );
    }
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_of(&c[probe]["httpGet"]["port"]), "tunnel", "{probe}");
        assert_eq!(
            str_of(&c[probe]["httpGet"]["scheme"]),
            "HTTPS",
            "{probe}: tunnel.tls is set"
        );
    }
    assert_eq!(str_of(&c["livenessProbe"]["httpGet"]["path"]), "/healthz");
    assert_eq!(str_of(&c["readinessProbe"]["httpGet"]["path"]), "/readyz");
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        cfg.limits.shutdown_grace.as_secs() < grace,
        "shutdown_grace_ms must end before the kubelet's SIGKILL"
    );
}

#[test]
fn agent_configmap_loads_and_matches_its_deployment() {
    let cm = resource(
        "agent/agent-config.yaml",
        "ConfigMap",
        "nowconnect-agent-config",
    );
    let cfg = AgentConfig::from_yaml_str(str_of(&cm["data"]["premise.yaml"]))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/agent/agent-config.yaml premise.yaml: {e}"));
    let dep = resource(
        "agent/agent-deployment.yaml",
        "Deployment",
        "nowconnect-agent",
    );
    let c = container(&dep);
    assert_eq!(cfg.health_port, 8090);
    assert_eq!(cfg.health_port, port(c, "health"));
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(str_of(&c[probe]["tcpSocket"]["port"]), "health", "{probe}");
    }
    assert_mounted(c, Path::new(&config_arg(c)), "--config");
    assert_mounted(
        c,
        cfg.token_file.as_deref().expect("token_file"),
        "tunnel.auth.token_file",
    );
}

#[test]
fn every_kustomization_resource_exists() {
    for base in [".", "agent"] {
        let k = &docs(&format!("{base}/kustomization.yaml"))[0];
        for r in k["resources"].as_sequence().expect("resources") {
            let p = Path::new(DIR).join(base).join(str_of(r));
            assert!(
                p.is_file(),
                "{} lists {} which does not exist",
                base,
                p.display()
            );
        }
    }
}
