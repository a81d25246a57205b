//! Every map of the gateway's programs, with who writes it and who reads it.

use aya_ebpf::{macros::map, maps::LruHashMap};
use mptcp_ebpf_common::connections::{self, Connection};

/// Established TCP connections of the watched cgroups, keyed by socket cookie.
/// Written by `sock_ops` (insert at established, delete at close); read by the daemon.
/// The static's name must equal [`connections::MAP_NAME`].
#[map]
pub static CONNECTIONS: LruHashMap<u64, Connection> =
    LruHashMap::with_max_entries(connections::MAX_ENTRIES, 0);
