//! Where a new flow's first subflow starts: the uplinks ranked by their health, role and
//! round trip, each with a head start before the next one is tried too.

use std::{net::IpAddr, sync::Mutex, time::Duration};

use super::{Health, Role, UplinkStatus};
use crate::{lock, net::socket::Attempt};

/// The shortest head start a new flow's first attempt gets before the next uplink is
/// tried too (RFC 8305's connection attempt delay).
const MIN_HEAD_START: Duration = Duration::from_millis(250);
/// The longest one.
const MAX_HEAD_START: Duration = Duration::from_secs(1);

/// The uplinks as new flows see them; the manager keeps it current.
#[derive(Debug, Default)]
pub struct UplinkTable {
    uplinks: Mutex<Vec<UplinkStatus>>,
}

impl UplinkTable {
    /// Every uplink's status.
    pub fn snapshot(&self) -> Vec<UplinkStatus> {
        lock(&self.uplinks).clone()
    }

    /// The source addresses a new flow's first subflow tries, in order: regular uplinks
    /// that are up, then those not probed yet, then backups, then the rest (a probe can
    /// be wrong). Within each, an uplink that is no path manager endpoint comes first
    /// (only a flow that starts there also gets it: the others join from the
    /// endpoints), then the fastest. Each gets a head start of twice its round trip,
    /// within 250 ms to 1 s, before the next one is tried too.
    pub fn attempts(&self) -> Vec<Attempt> {
        let uplinks = lock(&self.uplinks);
        let mut ranked: Vec<&UplinkStatus> = uplinks
            .iter()
            .filter(|uplink| uplink.address.is_some())
            .collect();
        ranked.sort_by(|a, b| {
            (rank(a), a.endpoint).cmp(&(rank(b), b.endpoint)).then(
                a.rtt_ms
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)),
            )
        });
        ranked
            .into_iter()
            .filter_map(|uplink| {
                Some(Attempt {
                    source: IpAddr::V4(uplink.address?),
                    head_start: uplink
                        .rtt_ms
                        .map_or(MIN_HEAD_START, |rtt| {
                            Duration::from_secs_f64(2.0 * rtt / 1e3)
                        })
                        .clamp(MIN_HEAD_START, MAX_HEAD_START),
                })
            })
            .collect()
    }

    pub(super) fn replace(&self, uplinks: Vec<UplinkStatus>) {
        *lock(&self.uplinks) = uplinks;
    }
}

/// The order in which uplinks are tried; lower first.
fn rank(uplink: &UplinkStatus) -> u8 {
    // Metered lines wait like backups: their bytes cost.
    match (uplink.health, uplink.role != Role::Primary) {
        (Health::Up, false) => 0,
        // The line works; only the converter does not answer on it.
        (Health::Unknown | Health::NoConverter, false) => 1,
        (Health::Up | Health::Unknown | Health::NoConverter, true) => 2,
        (Health::MptcpBlocked, _) => 3,
        (Health::Down, _) => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        address: &str,
        health: Health,
        backup: bool,
        endpoint: bool,
        rtt: f64,
    ) -> UplinkStatus {
        UplinkStatus {
            address: Some(address.parse().unwrap()),
            health,
            rtt_ms: Some(rtt),
            ..UplinkStatus::new(
                "x",
                if backup { Role::Backup } else { Role::Primary },
                endpoint,
            )
        }
    }

    #[test]
    fn new_flows_start_on_healthy_uplinks_the_non_endpoint_and_the_fastest_first() {
        let table = UplinkTable::default();
        table.replace(vec![
            status("10.0.0.1", Health::Down, false, false, 1.0),
            status("10.0.0.2", Health::Up, true, true, 1.0),
            status("10.0.0.3", Health::Up, false, true, 30.0),
            status("10.0.0.4", Health::Up, false, true, 600.0),
            status("10.0.0.5", Health::Up, false, false, 40.0),
            status("10.0.0.6", Health::MptcpBlocked, false, true, 1.0),
        ]);
        let attempts = table.attempts();
        let order: Vec<String> = attempts.iter().map(|a| a.source.to_string()).collect();
        assert_eq!(
            order,
            [
                "10.0.0.5", "10.0.0.3", "10.0.0.4", "10.0.0.2", "10.0.0.6", "10.0.0.1"
            ]
        );
        assert_eq!(attempts[0].head_start, Duration::from_millis(250));
        assert_eq!(attempts[2].head_start, Duration::from_secs(1));
    }
}
