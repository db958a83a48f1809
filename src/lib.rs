//! NowConnect: the root package. It owns the end-to-end tests (`tests/`) and the loopback demo.
#![forbid(unsafe_code)]

pub mod demo;
