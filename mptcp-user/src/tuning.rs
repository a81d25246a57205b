//! How both daemons tune their MPTCP sockets: congestion control and send buffer.
//!
//! Measured on the testbed's emulated uplinks (`cargo xtask bench aggregate`, README
//! "Benchmarks"): BBR keeps the sum of the uplinks where one of them loses packets, where
//! CUBIC falls below the best single uplink; on clean lines the two are within a few
//! percent (CUBIC steadier). Hence BBR by default, set explicitly on every MPTCP socket
//! (the host's sysctl differs between distributions).
//!
//! An MPTCP sender keeps every byte until the slowest path has acknowledged it, so with a
//! satellite uplink (600 ms round trip and more) the kernel's send buffer limit
//! (tcp_wmem, 4 MiB by default) holds back the fast uplinks as well. A fixed, larger
//! send buffer (`--send-buffer 4`) lifted such a line from 0.82 to 0.94-0.96 of the sum
//! of the uplinks, but it cost the common DSL + LTE case 4-6% (0.91-0.93 instead of
//! 0.975): a locked buffer lets more data queue behind the slower subflow. So the
//! default keeps the kernel's autotuning.

use std::{io, str::FromStr};

use anyhow::{Context as _, bail};
use clap::Args;
use mptcp_ebpf_common::uplinks::{CongestionName, NAME_LEN};
use socket2::{Domain, Protocol, Socket, Type};

use crate::policy::Cidr;

/// Flags both daemons share.
#[derive(Debug, Clone, Args)]
pub struct TuningArgs {
    /// Congestion control of the MPTCP connections (all their subflows), e.g. bbr, cubic.
    #[arg(long, value_name = "NAME", default_value = "bbr")]
    pub congestion: String,

    /// Fixed send buffer of each MPTCP connection in MiB, for uplinks with long round
    /// trips (satellite): the sum of the uplinks' rates times the longest round trip
    /// (the kernel doubles it for bookkeeping). 0: the kernel's autotuning; at most 1024.
    #[arg(long, value_name = "MIB", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub send_buffer: u32,

    /// Congestion control of the subflows over the uplinks in CIDR (repeatable), e.g.
    /// `203.0.113.7/32=bbr` for a lossy LTE line while the others keep --congestion.
    /// The gateway matches a subflow's local address, the converter its peer's (the
    /// uplink's public address). Set by the sock_ops program on each new subflow.
    #[arg(long = "uplink-congestion", value_name = "CIDR=NAME")]
    pub uplink_congestion: Vec<UplinkCongestion>,
}

/// One `--uplink-congestion` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkCongestion {
    /// The uplink addresses it applies to.
    pub uplinks: Cidr,
    /// The algorithm, as in /proc/sys/net/ipv4/tcp_available_congestion_control.
    pub name: String,
}

impl UplinkCongestion {
    /// The name as the map stores it.
    pub fn map_name(&self) -> CongestionName {
        let mut name = [0u8; NAME_LEN];
        name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        CongestionName { name }
    }
}

impl FromStr for UplinkCongestion {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (uplinks, name) = text
            .split_once('=')
            .with_context(|| format!("{text:?} is not CIDR=NAME"))?;
        if name.is_empty() || name.len() >= NAME_LEN {
            bail!(
                "congestion control name {name:?} must have 1 to {} characters",
                NAME_LEN - 1
            );
        }
        Ok(Self {
            uplinks: uplinks.parse()?,
            name: name.to_owned(),
        })
    }
}

/// The checked settings, applied to each MPTCP socket.
#[derive(Debug, Clone)]
pub struct Tuning {
    congestion: String,
    send_buffer_bytes: usize,
    uplink_congestion: Vec<UplinkCongestion>,
}

impl Tuning {
    /// Checks the settings on a scratch socket, so that a typo fails at start instead
    /// of on every connection.
    pub fn new(args: &TuningArgs) -> anyhow::Result<Self> {
        let tuning = Self {
            congestion: args.congestion.clone(),
            send_buffer_bytes: usize::try_from(args.send_buffer)? << 20,
            uplink_congestion: args.uplink_congestion.clone(),
        };
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        let names = std::iter::once(&tuning.congestion)
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

    /// Applies the settings to `socket` before it connects (on MPTCP, they reach every
    /// subflow, until sock_ops gives one its uplink's algorithm).
    pub fn apply(&self, socket: &Socket) -> io::Result<()> {
        self.apply_congestion(socket)?;
        self.apply_send_buffer(socket)
    }

    /// Sets the congestion control. On an MPTCP connection it reaches every subflow,
    /// the established ones included, overriding their uplink's algorithm: set it on a
    /// listener (its connections inherit it) or before connecting, not after.
    pub fn apply_congestion(&self, socket: &Socket) -> io::Result<()> {
        socket.set_tcp_congestion(self.congestion.as_bytes())
    }

    /// Sets the send buffer, if one was asked for.
    pub fn apply_send_buffer(&self, socket: &Socket) -> io::Result<()> {
        if self.send_buffer_bytes == 0 {
            return Ok(());
        }
        set_send_buffer(socket, self.send_buffer_bytes)
    }
}

/// SO_SNDBUFFORCE, which is not capped by net.core.wmem_max; SO_SNDBUF (capped) without
/// CAP_NET_ADMIN.
fn set_send_buffer(socket: &Socket, bytes: usize) -> io::Result<()> {
    match nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::SndBufForce, &bytes) {
        Err(nix::errno::Errno::EPERM) => socket.set_send_buffer_size(bytes),
        result => Ok(result?),
    }
}
