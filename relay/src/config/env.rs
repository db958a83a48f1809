//! Where the relay's `NOWCONNECT_*` overrides come from, and how their values are read.
//!
//! The [`Env`] trait keeps the process environment out of validation: tests pass a closure.
//! A value that does not parse is reported into the [`Collector`] under the variable's name.

use super::collector::Collector;

/// Where environment overrides come from; tests pass a closure instead of the real env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// No overrides at all.
pub(super) fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) fn parse_bool_env(c: &mut Collector, env: &dyn Env, name: &str) -> Option<bool> {
    let v = env.var(name)?;
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => {
            c.bad(name, format!("`{v}` is not a boolean (true/false)"));
            None
        }
    }
}

pub(super) fn parse_u64_env(c: &mut Collector, env: &dyn Env, name: &str) -> Option<u64> {
    let v = env_str(env, name)?;
    match v.parse::<u64>() {
        Ok(n) => Some(n),
        Err(_) => {
            c.bad(name, format!("`{v}` is not a whole number"));
            None
        }
    }
}

/// A non-empty, trimmed env value (an empty variable counts as unset).
pub(super) fn env_str(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}
