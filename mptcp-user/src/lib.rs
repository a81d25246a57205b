//! The MPTCP gateway: LAN TCP flows are redirected in-kernel by eBPF and spliced onto
//! Multipath TCP connections to a remote converter.
//!
//! # Layout
//! - [`cli`]: the command line (clap); `main.rs` only parses it and calls the modules.
//! - [`ebpf`]: loads the embedded eBPF object, attaches its programs through links the
//!   process owns (so they vanish when it dies), pins the maps for the CLI.
//! - [`gateway`]: the gateway daemon.
//! - [`inspect`]: the inspection commands that read a running gateway's pinned maps.
//! - [`protocol`]: the RFC 8803 Convert codec (pure, no I/O).
//! - [`auth`]: the cookie that authenticates Convert requests (HMAC-SHA256, replay window).
//! - [`relay`]: the splice(2) engine that moves bytes between two sockets.
//! - [`sys`]: host set-up that needs raw system calls (bpffs, rlimits).

pub mod auth;
pub mod cli;
pub mod ebpf;
pub mod gateway;
pub mod inspect;
pub mod protocol;
pub mod relay;
pub mod sys;
