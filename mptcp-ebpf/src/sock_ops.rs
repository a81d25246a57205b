//! cgroup/sock_ops, attached to the cgroup v2 root: hands intercepted connects on to the
//! splicer, tunes MPTCP subflows, and records the subflows of the gateway's upstream
//! MPTCP connections.
//!
//! - `TCP_CONNECT_CB` of a socket connect4/6 intercepted: its local port is known now,
//!   before the SYN leaves, so its original destination moves to `ORIGINAL_DST` under
//!   the client endpoint the splicer will see as its peer.
//! - Established MPTCP subflows of the daemon's namespace get the congestion control
//!   `UPLINK_CONGESTION` names for their uplink, if any; else, if their handshake took
//!   long (a satellite uplink), the long-RTT one; else the one the daemon set on the
//!   MPTCP socket, which every subflow inherits. Long-RTT subflows also get a fixed
//!   send buffer.
//! - Established MPTCP subflows whose MPTCP socket carries a flow label (set by the
//!   daemon in `FLOW_LABELS`) go into `SUBFLOWS`; their RTT samples and received
//!   segments refresh the entry.
//! - At close, both kinds of entry are removed, so the maps only hold live sockets.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG,
        BPF_SOCK_OPS_PARSE_HDR_OPT_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTT_CB,
        BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_setsockopt, bpf_sk_storage_get,
        bpf_skc_to_mptcp_sock,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use core::ptr::{null_mut, read_volatile};

use aya_ebpf::maps::lpm_trie::Key;
use aya_log_ebpf::warn;
use mptcp_ebpf_common::{
    Address, Endpoint,
    cgroups::OriginalDst,
    flows::{Subflow, WARM_FLOW},
    mapped_v4,
};

use crate::{
    config, inflight,
    maps::{CONNECTS, FLOW_LABELS, ORIGINAL_DST, SUBFLOWS, UPLINK_CONGESTION, connect_destination},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `TCP_CLOSE` from include/net/tcp_states.h.
const TCP_CLOSE: u32 = 7;
const SOL_SOCKET: i32 = 1;
const SO_SNDBUF: i32 = 7;
pub const SOL_TCP: i32 = 6;
const TCP_CONGESTION: i32 = 13;

// Named `track_sockets`, not `sockops`: a function named like its section clashes in
// bpf-linker ("symbol 'sockops' is already defined").
#[sock_ops]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros hand the context over by value"
)]
pub fn track_sockets(ctx: SockOpsContext) -> u32 {
    if let Err(errno) = try_track_sockets(&ctx) {
        warn!(&ctx, "sock_ops op {} failed: {}", ctx.op(), errno);
    }
    1
}

fn try_track_sockets(ctx: &SockOpsContext) -> Result<(), i64> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(ctx, family),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            on_established(ctx, family)
        }
        // RTT samples come with ACKs of data we sent, the header callback with every
        // segment we receive: between them, uploads and downloads both stay current.
        BPF_SOCK_OPS_RTT_CB | BPF_SOCK_OPS_PARSE_HDR_OPT_CB => {
            if ctx.op() == BPF_SOCK_OPS_RTT_CB {
                inflight::cap(ctx);
            }
            if let Some(subflow) = SUBFLOWS.get_ptr_mut(socket_cookie(ctx)) {
                // SAFETY: the pointer is to a live map value.
                let subflow = unsafe { &mut *subflow };
                update_counters(ctx, subflow);
                // A warm connection's subflow: its flow may have come since.
                if subflow.flow == WARM_FLOW
                    && let Some(flow) = flow_label(ctx)
                {
                    subflow.flow = flow;
                }
            }
            Ok(())
        }
        // For STATE_CB, args[1] is the new state.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            let cookie = socket_cookie(ctx);
            // Missing entries are fine: the socket may be of the other kind, or evicted.
            let _ = CONNECTS.remove(cookie);
            let _ = SUBFLOWS.remove(cookie);
            Ok(())
        }
        _ => Ok(()),
    }
}

/// An intercepted connect is about to send its SYN: publish its original destination
/// under its local endpoint.
fn on_connect(ctx: &SockOpsContext, family: u32) -> Result<(), i64> {
    let cookie = socket_cookie(ctx);
    let Some(destination) = connect_destination(cookie) else {
        return Ok(());
    };
    let (local, _) = endpoints(ctx, family);
    let entry = OriginalDst {
        client: local,
        destination,
    };
    ORIGINAL_DST.insert(local, entry, 0).map_err(i64::from)?;
    // The state callback removes the CONNECTS entry when the socket closes.
    ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG.cast_signed())
        .map_err(i64::from)
}

/// Sets an MPTCP subflow's uplink congestion control, and records it if it belongs to
/// one of the daemon's labelled upstream connections.
fn on_established(ctx: &SockOpsContext, family: u32) -> Result<(), i64> {
    // SAFETY: `ops` is the context; `sk` is readable in sock_ops.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return Ok(());
    }
    // SAFETY: `sk` is the context's non-null socket.
    let msk = unsafe { bpf_skc_to_mptcp_sock(sk.cast()) };
    if msk.is_null() {
        return Ok(());
    }
    let (local, remote) = endpoints(ctx, family);
    // The in-flight cap is taken on each RTT sample.
    let mut flags = 0;
    // SAFETY: the helper takes the context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == config::netns_cookie() {
        let uplink = if config::uplink_is_local() {
            local.address
        } else {
            remote.address
        };
        tune_subflow(ctx, uplink);
        if config::inflight_cap_percent() != 0 {
            flags |= BPF_SOCK_OPS_RTT_CB_FLAG;
        }
    }
    let Some(flow) = flow_label(ctx) else {
        return if flags == 0 {
            Ok(())
        } else {
            ctx.set_cb_flags(flags.cast_signed()).map_err(i64::from)
        };
    };
    let mut subflow = Subflow {
        flow,
        local,
        remote,
        ..Subflow::default()
    };
    update_counters(ctx, &mut subflow);
    SUBFLOWS
        .insert(socket_cookie(ctx), subflow, 0)
        .map_err(i64::from)?;
    flags |= BPF_SOCK_OPS_STATE_CB_FLAG
        | BPF_SOCK_OPS_RTT_CB_FLAG
        | BPF_SOCK_OPS_PARSE_ALL_HDR_OPT_CB_FLAG;
    ctx.set_cb_flags(flags.cast_signed()).map_err(i64::from)
}

/// Gives a new subflow its congestion control: its uplink's rule if one matches, else
/// the long-RTT algorithm if its handshake was slow; and a long-RTT subflow a fixed send
/// buffer, which raises its MPTCP socket's (the sum of its subflows'). A failure (the
/// algorithm's module gone, say) leaves the subflow as it was.
fn tune_subflow(ctx: &SockOpsContext, uplink: Address) {
    let threshold = config::long_rtt_us();
    // SAFETY: `ops` is the context; `srtt_us` is readable in sock_ops. The kernel keeps
    // it scaled by 8; the handshake gave the first sample.
    let srtt_us = unsafe { read_volatile(&raw const (*ctx.ops).srtt_us) } >> 3;
    let long_rtt = threshold != 0 && srtt_us >= threshold;
    let congestion = match UPLINK_CONGESTION.get(Key::new(128, uplink)) {
        Some(rule) => Some(rule.name),
        None if long_rtt => Some(config::long_rtt_congestion().name).filter(|name| name[0] != 0),
        None => None,
    };
    if let Some(mut name) = congestion {
        // SAFETY: TCP_CONGESTION takes a zero-terminated name, which `name` is.
        let ret = unsafe { set_option(ctx, SOL_TCP, TCP_CONGESTION, &mut name) };
        if ret != 0 {
            warn!(ctx, "cannot set the subflow's congestion control: {}", ret);
        }
    }
    let mut send_buffer = config::long_rtt_send_buffer();
    if long_rtt && send_buffer != 0 {
        // SAFETY: SO_SNDBUF takes an int.
        let ret = unsafe { set_option(ctx, SOL_SOCKET, SO_SNDBUF, &mut send_buffer) };
        if ret != 0 {
            warn!(ctx, "cannot set the subflow's send buffer: {}", ret);
        }
    }
}

/// `bpf_setsockopt` on the context's socket, with `value`'s bytes as the option.
///
/// # Safety
/// `T` must be what the kernel takes for option `name` at `level` (an int, a name).
#[inline(always)]
pub unsafe fn set_option<T>(ctx: &SockOpsContext, level: i32, name: i32, value: &mut T) -> i64 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "option values are a few bytes"
    )]
    let len = size_of::<T>() as i32;
    // SAFETY: `ops` is the context; `value` is `len` readable bytes, of the type the
    // caller vouches for.
    unsafe { bpf_setsockopt(ctx.ops.cast(), level, name, (&raw mut *value).cast(), len) }
}

/// Copies the socket's current RTT and counters into `subflow`.
#[inline(always)]
fn update_counters(ctx: &SockOpsContext, subflow: &mut Subflow) {
    let ops = ctx.ops;
    // SAFETY: `ops` is the context; these fields are readable in sock_ops.
    unsafe {
        subflow.srtt_us = read_volatile(&raw const (*ops).srtt_us) >> 3;
        subflow.bytes_acked = read_volatile(&raw const (*ops).bytes_acked);
        subflow.bytes_received = read_volatile(&raw const (*ops).bytes_received);
        subflow.total_retrans = read_volatile(&raw const (*ops).total_retrans);
        subflow.snd_cwnd = read_volatile(&raw const (*ops).snd_cwnd);
    }
}

/// The flow label of the MPTCP connection the context's subflow belongs to, if the
/// daemon labelled it.
#[inline(always)]
fn flow_label(ctx: &SockOpsContext) -> Option<u64> {
    // SAFETY: `ops` is the context; `sk` is readable in sock_ops.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: `sk` is the context's non-null socket.
    let msk = unsafe { bpf_skc_to_mptcp_sock(sk.cast()) };
    if msk.is_null() {
        return None;
    }
    // SAFETY: `msk` is a valid MPTCP socket; without the create flag nothing is written.
    let label = unsafe {
        bpf_sk_storage_get(
            (&raw const FLOW_LABELS).cast_mut().cast(),
            msk.cast(),
            null_mut(),
            0,
        )
    };
    // SAFETY: a non-null storage pointer points to our u64 value.
    (!label.is_null()).then(|| unsafe { read_volatile(label.cast::<u64>()) })
}

fn socket_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: in sock_ops the context pointer is a valid `bpf_sock_ops`, which this helper
    // accepts in this program type.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The socket's (local, remote) endpoints in our address form.
///
/// The verifier only accepts context loads at a constant offset from the unmodified
/// context pointer. Reading the IPv4 or the IPv6 fields in two branches lets LLVM pick
/// a pointer per branch and load through it ("dereference of modified ctx ptr"), so every
/// field is read, each with a volatile load that LLVM may not merge or move.
#[inline(always)]
fn endpoints(ctx: &SockOpsContext, family: u32) -> (Endpoint, Endpoint) {
    let ops = ctx.ops;
    // SAFETY: `ops` is the valid context the kernel passed to this program, and every
    // field read here is readable in sock_ops programs.
    let (local_ip4, remote_ip4, local_ip6, remote_ip6, local_port, remote_port) = unsafe {
        (
            read_volatile(&raw const (*ops).local_ip4),
            read_volatile(&raw const (*ops).remote_ip4),
            [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            read_volatile(&raw const (*ops).local_port),
            read_volatile(&raw const (*ops).remote_port),
        )
    };
    let (local_address, remote_address): (Address, Address) = if family == AF_INET {
        (mapped_v4(local_ip4), mapped_v4(remote_ip4))
    } else {
        (local_ip6, remote_ip6)
    };
    (
        Endpoint {
            address: local_address,
            port: local_port,
        },
        Endpoint {
            address: remote_address,
            // sock_ops hands the remote port in network byte order, the local one in host
            // order.
            port: u32::from_be(remote_port),
        },
    )
}
