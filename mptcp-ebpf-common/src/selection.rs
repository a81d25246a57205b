//! The selection: which flows the gateway intercepts, by destination prefix and port.
//!
//! Written by the daemon at start (defaults and `--include`/`--exclude`) and by
//! `mptcp-user selection add|del` while it runs; read by the LAN ingress program and the
//! connect programs when a flow starts (its SYN or its `connect()`), so a flow keeps the
//! decision it started with.
//!
//! `SELECTION` is an LPM trie keyed by [`crate::Address`] prefixes (IPv4 as IPv4-mapped,
//! prefix length + 96). The longest matching prefix decides; no match means "not
//! intercepted". The daemon installs `::/0` as include, so by default everything is
//! intercepted except the excluded ranges.
//!
//! `SELECTION_PORTS` optionally restricts interception to some destination ports: when the
//! entry [`PORTS_RESTRICTED_KEY`] is present, only the listed ports are intercepted.

/// Name of the LPM trie of destination prefixes.
pub const MAP_NAME: &str = "SELECTION";
/// Name of the hash map of destination ports.
pub const PORTS_MAP_NAME: &str = "SELECTION_PORTS";
/// Name of the one-entry array whose value [`SHEDDING`] makes the gateway take no new
/// flow: it has as many as its open-file limit allows, and new ones go direct.
pub const SHEDDING_MAP_NAME: &str = "SHEDDING";
/// The `SHEDDING` value while the gateway sheds new flows (0: it takes them).
pub const SHEDDING: u32 = 1;

/// Name of the one-entry array whose value [`QUIC_FALLBACK_ON`] makes the LAN program
/// turn QUIC away: UDP to port [`QUIC_PORT`] of a selected destination gets the mark
/// [`quic_mark`], whose policy route is `prohibit`, so the kernel answers ICMP
/// "administratively prohibited" and browsers fall back to TCP at once, which the
/// gateway aggregates.
pub const QUIC_MAP_NAME: &str = "QUIC_FALLBACK";
/// The `QUIC_FALLBACK` value while QUIC is turned away (0: left alone).
pub const QUIC_FALLBACK_ON: u32 = 1;
/// HTTP/3's port.
pub const QUIC_PORT: u16 = 443;

/// The fwmark of QUIC turned away: the one after the interception mark.
#[must_use]
pub const fn quic_mark(intercept_mark: u32) -> u32 {
    intercept_mark.wrapping_add(1)
}

/// Most prefixes the selection holds.
pub const MAX_PREFIXES: u32 = 4096;
/// Most ports the selection lists.
pub const MAX_PORTS: u32 = 1024;

/// Destinations under this prefix are intercepted.
pub const ACTION_INCLUDE: u32 = 1;
/// Destinations under this prefix go directly.
pub const ACTION_EXCLUDE: u32 = 2;
/// Like [`ACTION_EXCLUDE`], installed by the daemon for addresses that must never be
/// intercepted (the converter, the gateway's own addresses); `selection del` refuses
/// to remove it.
pub const ACTION_EXCLUDE_FIXED: u32 = 3;

/// Port 0 is never a destination port; its presence in `SELECTION_PORTS` switches the port
/// restriction on.
pub const PORTS_RESTRICTED_KEY: u16 = 0;

/// Whether an action intercepts.
#[must_use]
pub const fn intercepts(action: u32) -> bool {
    action == ACTION_INCLUDE
}
