//! The benchmarks `cargo xtask bench NAME` runs (binary mptcp-bench), one module each.
//! Each states its method in its own docs (the README's "Benchmarks" says the same),
//! runs on the namespace testbed and returns its figures for a table and JSON.
//!
//! - [`aggregate`]: one long download through the gateway against each uplink alone,
//!   raw MPTCP and shadowsocks.
//! - [`balanced`]: the two-converter row of `scale`: converters behind a load balancer.
//! - [`interception`]: what intercepting a connection costs, eBPF against nftables.
//! - [`keys`]: what authenticating a request costs a converter of many gateways (in
//!   this process, no testbed).
//! - [`relay`]: what relaying costs per byte, against shadowsocks and a SOCKS chain.
//! - [`scale`]: many idle flows held at once, and new connections per second.
//! - [`web`]: page loads and short downloads, against the best uplink alone.

pub mod aggregate;
pub mod balanced;
pub mod interception;
pub mod keys;
pub mod relay;
pub mod scale;
pub mod web;
