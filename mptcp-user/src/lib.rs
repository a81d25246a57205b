//! The MPTCP gateway: LAN TCP flows are redirected in-kernel by eBPF and spliced onto
//! Multipath TCP connections to a remote converter.
//!
//! # Layout
//! - [`cli`]: the command line (clap); `main.rs` only parses it and calls the modules.
//! - [`ebpf`]: loads the embedded eBPF object, attaches its programs through links the
//!   process owns (so they vanish when it dies), pins the maps for the CLI.
//! - [`gateway`]: the gateway daemon: transparent listener, MPTCP upstream, relay.
//! - [`remote`]: the remote converter: authenticates requests, connects, relays.
//! - [`interception`]: the daemon's side of the redirect: installs programs, policy and
//!   routes; finds each connection's original destination; lists flows for the CLI.
//! - [`selection`]: the selection policy in the BPF maps (which destinations to
//!   intercept), shared by the daemon and `mptcp-user policy`.
//! - [`steering`]: the policy routes that deliver steered LAN packets locally.
//! - [`cgroups`]: the cgroup v2 root and opting cgroups in and out.
//! - [`inspect`]: the commands that read and edit a running gateway's pinned maps
//!   (`flows`, `policy`, `optin`, `optout`).
//! - [`policy`]: which destinations the remote converter agrees to connect to, and the
//!   address prefixes both policies use.
//! - [`protocol`]: the RFC 8803 Convert codec (pure, no I/O).
//! - [`auth`]: the cookie that authenticates Convert requests (HMAC-SHA256, replay window).
//! - [`relay`]: the splice(2) engine that moves bytes between two sockets.
//! - [`server`]: the accept loop, shutdown signals and grace period both daemons share.
//! - [`tuning`]: congestion control and send buffer of the daemons' MPTCP sockets.
//! - [`wire`]: reading a whole Convert message off a socket.
//! - [`sys`]: host set-up that needs raw system calls (bpffs, rlimits).

pub mod auth;
pub mod cgroups;
pub mod cli;
pub mod ebpf;
pub mod gateway;
pub mod inspect;
pub mod interception;
pub mod policy;
pub mod protocol;
pub mod relay;
pub mod remote;
pub mod selection;
pub mod server;
pub mod steering;
pub mod sys;
pub mod tuning;
pub mod wire;
