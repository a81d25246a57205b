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

use std::io;

use anyhow::Context as _;
use clap::Args;
use socket2::{Domain, Protocol, Socket, Type};

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
}

/// The checked settings, applied to each MPTCP socket.
#[derive(Debug, Clone)]
pub struct Tuning {
    congestion: String,
    send_buffer_bytes: usize,
}

impl Tuning {
    /// Checks the settings on a scratch socket, so that a typo fails at start instead
    /// of on every connection.
    pub fn new(args: &TuningArgs) -> anyhow::Result<Self> {
        let tuning = Self {
            congestion: args.congestion.clone(),
            send_buffer_bytes: usize::try_from(args.send_buffer)? << 20,
        };
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket
            .set_tcp_congestion(tuning.congestion.as_bytes())
            .with_context(|| {
                format!(
                    "congestion control {:?} is not available (see \
                     /proc/sys/net/ipv4/tcp_available_congestion_control)",
                    tuning.congestion
                )
            })?;
        Ok(tuning)
    }

    /// Applies the settings to `socket` (on MPTCP, they reach every subflow).
    pub fn apply(&self, socket: &Socket) -> io::Result<()> {
        socket.set_tcp_congestion(self.congestion.as_bytes())?;
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
