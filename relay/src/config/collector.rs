//! What validation found: each [`Problem`] with its key, the [`ConfigError`] that carries them,
//! and the [`Collector`] every section validator reports into.
//!
//! One collector is shared by all sections, so every problem in a config is reported at once,
//! in the order of the sections; warnings (accepted but noteworthy values) go into it too.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use thiserror::Error;

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// YAML path (`listeners[0].bind`) or env var name.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration was refused. Always the operator's to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config is not valid YAML for the relay: {0}")]
    Yaml(String),
    #[error("invalid configuration:\n{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ConfigError {
    /// The problems found by validation (empty for read/parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

/// Problems and warnings of one validation run, in the order they were found.
#[derive(Debug, Default)]
pub(super) struct Collector {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Collector {
    pub(super) fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// A value that is accepted but that the operator should hear about at start-up.
    pub(super) fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    pub(super) fn cidrs(&mut self, key: &str, raw: &[String]) -> Vec<IpNet> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.iter().enumerate() {
            let s = s.trim();
            // A bare address means a single host.
            let parsed = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match parsed {
                Ok(net) => out.push(net),
                Err(_) => self.bad(
                    format!("{key}[{i}]"),
                    format!("`{s}` is not a CIDR (e.g. 10.0.0.0/8) or an IP address"),
                ),
            }
        }
        out
    }

    /// The warnings when nothing was wrong, else every problem.
    pub(super) fn finish(self) -> Result<Vec<String>, ConfigError> {
        if self.problems.is_empty() {
            Ok(self.warnings)
        } else {
            Err(ConfigError::Invalid(self.problems))
        }
    }
}
