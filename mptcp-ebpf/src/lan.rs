//! tc ingress on the LAN interfaces (attached through tcx links): intercepts the TCP flows
//! the selection takes, handing them to the splicer's transparent listener.
//!
//! For a SYN the selection takes, the program takes the listener from its sockmap and
//! assigns the packet to it (`bpf_sk_assign`), and marks it so that the policy route
//! (`ip rule fwmark ... lookup T`, `local default dev lo table T`) delivers it locally
//! instead of forwarding it. The accepted socket's local address is then the original
//! destination.
//!
//! Every later packet of an intercepted flow is found by its socket: if the exact
//! 4-tuple names a socket of ours that is not a listener, the packet is marked (local
//! delivery then finds that socket by itself). A selected SYN whose 4-tuple names a
//! socket of ours in TIME_WAIT opens a new flow through the kernel's time-wait code
//! (see [`crate::listener`]). A flow that was not intercepted at its SYN
//! has no socket and keeps being forwarded, whatever the selection says later: a flow's
//! decision is taken once.
//!
//! QUIC (UDP to port 443) of a destination the selection takes is turned away while the
//! `QUIC_FALLBACK` switch is on: it gets the QUIC mark, whose policy route is
//! `prohibit`, and the kernel answers ICMP "administratively prohibited". Browsers then
//! fall back to TCP at once, which the gateway aggregates. Once the program is gone (the
//! daemon died), QUIC flows as before.
//!
//! Anything unexpected (other protocols, truncated or malformed headers, IPv4 fragments
//! after the first, IPv6 extension headers, no listener) is passed on untouched: the
//! packet is forwarded as if the gateway were not there. The headers are read by
//! [`mptcp_ebpf_common::packet`], which the tests and the fuzzer run in userspace.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, TC_ACT_OK, bpf_sock, bpf_sock_tuple},
    helpers::{bpf_map_lookup_elem, bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::classifier,
    programs::TcContext,
};
use core::ptr::read_volatile;
use mptcp_ebpf_common::{
    Address,
    lan::LISTENER_INDEX,
    packet::{self, Bytes, TcpSegment},
    selection::{QUIC_FALLBACK_ON, QUIC_PORT, quic_mark},
};

use crate::{
    config,
    listener::{self, FourTuple},
    maps::{LISTENER, QUIC_FALLBACK},
    selection,
};

/// `TCP_TIME_WAIT` and `TCP_LISTEN` from include/net/tcp_states.h.
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;

/// The socket lookup key for IPv4 (`bpf_sock_tuple.ipv4`), network order.
#[repr(C)]
struct Tuple4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// The socket lookup key for IPv6 (`bpf_sock_tuple.ipv6`), network order.
#[repr(C)]
struct Tuple6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// The socket buffer as [`packet`] reads it.
struct Skb<'a>(&'a TcContext);

impl Bytes for Skb<'_> {
    #[inline(always)]
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        self.0.load(offset)
    }
}

#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn intercept_lan(ctx: TcContext) -> i32 {
    // Errors only mean "not a packet we can intercept": let it through.
    let _ = try_intercept_lan(&ctx);
    TC_ACT_OK
}

fn try_intercept_lan(ctx: &TcContext) -> Result<(), i64> {
    if let Some(destination) = packet::udp_destination(&Skb(ctx), QUIC_PORT)? {
        turn_quic_away(ctx, destination);
        return Ok(());
    }
    let segment = packet::tcp_segment(&Skb(ctx))?;
    let opens = segment.opens();
    let port = u16::from_be(segment.destination_port);
    if let Some(socket) = lookup(ctx, &segment) {
        // SAFETY: `socket` is a valid socket reference from the lookup helper.
        let state = unsafe { read_volatile(&raw const (*socket).state) };
        release(socket);
        if state == TCP_TIME_WAIT && opens {
            // A new flow on the 4-tuple of one we closed: the kernel's time-wait code
            // takes it, with the sk_lookup program's help; an unselected one is forwarded.
            if selection::selects(segment.destination, port) {
                listener::remember(&FourTuple {
                    remote: segment.source,
                    local: segment.destination,
                    remote_port: segment.source_port,
                    local_port: segment.destination_port,
                });
                ctx.set_mark(config::intercept_mark());
            }
            return Ok(());
        }
        if state != TCP_LISTEN {
            // A packet of a flow we accepted (or are accepting): deliver it locally.
            ctx.set_mark(config::intercept_mark());
            return Ok(());
        }
    }
    if !opens || !selection::selects(segment.destination, port) {
        return Ok(());
    }
    hand_to_listener(ctx)
}

/// Gives QUIC to a selected destination the QUIC mark (its route is `prohibit`) while
/// the switch is on.
fn turn_quic_away(ctx: &TcContext, destination: Address) {
    let on = QUIC_FALLBACK
        .get(0)
        .is_some_and(|&value| value == QUIC_FALLBACK_ON);
    if on && selection::selects(destination, QUIC_PORT) {
        ctx.set_mark(quic_mark(config::intercept_mark()));
    }
}

/// Assigns the SYN to the transparent listener and marks it for local delivery.
fn hand_to_listener(ctx: &TcContext) -> Result<(), i64> {
    // From the sockmap, not by a listener lookup: that would meet the sk_lookup program,
    // which keeps connections from outside off the listener's port.
    let key = LISTENER_INDEX;
    // SAFETY: a lookup in a sockmap, which returns a socket reference to release.
    let listener: *mut bpf_sock = unsafe {
        bpf_map_lookup_elem(
            (&raw const LISTENER).cast_mut().cast(),
            (&raw const key).cast(),
        )
    }
    .cast();
    if listener.is_null() {
        return Err(-2);
    }
    // SAFETY: `listener` is a valid socket reference; the helper takes its own reference.
    let assigned = unsafe { bpf_sk_assign(ctx.skb.skb.cast(), listener.cast(), 0) };
    release(listener);
    if assigned != 0 {
        return Err(assigned);
    }
    ctx.set_mark(config::intercept_mark());
    Ok(())
}

/// Looks up the socket for `segment`'s four-tuple in this namespace: established (or
/// request, or time-wait) sockets first, then listeners. The caller must [`release`] it.
fn lookup(ctx: &TcContext, segment: &TcpSegment) -> Option<*mut bpf_sock> {
    let socket = if segment.ipv6 {
        let mut tuple = Tuple6 {
            saddr: segment.source,
            daddr: segment.destination,
            sport: segment.source_port,
            dport: segment.destination_port,
        };
        lookup_tuple(ctx, (&raw mut tuple).cast(), size_of::<Tuple6>())
    } else {
        // The IPv4 address is the last word of its mapped form.
        let mut tuple = Tuple4 {
            saddr: segment.source[3],
            daddr: segment.destination[3],
            sport: segment.source_port,
            dport: segment.destination_port,
        };
        lookup_tuple(ctx, (&raw mut tuple).cast(), size_of::<Tuple4>())
    };
    (!socket.is_null()).then_some(socket)
}

#[inline(always)]
fn lookup_tuple(ctx: &TcContext, tuple: *mut bpf_sock_tuple, size: usize) -> *mut bpf_sock {
    #[expect(clippy::cast_possible_truncation, reason = "12 or 36 bytes")]
    // SAFETY: `tuple` and `size` describe an initialised tuple on our stack.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb.cast(),
            tuple,
            size as u32,
            // -1, sign-extended: the helper's "this namespace".
            i64::from(BPF_F_CURRENT_NETNS).cast_unsigned(),
            0,
        )
    }
}

fn release(socket: *mut bpf_sock) {
    // SAFETY: `socket` came from a lookup helper and is released exactly once.
    unsafe { bpf_sk_release(socket.cast()) };
}
