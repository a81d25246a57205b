//! The probe: one MPTCP handshake with the converter from an uplink's address says
//! whether the uplink works, strips MPTCP, or reaches a converter that refuses.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::Health;
use crate::{
    net::socket::{self, Attempt},
    sys,
};

/// How often each uplink is probed, and its addresses and routes looked at again: a
/// silent uplink is found within this plus [`PROBE_TIMEOUT`], 2.5 s, so that a
/// resolver's first retry already leaves by another uplink.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe's handshake may take (one SYN retransmission included).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// One MPTCP handshake with `target` from `address`: up, MPTCP blocked (it answered
/// without MPTCP) or refused (each with how long it took), or down.
pub(super) async fn probe(
    address: Ipv4Addr,
    target: SocketAddr,
) -> (Health, Option<Duration>, Option<String>) {
    let attempt = [Attempt {
        source: IpAddr::V4(address),
        head_start: PROBE_TIMEOUT,
    }];
    let started = Instant::now();
    let connected = tokio::time::timeout(
        PROBE_TIMEOUT,
        socket::connect_racing(target, true, &attempt, |_| Ok(())),
    )
    .await;
    match connected {
        Ok(Ok(stream)) => {
            let rtt = started.elapsed();
            match sys::is_mptcp(&stream) {
                Ok(false) => (Health::MptcpBlocked, Some(rtt), None),
                _ => (Health::Up, Some(rtt), None),
            }
        }
        // The refusal took a round trip too: the line's, which UDP's choice needs.
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => (
            Health::NoConverter,
            Some(started.elapsed()),
            Some(format!("the converter {target} refuses connections")),
        ),
        Ok(Err(error)) => (
            Health::Down,
            None,
            Some(format!(
                "cannot reach the converter {target} over it: {error}"
            )),
        ),
        Err(_) => (
            Health::Down,
            None,
            Some(format!(
                "no answer from the converter {target} within {PROBE_TIMEOUT:?}"
            )),
        ),
    }
}
