//! What validation found: each [`Problem`] with its key, the [`ConfigError`] that carries them,
//! and the [`Collector`] every section validator reports into.
//!
//! One collector is shared by all sections, so every problem is reported at once, in the order
//! the sections are checked.

use std::fmt;
use std::path::PathBuf;

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The YAML key, with the env variable / flag that also sets it.
    pub key: String,
    pub message: String,
}

/// Why the configuration could not be loaded. Displayed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid YAML in {origin}: {message}")]
    Yaml { origin: String, message: String },
    #[error("invalid configuration: {}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for read/parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(p) => p,
            _ => &[],
        }
    }
}

fn join_problems(problems: &[Problem]) -> String {
    let mut s = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        s.push_str(&p.key);
        s.push_str(": ");
        s.push_str(&p.message);
    }
    s
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The problems of one pass (reading the environment, or validating), in the order found.
#[derive(Debug, Default)]
pub(super) struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    pub(super) fn bad(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Problems so far (a section compares before and after to see if it added any).
    pub(super) fn len(&self) -> usize {
        self.problems.len()
    }

    pub(super) fn into_problems(self) -> Vec<Problem> {
        self.problems
    }

    /// `value` when nothing was wrong, else every problem.
    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        match value {
            Some(v) if self.problems.is_empty() => Ok(v),
            _ => Err(ConfigError::Invalid(self.problems)),
        }
    }
}
