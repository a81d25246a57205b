//! The MPTCP gateway: LAN TCP flows are intercepted in the kernel by eBPF and spliced
//! onto Multipath TCP connections to a converter, which carries them on to their
//! destinations by plain TCP.
//!
//! # Layout
//! Two roles, and what they share:
//! - [`gateway`]: the role on the multi-uplink router: intercepts flows (eBPF programs,
//!   selection, routes, cgroups), carries each over MPTCP, and the control commands
//!   (`flows`, `selection`, `optin`, `optout`) that work on a running gateway.
//! - [`converter`]: the role on a well-connected host: checks each request against its
//!   destination policy, connects to the destination, relays.
//! - [`protocol`]: the Convert protocol both roles speak (RFC 8803 codec, message reader,
//!   authentication cookie).
//! - [`net`]: addresses and prefixes, sockets, the splice relay and the accept loop.
//! - [`metrics`]: both daemons' Prometheus metrics and their endpoint.
//! - [`bpf`]: loading the eBPF object and attaching its programs, and the tuning of
//!   MPTCP connections and subflows it carries out.
//! - [`sys`]: the raw system calls (every `unsafe` of the crate).
//! - [`log_limit`]: rate-limited log lines, for what strangers can cause.
//! - [`cli`] and [`config`]: the command line and the TOML config file, turned into each
//!   module's plain config; `main.rs` only parses the command line and calls
//!   [`cli::run`].

pub mod bpf;
pub mod cli;
pub mod config;
pub mod converter;
pub mod gateway;
pub mod log_limit;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod sys;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, also when another task panicked while holding it: every value we
/// guard is changed in one step (a map update is one system call), so it is never left
/// half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
