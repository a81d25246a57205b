//! The in-flight cap of MPTCP subflows (sock_ops, on each RTT sample).
//!
//! An MPTCP subflow under BBR was measured keeping twice its bandwidth-delay product in
//! flight (cwnd-limited: 120 packets on a 20 Mbit/s, 30 ms line whose BDP is 52), where
//! a plain TCP connection under BBR on the same line keeps about one (64 packets): the
//! extra half is a standing queue at the bottleneck, 40 ms of it, which every other flow
//! on that line waits behind, an interactive one included. This caps each subflow's
//! congestion window (`TCP_BPF_SNDCWND_CLAMP`, which BBR and CUBIC both honour) at a
//! share of its own bandwidth-delay product: its highest delivery rate of the last ten
//! round trips (a second at least) times its lowest round trip. The headroom above 100 %
//! lets the rate estimate grow when the line has more to give.
//!
//! The cap waits for the line to be full, as BBR's startup does: until the rate has
//! grown by less than a quarter in three round trips running, the subflow is left to
//! find its rate (a cap from the first samples would hold each round trip's growth to
//! the headroom). Long-RTT subflows (satellite) are left alone: their loss-based
//! congestion control needs a window well above one bandwidth-delay product.

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    helpers::{bpf_ktime_get_ns, bpf_sk_storage_get},
    programs::SockOpsContext,
};
use core::ptr::{null_mut, read_volatile};

use crate::{
    config,
    maps::DELIVERY_RATES,
    sock_ops::{SOL_TCP, set_option},
};

/// `TCP_BPF_SNDCWND_CLAMP` from include/uapi/linux/bpf.h.
const TCP_BPF_SNDCWND_CLAMP: i32 = 1002;
/// The smallest cap, in packets: the kernel's initial window.
const MIN_CAP: u64 = 10;
/// Packets added to every cap: a TSO burst's worth, so that a slow line is not starved.
const SLACK: u64 = 4;
/// The shortest window of the rate's maximum, ns.
const MIN_WINDOW_NS: u64 = 1_000_000_000;
/// Subflows whose lowest round trip is shorter are left alone (µs): a LAN-like path,
/// whose queue costs nothing noticeable, and whose tiny window a cap would starve
/// (measured on a zero-delay 1 Gbit/s line: 0.93 of plain routing instead of 0.98, and
/// nine times the CPU per byte).
const MIN_RTT_US: u64 = 2000;

/// Round trips in a row without a quarter's growth that mark the line full.
const FULL_AFTER_ROUNDS: u32 = 3;

/// A subflow's highest delivery rate (bytes per second) since `since_ns`, and whether
/// its line is full yet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RateWindow {
    pub max_bytes_per_s: u64,
    pub since_ns: u64,
    /// When the current round trip began, and the rate at its start.
    pub round_ns: u64,
    pub round_rate: u64,
    /// Round trips in a row with less than a quarter's growth.
    pub flat_rounds: u32,
    /// Non-zero once the line is full: the cap applies from then on.
    pub full: u32,
    /// The cap last set, in packets.
    pub cap: u64,
}

/// Takes the context's RTT sample into its subflow's rate window and sets its cap.
#[inline(always)]
pub fn cap(ctx: &SockOpsContext) {
    let percent = u64::from(config::inflight_cap_percent());
    if percent == 0 {
        return;
    }
    let ops = ctx.ops;
    // SAFETY: `ops` is the context; these fields are readable in sock_ops.
    let (sk, delivered, interval_us, min_rtt_us, mss) = unsafe {
        (
            (*ops).__bindgen_anon_2.sk,
            u64::from(read_volatile(&raw const (*ops).rate_delivered)),
            u64::from(read_volatile(&raw const (*ops).rate_interval_us)),
            u64::from(read_volatile(&raw const (*ops).rtt_min)),
            u64::from(read_volatile(&raw const (*ops).mss_cache)),
        )
    };
    let long_rtt_us = u64::from(config::long_rtt_us());
    if sk.is_null()
        || mss == 0
        || min_rtt_us < MIN_RTT_US
        || (long_rtt_us != 0 && min_rtt_us >= long_rtt_us)
    {
        return;
    }
    // Plain products (a 128-bit one is no BPF instruction); their factors are
    // bounded: 2^32 packets of 64 KiB over a millisecond stay below 2^64.
    let Some(per_ms) = delivered
        .wrapping_mul(mss)
        .wrapping_mul(1000)
        .checked_div(interval_us)
    else {
        return;
    };
    let rate = per_ms.wrapping_mul(1000);
    // SAFETY: `sk` is the context's socket; the storage is created if missing.
    let window = unsafe {
        bpf_sk_storage_get(
            (&raw const DELIVERY_RATES).cast_mut().cast(),
            sk.cast(),
            null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<RateWindow>();
    if window.is_null() {
        return;
    }
    // SAFETY: a non-null storage pointer points to our value, zeroed when created.
    let window = unsafe { &mut *window };
    // SAFETY: the helper has no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let span = min_rtt_us.wrapping_mul(10_000).max(MIN_WINDOW_NS);
    if rate >= window.max_bytes_per_s || now.saturating_sub(window.since_ns) > span {
        window.max_bytes_per_s = rate;
        window.since_ns = now;
    }
    if window.full == 0 {
        if now.saturating_sub(window.round_ns) >= min_rtt_us.wrapping_mul(1000) {
            if window.max_bytes_per_s >= window.round_rate + window.round_rate / 4 {
                window.flat_rounds = 0;
            } else {
                window.flat_rounds += 1;
            }
            window.round_ns = now;
            window.round_rate = window.max_bytes_per_s;
        }
        if window.flat_rounds < FULL_AFTER_ROUNDS {
            return;
        }
        window.full = 1;
    }
    let bdp_bytes = window.max_bytes_per_s.wrapping_mul(min_rtt_us) / 1_000_000;
    let Some(packets) = bdp_bytes
        .wrapping_mul(percent)
        .checked_div(mss.wrapping_mul(100))
    else {
        return;
    };
    let cap = (packets + SLACK).clamp(MIN_CAP, 1 << 20);
    // Set again only when it moved by an eighth: a socket option on every sample costs.
    if cap.abs_diff(window.cap) <= window.cap / 8 {
        return;
    }
    window.cap = cap;
    let mut clamp = i32::try_from(cap).unwrap_or(i32::MAX);
    // SAFETY: the clamp is an int.
    let _ = unsafe { set_option(ctx, SOL_TCP, TCP_BPF_SNDCWND_CLAMP, &mut clamp) };
}
