//! tc ingress on the LAN interfaces (attached through tcx links): intercepts the TCP flows
//! the selection takes, handing them to the splicer's transparent listener.
//!
//! For a SYN the selection takes, the program looks up the listener and assigns the packet
//! to it (`bpf_sk_assign`), and marks it so that the policy route (`ip rule fwmark ...
//! lookup T`, `local default dev lo table T`) delivers it locally instead of forwarding
//! it. The accepted socket's local address is then the original destination.
//!
//! Every later packet of an intercepted flow is found by its socket: if the exact
//! 4-tuple names a socket of ours that is not a listener, the packet is marked (local
//! delivery then finds that socket by itself). A selected SYN whose 4-tuple names a
//! socket of ours in TIME_WAIT opens a new flow through the kernel's time-wait code
//! (see [`crate::time_wait`]). A flow that was not intercepted at its SYN
//! has no socket and keeps being forwarded, whatever the selection says later: a flow's
//! decision is taken once.
//!
//! QUIC (UDP to port 443) of a destination the selection takes is turned away while the
//! `QUIC_FALLBACK` switch is on: it gets the QUIC mark, whose policy route is
//! `prohibit`, and the kernel answers ICMP "administratively prohibited". Browsers then
//! fall back to TCP at once, which the gateway aggregates. Once the program is gone (the
//! daemon died), QUIC flows as before.
//!
//! Anything unexpected (other protocols, truncated headers, IPv6 extension headers, no
//! listener) is passed on untouched: the packet is forwarded as if the gateway were not
//! there.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, TC_ACT_OK, bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_assign, bpf_sk_release, bpf_skc_lookup_tcp},
    macros::classifier,
    programs::TcContext,
};
use core::{mem::offset_of, ptr::read_volatile};
use mptcp_ebpf_common::{
    Address, mapped_v4,
    selection::{QUIC_FALLBACK_ON, QUIC_PORT, quic_mark},
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{
    config,
    maps::QUIC_FALLBACK,
    selection,
    time_wait::{self, FourTuple},
};

/// The EtherTypes as the header holds them (network order).
const IPV4: u16 = EtherType::Ipv4 as u16;
const IPV6: u16 = EtherType::Ipv6 as u16;
/// The flags byte: the second of the 16 bits that follow the acknowledgment number
/// (data offset and reserved bits come first).
const TCP_FLAGS_OFFSET: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// `TCP_TIME_WAIT` and `TCP_LISTEN` from include/net/tcp_states.h.
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;

/// The socket lookup key for IPv4 (`bpf_sock_tuple.ipv4`).
#[repr(C)]
struct Tuple4 {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

/// The socket lookup key for IPv6 (`bpf_sock_tuple.ipv6`).
#[repr(C)]
struct Tuple6 {
    saddr: [u32; 4],
    daddr: [u32; 4],
    sport: u16,
    dport: u16,
}

/// The socket lookup key of either family.
enum Tuple {
    V4(Tuple4),
    V6(Tuple6),
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
    if let Some(destination) = quic_destination(ctx)? {
        turn_quic_away(ctx, destination);
        return Ok(());
    }
    let (mut tuple, destination, flags) = parse(ctx)?;
    // Only a SYN without ACK opens a flow.
    let opens = flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
    if let Some(socket) = lookup(ctx, &mut tuple) {
        // SAFETY: `socket` is a valid socket reference from the lookup helper.
        let state = unsafe { read_volatile(&raw const (*socket).state) };
        release(socket);
        if state == TCP_TIME_WAIT && opens {
            // A new flow on the 4-tuple of one we closed: the kernel's time-wait code
            // takes it, with the sk_lookup program's help; an unselected one is forwarded.
            let tuple = four_tuple(&tuple);
            if selection::selects(destination, u16::from_be(tuple.local_port)) {
                time_wait::remember(&tuple);
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
    if !opens {
        return Ok(());
    }
    let port = match &tuple {
        Tuple::V4(tuple) => tuple.dport,
        Tuple::V6(tuple) => tuple.dport,
    };
    if !selection::selects(destination, u16::from_be(port)) {
        return Ok(());
    }
    hand_to_listener(ctx, &mut tuple)
}

/// `tuple` in the form the sk_lookup program sees.
#[inline(always)]
fn four_tuple(tuple: &Tuple) -> FourTuple {
    match tuple {
        Tuple::V4(tuple) => FourTuple {
            remote: mapped_v4(tuple.saddr),
            local: mapped_v4(tuple.daddr),
            remote_port: tuple.sport,
            local_port: tuple.dport,
        },
        Tuple::V6(tuple) => FourTuple {
            remote: tuple.saddr,
            local: tuple.daddr,
            remote_port: tuple.sport,
            local_port: tuple.dport,
        },
    }
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

/// The destination of a UDP packet to port 443 (QUIC), `None` for any other packet.
/// Read apart from [`parse`]: one parser returning both kinds of tuple made code the
/// verifier rejected (copies of the enum's unused bytes).
fn quic_destination(ctx: &TcContext) -> Result<Option<Address>, i64> {
    let ether_type: u16 = ctx.load(offset_of!(EthHdr, ether_type))?;
    let ip = EthHdr::LEN;
    let (destination, udp) = match ether_type {
        IPV4 => {
            if ctx.load::<u8>(ip + offset_of!(Ipv4Hdr, proto))? != IpProto::Udp as u8 {
                return Ok(None);
            }
            let version_ihl: u8 = ctx.load(ip + offset_of!(Ipv4Hdr, vihl))?;
            let daddr: u32 = ctx.load(ip + offset_of!(Ipv4Hdr, dst_addr))?;
            (mapped_v4(daddr), ip + usize::from(version_ihl & 0x0f) * 4)
        }
        IPV6 => {
            if ctx.load::<u8>(ip + offset_of!(Ipv6Hdr, next_hdr))? != IpProto::Udp as u8 {
                return Ok(None);
            }
            let daddr: Address = ctx.load(ip + offset_of!(Ipv6Hdr, dst_addr))?;
            (daddr, ip + Ipv6Hdr::LEN)
        }
        _ => return Ok(None),
    };
    // The destination port is the UDP header's second field.
    let port: u16 = ctx.load(udp + 2)?;
    Ok((u16::from_be(port) == QUIC_PORT).then_some(destination))
}

/// Assigns the SYN to the transparent listener and marks it for local delivery.
fn hand_to_listener(ctx: &TcContext, tuple: &mut Tuple) -> Result<(), i64> {
    // The listener is bound to a wildcard address: the same tuple with the listener's
    // port finds it.
    let listen_port = config::listen_port().to_be();
    match tuple {
        Tuple::V4(tuple) => tuple.dport = listen_port,
        Tuple::V6(tuple) => tuple.dport = listen_port,
    }
    let listener = lookup(ctx, tuple).ok_or(-2i64)?;
    // SAFETY: `listener` is a valid socket reference; the helper takes its own reference.
    let assigned = unsafe { bpf_sk_assign(ctx.skb.skb.cast(), listener.cast(), 0) };
    release(listener);
    if assigned != 0 {
        return Err(assigned);
    }
    ctx.set_mark(config::intercept_mark());
    Ok(())
}

/// Looks up the socket for `tuple` in this namespace: established (or request, or
/// time-wait) sockets first, then listeners. The caller must [`release`] it.
fn lookup(ctx: &TcContext, tuple: &mut Tuple) -> Option<*mut bpf_sock> {
    // The sizes are those of the small structs above.
    #[expect(clippy::cast_possible_truncation, reason = "12 or 36 bytes")]
    let (pointer, size): (*mut bpf_sock_tuple, u32) = match tuple {
        Tuple::V4(tuple) => ((&raw mut *tuple).cast(), size_of::<Tuple4>() as u32),
        Tuple::V6(tuple) => ((&raw mut *tuple).cast(), size_of::<Tuple6>() as u32),
    };
    // SAFETY: `pointer` and `size` describe an initialised tuple on our stack.
    let socket = unsafe {
        bpf_skc_lookup_tcp(
            ctx.skb.skb.cast(),
            pointer,
            size,
            // -1, sign-extended: the helper's "this namespace".
            i64::from(BPF_F_CURRENT_NETNS).cast_unsigned(),
            0,
        )
    };
    (!socket.is_null()).then_some(socket)
}

fn release(socket: *mut bpf_sock) {
    // SAFETY: `socket` came from a lookup helper and is released exactly once.
    unsafe { bpf_sk_release(socket.cast()) };
}

/// Reads the headers, field by field (whole-header copies made code the verifier
/// rejected): the lookup tuple, the destination in our address form, and the TCP flags.
fn parse(ctx: &TcContext) -> Result<(Tuple, Address, u8), i64> {
    let ether_type: u16 = ctx.load(offset_of!(EthHdr, ether_type))?;
    let ip = EthHdr::LEN;
    let (tuple, destination, tcp) = match ether_type {
        IPV4 => {
            if ctx.load::<u8>(ip + offset_of!(Ipv4Hdr, proto))? != IpProto::Tcp as u8 {
                return Err(0);
            }
            let version_ihl: u8 = ctx.load(ip + offset_of!(Ipv4Hdr, vihl))?;
            // Network-order words, as the lookup helper takes them.
            let saddr: u32 = ctx.load(ip + offset_of!(Ipv4Hdr, src_addr))?;
            let daddr: u32 = ctx.load(ip + offset_of!(Ipv4Hdr, dst_addr))?;
            // The header length is counted in 32-bit words.
            let tcp = ip + usize::from(version_ihl & 0x0f) * 4;
            let tuple = Tuple4 {
                saddr,
                daddr,
                sport: ctx.load(tcp + offset_of!(TcpHdr, source))?,
                dport: ctx.load(tcp + offset_of!(TcpHdr, dest))?,
            };
            (Tuple::V4(tuple), mapped_v4(daddr), tcp)
        }
        IPV6 => {
            // Flows with extension headers are left alone (rare for TCP).
            if ctx.load::<u8>(ip + offset_of!(Ipv6Hdr, next_hdr))? != IpProto::Tcp as u8 {
                return Err(0);
            }
            let daddr: Address = ctx.load(ip + offset_of!(Ipv6Hdr, dst_addr))?;
            let tcp = ip + Ipv6Hdr::LEN;
            let tuple = Tuple6 {
                saddr: ctx.load(ip + offset_of!(Ipv6Hdr, src_addr))?,
                daddr,
                sport: ctx.load(tcp + offset_of!(TcpHdr, source))?,
                dport: ctx.load(tcp + offset_of!(TcpHdr, dest))?,
            };
            (Tuple::V6(tuple), daddr, tcp)
        }
        _ => return Err(0),
    };
    let flags: u8 = ctx.load(tcp + TCP_FLAGS_OFFSET)?;
    Ok((tuple, destination, flags))
}
