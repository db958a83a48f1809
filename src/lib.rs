//! NowConnect: the root package. It owns the end-to-end tests (`tests/`), the loopback demo and
//! the tunnel benchmark (`nowconnect-bench`).
#![forbid(unsafe_code)]

pub mod bench;
pub mod demo;
