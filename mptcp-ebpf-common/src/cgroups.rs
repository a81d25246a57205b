//! Maps of the interception of local services (per-cgroup opt-in).
//!
//! - `OPTED_IN`: cgroup v2 ids whose processes (and their descendants') TCP connects are
//!   intercepted. Written by the daemon (`--cgroup`) and by `mptcp-user optin|optout`;
//!   read by the connect programs.
//! - `CONNECTS`: socket cookie -> original destination, for each connect the connect
//!   programs intercepted (rewrote to the splicer's listener). Written by connect4/6, read by
//!   getpeername4/6 (which restore the original destination) and by sock_ops; deleted by
//!   sock_ops when the socket closes.
//! - `ORIGINAL_DST`: the client socket's local endpoint -> original destination. Written
//!   by sock_ops when the intercepted connect sends its SYN (the local port is known by
//!   then); the splicer looks up the accepted connection's peer endpoint, and deletes it.

use crate::Endpoint;

/// Name of the opted-in cgroups map.
pub const OPTED_IN_MAP_NAME: &str = "OPTED_IN";
/// Name of the client endpoint -> original destination map.
pub const ORIGINAL_DST_MAP_NAME: &str = "ORIGINAL_DST";

/// Most cgroups that can be opted in.
pub const MAX_OPTED_IN: u32 = 1024;
/// Most intercepted connects tracked at once. These are LRU maps, whose memory is
/// taken up front (about 110 bytes an entry), so they are sized for a gateway's local
/// services, not a server farm.
pub const MAX_CONNECTS: u32 = 8_192;
/// How deep in the cgroup tree an opted-in ancestor is looked for.
pub const MAX_CGROUP_DEPTH: i32 = 16;

/// The value of an `OPTED_IN` entry (the key is what matters).
pub const OPTED_IN: u32 = 1;

/// An `ORIGINAL_DST` key: the client's local endpoint, as the splicer sees its peer.
pub type ClientKey = Endpoint;
