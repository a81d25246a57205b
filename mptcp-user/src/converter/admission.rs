//! Who may hold a connection to the converter before authenticating.
//!
//! The converter is on the internet: anyone can open connections to it and send
//! nothing. Such connections must not take the places of authenticated gateways, so
//! they live on a budget of their own: a few per source (an IPv4 address, an IPv6 /64)
//! and a bounded number in all, where a new connection that finds the budget spent
//! evicts the oldest unauthenticated one. A gateway authenticates within a round trip;
//! a stranger who holds connections open loses them to the next comers. Only
//! authenticated requests take one of the `--max-conns` relay permits.
//!
//! A source that proved it holds the key is no stranger: its share grows by the flows it
//! relays now and by those it authenticated in its current window of [`RECENT`] or in
//! the window before (whichever is more: a share must not collapse when a window starts
//! again, with the warm connections made for it still waiting), so that a gateway's
//! warm connections, opened ahead of a burst of flows, are not sent away as a scan's
//! would be (the gateway would then take the converter for gone).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use log::warn;
use tokio::sync::Notify;

use crate::{lock, net::addr::canonical};

/// Refusals are logged at most this often, with their count: a flood must not flood
/// the log too.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// The window in which a source's authenticated flows count toward its share once they
/// ended.
pub const RECENT: Duration = Duration::from_mins(1);

/// The budget of unauthenticated connections.
pub struct Pending {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Unauthenticated connections per source.
    by_source: HashMap<IpAddr, usize>,
    /// Those not yet evicted, oldest first, with the signal that evicts each.
    queue: BTreeMap<u64, Arc<Notify>>,
    next_id: u64,
    /// Refusals and evictions since the last log line, and when that was.
    unlogged: (u64, u64),
    last_log: Option<Instant>,
    /// What the sources that authenticated have proved.
    trusted: HashMap<IpAddr, Trust>,
}

/// A source's authenticated flows: those relayed now, those authenticated since
/// `since` (restarted every [`RECENT`]), and those of the window before.
struct Trust {
    live: usize,
    recent: usize,
    previous: usize,
    since: Instant,
}

impl Trust {
    fn new() -> Self {
        Self {
            live: 0,
            recent: 0,
            previous: 0,
            since: Instant::now(),
        }
    }

    /// Starts a new window if the current one is over.
    fn roll(&mut self) {
        let age = self.since.elapsed();
        if age >= RECENT {
            // The window before is the one that just ended, if it ended just now.
            self.previous = if age < 2 * RECENT { self.recent } else { 0 };
            self.recent = 0;
            self.since = Instant::now();
        }
    }

    /// How many more connections than a stranger's share the source may hold.
    fn extra(&self) -> usize {
        self.live + self.recent.max(self.previous)
    }
}

/// An unauthenticated connection's place in the budget; dropping it gives the place
/// back (once the connection authenticated, or ended).
pub struct PendingSlot {
    pending: Arc<Pending>,
    id: u64,
    source: IpAddr,
    evicted: Arc<Notify>,
}

impl PendingSlot {
    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evicted.notified().await;
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut state = lock(&self.pending.state);
        state.queue.remove(&self.id);
        if let Some(count) = state.by_source.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                state.by_source.remove(&self.source);
            }
        }
    }
}

/// An authenticated flow being relayed; dropping it ends its count in its source's
/// share.
pub struct Relaying {
    pending: Arc<Pending>,
    source: IpAddr,
}

impl Drop for Relaying {
    fn drop(&mut self) {
        let mut state = lock(&self.pending.state);
        if let Some(trust) = state.trusted.get_mut(&self.source) {
            trust.live = trust.live.saturating_sub(1);
        }
    }
}

impl Pending {
    /// A budget of `max_total` unauthenticated connections, `max_per_source` from one
    /// source.
    pub fn new(max_total: usize, max_per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            state: Mutex::new(State::default()),
        })
    }

    /// A place for a new connection from `peer`, or `None` when its source already
    /// holds its share. When the budget is spent, the oldest unauthenticated
    /// connection is told to go.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<PendingSlot> {
        let source = source_of(peer);
        let mut state = lock(&self.state);
        let held = state.by_source.get(&source).copied().unwrap_or(0);
        let extra = state.trusted.get_mut(&source).map_or(0, |trust| {
            trust.roll();
            trust.extra()
        });
        if held >= (self.max_per_source + extra).min(self.max_total) {
            state.unlogged.0 += 1;
            self.log_pressure(&mut state);
            return None;
        }
        if state.queue.len() >= self.max_total
            && let Some((_, oldest)) = state.queue.pop_first()
        {
            oldest.notify_one();
            state.unlogged.1 += 1;
            self.log_pressure(&mut state);
        }
        *state.by_source.entry(source).or_insert(0) += 1;
        let id = state.next_id;
        state.next_id += 1;
        let evicted = Arc::new(Notify::new());
        state.queue.insert(id, Arc::clone(&evicted));
        Some(PendingSlot {
            pending: Arc::clone(self),
            id,
            source,
            evicted,
        })
    }

    /// Counts a flow from `peer` that authenticated, in its source's share for as long
    /// as the returned guard lives (and [`RECENT`] after).
    pub fn relaying(self: &Arc<Self>, peer: IpAddr) -> Relaying {
        let source = source_of(peer);
        let mut state = lock(&self.state);
        // Sources that stopped relaying a while ago are forgotten (only key holders are
        // here, but their addresses change).
        state
            .trusted
            .retain(|_, trust| trust.live > 0 || trust.since.elapsed() < 2 * RECENT);
        let trust = state.trusted.entry(source).or_insert_with(Trust::new);
        trust.roll();
        trust.live += 1;
        trust.recent += 1;
        Relaying {
            pending: Arc::clone(self),
            source,
        }
    }

    /// Unauthenticated connections held now.
    pub fn len(&self) -> usize {
        lock(&self.state).by_source.values().sum()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn log_pressure(&self, state: &mut State) {
        if state
            .last_log
            .is_some_and(|last| last.elapsed() < LOG_EVERY)
        {
            return;
        }
        let (refused, evicted) = std::mem::take(&mut state.unlogged);
        warn!(
            "unauthenticated connections over budget: {refused} refused (more than {} \
             from one source), {evicted} evicted (more than {} in all) since the last \
             such line; a scan or a flood?",
            self.max_per_source, self.max_total
        );
        state.last_log = Some(Instant::now());
    }
}

/// The source a budget share belongs to: an IPv4 address, or an IPv6 /64 (one host
/// easily has a whole /64).
fn source_of(peer: IpAddr) -> IpAddr {
    match canonical(peer) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 @ IpAddr::V4(_) => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_share_and_no_more() {
        let pending = Pending::new(100, 2);
        let first = pending.admit(ip("192.0.2.1")).unwrap();
        let _second = pending.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(pending.admit(ip("192.0.2.1")).is_none());
        // Another source is not affected; one /64 is one source.
        assert!(pending.admit(ip("192.0.2.2")).is_some());
        let _a = pending.admit(ip("2001:db8::1")).unwrap();
        let _b = pending.admit(ip("2001:db8::2")).unwrap();
        assert!(pending.admit(ip("2001:db8::3")).is_none());
        drop(first);
        assert!(pending.admit(ip("192.0.2.1")).is_some());
    }

    #[test]
    fn a_source_that_authenticated_gets_the_share_of_its_flows() {
        let pending = Pending::new(100, 2);
        let gateway = ip("198.51.100.7");
        let strangers: Vec<PendingSlot> = (0..2).map(|_| pending.admit(gateway).unwrap()).collect();
        assert!(pending.admit(gateway).is_none(), "a stranger's share");
        // Three flows authenticated: three more warm connections may wait, also once
        // two of the flows ended (they count for a while).
        let flows: Vec<Relaying> = (0..3).map(|_| pending.relaying(gateway)).collect();
        drop(flows);
        let warm: Vec<PendingSlot> = (0..3).map(|_| pending.admit(gateway).unwrap()).collect();
        assert!(pending.admit(gateway).is_none(), "two plus three");
        // Another source is still a stranger.
        let other = ip("198.51.100.8");
        let _a = pending.admit(other).unwrap();
        let _b = pending.admit(other).unwrap();
        assert!(pending.admit(other).is_none());
        // Never more than the budget in all.
        let small = Pending::new(4, 2);
        let _flows: Vec<Relaying> = (0..10).map(|_| small.relaying(gateway)).collect();
        let held: Vec<PendingSlot> = (0..4).map(|_| small.admit(gateway).unwrap()).collect();
        assert!(small.admit(gateway).is_none());
        drop((strangers, warm, held));
    }

    #[test]
    fn a_share_outlives_the_window_it_was_earned_in_by_one_window() {
        let mut trust = Trust::new();
        trust.recent = 30;
        let now = Instant::now();
        trust.since = now.checked_sub(RECENT + Duration::from_secs(1)).unwrap();
        trust.roll();
        assert_eq!(trust.extra(), 30, "the window before still counts");
        trust.recent = 3;
        trust.since = now.checked_sub(RECENT * 3).unwrap();
        trust.roll();
        assert_eq!(trust.extra(), 0, "long over");
    }

    #[tokio::test]
    async fn a_full_budget_evicts_the_oldest() {
        let pending = Pending::new(2, 10);
        let oldest = pending.admit(ip("192.0.2.1")).unwrap();
        let younger = pending.admit(ip("192.0.2.2")).unwrap();
        let newest = pending.admit(ip("192.0.2.3")).unwrap();
        tokio::time::timeout(Duration::from_secs(1), oldest.evicted())
            .await
            .expect("the oldest is evicted");
        let not_evicted = tokio::time::timeout(Duration::from_millis(50), younger.evicted());
        assert!(not_evicted.await.is_err());
        drop(oldest);
        assert_eq!(pending.len(), 2);
        drop((younger, newest));
        assert!(pending.is_empty());
    }
}
