//! The MPTCP gateway: LAN TCP flows are redirected in-kernel by eBPF and spliced onto
//! Multipath TCP connections to a remote converter.
//!
//! # Layout
//! - [`cli`]: the command line (clap); `main.rs` only parses it and calls the modules.
//! - [`ebpf`]: loads the embedded eBPF object, attaches its programs through links the
//!   process owns (so they vanish when it dies), pins the maps for the CLI.
//! - [`gateway`]: the gateway daemon.
//! - [`inspect`]: the inspection commands that read a running gateway's pinned maps.
//! - [`sys`]: host set-up that needs raw system calls (bpffs, rlimits).

pub mod cli;
pub mod ebpf;
pub mod gateway;
pub mod inspect;
pub mod sys;
