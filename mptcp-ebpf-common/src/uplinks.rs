//! The per-uplink congestion control: which algorithm the MPTCP subflows over an uplink
//! use, where one algorithm for all does not suit every line.
//!
//! `UPLINK_CONGESTION` is an LPM trie keyed by uplink address prefixes (our
//! [`crate::Address`] form). Written by the daemons from `--uplink-congestion`; read by
//! sock_ops when a subflow is established. On the gateway a subflow's uplink is its local
//! address; on the converter, its peer's.

/// Name of the map.
pub const MAP_NAME: &str = "UPLINK_CONGESTION";

/// Most rules.
pub const MAX_RULES: u32 = 64;

/// `TCP_CA_NAME_MAX`: room for an algorithm's name and its terminating zero.
pub const NAME_LEN: usize = 16;

/// An algorithm's name, zero-padded, as `TCP_CONGESTION` takes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CongestionName {
    /// The name's bytes, then zeros (at least one).
    pub name: [u8; NAME_LEN],
}

impl CongestionName {
    /// The name up to its terminating zero; empty if it is not UTF-8.
    pub fn as_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(NAME_LEN);
        core::str::from_utf8(&self.name[..end]).unwrap_or_default()
    }
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, a plain byte array: no padding.
unsafe impl aya::Pod for CongestionName {}
