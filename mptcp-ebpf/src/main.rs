//! The gateway's kernel programs. One module per hook; all maps live in [`maps`], the
//! settings the daemon writes at load time in [`config`].
//!
//! Built for `bpfel-unknown-none` by `mptcp-user/build.rs`, which embeds the object in the
//! daemon's binary. On any other target this is an empty program, so that workspace-wide
//! cargo commands still compile.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::inline_always,
        reason = "helpers are folded into their program: one function each for the verifier"
    )
)]

#[cfg(target_arch = "bpf")]
mod config;
#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod inflight;
#[cfg(target_arch = "bpf")]
mod lan;
#[cfg(target_arch = "bpf")]
mod listener;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod selection;
#[cfg(target_arch = "bpf")]
mod sock_ops;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach a panic, so this is never called.
    loop {}
}

/// The kernel only lets GPL-compatible programs call helpers such as
/// `bpf_get_socket_cookie` in every hook we use.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
