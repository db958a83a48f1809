//! What operators change at run time through the portal: the four security policies and the
//! agent block list, persisted in `<state_dir>/portal-state.json`.
//!
//! Reads are lock-free for policies (one atomic load per check) and a short read lock for the
//! block list (once per tunnel), so nothing here sits on the data path. Changes are serialized by
//! one mutex, take effect at once (the next tunnel or stream sees them) and are written
//! atomically (temporary file, fsync, rename, fsync of the directory) before the call returns.
//! The config file supplies the start values; the state file holds what operators changed and
//! wins over the config for those.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::PolicyDefaults;
use crate::metrics::{Metrics, PolicyLabel};

/// Name of the state file under `state_dir`.
pub const STATE_FILE: &str = "portal-state.json";
/// Most agent_ids on the block list.
pub const MAX_BLOCKED: usize = 10_000;

/// The four policies, in the order the API lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyId {
    MfaRequired,
    ConnectorScopes,
    PdpEnforce,
    CidrAllowlists,
}

impl PolicyId {
    pub const ALL: [PolicyId; 4] = [
        PolicyId::MfaRequired,
        PolicyId::ConnectorScopes,
        PolicyId::PdpEnforce,
        PolicyId::CidrAllowlists,
    ];

    pub fn id(self) -> &'static str {
        match self {
            PolicyId::MfaRequired => "pol-mfa-required",
            PolicyId::ConnectorScopes => "pol-connector-scopes",
            PolicyId::PdpEnforce => "pol-pdp-enforce",
            PolicyId::CidrAllowlists => "pol-cidr-allowlists",
        }
    }

    pub fn parse(id: &str) -> Option<PolicyId> {
        PolicyId::ALL.into_iter().find(|p| p.id() == id)
    }

    fn index(self) -> usize {
        self as usize
    }

    fn default_in(self, d: &PolicyDefaults) -> bool {
        match self {
            PolicyId::MfaRequired => d.mfa_required,
            PolicyId::ConnectorScopes => d.connector_scopes,
            PolicyId::PdpEnforce => d.pdp_enforce,
            PolicyId::CidrAllowlists => d.cidr_allowlists,
        }
    }
}

/// Why a change could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the block list is full ({MAX_BLOCKED} agent_ids)")]
    Full,
}

/// The state file's shape. Unknown policy ids are ignored (a newer relay may have written them).
#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    policies: BTreeMap<String, bool>,
    #[serde(default)]
    blocked_agents: BTreeSet<String>,
}

/// Policies and block list of one relay.
#[derive(Debug)]
pub struct State {
    flags: [AtomicBool; 4],
    /// Policies operators changed (what the file holds besides the block list).
    changed: Mutex<BTreeMap<String, bool>>,
    blocked: RwLock<BTreeSet<String>>,
    /// `None`: no `state_dir`, changes last until the relay stops.
    path: Option<PathBuf>,
    metrics: Arc<Metrics>,
}

impl State {
    /// Reads `<state_dir>/portal-state.json` when there is one; the config supplies the rest.
    pub fn open(
        state_dir: Option<&Path>,
        defaults: PolicyDefaults,
        metrics: Arc<Metrics>,
    ) -> Result<State, String> {
        let path = state_dir.map(|d| d.join(STATE_FILE));
        let file = match &path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
                }
                match std::fs::read(p) {
                    Ok(bytes) => serde_json::from_slice::<File>(&bytes).map_err(|e| {
                        format!(
                            "state file {} is damaged ({e}); fix or remove it",
                            p.display()
                        )
                    })?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
                    Err(e) => return Err(format!("state file {}: {e}", p.display())),
                }
            }
            None => File::default(),
        };
        let flags = PolicyId::ALL.map(|p| {
            AtomicBool::new(
                file.policies
                    .get(p.id())
                    .copied()
                    .unwrap_or_else(|| p.default_in(&defaults)),
            )
        });
        let changed = file
            .policies
            .into_iter()
            .filter(|(k, _)| PolicyId::parse(k).is_some())
            .collect();
        let blocked: BTreeSet<String> = file.blocked_agents.into_iter().take(MAX_BLOCKED).collect();
        let state = State {
            flags,
            changed: Mutex::new(changed),
            blocked: RwLock::new(blocked),
            path,
            metrics,
        };
        state.publish();
        Ok(state)
    }

    /// Whether `policy` is on now.
    pub fn enabled(&self, policy: PolicyId) -> bool {
        self.flags[policy.index()].load(Ordering::Acquire)
    }

    pub fn mfa_required(&self) -> bool {
        self.enabled(PolicyId::MfaRequired)
    }
    pub fn connector_scopes(&self) -> bool {
        self.enabled(PolicyId::ConnectorScopes)
    }
    pub fn pdp_enforce(&self) -> bool {
        self.enabled(PolicyId::PdpEnforce)
    }
    pub fn cidr_allowlists(&self) -> bool {
        self.enabled(PolicyId::CidrAllowlists)
    }

    /// Turns `policy` on or off; returns the previous value. Persisted before it returns; when
    /// the write fails the change is undone.
    pub fn set(&self, policy: PolicyId, enabled: bool) -> Result<bool, StateError> {
        let mut changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.flags[policy.index()].swap(enabled, Ordering::AcqRel);
        let before = changed.insert(policy.id().to_owned(), enabled);
        if let Err(e) = self.persist(&changed, &self.blocked_now()) {
            self.flags[policy.index()].store(old, Ordering::Release);
            match before {
                Some(v) => changed.insert(policy.id().to_owned(), v),
                None => changed.remove(policy.id()),
            };
            return Err(e);
        }
        self.publish();
        Ok(old)
    }

    pub fn is_blocked(&self, agent_id: &str) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(agent_id)
    }

    fn blocked_now(&self) -> BTreeSet<String> {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Blocks or unblocks `agent_id`; returns whether the list changed.
    pub fn set_blocked(&self, agent_id: &str, block: bool) -> Result<bool, StateError> {
        let changed = self.changed.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = self.blocked_now();
        let differs = if block {
            if !next.contains(agent_id) && next.len() >= MAX_BLOCKED {
                return Err(StateError::Full);
            }
            next.insert(agent_id.to_owned())
        } else {
            next.remove(agent_id)
        };
        if differs {
            self.persist(&changed, &next)?;
            let n = next.len();
            *self.blocked.write().unwrap_or_else(|p| p.into_inner()) = next;
            self.metrics.agents_blocked.set(n as i64);
        }
        Ok(differs)
    }

    /// The block list, sorted.
    pub fn blocked(&self) -> Vec<String> {
        self.blocked_now().into_iter().collect()
    }

    fn publish(&self) {
        for p in PolicyId::ALL {
            self.metrics
                .policy_enabled
                .get_or_create(&PolicyLabel { policy: p.id() })
                .set(i64::from(self.enabled(p)));
        }
        let n = self.blocked.read().unwrap_or_else(|p| p.into_inner()).len();
        self.metrics.agents_blocked.set(n as i64);
    }

    fn persist(
        &self,
        policies: &BTreeMap<String, bool>,
        blocked: &BTreeSet<String>,
    ) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = File {
            policies: policies.clone(),
            blocked_agents: blocked.clone(),
        };
        write_atomic(path, &file).map_err(|source| StateError::Write {
            path: path.clone(),
            source,
        })
    }
}

/// Temporary file in the same directory, fsync, rename over the old one, fsync the directory:
/// a crash leaves either the old or the new file, never a torn one.
fn write_atomic(path: &Path, file: &File) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::from)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> PolicyDefaults {
        PolicyDefaults {
            mfa_required: true,
            connector_scopes: false,
            pdp_enforce: true,
            cidr_allowlists: true,
        }
    }

    #[test]
    fn changes_persist_and_win_over_defaults() {
        let dir = std::env::temp_dir().join(format!("nc-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Arc::new(Metrics::new());
        let s = State::open(Some(&dir), defaults(), m.clone()).expect("opens");
        assert!(s.mfa_required() && !s.connector_scopes());
        assert!(s.set(PolicyId::MfaRequired, false).expect("set"));
        assert!(s.set_blocked("a-1", true).expect("block"));
        assert!(!s.set_blocked("a-1", true).expect("again"), "no change");
        drop(s);
        let mut d = defaults();
        d.connector_scopes = true;
        let s = State::open(Some(&dir), d, m.clone()).expect("reopens");
        assert!(!s.mfa_required(), "the operator's change survives");
        assert!(s.connector_scopes(), "unchanged policies follow the config");
        assert!(s.is_blocked("a-1"));
        assert!(s.set_blocked("a-1", false).expect("unblock"));
        assert!(!s.is_blocked("a-1"));
        assert!(m
            .render()
            .contains("nowconnect_policy_enabled{policy=\"pol-mfa-required\"} 0"));
        std::fs::write(dir.join(STATE_FILE), b"{broken").expect("write");
        let err = State::open(Some(&dir), defaults(), m).expect_err("damaged");
        assert!(err.contains("damaged"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
