//! The tunnel benchmark behind `nowconnect-bench` (run it with `scripts/bench-tunnel.sh`).
//!
//! It starts the release `nowconnect-relay` and `nowconnect-agent` as separate processes (so their
//! RSS and CPU can be read from `/proc`), with TLS on the tunnel and a private CA made at run time,
//! and runs every workload twice in the same run: straight to the targets (`direct`) and through
//! the tunnel. Clients and targets live in this process and use blocking sockets on threads, so
//! the direct baseline is plain kernel loopback. Every loop is bounded in count and in time.
//!
//! What this module must never do: touch a fixed port (everything binds 127.0.0.1:0 or picks a
//! free port), or leave a child process behind (see [`proc`]).

pub mod burst;
pub mod cross;
pub mod fleet;
pub mod ldap;
pub mod load;
pub mod pki;
pub mod proc;
pub mod report;
pub mod restart;
mod rows;
pub mod run;
mod settings;
pub mod stats;
pub mod system;
pub mod targets;
pub mod wan;
pub mod wan_run;
