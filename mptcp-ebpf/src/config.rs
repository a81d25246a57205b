//! Settings the daemon writes into the object before loading it (`EbpfLoader::set_global`).
//!
//! They live in `.rodata`, which the kernel freezes, so the verifier sees them as
//! constants. Each is read with a volatile load: without it LLVM would fold the
//! compile-time zero into the code.

use core::ptr::read_volatile;

use mptcp_ebpf_common::{Address, uplinks::CongestionName};

/// The splicer's transparent listener port.
#[unsafe(no_mangle)]
static LISTEN_PORT: u16 = 0;

/// The fwmark that routes an intercepted packet to local delivery (`ip rule fwmark`).
#[unsafe(no_mangle)]
static INTERCEPT_MARK: u32 = 0;

/// Cookie of the daemon's network namespace: the cgroup programs run in every
/// namespace of the host and only intercept in this one.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// 1 on the gateway, where a subflow's uplink is its local address; 0 on the converter,
/// where it is the peer's.
#[unsafe(no_mangle)]
static UPLINK_IS_LOCAL: u32 = 0;

/// Subflows whose handshake took at least this long (µs; 0: no such rule) are
/// long-RTT subflows (a satellite uplink): they get the settings below.
#[unsafe(no_mangle)]
static LONG_RTT_US: u32 = 0;

/// The congestion control of long-RTT subflows; all zeros: the MPTCP socket's.
#[unsafe(no_mangle)]
static LONG_RTT_CONGESTION: CongestionName = CongestionName {
    name: [0; mptcp_ebpf_common::uplinks::NAME_LEN],
};

/// The send buffer (SO_SNDBUF, bytes) of long-RTT subflows; 0: autotuned.
#[unsafe(no_mangle)]
static LONG_RTT_SEND_BUFFER: u32 = 0;

/// Each subflow's packets in flight are capped at this percentage of its measured
/// bandwidth-delay product; 0: no cap.
#[unsafe(no_mangle)]
static INFLIGHT_CAP_PERCENT: u32 = 0;

/// Where intercepted IPv4 connects go (the listener's IPv4 address, mapped); all zeros
/// when the listener takes no IPv4.
#[unsafe(no_mangle)]
static LISTENER_V4: Address = [0; 4];

/// Where intercepted IPv6 connects go; all zeros when the listener takes no IPv6.
#[unsafe(no_mangle)]
static LISTENER_V6: Address = [0; 4];

#[inline(always)]
pub fn listen_port() -> u16 {
    // SAFETY: a plain load of an initialised static.
    unsafe { read_volatile(&raw const LISTEN_PORT) }
}

#[inline(always)]
pub fn intercept_mark() -> u32 {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const INTERCEPT_MARK) }
}

#[inline(always)]
pub fn netns_cookie() -> u64 {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const NETNS_COOKIE) }
}

#[inline(always)]
pub fn uplink_is_local() -> bool {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const UPLINK_IS_LOCAL) != 0 }
}

#[inline(always)]
pub fn listener_v4() -> Address {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const LISTENER_V4) }
}

#[inline(always)]
pub fn listener_v6() -> Address {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const LISTENER_V6) }
}

#[inline(always)]
pub fn long_rtt_us() -> u32 {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const LONG_RTT_US) }
}

#[inline(always)]
pub fn long_rtt_congestion() -> CongestionName {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const LONG_RTT_CONGESTION) }
}

#[inline(always)]
pub fn long_rtt_send_buffer() -> u32 {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const LONG_RTT_SEND_BUFFER) }
}

#[inline(always)]
pub fn inflight_cap_percent() -> u32 {
    // SAFETY: as above.
    unsafe { read_volatile(&raw const INFLIGHT_CAP_PERCENT) }
}
