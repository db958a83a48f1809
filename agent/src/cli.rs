//! Command-line flags. Each flag overrides the environment and the YAML file.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{split_list, AgentConfig, ConfigError, Env, Layer, PartialTarget, Problem};

/// NowConnect premise agent: one outbound tunnel to the relay, TCP streams to local targets.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "nowconnect-agent",
    version,
    // Written out so clap's generated-usage code ("usage" feature) stays out of the binary
    // (issue 20: ~12 KiB aarch64); it is what clap would print. Update it with a positional
    // argument or a subcommand.
    override_usage = "nowconnect-agent [OPTIONS]",
    about = "NowConnect premise agent: one outbound tunnel to the relay, TCP streams to local targets",
    long_about = "nowconnect-agent keeps one outbound wss:// tunnel to a NowConnect relay and opens a \
TCP connection to a local target (LDAP/AD, a database, SSH...) for every stream the relay sends \
for one of its exported connectors. It never listens on a data-plane port; its only listener is \
the health port, which answers OK, then READY once the relay has acknowledged the agent.\n\n\
Settings come from flags, then the environment (NC_*), then the YAML file, then defaults.",
    after_long_help = "FILES:\n  \
/etc/nowconnect/premise.yaml  configuration (the package's unit passes it with --config)\n  \
/etc/nowconnect/token         bearer token (a JWT), re-read at every connect: replace it to rotate\n  \
/etc/nowconnect/agent.env     environment for the systemd unit (optional)\n\n\
SIGNALS:\n  \
SIGTERM, SIGINT  stop: close the tunnel, let open streams end (at most 5 s)\n\n\
EXIT STATUS:\n  \
0 clean stop or --check passed; 2 the configuration is invalid; 1 any other failure.\n\n\
SEE ALSO:\n  \
systemctl status nowconnect-agent, journalctl -u nowconnect-agent, README.md"
)]
pub struct Cli {
    /// YAML configuration file (premise.yaml).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Relay tunnel URL, wss://host[:port]/tunnel (NC_AGENT_URL).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Agent id sent in HELLO (NC_AGENT_ID).
    #[arg(long, value_name = "ID")]
    pub agent_id: Option<String>,
    /// Exported connectors, comma-separated (NC_CONNECTORS).
    #[arg(long, value_name = "LIST")]
    pub connectors: Option<String>,
    /// Target of a connector, NAME=HOST:PORT; repeatable (NC_TARGET_<name>_HOST/_PORT).
    #[arg(long = "target", value_name = "NAME=HOST:PORT")]
    pub targets: Vec<String>,
    /// File holding the bearer token, re-read at every connect (NC_TOKEN_FILE).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Extra trusted CA certificates, PEM (NC_CA_BUNDLE).
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
    /// Trust only the --ca-bundle certificates, not the system store (NC_CA_BUNDLE_ONLY).
    #[arg(long)]
    pub ca_bundle_only: bool,
    /// Client certificate chain for mTLS to the relay, PEM (NC_CLIENT_CERT).
    #[arg(long, value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// Private key of --client-cert, PEM (NC_CLIENT_KEY).
    #[arg(long, value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// HTTP CONNECT proxy, http[s]://[user:password@]host:port. A password here is visible to
    /// other local users in the process list: prefer the YAML file or HTTPS_PROXY.
    #[arg(long, value_name = "URL")]
    pub https_proxy: Option<String>,
    /// Relay hosts reached without the proxy: hosts, .domains, IPs, CIDRs, host:port, `*`.
    #[arg(long, value_name = "LIST")]
    pub no_proxy: Option<String>,
    /// Honor HTTPS_PROXY/https_proxy/ALL_PROXY/all_proxy and NO_PROXY/no_proxy (NC_TRUST_ENV).
    #[arg(long)]
    pub trust_env: bool,
    /// Health listener address (NC_HEALTH_HOST, default 0.0.0.0).
    #[arg(long, value_name = "IP")]
    pub health_host: Option<String>,
    /// Health listener port (NC_HEALTH_PORT, default 8090; 0 = any).
    #[arg(long, value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Prometheus endpoint address (NC_METRICS_HOST, default 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub metrics_host: Option<String>,
    /// Prometheus endpoint port, GET /metrics (NC_METRICS_PORT; default off; 0 = any).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Tunnel protocol: auto, v1 or v2 (NC_PROTOCOL).
    #[arg(long, value_name = "auto|v1|v2")]
    pub protocol: Option<String>,
    /// Allow an unencrypted ws:// relay URL (local development only; NC_ALLOW_INSECURE_WS).
    #[arg(long)]
    pub allow_insecure_ws: bool,
    /// Target connect timeout in milliseconds (NC_CONNECT_TIMEOUT_MS).
    #[arg(long, value_name = "MS")]
    pub connect_timeout_ms: Option<u64>,
    /// Log level or tracing filter (NC_LOG_LEVEL).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Log format: plain or json (NC_LOG_FORMAT).
    #[arg(long, value_name = "plain|json")]
    pub log_format: Option<String>,
    /// Use a multi-threaded runtime instead of the default single thread.
    #[arg(long)]
    pub multi_thread: bool,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check: bool,
}

impl Cli {
    /// The flags as a configuration layer; malformed `--target` values go to `problems`.
    pub fn layer(&self, problems: &mut Vec<Problem>) -> Layer {
        let mut l = Layer {
            url: self.url.clone(),
            agent_id: self.agent_id.clone(),
            connectors: self.connectors.as_deref().map(split_list),
            token_file: self.token_file.clone(),
            ca_bundle: self.ca_bundle.clone(),
            ca_bundle_only: self.ca_bundle_only.then_some(true),
            client_cert_file: self.client_cert.clone(),
            client_key_file: self.client_key.clone(),
            https_proxy: self.https_proxy.clone(),
            no_proxy: self.no_proxy.clone(),
            trust_env: self.trust_env.then_some(true),
            allow_insecure_ws: self.allow_insecure_ws.then_some(true),
            protocol: self.protocol.clone(),
            connect_timeout_ms: self.connect_timeout_ms,
            health_host: self.health_host.clone(),
            health_port: self.health_port,
            metrics_host: self.metrics_host.clone(),
            metrics_port: self.metrics_port,
            log_level: self.log_level.clone(),
            log_format: self.log_format.clone(),
            ..Layer::default()
        };
        for spec in &self.targets {
            match parse_target(spec) {
                Some((name, host, port)) => {
                    l.targets.insert(
                        name,
                        PartialTarget {
                            host: Some(host),
                            port: Some(port),
                            ..PartialTarget::default()
                        },
                    );
                }
                None => problems.push(Problem {
                    key: "--target".into(),
                    message: format!(
                        "`{}` is not NAME=HOST:PORT",
                        spec.chars()
                            .filter(|c| !c.is_control())
                            .take(80)
                            .collect::<String>()
                    ),
                }),
            }
        }
        l
    }

    /// Loads the configuration with these flags, `env` and the `--config` file.
    pub fn load(&self, env: &dyn Env) -> Result<AgentConfig, ConfigError> {
        let mut problems = Vec::new();
        let flags = self.layer(&mut problems);
        match AgentConfig::load(flags, self.config.as_deref(), env) {
            Ok(cfg) if problems.is_empty() => Ok(cfg),
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(more)) => {
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
            Err(e) => Err(e),
        }
    }
}

/// `name=host:port`, host possibly `[v6]`.
fn parse_target(spec: &str) -> Option<(String, String, u16)> {
    let (name, hostport) = spec.split_once('=')?;
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|&p| p != 0)?;
    if name.trim().is_empty() || host.is_empty() {
        return None;
    }
    Some((name.trim().to_owned(), host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs() {
        assert_eq!(
            parse_target("ad=10.0.0.5:389"),
            Some(("ad".into(), "10.0.0.5".into(), 389))
        );
        assert_eq!(
            parse_target("v6=[::1]:636"),
            Some(("v6".into(), "::1".into(), 636))
        );
        assert_eq!(parse_target("ad=host"), None);
        assert_eq!(parse_target("ad=host:0"), None);
        assert_eq!(parse_target("=host:1"), None);
    }
}
