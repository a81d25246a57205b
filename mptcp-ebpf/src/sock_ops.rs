//! cgroup/sock_ops: records the TCP connections of the cgroups it is attached to.
//!
//! At active or passive establishment the connection goes into `CONNECTIONS` and the
//! state callback is switched on for that socket, so that its entry is removed when it
//! closes and the map only holds live connections.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::sock_ops,
    programs::SockOpsContext,
};
use core::ptr::read_volatile;

use aya_log_ebpf::{debug, warn};
use mptcp_ebpf_common::connections::{Connection, DIRECTION_ACTIVE, DIRECTION_PASSIVE};

use crate::maps::CONNECTIONS;

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// `TCP_CLOSE` from include/net/tcp_states.h.
const TCP_CLOSE: u32 = 7;

// Named `record_connections`, not `sockops`: a function named like its section clashes
// in bpf-linker ("symbol 'sockops' is already defined").
#[sock_ops]
pub fn record_connections(ctx: SockOpsContext) -> u32 {
    match try_record_connections(&ctx) {
        Ok(()) => 1,
        Err(errno) => {
            warn!(&ctx, "sock_ops op {} failed: {}", ctx.op(), errno);
            1
        }
    }
}

fn try_record_connections(ctx: &SockOpsContext) -> Result<(), i64> {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(ctx, family, DIRECTION_ACTIVE),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_established(ctx, family, DIRECTION_PASSIVE),
        // For STATE_CB, args[1] is the new state.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // A missing entry is fine: the LRU may have evicted it.
            let _ = CONNECTIONS.remove(socket_cookie(ctx));
            Ok(())
        }
        _ => Ok(()),
    }
}

fn on_established(ctx: &SockOpsContext, family: u32, direction: u32) -> Result<(), i64> {
    let fields = read_addresses(ctx);
    let (local_addr, remote_addr) = if family == AF_INET {
        ([fields.local_ip4, 0, 0, 0], [fields.remote_ip4, 0, 0, 0])
    } else {
        (fields.local_ip6, fields.remote_ip6)
    };
    let connection = Connection {
        family,
        direction,
        local_addr,
        remote_addr,
        local_port: fields.local_port,
        // sock_ops hands the remote port in network byte order, the local one in host order.
        remote_port: u32::from_be(fields.remote_port),
        // SAFETY: the helper takes no arguments and cannot fail.
        established_ns: unsafe { bpf_ktime_get_ns() },
    };
    let cookie = socket_cookie(ctx);
    CONNECTIONS
        .insert(cookie, connection, 0)
        .map_err(i64::from)?;
    ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32)
        .map_err(i64::from)?;
    debug!(
        ctx,
        "established cookie {} local port {} remote port {}",
        cookie,
        connection.local_port,
        connection.remote_port
    );
    Ok(())
}

fn socket_cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: in sock_ops the context pointer is a valid `bpf_sock_ops`, which this helper
    // accepts in this program type.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The address fields of the context, copied out.
struct Addresses {
    local_ip4: u32,
    remote_ip4: u32,
    local_ip6: [u32; 4],
    remote_ip6: [u32; 4],
    local_port: u32,
    remote_port: u32,
}

/// Reads every address field, whatever the family, in straight-line code.
///
/// The verifier only accepts context loads at a constant offset from the unmodified
/// context pointer. Reading the IPv4 or the IPv6 fields in two branches lets LLVM pick
/// a pointer per branch and load through it ("dereference of modified ctx ptr"), so we
/// read them all, each with a volatile load that LLVM may not merge or move. The IPv6
/// fields of an IPv4 socket read as zeros (or the mapped address), which we ignore.
#[inline(always)]
fn read_addresses(ctx: &SockOpsContext) -> Addresses {
    let ops = ctx.ops;
    // SAFETY: `ops` is the valid context the kernel passed to this program, and every
    // field read here is readable in sock_ops programs.
    unsafe {
        Addresses {
            local_ip4: read_volatile(&raw const (*ops).local_ip4),
            remote_ip4: read_volatile(&raw const (*ops).remote_ip4),
            local_ip6: [
                read_volatile(&raw const (*ops).local_ip6[0]),
                read_volatile(&raw const (*ops).local_ip6[1]),
                read_volatile(&raw const (*ops).local_ip6[2]),
                read_volatile(&raw const (*ops).local_ip6[3]),
            ],
            remote_ip6: [
                read_volatile(&raw const (*ops).remote_ip6[0]),
                read_volatile(&raw const (*ops).remote_ip6[1]),
                read_volatile(&raw const (*ops).remote_ip6[2]),
                read_volatile(&raw const (*ops).remote_ip6[3]),
            ],
            local_port: read_volatile(&raw const (*ops).local_port),
            remote_port: read_volatile(&raw const (*ops).remote_port),
        }
    }
}
