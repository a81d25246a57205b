//! Who reaches the transparent listener through the kernel's own socket lookup, rather
//! than by `bpf_sk_assign` from the LAN program: an sk_lookup program attached to the
//! gateway's network namespace ([`lookup_listener`]) decides.
//!
//! - New connections that reuse the four-tuple of one the gateway still holds in
//!   TIME_WAIT. The gateway closes first towards the LAN when the server does, so it
//!   keeps the connection's socket in TIME_WAIT, and a client that reuses its port (a
//!   busy one soon does) sends a SYN for that four-tuple. The LAN program finds the
//!   time-wait socket and must let the kernel see it (`bpf_sk_assign` of the SYN to the
//!   listener makes the kernel drop the request: the four-tuple is still hashed). The
//!   kernel's time-wait code accepts such a SYN when it finds a listener for the SYN's
//!   destination, and asks sk_lookup programs first; without one it answers with an
//!   ACK, the client resets and retries 10 ms later. So the LAN program remembers the
//!   four-tuple of a selected SYN in `TIME_WAIT_SYNS`, and this program hands that
//!   lookup the listener.
//! - Anyone else who connects to the listener's port of one of the gateway's addresses
//!   from outside (the internet, on an uplink; a LAN host, to the gateway's own address)
//!   is dropped here: the listener takes only what was intercepted, and local processes
//!   (over loopback), whose connects the connect programs send there. Before, each such
//!   connection was accepted and closed with a log line: the internet could fill the log.

use aya_ebpf::{
    bindings::{
        bpf_sk_lookup,
        sk_action::{SK_DROP, SK_PASS},
    },
    macros::sk_lookup,
    programs::SkLookupContext,
};
use core::ptr::read_volatile;
use mptcp_ebpf_common::{Address, lan::LISTENER_INDEX, mapped_v4};

use crate::{
    config,
    maps::{LISTENER, TIME_WAIT_SYNS},
};

/// `AF_INET` and `AF_INET6`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u32 = 6;
/// The loopback interface's index, in every network namespace.
const LOOPBACK: u32 = 1;

/// A SYN's four-tuple, seen from the gateway: the client is remote, the original
/// destination local. Ports in network order.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FourTuple {
    pub remote: Address,
    pub local: Address,
    pub remote_port: u16,
    pub local_port: u16,
}

/// Remembers that the SYN of `tuple` met a time-wait socket, for [`lookup_listener`].
#[inline(always)]
pub fn remember(tuple: &FourTuple) {
    // A full map evicts the oldest entry: only a SYN retried 10 ms later is lost.
    let _ = TIME_WAIT_SYNS.insert(tuple, 1, 0);
}

#[sk_lookup]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn lookup_listener(ctx: SkLookupContext) -> u32 {
    let Some((tuple, ingress)) = four_tuple(ctx.lookup) else {
        return SK_PASS;
    };
    // SAFETY: a lookup of a plain key in a hash map.
    if unsafe { TIME_WAIT_SYNS.get(tuple) }.is_some() {
        let _ = TIME_WAIT_SYNS.remove(tuple);
        // If this fails, the kernel's own lookup goes on: the client retries.
        let _ = LISTENER.redirect_sk_lookup(&ctx, LISTENER_INDEX, 0);
        return SK_PASS;
    }
    if u16::from_be(tuple.local_port) == config::listen_port() && ingress != LOOPBACK {
        return SK_DROP;
    }
    SK_PASS
}

/// The four-tuple of a TCP lookup and the interface it came in by, `None` for other
/// protocols.
///
/// Every field is read, whatever the family, each with its own load from the context:
/// the verifier rejects a load through a pointer computed from it.
#[inline(always)]
fn four_tuple(lookup: *mut bpf_sk_lookup) -> Option<(FourTuple, u32)> {
    // SAFETY: `lookup` is the program's context; the kernel checks every field access.
    let (
        family,
        protocol,
        remote_ip4,
        local_ip4,
        remote_ip6,
        local_ip6,
        remote_port,
        local_port,
        ingress,
    ) = unsafe {
        (
            read_volatile(&raw const (*lookup).family),
            read_volatile(&raw const (*lookup).protocol),
            read_volatile(&raw const (*lookup).remote_ip4),
            read_volatile(&raw const (*lookup).local_ip4),
            [
                read_volatile(&raw const (*lookup).remote_ip6[0]),
                read_volatile(&raw const (*lookup).remote_ip6[1]),
                read_volatile(&raw const (*lookup).remote_ip6[2]),
                read_volatile(&raw const (*lookup).remote_ip6[3]),
            ],
            [
                read_volatile(&raw const (*lookup).local_ip6[0]),
                read_volatile(&raw const (*lookup).local_ip6[1]),
                read_volatile(&raw const (*lookup).local_ip6[2]),
                read_volatile(&raw const (*lookup).local_ip6[3]),
            ],
            read_volatile(&raw const (*lookup).remote_port),
            read_volatile(&raw const (*lookup).local_port),
            read_volatile(&raw const (*lookup).ingress_ifindex),
        )
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let (remote, local) = match family {
        AF_INET => (mapped_v4(remote_ip4), mapped_v4(local_ip4)),
        AF_INET6 => (remote_ip6, local_ip6),
        _ => return None,
    };
    // `local_port` is in host order, `remote_port` in network order.
    #[expect(clippy::cast_possible_truncation, reason = "a port")]
    let local_port = (local_port as u16).to_be();
    let tuple = FourTuple {
        remote,
        local,
        remote_port,
        local_port,
    };
    Some((tuple, ingress))
}
