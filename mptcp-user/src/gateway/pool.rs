//! Warm connections: MPTCP connections to the converter opened before a flow needs
//! one, so that a new flow's Convert request leaves at once (its first byte comes one
//! round trip after its SYN instead of two) and its first bytes find a subflow on every
//! uplink already up.
//!
//! The pool follows demand: it keeps about one warm connection per two flows of the
//! last five seconds, at least two while flows come, and at least as many as the
//! largest burst of the last 30 s (flows starting within 250 ms of each other: a
//! browser opening a page), so that the next burst of that size finds one each; at
//! most `--pool-size`, and none once the LAN has been quiet for 30 s. A warm
//! connection has sent nothing, so the converter holds it only for its request timeout
//! (5 s by default) and counts it among the gateway's unauthenticated connections:
//! each is retired after 3 s, and a new one takes its place while demand lasts. A flow
//! gets a warm connection only if it goes to the active converter, starts from the
//! uplink new flows start from, and is still open; one that fails anyway is replaced by
//! a fresh connection ([`super::upstream`]).

use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use log::debug;
use tokio::{net::TcpStream, sync::Notify};

use crate::lock;

/// A warm connection is retired at this age, well before the converter's default
/// request timeout (5 s) closes it.
const MAX_AGE: Duration = Duration::from_secs(3);
/// The demand is the flows of this last stretch.
const DEMAND_WINDOW: Duration = Duration::from_secs(5);
/// After this long without a flow the pool empties; bursts are remembered this long.
const QUIET: Duration = Duration::from_secs(30);
/// Flows that start within this span of each other are one burst.
const BURST_SPAN: Duration = Duration::from_millis(250);
/// How often the pool looks at itself when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// After a failed connection, the pool waits this long before opening more.
const BACKOFF: Duration = Duration::from_secs(2);

/// A warm connection and where it goes.
struct Warm {
    stream: TcpStream,
    converter: SocketAddr,
    source: Option<IpAddr>,
    opened: Instant,
}

impl Warm {
    /// Whether a flow to `converter` starting from `source` may use it now.
    fn usable(&self, converter: SocketAddr, source: Option<IpAddr>) -> bool {
        self.converter == converter
            && (source.is_none() || self.source == source)
            && self.opened.elapsed() < MAX_AGE
            && still_open(&self.stream)
    }
}

/// Whether the converter has neither closed nor reset `stream` (it sends nothing
/// before a request).
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.try_read(&mut [0u8; 1]), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
}

#[derive(Default)]
struct State {
    idle: VecDeque<Warm>,
    connecting: usize,
    /// When recent flows started (the last [`QUIET`]).
    flows: VecDeque<Instant>,
    backoff_until: Option<Instant>,
}

/// The warm connections of a gateway.
pub struct Pool {
    max: usize,
    state: Mutex<State>,
    /// Wakes the filler when a flow took a connection.
    taken: Notify,
}

/// What the pool needs to know of the gateway each time it looks: the converter new
/// flows go to (`None` while it is away) and the source address their first subflow
/// starts from.
pub struct Target {
    /// The active converter.
    pub converter: Option<SocketAddr>,
    /// The first uplink address new flows try.
    pub source: Option<IpAddr>,
}

impl Pool {
    /// A pool of at most `max` warm connections (0: none).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            state: Mutex::new(State::default()),
            taken: Notify::new(),
        })
    }

    /// A warm connection to `converter` starting from `source`, if one is ready. Counts
    /// the flow as demand either way.
    pub fn take(&self, converter: SocketAddr, source: Option<IpAddr>) -> Option<TcpStream> {
        if self.max == 0 {
            return None;
        }
        let mut state = lock(&self.state);
        let now = Instant::now();
        state.flows.push_back(now);
        while state
            .flows
            .front()
            .is_some_and(|&start| now.duration_since(start) > QUIET)
        {
            state.flows.pop_front();
        }
        // The oldest first: the most likely to have its subflows joined.
        let found = loop {
            match state.idle.pop_front() {
                Some(warm) if warm.usable(converter, source) => break Some(warm.stream),
                Some(_) => {}
                None => break None,
            }
        };
        drop(state);
        self.taken.notify_one();
        found
    }

    /// Warm connections ready now.
    pub fn idle(&self) -> usize {
        lock(&self.state).idle.len()
    }

    /// How many warm connections the recent flows call for.
    fn desired(&self, state: &State) -> usize {
        let now = Instant::now();
        let Some(&last) = state.flows.back() else {
            return 0;
        };
        if now.duration_since(last) > QUIET {
            return 0;
        }
        let recent = state
            .flows
            .iter()
            .filter(|&&start| now.duration_since(start) <= DEMAND_WINDOW)
            .count();
        (2 + recent / 2)
            .max(largest_burst(&state.flows))
            .min(self.max)
    }

    /// Keeps the pool at the demand until the task is dropped: `target` says where
    /// flows go now, `connect` opens a connection (to a converter, from the uplinks, as
    /// a flow's would be).
    pub async fn fill<F, C>(self: Arc<Self>, target: impl Fn() -> Target, connect: C)
    where
        C: Fn(SocketAddr) -> F + Clone + Send + 'static,
        F: Future<Output = io::Result<TcpStream>> + Send,
    {
        if self.max == 0 {
            return std::future::pending().await;
        }
        loop {
            let _ = tokio::time::timeout(TICK, self.taken.notified()).await;
            let Target { converter, source } = target();
            let missing = {
                let mut state = lock(&self.state);
                let Some(converter) = converter else {
                    state.idle.clear();
                    continue;
                };
                state.idle.retain(|warm| warm.usable(converter, source));
                let desired = self.desired(&state);
                while state.idle.len() > desired {
                    state.idle.pop_front();
                }
                if state
                    .backoff_until
                    .is_some_and(|until| Instant::now() < until)
                {
                    0
                } else {
                    let missing = desired.saturating_sub(state.idle.len() + state.connecting);
                    state.connecting += missing;
                    missing
                }
            };
            let Some(converter) = converter else { continue };
            for _ in 0..missing {
                let pool = Arc::clone(&self);
                let connect = connect.clone();
                tokio::spawn(async move {
                    let opened = connect(converter).await;
                    let mut state = lock(&pool.state);
                    state.connecting -= 1;
                    match opened {
                        Ok(stream) => {
                            let source = stream.local_addr().ok().map(|local| local.ip());
                            state.idle.push_back(Warm {
                                stream,
                                converter,
                                source,
                                opened: Instant::now(),
                            });
                        }
                        Err(error) => {
                            debug!("no warm connection to {converter}: {error}");
                            state.backoff_until = Some(Instant::now() + BACKOFF);
                        }
                    }
                });
            }
        }
    }
}

/// The most flows of `starts` (oldest first) that started within [`BURST_SPAN`].
fn largest_burst(starts: &VecDeque<Instant>) -> usize {
    let mut largest = 0;
    let mut first = 0;
    for (last, &start) in starts.iter().enumerate() {
        while start.duration_since(starts[first]) > BURST_SPAN {
            first += 1;
        }
        largest = largest.max(last - first + 1);
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demand_grows_with_recent_flows_and_ends_after_a_quiet_spell() {
        let pool = Pool::new(4);
        let mut state = State::default();
        assert_eq!(pool.desired(&state), 0);
        let now = Instant::now();
        state.flows.push_back(now);
        assert_eq!(pool.desired(&state), 2);
        state.flows.extend([now; 5]);
        assert_eq!(pool.desired(&state), 4, "2 + 6 / 2, capped at 4");
        // A burst of 8 a while ago (beyond the demand window) still calls for 8.
        let pool = Pool::new(32);
        let earlier = now.checked_sub(DEMAND_WINDOW * 2).unwrap();
        state.flows = std::iter::repeat_n(earlier, 8)
            .chain([earlier + BURST_SPAN * 2, now])
            .collect();
        assert_eq!(pool.desired(&state), 8);
        // Flows spread over seconds are no burst.
        state.flows = (0..6u32)
            .map(|i| earlier + BURST_SPAN * 2 * i)
            .chain([now])
            .collect();
        assert_eq!(largest_burst(&state.flows), 1);
        let quiet = now.checked_sub(QUIET + Duration::from_secs(1)).unwrap();
        state.flows = VecDeque::from([quiet]);
        assert_eq!(pool.desired(&state), 0);
        assert_eq!(Pool::new(0).desired(&State::default()), 0);
    }

    /// Waits until `pool` holds `count` idle connections, 5 s at most: they are made
    /// on the filler's ticks, however long this machine takes for them.
    async fn idle_reaches(pool: &Pool, count: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while pool.idle() != count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} idle, never {count}",
                pool.idle()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn the_pool_follows_demand_and_hands_out_only_good_connections() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let converter = listener.local_addr().unwrap();
        // The "converter" accepts and keeps what it accepted.
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                lock(&held).push(stream);
            }
        });
        let pool = Pool::new(3);
        let filler = tokio::spawn(Arc::clone(&pool).fill(
            move || Target {
                converter: Some(converter),
                source: None,
            },
            TcpStream::connect,
        ));
        // No flow yet: nothing is opened.
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(pool.idle(), 0);
        // A first flow finds none, and makes two, no more.
        assert!(pool.take(converter, None).is_none());
        idle_reaches(&pool, 2).await;
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(pool.idle(), 2);
        // The next flow gets one; two are made (2 + 2 flows / 2, capped at 3).
        assert!(pool.take(converter, None).is_some());
        idle_reaches(&pool, 3).await;
        // Not for another converter, nor from another uplink.
        let elsewhere = SocketAddr::from(([127, 0, 0, 2], converter.port()));
        assert!(pool.take(elsewhere, None).is_none());
        let loopback = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(
            pool.take(converter, Some(IpAddr::from([192, 0, 2, 1])))
                .is_none()
        );
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(pool.idle(), 3);
        // One the converter closed is not handed out.
        filler.abort();
        lock(&accepted).clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.take(converter, loopback).is_none());
    }
}
