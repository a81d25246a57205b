//! The probe: an MPTCP handshake with the converter from an uplink's address says
//! whether the uplink works, strips MPTCP, or reaches a converter that refuses.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream::FuturesUnordered};

use super::Health;
use crate::{
    net::socket::{self, Attempt},
    sys,
};

/// How often each uplink is probed, and its addresses and routes looked at again: a
/// silent uplink is found within this plus [`PROBE_TIMEOUT`], 2.5 s, so that a
/// resolver's first retry already leaves by another uplink.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a probe may take (its first handshake's SYN retransmission included).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A probe's handshakes: another starts each time this passes without an answer, so
/// that a lost SYN or SYN-ACK on a lossy line is not taken for a dead line (each would
/// move the household's unconverted traffic and forget its flows).
const HEDGE: Duration = Duration::from_millis(400);
/// Most handshakes of one probe.
const TRIES: u32 = 3;

/// A probe of the uplink at `address`: up to [`TRIES`] MPTCP handshakes with `target`,
/// [`HEDGE`] apart, within [`PROBE_TIMEOUT`]. Up or MPTCP blocked (it answered without
/// MPTCP) as soon as one connects, refused as soon as one is refused (each with that
/// handshake's own round trip), down when none answered.
pub(super) async fn probe(
    address: Ipv4Addr,
    target: SocketAddr,
) -> (Health, Option<Duration>, Option<String>) {
    let mut tries: FuturesUnordered<_> = (0..TRIES)
        .map(|index| async move {
            tokio::time::sleep(HEDGE * index).await;
            let attempt = [Attempt {
                source: IpAddr::V4(address),
                head_start: PROBE_TIMEOUT,
            }];
            let started = Instant::now();
            let connected = socket::connect_racing(target, true, &attempt, |_| Ok(())).await;
            (connected, started.elapsed())
        })
        .collect();
    let mut last_error = None;
    let answered = tokio::time::timeout(PROBE_TIMEOUT, async {
        while let Some((connected, rtt)) = tries.next().await {
            match connected {
                Ok(stream) => return Some(Ok((stream, rtt))),
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Some(Err(rtt));
                }
                Err(error) => last_error = Some(error),
            }
        }
        None
    })
    .await;
    match answered {
        Ok(Some(Ok((stream, rtt)))) => match sys::is_mptcp(&stream) {
            Ok(false) => (Health::MptcpBlocked, Some(rtt), None),
            _ => (Health::Up, Some(rtt), None),
        },
        // The refusal took a round trip too: the line's, which UDP's choice needs.
        Ok(Some(Err(rtt))) => (
            Health::NoConverter,
            Some(rtt),
            Some(format!("the converter {target} refuses connections")),
        ),
        Ok(None) => (
            Health::Down,
            None,
            Some(format!(
                "cannot reach the converter {target} over it: {}",
                last_error.map_or_else(|| "no answer".to_owned(), |error| error.to_string())
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
