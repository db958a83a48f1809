//! The [`Env`] trait the agent reads its environment through, and the parsers that environment
//! values (and flags) share.
//!
//! Nothing here reads the process environment except [`ProcessEnv`], which only `main` uses.
//! A value that does not parse is reported under the variable's name.

use std::collections::{BTreeMap, HashMap};

use super::check::printable;
use super::collector::Collector;

/// Proxy variables honored with `NC_TRUST_ENV=true`, in order of preference (lower case first,
/// as curl and Python do).
pub const PROXY_ENV_VARS: [&str; 4] = ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"];
pub const NO_PROXY_ENV_VARS: [&str; 2] = ["no_proxy", "NO_PROXY"];

/// Read-only view of environment variables.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;
}

/// The real process environment (used by `main` only).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        BTreeMap::get(self, key).cloned()
    }
}

/// `NC_TARGET_<name>` spellings tried for a connector, exact first.
pub(super) fn target_env_names(name: &str) -> Vec<String> {
    let exact = format!("NC_TARGET_{name}");
    let upper = format!(
        "NC_TARGET_{}",
        name.chars()
            .map(|c| match c {
                '-' | '.' | ' ' => '_',
                c => c.to_ascii_uppercase(),
            })
            .collect::<String>()
    );
    if upper == exact {
        vec![exact]
    } else {
        vec![exact, upper]
    }
}

pub(super) fn env_str(env: &dyn Env, key: &str) -> Option<String> {
    env.get(key).filter(|v| !v.trim().is_empty())
}

pub(super) fn env_parse<T>(
    env: &dyn Env,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
    c: &mut Collector,
) -> Option<T> {
    let v = env_str(env, key)?;
    match parse(v.trim()) {
        Ok(t) => Some(t),
        Err(m) => {
            c.bad(key, m);
            None
        }
    }
}

/// `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{}` is not true or false", printable(s))),
    }
}

pub(super) fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("`{}` is not a valid number here", printable(s)))
}

/// Comma-separated list, blanks dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
