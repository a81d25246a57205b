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
//!
//! Both are LRU maps, which reuse an evicted entry's memory for another key at once,
//! also while a reader holds a pointer to it. So each value carries its own key, and a
//! reader copies the value and uses it only if that key is the one it looked up.

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

/// A `CONNECTS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connect {
    /// The key it was stored under (the socket cookie).
    pub cookie: u64,
    /// Where the connect was going.
    pub destination: Endpoint,
    /// Zero: makes the padding explicit.
    pub reserved: u32,
}

impl Connect {
    /// The destination, if this (copied) value is the one stored under `cookie`.
    #[must_use]
    pub fn destination_for(&self, cookie: u64) -> Option<Endpoint> {
        (self.cookie == cookie).then_some(self.destination)
    }
}

/// An `ORIGINAL_DST` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// The key it was stored under.
    pub client: ClientKey,
    /// Where the client's connect was going.
    pub destination: Endpoint,
}

impl OriginalDst {
    /// The destination, if this (copied) value is the one stored under `client`.
    #[must_use]
    pub fn destination_for(&self, client: &ClientKey) -> Option<Endpoint> {
        (self.client == *client).then_some(self.destination)
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, no padding (see the size test).
unsafe impl aya::Pod for OriginalDst {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_no_hidden_padding() {
        assert_eq!(size_of::<Connect>(), 8 + 20 + 4);
        assert_eq!(size_of::<OriginalDst>(), 2 * 20);
    }

    #[test]
    fn a_value_reused_for_another_key_is_not_taken() {
        let destination = Endpoint {
            address: [1, 2, 3, 4],
            port: 443,
        };
        let connect = Connect {
            cookie: 7,
            destination,
            reserved: 0,
        };
        assert_eq!(connect.destination_for(7), Some(destination));
        assert_eq!(connect.destination_for(8), None);
        let client = Endpoint {
            address: [0, 0, 0, 9],
            port: 40000,
        };
        let original = OriginalDst {
            client,
            destination,
        };
        assert_eq!(original.destination_for(&client), Some(destination));
        let other = Endpoint {
            port: 40001,
            ..client
        };
        assert_eq!(original.destination_for(&other), None);
    }
}
