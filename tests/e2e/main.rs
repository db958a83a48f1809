//! End-to-end tests: a real relay, a real agent and real targets on loopback, in one process.
//! One test binary (modules below) so the workspace links it once.

mod support;

mod agent_auth;
mod demo;
mod edge;
mod health;
mod ldap;
mod ldap_fixture;
mod lifecycle;
mod portal;
mod streams;
mod transfer;
mod v1_raw_agent;
