//! Maps of the inspection CLI: live flows and their MPTCP subflows.
//!
//! - `FLOWS`: LAN-side socket cookie -> [`Flow`]. Written by the gateway daemon when a
//!   relay starts, deleted when it ends; read by `mptcp-user flows`.
//! - `FLOW_LABELS`: socket storage on the daemon's upstream MPTCP sockets, holding the
//!   flow's key. Written by the daemon before it connects; read by sock_ops, which finds
//!   the label through each subflow's MPTCP socket.
//! - `SUBFLOWS`: subflow socket cookie -> [`Subflow`]. Written by sock_ops (established,
//!   every RTT sample, close); read by `mptcp-user flows`.

use crate::Endpoint;

/// Name of the flows map.
pub const FLOWS_MAP_NAME: &str = "FLOWS";
/// Name of the socket-storage map of flow labels.
pub const FLOW_LABELS_MAP_NAME: &str = "FLOW_LABELS";
/// Name of the subflows map.
pub const SUBFLOWS_MAP_NAME: &str = "SUBFLOWS";

/// Most flows listed at once (a household's gateway relays hundreds; memory is taken
/// per live entry).
pub const MAX_FLOWS: u32 = 16_384;
/// Most subflows tracked at once (memory is taken per live entry).
pub const MAX_SUBFLOWS: u32 = 32_768;

/// The flow came in on a LAN interface (tc ingress program).
pub const INTERCEPTED_LAN: u32 = 1;
/// The flow came from an opted-in local cgroup (connect programs).
pub const INTERCEPTED_CGROUP: u32 = 2;
/// The flow came in from outside, through a port forward of the converter.
pub const INTERCEPTED_INBOUND: u32 = 3;

/// The label of a warm connection no flow has taken yet (socket cookies, the flows'
/// keys, are never 0); sock_ops picks up the flow's key once it is relabelled.
pub const WARM_FLOW: u64 = 0;
/// [`Flow::flags`]: the gateway carries the flow straight to its destination, the
/// converter being unavailable.
pub const FLOW_DIRECT: u32 = 1;

/// One relayed flow, as the daemon registers it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// `CLOCK_MONOTONIC` nanoseconds (the clock of `bpf_ktime_get_ns`) at accept.
    pub started_ns: u64,
    /// The LAN client (or local process) endpoint.
    pub client: Endpoint,
    /// Where the client wanted to go.
    pub destination: Endpoint,
    /// [`INTERCEPTED_LAN`], [`INTERCEPTED_CGROUP`] or [`INTERCEPTED_INBOUND`].
    pub intercepted: u32,
    /// `FLOW_*` bits (it also keeps the size a multiple of 8 with no implicit padding).
    pub flags: u32,
}

/// One MPTCP subflow of a relayed flow, as sock_ops last saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subflow {
    /// Key of the flow in `FLOWS`.
    pub flow: u64,
    /// Local endpoint: its address names the uplink.
    pub local: Endpoint,
    /// Remote endpoint.
    pub remote: Endpoint,
    /// Smoothed RTT in microseconds.
    pub srtt_us: u32,
    /// Keeps the counters 8-byte aligned with no implicit padding.
    pub reserved: u32,
    /// Bytes sent and acknowledged.
    pub bytes_acked: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Segments retransmitted so far.
    pub total_retrans: u32,
    /// Congestion window in segments.
    pub snd_cwnd: u32,
}

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, no padding (see the size tests).
unsafe impl aya::Pod for Flow {}
#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, no padding (see the size tests).
unsafe impl aya::Pod for Subflow {}

#[cfg(test)]
mod tests {
    use super::{Flow, Subflow};
    use core::mem::offset_of;

    #[test]
    fn flow_has_no_padding() {
        assert_eq!(offset_of!(Flow, intercepted), 8 + 20 + 20);
        assert_eq!(size_of::<Flow>(), 8 + 20 + 20 + 4 + 4);
    }

    #[test]
    fn subflow_has_no_padding() {
        assert_eq!(offset_of!(Subflow, bytes_acked), 8 + 20 + 20 + 4 + 4);
        assert_eq!(size_of::<Subflow>(), 8 + 20 + 20 + 4 + 4 + 8 + 8 + 4 + 4);
    }
}
