//! NowConnect: end-to-end tests and the loopback demo live in this package.
