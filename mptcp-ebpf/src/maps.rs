//! Every map of the gateway's programs, with who writes it and who reads it. The statics'
//! names are the map names of `mptcp_ebpf_common`, which userspace opens them by.
//!
//! Hash maps are created with `BPF_F_NO_PREALLOC`: a gateway runs on small routers, and
//! a preallocated map takes its full size in kernel memory from the start (the first
//! version's maps took 32 MB before a single flow). LRU maps cannot skip it; they are
//! sized small.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, SockMap},
};
use mptcp_ebpf_common::{
    Address, Endpoint,
    cgroups::{self, ClientKey, Connect, OriginalDst},
    flows::{self, Flow, Subflow},
    selection,
    uplinks::{self, CongestionName},
};

use crate::{inflight::RateWindow, listener::FourTuple};

/// Destination prefix -> include/exclude. Written by the daemon and `mptcp-user
/// selection`; read by the LAN ingress and connect programs at a flow's start.
#[map]
pub static SELECTION: LpmTrie<Address, u32> = LpmTrie::with_max_entries(selection::MAX_PREFIXES, 0);

/// Destination port (host order) -> present. Written by the daemon and `mptcp-user
/// selection`; read with `SELECTION`.
#[map]
pub static SELECTION_PORTS: HashMap<u16, u32> =
    HashMap::with_max_entries(selection::MAX_PORTS, BPF_F_NO_PREALLOC);

/// One entry: `SHEDDING` while the gateway takes no new flow (it is full). Written by
/// the daemon; read with `SELECTION`.
#[map]
pub static SHEDDING: Array<u32> = Array::with_max_entries(1, 0);

/// One entry: `QUIC_FALLBACK_ON` while QUIC to selected destinations is turned away.
/// Written by the daemon and `mptcp-user selection quic`; read by the LAN program.
#[map]
pub static QUIC_FALLBACK: Array<u32> = Array::with_max_entries(1, 0);

/// Four-tuple of a selected SYN that met a time-wait socket -> present. Written by the
/// LAN program; read and deleted by the sk_lookup program, which hands the SYN to the
/// listener. Entries live microseconds: a few hundred cover any burst.
#[map]
pub static TIME_WAIT_SYNS: LruHashMap<FourTuple, u32> = LruHashMap::with_max_entries(256, 0);

/// The transparent listener, at `LISTENER_INDEX`. Written by the daemon; read by the
/// sk_lookup program.
#[map]
pub static LISTENER: SockMap = SockMap::with_max_entries(1, 0);

/// Opted-in cgroup v2 id -> present. Written by the daemon and `mptcp-user optin|optout`;
/// read by the connect programs.
#[map]
pub static OPTED_IN: HashMap<u64, u32> =
    HashMap::with_max_entries(cgroups::MAX_OPTED_IN, BPF_F_NO_PREALLOC);

/// Socket cookie of an intercepted connect -> original destination. Written by connect4/6;
/// read by getpeername4/6 and sock_ops; deleted by sock_ops at close.
#[map]
pub static CONNECTS: LruHashMap<u64, Connect> =
    LruHashMap::with_max_entries(cgroups::MAX_CONNECTS, 0);

/// The original destination of the intercepted connect whose socket has `cookie`: its
/// `CONNECTS` entry, copied at once and used only if it still belongs to `cookie` (an
/// LRU map reuses an evicted entry's memory at once, also under a reader).
#[inline(always)]
pub fn connect_destination(cookie: u64) -> Option<Endpoint> {
    let entry = CONNECTS.get_ptr(cookie)?;
    // SAFETY: a pointer to a map value, read once into a copy.
    let entry = unsafe { core::ptr::read_volatile(entry) };
    entry.destination_for(cookie)
}

/// Client endpoint of an intercepted connect -> original destination. Written by sock_ops
/// when the SYN leaves; read and deleted by the splicer when it accepts.
#[map]
pub static ORIGINAL_DST: LruHashMap<ClientKey, OriginalDst> =
    LruHashMap::with_max_entries(cgroups::MAX_CONNECTS, 0);

/// Uplink address prefix -> congestion control of the subflows over it. Written by the
/// daemons; read by sock_ops at each subflow's establishment.
#[map]
pub static UPLINK_CONGESTION: LpmTrie<Address, CongestionName> =
    LpmTrie::with_max_entries(uplinks::MAX_RULES, 0);

/// LAN-side socket cookie -> flow. Written and deleted by the daemon; read by the CLI.
#[map]
pub static FLOWS: HashMap<u64, Flow> =
    HashMap::with_max_entries(flows::MAX_FLOWS, BPF_F_NO_PREALLOC);

/// Subflow socket cookie -> subflow. Written by sock_ops (inserted at established,
/// deleted at close); read by the CLI.
#[map]
pub static SUBFLOWS: HashMap<u64, Subflow> =
    HashMap::with_max_entries(flows::MAX_SUBFLOWS, BPF_F_NO_PREALLOC);

/// Per MPTCP subflow: its highest delivery rate of late, for its in-flight cap. Written
/// and read by sock_ops.
#[btf_map]
pub static DELIVERY_RATES: SkStorage<RateWindow> = SkStorage::new();

/// Per upstream MPTCP socket: the key of its flow in `FLOWS`. Written by the daemon (by
/// socket fd) before it connects; read by sock_ops through each subflow's MPTCP socket.
#[btf_map]
pub static FLOW_LABELS: SkStorage<u64> = SkStorage::new();
