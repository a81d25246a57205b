//! Tuning options both daemons share (the role's `tuning` table), and the relays'
//! timeouts.

use clap::Args;
use serde::Deserialize;

use super::{defaults, parsed_strings};
use crate::{
    bpf::tuning::{TuningConfig, UplinkCongestion},
    net::relay::Timeouts,
};

options! {
/// Tuning options both daemons share (flags, or keys of the role's `tuning` table).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TuningOptions {
    /// Congestion control of the MPTCP connections (all their subflows), e.g. bbr, cubic.
    #[arg(long, value_name = "NAME")]
    pub congestion: Option<String>,

    /// Fixed send buffer of every MPTCP connection in MiB (the kernel doubles it for
    /// bookkeeping). 0: the kernel's autotuning; at most 1024. Lines faster than a
    /// gigabit on kernels 6.15-6.18 want 64 (the kernel's data-ACK stall, README).
    /// Long round trips are better served by --long-rtt-send-buffer, which leaves the
    /// others autotuned.
    #[arg(long, value_name = "MIB")]
    pub send_buffer: Option<u32>,

    /// Congestion control of the subflows over the uplinks in CIDR (repeatable), e.g.
    /// `203.0.113.7/32=bbr` for a lossy LTE line while the others keep --congestion.
    /// The gateway matches a subflow's local address, the converter its peer's (the
    /// uplink's public address). Set by the sock_ops program on each new subflow.
    #[arg(long = "uplink-congestion", value_name = "CIDR=NAME")]
    #[serde(default, deserialize_with = "parsed_strings")]
    pub uplink_congestion: Vec<UplinkCongestion>,

    /// Subflows whose handshake takes at least this many milliseconds (a geostationary
    /// satellite uplink: 550 ms and more) get --long-rtt-congestion, unless an
    /// --uplink-congestion rule names their uplink, and --long-rtt-send-buffer.
    /// 0: no such rule.
    #[arg(long, value_name = "MS")]
    pub long_rtt: Option<u32>,

    /// Congestion control of long-RTT subflows.
    #[arg(long, value_name = "NAME")]
    pub long_rtt_congestion: Option<String>,

    /// Send buffer of each long-RTT subflow in MiB (doubled by the kernel, capped by
    /// net.core.wmem_max); it raises the MPTCP connection's, the sum of its subflows'.
    /// 0: autotuned.
    #[arg(long, value_name = "MIB")]
    pub long_rtt_send_buffer: Option<u32>,

    /// Unsent bytes each MPTCP connection may queue in KiB (TCP_NOTSENT_LOWAT): the
    /// relay writes more only once the queue drains below it, so that a large
    /// --send-buffer holds bytes in flight, not a queue. 0: the kernel's default (no
    /// limit).
    #[arg(long, value_name = "KIB")]
    pub notsent_lowat: Option<u32>,

    /// Capacity of the relays' pipes in KiB, and so the most one splice moves (the
    /// kernel rounds it up to a power of two pages; 1024 at most without
    /// CAP_SYS_RESOURCE).
    #[arg(long, value_name = "KIB")]
    pub relay_pipe: Option<u32>,

    /// Cap each MPTCP subflow's packets in flight at this percentage of its measured
    /// bandwidth-delay product (its highest delivery rate of late times its lowest round
    /// trip), so that a bulk download leaves no standing queue on its line for the other
    /// flows to wait behind; 110 to 400, 0: no cap.
    #[arg(long, value_name = "PERCENT")]
    pub inflight_cap: Option<u32>,
}
}

impl TuningOptions {
    /// The tuning config, defaults filled in (checked by [`crate::bpf::tuning::Tuning::new`]).
    pub fn into_config(self) -> TuningConfig {
        TuningConfig {
            congestion: self
                .congestion
                .unwrap_or_else(|| defaults::CONGESTION.to_owned()),
            send_buffer_mib: self.send_buffer.unwrap_or(defaults::SEND_BUFFER_MIB),
            uplink_congestion: self.uplink_congestion,
            long_rtt_ms: self.long_rtt.unwrap_or(defaults::LONG_RTT_MS),
            long_rtt_congestion: self
                .long_rtt_congestion
                .unwrap_or_else(|| defaults::LONG_RTT_CONGESTION.to_owned()),
            long_rtt_send_buffer_mib: self
                .long_rtt_send_buffer
                .unwrap_or(defaults::LONG_RTT_SEND_BUFFER_MIB),
            notsent_lowat_kib: self.notsent_lowat.unwrap_or(defaults::NOTSENT_LOWAT_KIB),
            relay_pipe_kib: self.relay_pipe.unwrap_or(defaults::RELAY_PIPE_KIB),
            inflight_cap_percent: self.inflight_cap.unwrap_or(defaults::INFLIGHT_CAP_PERCENT),
        }
    }
}

/// The relay's timeouts, defaults filled in and checked: from a second to a week idle,
/// to a day without a path.
pub(super) fn timeouts(idle_s: Option<u64>, dead_path_s: Option<u64>) -> anyhow::Result<Timeouts> {
    Ok(Timeouts {
        idle: super::seconds(
            "idle-timeout",
            idle_s,
            defaults::IDLE_TIMEOUT_S,
            1..=604_800,
        )?,
        dead_path: super::seconds(
            "dead-path-timeout",
            dead_path_s,
            defaults::DEAD_PATH_TIMEOUT_S,
            1..=86_400,
        )?,
    })
}
