//! cgroup/connect4, connect6, getpeername4, getpeername6: intercepting local services.
//!
//! Attached to the cgroup v2 root through links, they act only for processes in an
//! opted-in cgroup or below one (`OPTED_IN`, checked through the calling task's cgroup
//! ancestors), in the daemon's network namespace, and only on TCP connects the
//! selection takes. Such a connect is rewritten to the splicer's listener and its
//! original destination saved under the socket's cookie (`CONNECTS`); sock_ops hands it on to the splicer once
//! the local port is known, and getpeername shows it to the application.
//!
//! Never intercepted: MPTCP sockets and their subflows (connect4/6 also run for the
//! subflows the kernel creates, with protocol TCP), hence never the daemons' own
//! upstream connections, which are all MPTCP.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_skc_to_mptcp_sock,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ptr::{read_volatile, write_volatile};
use mptcp_ebpf_common::{
    Address, Endpoint,
    cgroups::{Connect, MAX_CGROUP_DEPTH},
    is_mapped_v4, mapped_v4,
};

use crate::{
    config,
    maps::{CONNECTS, OPTED_IN, connect_destination},
    selection,
};

/// What a cgroup/sock_addr program returns to let the call go on.
const ALLOW: i32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn intercept_connect4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `addr` is the context the kernel passed; user_ip4 and user_port are
    // readable and writable in connect4.
    let original = unsafe {
        Endpoint {
            address: mapped_v4(read_volatile(&raw const (*addr).user_ip4)),
            port: user_port(addr),
        }
    };
    if let Some(listener) = intercept(&ctx, original, config::listener_v4()) {
        // SAFETY: as above.
        unsafe {
            write_volatile(&raw mut (*addr).user_ip4, listener[3]);
            set_user_port(addr, u32::from(config::listen_port()));
        }
    }
    ALLOW
}

#[cgroup_sock_addr(connect6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn intercept_connect6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `addr` is the context; user_ip6 and user_port are readable in connect6.
    let original = unsafe {
        Endpoint {
            address: read_ip6(addr),
            port: user_port(addr),
        }
    };
    // An IPv4-mapped destination on an IPv6 socket goes to the listener's mapped IPv4
    // address, so the socket stays on IPv4.
    let target = if is_mapped_v4(&original.address) {
        config::listener_v4()
    } else {
        config::listener_v6()
    };
    if let Some(listener) = intercept(&ctx, original, target) {
        // SAFETY: as above; user_ip6 is writable word by word.
        unsafe {
            write_ip6(addr, listener);
            set_user_port(addr, u32::from(config::listen_port()));
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn restore_getpeername4(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    if let Some(original) = original_destination(&ctx) {
        // SAFETY: user_ip4 and user_port are writable in getpeername4.
        unsafe {
            write_volatile(&raw mut (*addr).user_ip4, original.address[3]);
            set_user_port(addr, original.port);
        }
    }
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn restore_getpeername6(ctx: SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    if let Some(original) = original_destination(&ctx) {
        // SAFETY: user_ip6 and user_port are writable in getpeername6.
        unsafe {
            write_ip6(addr, original.address);
            set_user_port(addr, original.port);
        }
    }
    ALLOW
}

/// Decides whether this connect is intercepted; if so, records the original destination
/// and returns where to send it instead.
#[inline(always)]
fn intercept(ctx: &SockAddrContext, original: Endpoint, target: Address) -> Option<Address> {
    let addr = ctx.sock_addr;
    // SAFETY: protocol and sk are readable in connect4/6.
    let (protocol, sk) = unsafe {
        (
            read_volatile(&raw const (*addr).protocol),
            (*addr).__bindgen_anon_1.sk,
        )
    };
    if protocol != IPPROTO_TCP || target == [0; 4] || sk.is_null() {
        return None;
    }
    // SAFETY: both helpers take the context; they cannot fail.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != config::netns_cookie() {
        return None;
    }
    if !opted_in() {
        return None;
    }
    // SAFETY: `sk` is the context's non-null socket.
    if !unsafe { bpf_skc_to_mptcp_sock(sk.cast()) }.is_null() {
        return None;
    }
    #[expect(clippy::cast_possible_truncation, reason = "ports fit in 16 bits")]
    if !selection::selects(original.address, original.port as u16) {
        return None;
    }
    // SAFETY: as above.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let entry = Connect {
        cookie,
        destination: original,
        reserved: 0,
    };
    CONNECTS.insert(cookie, entry, 0).ok()?;
    Some(target)
}

/// The original destination of an intercepted socket, if this one is.
#[inline(always)]
fn original_destination(ctx: &SockAddrContext) -> Option<Endpoint> {
    // SAFETY: the helper takes the context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    connect_destination(cookie)
}

/// Whether the calling task's cgroup, or one of its ancestors, is opted in.
#[inline(always)]
fn opted_in() -> bool {
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: the helper only reads the current task's cgroup.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            return false;
        }
        // SAFETY: a lookup in a hash map of plain integers.
        if unsafe { OPTED_IN.get(id) }.is_some() {
            return true;
        }
    }
    false
}

/// The call's port, in host order (the context holds it in network order).
///
/// # Safety
/// `addr` must be the program's context, in a hook where user_port is readable.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "ports fit in 16 bits")]
unsafe fn user_port(addr: *mut bpf_sock_addr) -> u32 {
    // SAFETY: the caller passes the context, whose user_port is readable.
    u32::from(u16::from_be(
        unsafe { read_volatile(&raw const (*addr).user_port) } as u16,
    ))
}

/// Sets the call's port, given in host order.
///
/// # Safety
/// `addr` must be the program's context, in a hook where user_port is writable.
#[inline(always)]
#[expect(clippy::cast_possible_truncation, reason = "ports fit in 16 bits")]
unsafe fn set_user_port(addr: *mut bpf_sock_addr, port: u32) {
    // SAFETY: the caller passes the context, whose user_port is writable.
    unsafe { write_volatile(&raw mut (*addr).user_port, u32::from((port as u16).to_be())) };
}

/// Reads user_ip6 one word at a time: the verifier accepts only 4-byte accesses there.
///
/// # Safety
/// `addr` must be the program's context, in a hook where user_ip6 is readable.
#[inline(always)]
unsafe fn read_ip6(addr: *mut bpf_sock_addr) -> Address {
    // SAFETY: the caller passes the context, whose user_ip6 is readable.
    unsafe {
        [
            read_volatile(&raw const (*addr).user_ip6[0]),
            read_volatile(&raw const (*addr).user_ip6[1]),
            read_volatile(&raw const (*addr).user_ip6[2]),
            read_volatile(&raw const (*addr).user_ip6[3]),
        ]
    }
}

/// Writes user_ip6 one word at a time.
///
/// # Safety
/// `addr` must be the program's context, in a hook where user_ip6 is writable.
#[inline(always)]
unsafe fn write_ip6(addr: *mut bpf_sock_addr, address: Address) {
    // SAFETY: the caller passes the context, whose user_ip6 is writable.
    unsafe {
        write_volatile(&raw mut (*addr).user_ip6[0], address[0]);
        write_volatile(&raw mut (*addr).user_ip6[1], address[1]);
        write_volatile(&raw mut (*addr).user_ip6[2], address[2]);
        write_volatile(&raw mut (*addr).user_ip6[3], address[3]);
    }
}
