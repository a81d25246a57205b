//! How both daemons tune their MPTCP sockets: congestion control and send buffer.
//!
//! Measured on the testbed's emulated uplinks (`cargo xtask bench aggregate`, README
//! "Benchmarks"): BBR keeps the sum of the uplinks where one of them loses packets, where
//! CUBIC falls below the best single uplink; on clean lines the two are within a few
//! percent (CUBIC steadier). Hence BBR by default, set explicitly on every MPTCP socket
//! (the host's sysctl differs between distributions).
//!
//! A satellite uplink (600 ms round trip and more) needs more. Measured with DSL 20 Mbit/s
//! 15 ms + satellite 10 Mbit/s 300 ms (one way), BBR on both subflows reached 0.77-0.85
//! of the sum of the uplinks, raw kernel MPTCP alike. The flows stalled for 1-2 s about
//! 11 s in: when BBR's ProbeRTT (every 10 s) cuts the satellite subflow to 4 packets for
//! a round trip or two, the data the scheduler had queued on it arrives seconds late and
//! the DSL subflow waits behind it; with CUBIC on that subflow the stalls went. And an
//! MPTCP sender keeps every byte until the slowest path has acknowledged it, which the
//! autotuned send buffer does not cover. So subflows whose handshake takes long
//! (`--long-rtt`, 300 ms) get CUBIC (no ProbeRTT) and a fixed 4 MiB send buffer
//! (`--long-rtt-send-buffer`), from the sock_ops program: 0.93-0.98 of the sum. Only
//! those subflows: a fixed send buffer on every connection (`--send-buffer 4`) cost the
//! DSL + LTE case 4-6%, a locked buffer letting more data queue behind the slower
//! subflow.

use std::{io, str::FromStr};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use log::{debug, warn};
use mptcp_ebpf_common::uplinks::{CongestionName, NAME_LEN};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{config::defaults, net::addr, sys};

/// Largest send buffer (MiB) a setting may ask for.
pub const MAX_SEND_BUFFER_MIB: u32 = 1024;

/// How both daemons tune their MPTCP connections and subflows, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TuningConfig {
    /// Congestion control of the MPTCP connections (all their subflows).
    pub congestion: String,
    /// Fixed send buffer of every MPTCP connection in MiB; 0: autotuned.
    pub send_buffer_mib: u32,
    /// Congestion control per uplink prefix, set per subflow by sock_ops.
    pub uplink_congestion: Vec<UplinkCongestion>,
    /// Handshake round trip (ms) from which a subflow is long-RTT; 0: none is.
    pub long_rtt_ms: u32,
    /// Congestion control of long-RTT subflows.
    pub long_rtt_congestion: String,
    /// Send buffer of each long-RTT subflow in MiB; 0: autotuned.
    pub long_rtt_send_buffer_mib: u32,
    /// Unsent bytes an MPTCP connection may queue, KiB; 0: the kernel's default.
    pub notsent_lowat_kib: u32,
    /// Capacity of the relays' pipes in KiB.
    pub relay_pipe_kib: u32,
    /// Subflows' packets in flight, in percent of their bandwidth-delay product; 0: no
    /// cap.
    pub inflight_cap_percent: u32,
}

impl Default for TuningConfig {
    fn default() -> Self {
        Self {
            congestion: defaults::CONGESTION.to_owned(),
            send_buffer_mib: defaults::SEND_BUFFER_MIB,
            uplink_congestion: Vec::new(),
            long_rtt_ms: defaults::LONG_RTT_MS,
            long_rtt_congestion: defaults::LONG_RTT_CONGESTION.to_owned(),
            long_rtt_send_buffer_mib: defaults::LONG_RTT_SEND_BUFFER_MIB,
            inflight_cap_percent: defaults::INFLIGHT_CAP_PERCENT,
            notsent_lowat_kib: defaults::NOTSENT_LOWAT_KIB,
            relay_pipe_kib: defaults::RELAY_PIPE_KIB,
        }
    }
}

/// What long-RTT subflows get (`--long-rtt*`), in the form the sock_ops program takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LongRtt {
    /// Handshake round trip from which a subflow is long-RTT, µs; 0: none is.
    pub threshold_us: u32,
    /// Their congestion control.
    pub congestion: CongestionName,
    /// Their SO_SNDBUF in bytes; 0: autotuned.
    pub send_buffer: u32,
}

/// One `--uplink-congestion` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkCongestion {
    /// The uplink addresses it applies to.
    pub uplinks: IpNet,
    /// The algorithm, as in /proc/sys/net/ipv4/tcp_available_congestion_control.
    pub name: String,
}

impl UplinkCongestion {
    /// The name as the map stores it.
    pub fn map_name(&self) -> CongestionName {
        // Checked when parsed.
        congestion_name(&self.name).unwrap_or_default()
    }
}

impl FromStr for UplinkCongestion {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (uplinks, name) = text
            .split_once('=')
            .with_context(|| format!("{text:?} is not CIDR=NAME"))?;
        congestion_name(name)?;
        Ok(Self {
            uplinks: addr::parse_prefix(uplinks)?,
            name: name.to_owned(),
        })
    }
}

/// The checked settings, applied to each MPTCP socket.
#[derive(Debug, Clone)]
pub struct Tuning {
    congestion: String,
    send_buffer_bytes: usize,
    notsent_lowat_bytes: u32,
    uplink_congestion: Vec<UplinkCongestion>,
    long_rtt: LongRtt,
    inflight_cap_percent: u32,
}

impl Tuning {
    /// Checks the settings on a scratch socket, so that a typo fails at start instead
    /// of on every connection.
    pub fn new(config: &TuningConfig) -> anyhow::Result<Self> {
        if config.send_buffer_mib > MAX_SEND_BUFFER_MIB
            || config.long_rtt_send_buffer_mib > MAX_SEND_BUFFER_MIB
        {
            bail!("a send buffer is at most {MAX_SEND_BUFFER_MIB} MiB");
        }
        let cap = config.inflight_cap_percent;
        if cap != 0 && !(110..=400).contains(&cap) {
            bail!("inflight-cap = {cap} is out of range: 0 (no cap), or from 110 to 400");
        }
        let long_rtt = if config.long_rtt_ms == 0 {
            LongRtt::default()
        } else {
            LongRtt {
                threshold_us: config.long_rtt_ms.saturating_mul(1000),
                congestion: congestion_name(&config.long_rtt_congestion)?,
                send_buffer: long_rtt_send_buffer(config.long_rtt_send_buffer_mib)?,
            }
        };
        let tuning = Self {
            congestion: config.congestion.clone(),
            send_buffer_bytes: usize::try_from(config.send_buffer_mib)? << 20,
            notsent_lowat_bytes: config
                .notsent_lowat_kib
                .checked_mul(1024)
                .context("notsent-lowat is at most 4194303 KiB")?,
            uplink_congestion: config.uplink_congestion.clone(),
            long_rtt,
            inflight_cap_percent: cap,
        };
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        let long_rtt_congestion = (config.long_rtt_ms != 0).then_some(&config.long_rtt_congestion);
        let names = std::iter::once(&tuning.congestion)
            .chain(long_rtt_congestion)
            .chain(tuning.uplink_congestion.iter().map(|rule| &rule.name));
        for name in names {
            socket
                .set_tcp_congestion(name.as_bytes())
                .with_context(|| {
                    format!(
                        "congestion control {name:?} is not available (see \
                     /proc/sys/net/ipv4/tcp_available_congestion_control)"
                    )
                })?;
        }
        Ok(tuning)
    }

    /// The per-uplink rules, for the sock_ops program.
    pub fn uplink_congestion(&self) -> &[UplinkCongestion] {
        &self.uplink_congestion
    }

    /// The long-RTT settings, for the sock_ops program.
    pub fn long_rtt(&self) -> LongRtt {
        self.long_rtt
    }

    /// The subflow rules as a log line: `10.0.2.1/32=reno, RTT >= 300 ms: cubic, 8192 KiB`.
    pub fn describe_subflow_rules(&self) -> String {
        let mut rules: Vec<String> = self
            .uplink_congestion
            .iter()
            .map(|rule| format!("{}={}", rule.uplinks, rule.name))
            .collect();
        if self.inflight_cap_percent != 0 {
            rules.push(format!(
                "in flight at most {} % of the bandwidth-delay product",
                self.inflight_cap_percent
            ));
        }
        if self.long_rtt.threshold_us != 0 {
            let buffer = match self.long_rtt.send_buffer {
                0 => "autotuned buffer".to_owned(),
                bytes => format!("{} KiB send buffer (doubled)", bytes >> 10),
            };
            rules.push(format!(
                "handshake RTT >= {} ms: {}, {buffer}",
                self.long_rtt.threshold_us / 1000,
                self.long_rtt.congestion.as_str()
            ));
        }
        rules.join("; ")
    }

    /// Whether sock_ops has anything to set on subflows.
    pub fn tunes_subflows(&self) -> bool {
        !self.uplink_congestion.is_empty()
            || self.long_rtt.threshold_us != 0
            || self.inflight_cap_percent != 0
    }

    /// The in-flight cap, for the sock_ops program (percent; 0: none).
    pub fn inflight_cap_percent(&self) -> u32 {
        self.inflight_cap_percent
    }

    /// Applies the settings to `socket` before it connects (on MPTCP, they reach every
    /// subflow, until sock_ops gives one its uplink's algorithm).
    pub fn apply(&self, socket: &Socket) -> io::Result<()> {
        self.apply_congestion(socket)?;
        self.apply_send_queue(socket)
    }

    /// Sets the congestion control. On an MPTCP connection it reaches every subflow,
    /// the established ones included, overriding their uplink's algorithm: set it on a
    /// listener (its connections inherit it) or before connecting, not after.
    pub fn apply_congestion(&self, socket: &Socket) -> io::Result<()> {
        socket.set_tcp_congestion(self.congestion.as_bytes())
    }

    /// Sets the send buffer and the unsent-bytes limit, where asked for. An older kernel
    /// without TCP_NOTSENT_LOWAT for MPTCP leaves the queue unlimited.
    pub fn apply_send_queue(&self, socket: &Socket) -> io::Result<()> {
        if self.notsent_lowat_bytes != 0
            && let Err(error) = socket.set_tcp_notsent_lowat(self.notsent_lowat_bytes)
        {
            debug!("TCP_NOTSENT_LOWAT left at the kernel's default: {error}");
        }
        if self.send_buffer_bytes == 0 {
            return Ok(());
        }
        set_send_buffer(socket, self.send_buffer_bytes)
    }
}

/// `name` as sock_ops takes it: zero-padded to `TCP_CA_NAME_MAX`.
fn congestion_name(name: &str) -> anyhow::Result<CongestionName> {
    if name.is_empty() || name.len() >= NAME_LEN {
        bail!(
            "congestion control name {name:?} must have 1 to {} characters",
            NAME_LEN - 1
        );
    }
    let mut bytes = [0u8; NAME_LEN];
    bytes[..name.len()].copy_from_slice(name.as_bytes());
    Ok(CongestionName { name: bytes })
}

/// The long-RTT send buffer in bytes, checked against what the host lets sock_ops set:
/// `bpf_setsockopt(SO_SNDBUF)` is capped by net.core.wmem_max, and a cap below the
/// autotuning limit (net.ipv4.tcp_wmem) would shrink the buffer, not grow it.
fn long_rtt_send_buffer(mib: u32) -> anyhow::Result<u32> {
    if mib == 0 {
        return Ok(0);
    }
    let asked = u64::from(mib) << 20;
    let cap = sys::read_sysctl("net/core/wmem_max")?;
    let autotuning_limit = sys::read_sysctl("net/ipv4/tcp_wmem")?;
    let granted = asked.min(cap);
    if 2 * granted <= autotuning_limit {
        warn!(
            "net.core.wmem_max ({cap} bytes) is too low for --long-rtt-send-buffer \
             {mib}: long-RTT subflows keep an autotuned send buffer (raise it with \
             sysctl -w net.core.wmem_max={asked})"
        );
        return Ok(0);
    }
    if granted < asked {
        warn!(
            "net.core.wmem_max caps --long-rtt-send-buffer at {} KiB",
            granted >> 10
        );
    }
    Ok(u32::try_from(granted).unwrap_or(u32::MAX))
}

/// SO_SNDBUFFORCE, which is not capped by net.core.wmem_max; SO_SNDBUF (capped) without
/// CAP_NET_ADMIN.
fn set_send_buffer(socket: &Socket, bytes: usize) -> io::Result<()> {
    match nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::SndBufForce, &bytes) {
        Err(nix::errno::Errno::EPERM) => socket.set_send_buffer_size(bytes),
        result => Ok(result?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inflight_cap_is_off_or_above_the_product() {
        for (percent, accepted) in [
            (0, true),
            (50, false),
            (109, false),
            (110, true),
            (401, false),
        ] {
            let config = TuningConfig {
                inflight_cap_percent: percent,
                ..TuningConfig::default()
            };
            assert_eq!(Tuning::new(&config).is_ok(), accepted, "{percent}");
        }
        let config = TuningConfig {
            inflight_cap_percent: 110,
            long_rtt_ms: 0,
            ..TuningConfig::default()
        };
        assert!(Tuning::new(&config).unwrap().tunes_subflows());
    }

    #[test]
    fn uplink_rules_parse_into_zero_padded_names() {
        let rule: UplinkCongestion = "10.0.2.1/32=cubic".parse().unwrap();
        assert_eq!(rule.uplinks.to_string(), "10.0.2.1/32");
        let mut expected = [0u8; NAME_LEN];
        expected[..5].copy_from_slice(b"cubic");
        assert_eq!(rule.map_name().name, expected);
        assert_eq!(rule.map_name().as_str(), "cubic");
    }

    #[test]
    fn bad_uplink_rules_are_refused() {
        for text in ["10.0.2.1/32", "10.0.2.1/32=", "nonsense=bbr"] {
            assert!(text.parse::<UplinkCongestion>().is_err(), "{text}");
        }
        // One byte must stay for the terminating zero.
        let too_long = format!("10.0.0.0/8={}", "x".repeat(NAME_LEN));
        assert!(too_long.parse::<UplinkCongestion>().is_err());
    }

    #[test]
    fn sysctl_triples_read_as_their_maximum() {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
        let fields: Vec<u64> = text
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(sys::read_sysctl("net/ipv4/tcp_wmem").unwrap(), fields[2]);
        assert!(sys::read_sysctl("net/ipv4/no_such_sysctl").is_err());
    }
}
