//! Which way UDP goes, read off the server: an echo server answers each datagram with
//! the address and port it came from, so the client learns which uplink carried it
//! (behind a masquerading router, 10.0.I.1 means uplink I). All of it runs in this
//! process, a thread inside each namespace, so that the times are ours.
//!
//! - [`exchange`]: one datagram from a fresh socket, as a new flow (a DNS query, a
//!   game's first packet) would send it;
//! - [`UdpFlow`]: an ongoing flow on one socket (a call, a VPN), a datagram every
//!   [`UdpFlow::INTERVAL`], each reply recorded;
//! - [`send_bytes`]: many bytes at a steady rate, to use up an allowance.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{Netns, run_in};

/// How long [`exchange`] waits for the answer.
pub const EXCHANGE_PATIENCE: Duration = Duration::from_millis(500);
/// How often the receiving loops look whether they must stop.
const POLL: Duration = Duration::from_millis(100);

/// A UDP socket on an ephemeral port of every address of `netns`.
pub fn socket_in(netns: &Netns) -> anyhow::Result<UdpSocket> {
    Ok(run_in(netns, || UdpSocket::bind("0.0.0.0:0"))?)
}

/// A server answering every datagram with the `address:port` it came from; it stops
/// when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts one in `netns` on `address` (one of the namespace's addresses).
    pub fn start(netns: &Netns, address: SocketAddr) -> anyhow::Result<Self> {
        let socket = run_in(netns, move || UdpSocket::bind(address))?;
        socket.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut buffer = [0u8; 2048];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(peer.to_string().as_bytes(), peer);
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The address an [`EchoServer`]'s answer says it saw.
fn seen_in(answer: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(answer).ok()?;
    Some(text.trim().parse::<SocketAddr>().ok()?.ip())
}

/// Sends one datagram from a fresh socket in `netns` to the echo server at `server`
/// and waits [`EXCHANGE_PATIENCE`] for the answer: the address the server saw, or
/// `None` when none came.
///
/// # Panics
/// When no socket can be made in `netns`.
pub fn exchange(netns: &Netns, server: SocketAddr) -> Option<IpAddr> {
    let socket = socket_in(netns).expect("a UDP socket in the namespace");
    socket.set_read_timeout(Some(EXCHANGE_PATIENCE)).ok()?;
    socket.send_to(b"hello", server).ok()?;
    let deadline = Instant::now() + EXCHANGE_PATIENCE;
    let mut buffer = [0u8; 256];
    while Instant::now() < deadline {
        match socket.recv_from(&mut buffer) {
            Ok((len, from)) if from == server => return seen_in(&buffer[..len]),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Sends `bytes` bytes (in datagrams of 1,200) from a fresh socket in `netns` to
/// `server`, at about 24 Mbit/s so that no shaper on the way drops them.
pub fn send_bytes(netns: &Netns, server: SocketAddr, bytes: usize) -> anyhow::Result<()> {
    const DATAGRAM: usize = 1200;
    const BURST: usize = 25;
    let socket = socket_in(netns)?;
    let payload = [0x55u8; DATAGRAM];
    for _ in 0..bytes.div_ceil(DATAGRAM * BURST) {
        for _ in 0..BURST {
            // A datagram a full queue refuses is simply not counted; the caller checks
            // what arrived where.
            let _ = socket.send_to(&payload, server);
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// One answer an [`UdpFlow`] received: when, and the address the server saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// When it arrived.
    pub at: Instant,
    /// The address the server saw the datagram come from.
    pub seen: IpAddr,
}

/// An ongoing UDP flow from one socket to an [`EchoServer`]: a datagram every
/// [`Self::INTERVAL`], every answer recorded. It stops when dropped.
pub struct UdpFlow {
    replies: Arc<Mutex<Vec<Reply>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl UdpFlow {
    /// How often the flow sends a datagram.
    pub const INTERVAL: Duration = Duration::from_millis(20);

    /// Starts the flow from `netns` to the echo server at `server`.
    pub fn start(netns: &Netns, server: SocketAddr) -> anyhow::Result<Self> {
        let socket = socket_in(netns)?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(POLL))?;
        let receiver = socket.try_clone()?;
        let replies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sender = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut sequence = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // An ICMP error turns up as a failed send or receive: the flow
                    // goes on regardless, as a real one would.
                    let _ = socket.send(&sequence.to_be_bytes());
                    sequence += 1;
                    thread::sleep(Self::INTERVAL);
                }
            })
        };
        let receiving = {
            let (stop, replies) = (Arc::clone(&stop), Arc::clone(&replies));
            thread::spawn(move || {
                let mut buffer = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = receiver.recv(&mut buffer)
                        && let Some(seen) = seen_in(&buffer[..len])
                    {
                        let reply = Reply {
                            at: Instant::now(),
                            seen,
                        };
                        replies.lock().unwrap().push(reply);
                    }
                }
            })
        };
        Ok(Self {
            replies,
            stop,
            threads: vec![sender, receiving],
        })
    }

    /// The answers so far.
    pub fn replies(&self) -> Replies {
        Replies(self.replies.lock().unwrap().clone())
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The answers an [`UdpFlow`] received, in order.
#[derive(Clone, Debug)]
pub struct Replies(pub Vec<Reply>);

impl Replies {
    /// The longest time between two answers in a row: how long the flow was broken.
    pub fn longest_gap(&self) -> Duration {
        self.0
            .windows(2)
            .map(|pair| pair[1].at - pair[0].at)
            .max()
            .unwrap_or_default()
    }

    /// The addresses the server saw in the answers that arrived after `since`.
    pub fn seen_since(&self, since: Instant) -> BTreeSet<IpAddr> {
        self.0
            .iter()
            .filter(|reply| reply.at > since)
            .map(|reply| reply.seen)
            .collect()
    }

    /// The last answer, if any.
    pub fn last(&self) -> Option<Reply> {
        self.0.last().copied()
    }
}
