//! Types shared by the eBPF programs (`mptcp-ebpf`) and the daemon (`mptcp-user`).
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, and free of implicit padding, so that
//! both sides agree on its bytes. Each map family has a module of its own, holding the
//! map's name (the symbol both sides use) and its types.
#![no_std]

pub mod connections;
