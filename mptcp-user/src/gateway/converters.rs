//! The choice of converter: which one new flows go through, whether any is reachable at
//! all, and when the flows carried through one have been without a path for too long.
//!
//! One owner for the decision: the uplink manager's probes make it
//! ([`Converters::set_active`], [`Converters::note_probes`]), a flow that finds every
//! converter unavailable reports it ([`Converters::report_failure`]), and flows and the
//! pool only ask ([`Converters::in_order`], [`Converters::active`]). A flow waits on
//! [`Converters::lost`], which a change of state wakes, instead of polling.

use std::{net::SocketAddr, time::Duration};

use log::{info, warn};
// Tokio's clock, which tests can pause and advance.
use tokio::{sync::watch, time::Instant};

/// What the gateway knows of its converters now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    /// The converter new flows try first (an index into the configured list): the first
    /// one the probes reached.
    active: usize,
    /// Whether the uplinks are probed; without probes nothing would say when an outage
    /// ends, so flows never skip the converter.
    probed: bool,
    /// A flow could not use any converter, or every probe failed, and no probe has
    /// reached one since: new flows go direct at once.
    down: bool,
    /// Since when no probe has reached the converter over any uplink.
    unreachable_since: Option<Instant>,
}

/// The converters of a gateway, preferred first, and which of them new flows use.
#[derive(Debug)]
pub struct Converters {
    addresses: Vec<SocketAddr>,
    state: watch::Sender<State>,
}

impl Converters {
    /// The configured converters, preferred first; none in direct mode.
    pub fn new(addresses: Vec<SocketAddr>) -> Self {
        Self {
            addresses,
            state: watch::Sender::new(State::default()),
        }
    }

    /// Every configured converter, preferred first.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// The converters a new flow tries, in order: the active one, then the others in
    /// their configured order. None while the converters are known to be away (and in
    /// direct mode): the flow goes direct at once.
    pub fn in_order(&self) -> Vec<SocketAddr> {
        let state = *self.state.borrow();
        if state.down || self.addresses.is_empty() {
            return Vec::new();
        }
        let first = state.active % self.addresses.len();
        let (before, after) = self.addresses.split_at(first);
        after.iter().chain(before).copied().collect()
    }

    /// The converter new flows go through now, if any.
    pub fn active(&self) -> Option<SocketAddr> {
        self.in_order().first().copied()
    }

    /// A flow could not use any converter (and goes direct). The first one of an outage
    /// says so in the log; with probes, new flows skip the converters until one reaches
    /// them again.
    pub fn report_failure(&self, reason: &anyhow::Error) {
        let mut first = false;
        self.state.send_if_modified(|state| {
            first = state.probed && !state.down;
            state.down |= state.probed;
            first
        });
        if first {
            warn!(
                "the converter is unavailable ({reason:#}): new flows go direct until a \
                 probe reaches it again"
            );
        } else if !self.state.borrow().probed {
            info!("the converter cannot take a flow ({reason:#}); it goes direct");
        }
    }

    /// Makes converter `index` the one new flows use; says so when it changes.
    pub fn set_active(&self, index: usize) {
        let mut before = index;
        self.state.send_if_modified(|state| {
            before = std::mem::replace(&mut state.active, index);
            before != index
        });
        if before != index && self.addresses.len() > 1 {
            info!(
                "new flows go through the converter {} (the first that answers; {} before)",
                self.addresses[index], self.addresses[before]
            );
        }
    }

    /// Takes a round of probes: `reached`, some uplink reached a converter; `failed`,
    /// some uplink's probe got no answer or a refusal. The converters are away when a
    /// round failed and none reached them.
    pub fn note_probes(&self, reached: bool, failed: bool) {
        let mut change = None;
        self.state.send_if_modified(|state| {
            let before = *state;
            state.probed = true;
            if reached {
                state.unreachable_since = None;
                state.down = false;
            } else if failed {
                state.unreachable_since.get_or_insert_with(Instant::now);
                state.down = true;
            }
            change = Some((before.down, state.down));
            *state != before
        });
        match change {
            Some((true, false)) => info!("the converter answers again: new flows go through it"),
            Some((false, true)) if !reached => {
                warn!("no uplink reaches the converter: new flows go direct until one does");
            }
            _ => {}
        }
    }

    /// Resolves once no probe has reached the converter for `dead_path`: a flow carried
    /// through it has had no path that long. Never without converters or probes.
    ///
    /// The kernel does not end an MPTCP connection whose every subflow died (keepalive
    /// only ends the subflows), so the uplinks' probes tell instead.
    pub async fn lost(&self, dead_path: Duration) {
        let mut state = self.state.subscribe();
        loop {
            let since = state.borrow_and_update().unreachable_since;
            let changed = match since {
                Some(since) => tokio::select! {
                    () = tokio::time::sleep_until(since + dead_path) => return,
                    changed = state.changed() => changed,
                },
                None => state.changed().await,
            };
            if changed.is_err() {
                // The sender lives as long as `self`: this cannot happen.
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Converters {
        Converters::new(vec![
            "192.0.2.1:5124".parse().unwrap(),
            "192.0.2.2:5124".parse().unwrap(),
            "192.0.2.3:5124".parse().unwrap(),
        ])
    }

    #[test]
    fn flows_try_the_active_converter_then_the_others_in_order() {
        let converters = three();
        let order = |c: &Converters| -> Vec<u8> {
            c.in_order()
                .iter()
                .map(|address| match address.ip() {
                    std::net::IpAddr::V4(ip) => ip.octets()[3],
                    std::net::IpAddr::V6(_) => 0,
                })
                .collect()
        };
        assert_eq!(order(&converters), [1, 2, 3]);
        converters.set_active(1);
        assert_eq!(order(&converters), [2, 3, 1]);
        assert_eq!(converters.active(), Some("192.0.2.2:5124".parse().unwrap()));
        assert!(Converters::new(Vec::new()).in_order().is_empty());
    }

    #[test]
    fn failed_probes_send_new_flows_direct_until_one_reaches_a_converter() {
        let converters = three();
        // Without probes a failed flow does not mark the converters away.
        converters.report_failure(&anyhow::anyhow!("refused"));
        assert!(converters.active().is_some());
        converters.note_probes(false, true);
        assert_eq!(converters.active(), None);
        converters.note_probes(true, false);
        assert!(converters.active().is_some());
        converters.report_failure(&anyhow::anyhow!("refused"));
        assert_eq!(converters.active(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn lost_wakes_once_the_converters_are_unreachable_for_the_bound() {
        let converters = std::sync::Arc::new(three());
        let waiting = tokio::spawn({
            let converters = std::sync::Arc::clone(&converters);
            async move { converters.lost(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            !waiting.is_finished(),
            "lost while the converter is reachable"
        );
        converters.note_probes(false, true);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!waiting.is_finished(), "lost before the bound");
        // A probe that reaches it again restarts the count.
        converters.note_probes(true, false);
        converters.note_probes(false, true);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(!waiting.is_finished(), "the count did not restart");
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::yield_now().await;
        assert!(waiting.is_finished(), "not lost after the bound");
    }
}
