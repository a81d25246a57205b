//! Moves bytes both ways between two connected sockets with splice(2) through pipes, so
//! that payload never enters userspace.
//!
//! - Half-close: EOF from one side becomes shutdown(SHUT_WR) on the other once the pipe
//!   has drained; the other direction goes on until it ends too.
//! - Resets: an error on either side (a reset, most often) makes both sockets close with
//!   SO_LINGER 0, so the other peer sees a reset too instead of a clean end. Both sockets
//!   hold SO_LINGER 0 while the relay runs, so that a daemon that dies (killed, crashed)
//!   resets its flows instead of ending them as if they were complete; a relay that
//!   ends normally closes them normally.
//! - Idle timeout: both sockets are reset when no byte moved for that long.
//! - Dead paths: TCP keepalive on both sockets ends a flow whose peer stopped answering
//!   (every path dead) after about the dead-path timeout, and a side that takes no byte
//!   for that long while some wait is as dead: both sockets are then reset too.
//! - Pipes come from a shared pool and are held only while bytes are in flight, so an
//!   idle connection owns no pipe.
//! - Where the kernel cannot splice a socket (EINVAL, e.g. MPTCP before Linux 5.x), that
//!   direction falls back to a bounded read/write copy, and the log says so once.

use std::{
    io,
    os::fd::OwnedFd,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use log::{debug, warn};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::Interest,
    net::{TcpStream, tcp::ReadHalf},
};

use crate::{lock, net::socket, sys};

/// The default pipe capacity, and the buffer of the copying fallback.
const CHUNK: usize = 64 * 1024;
/// Idle pipes a daemon's pool keeps: enough for the bursts of a household's flows,
/// 512 file descriptors at most.
pub const MAX_IDLE_PIPES: usize = 256;

/// About how many flows a daemon can relay under a limit of `files` open files: two
/// sockets a flow, and a pipe (two more) while its bytes move; the idle pipes of the
/// pool and a few dozen for the rest come off first.
pub fn flow_capacity(files: u64) -> u64 {
    files.saturating_sub(2 * MAX_IDLE_PIPES as u64 + 64) / 3
}

/// A pipe: bytes spliced into `write` come out of `read`.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

/// Empty pipes shared by all connections.
pub struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    max_idle: usize,
    /// Bytes a pipe holds, and so the most one splice moves.
    capacity: usize,
}

impl PipePool {
    /// A pool keeping at most `max_idle` idle pipes open (two file descriptors each),
    /// of `capacity` bytes each (the kernel rounds it up to a power of two pages).
    pub fn new(max_idle: usize, capacity: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            capacity,
        }
    }

    /// The pool of a daemon tuned with `tuning` (`--relay-pipe`).
    pub fn for_tuning(tuning: &crate::bpf::tuning::TuningConfig) -> Self {
        let kib = usize::try_from(tuning.relay_pipe_kib).unwrap_or(64);
        Self::new(MAX_IDLE_PIPES, kib * 1024)
    }

    fn take(&self) -> io::Result<Pipe> {
        if let Some(pipe) = lock(&self.idle).pop() {
            return Ok(pipe);
        }
        let (read, write) = sys::pipe()?;
        // Always set: a new pipe has 16 pages, 64 KiB only where pages are 4 KiB (arm64
        // kernels may have 16 or 64 KiB pages: a 256 KiB or 1 MiB pipe).
        if let Err(error) = sys::set_pipe_size(&write, self.capacity) {
            debug!("pipes stay at the kernel's default size: {error}");
        }
        Ok(Pipe { read, write })
    }

    /// Only empty pipes may come back; a pipe with bytes left is dropped instead.
    fn give(&self, pipe: Pipe) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(pipe);
        }
    }

    /// Idle pipes in the pool.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }
}

impl Default for PipePool {
    fn default() -> Self {
        Self::new(MAX_IDLE_PIPES, CHUNK)
    }
}

/// Bytes moved in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From the first socket to the second.
    pub forward: u64,
    /// From the second socket to the first.
    pub backward: u64,
}

/// When a relay gives up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// No byte moved either way for this long: a forgotten connection.
    pub idle: Duration,
    /// A peer that answers no keepalive, or takes no byte, for this long is gone.
    pub dead_path: Duration,
}

/// How a relay ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from a side failed (typically: it was reset).
    #[error("read failed: {0}")]
    Read(io::Error),
    /// Writing to a side failed (typically: it was reset or closed).
    #[error("write failed: {0}")]
    Write(io::Error),
    /// No byte moved for the idle timeout.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// A side took no byte for the dead-path timeout while some waited.
    #[error("a side took nothing for {0:?}: its path is dead")]
    Stalled(Duration),
    /// No pipe could be made (file descriptor limit).
    #[error("no pipe: {0}")]
    Pipe(io::Error),
}

/// Counters of one direction of the relays: the bytes moved, by how, and the calls
/// that moved them.
#[derive(Clone, Debug, Default)]
pub struct DirectionCounters {
    /// Bytes spliced (the kernel moved them).
    pub spliced: Counter,
    /// Bytes copied through userspace (read with the handshake, or the kernel could
    /// not splice).
    pub copied: Counter,
    /// Reads (splice or read calls) that brought bytes or the end of the stream: bytes
    /// per read tells how well each wake-up is used.
    pub reads: Counter,
    /// Calls that found their socket not ready (EAGAIN) and so waited for it: about one
    /// wake-up each.
    pub waits: Counter,
    /// The bytes again, however moved, for whom the relay works (a converter's
    /// gateway), if anyone counts them.
    pub owner: Option<Counter>,
}

impl DirectionCounters {
    /// Counts `bytes` moved, by splice or by copy.
    pub fn moved(&self, bytes: usize, spliced: bool) {
        let bytes = bytes as u64;
        if spliced {
            self.spliced.inc_by(bytes);
        } else {
            self.copied.inc_by(bytes);
        }
        if let Some(owner) = &self.owner {
            owner.inc_by(bytes);
        }
    }
}

/// Counters of the relays: `up` is a→b (towards the destination).
#[derive(Clone, Debug, Default)]
pub struct RelayCounters {
    /// a→b.
    pub up: DirectionCounters,
    /// b→a.
    pub down: DirectionCounters,
}

/// Relays between `a` and `b` until both directions ended (Ok) or one failed (both
/// sockets are then reset). `forward` is a→b.
pub async fn relay(
    a: &mut TcpStream,
    b: &mut TcpStream,
    pool: &PipePool,
    timeouts: Timeouts,
    counters: &RelayCounters,
) -> Result<Transferred, RelayError> {
    for stream in [&*a, &*b] {
        socket::reset_on_close(stream);
        // Bytes go on as they arrive: with Nagle, the converter's first relayed bytes
        // waited for the ACK of its answer, one extra round trip before the first byte.
        if let Err(error) = stream.set_nodelay(true) {
            debug!("cannot set TCP_NODELAY: {error}");
        }
        if let Err(error) = socket::detect_dead_peer(stream, timeouts.dead_path) {
            debug!("cannot set TCP keepalive: {error}");
        }
    }
    let start = Instant::now();
    let last_activity = AtomicU64::new(0);
    let (a_read, a_write) = a.split();
    let (b_read, b_write) = b.split();
    let stall = timeouts.dead_path;
    let forward = pump(
        &a_read,
        &b_write,
        pool,
        &counters.up,
        &last_activity,
        start,
        stall,
    );
    let backward = pump(
        &b_read,
        &a_write,
        pool,
        &counters.down,
        &last_activity,
        start,
        stall,
    );
    let result = tokio::select! {
        result = async { tokio::try_join!(forward, backward) } => result,
        () = idle(&last_activity, start, timeouts.idle) => Err(RelayError::Idle(timeouts.idle)),
    };
    match result {
        Ok((forward, backward)) => {
            socket::close_normally(a);
            socket::close_normally(b);
            Ok(Transferred { forward, backward })
        }
        // The sockets still close with a reset.
        Err(error) => Err(error),
    }
}

/// Resolves once no pump has recorded activity for `timeout`.
async fn idle(last_activity: &AtomicU64, start: Instant, timeout: Duration) {
    loop {
        let last = start + Duration::from_millis(last_activity.load(Ordering::Relaxed));
        let deadline = last + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

fn touch(last_activity: &AtomicU64, start: Instant) {
    let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    last_activity.store(millis, Ordering::Relaxed);
}

/// One direction: `from` -> `to` until EOF, then shuts down `to`'s write side. Fails
/// when `to` takes no byte of what waits for `stall`.
async fn pump(
    from: &ReadHalf<'_>,
    to: &tokio::net::tcp::WriteHalf<'_>,
    pool: &PipePool,
    counted: &DirectionCounters,
    last_activity: &AtomicU64,
    start: Instant,
    stall: Duration,
) -> Result<u64, RelayError> {
    let from: &TcpStream = from.as_ref();
    let to: &TcpStream = to.as_ref();
    let mut moved = 0u64;
    loop {
        from.readable().await.map_err(RelayError::Read)?;
        let pipe = pool.take().map_err(RelayError::Pipe)?;
        let capacity = pool.capacity;
        let filled = match from.try_io(Interest::READABLE, || {
            sys::splice(from, &pipe.write, capacity)
        }) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                counted.waits.inc();
                pool.give(pipe);
                continue;
            }
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                static WARNED: AtomicBool = AtomicBool::new(false);
                if !WARNED.swap(true, Ordering::Relaxed) {
                    warn!(
                        "this kernel cannot splice these sockets (EINVAL); copying through \
                         userspace"
                    );
                }
                pool.give(pipe);
                return copy(from, to, moved, counted, last_activity, start, stall).await;
            }
            Err(error) => return Err(RelayError::Read(error)),
        };
        counted.reads.inc();
        if filled == 0 {
            pool.give(pipe);
            shutdown_write(to).map_err(RelayError::Write)?;
            return Ok(moved);
        }
        let mut in_pipe = filled;
        while in_pipe > 0 {
            tokio::time::timeout(stall, to.writable())
                .await
                .map_err(|_| RelayError::Stalled(stall))?
                .map_err(RelayError::Write)?;
            match to.try_io(Interest::WRITABLE, || sys::splice(&pipe.read, to, in_pipe)) {
                Ok(n) => {
                    in_pipe -= n;
                    // Counted as they leave: a peer that goes away mid-pipe has still
                    // received these.
                    moved += n as u64;
                    counted.moved(n, true);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    counted.waits.inc();
                }
                Err(error) => return Err(RelayError::Write(error)),
            }
        }
        pool.give(pipe);
        touch(last_activity, start);
    }
}

/// The fallback for sockets the kernel cannot splice: a bounded buffer copy.
async fn copy(
    from: &TcpStream,
    to: &TcpStream,
    mut moved: u64,
    counted: &DirectionCounters,
    last_activity: &AtomicU64,
    start: Instant,
    stall: Duration,
) -> Result<u64, RelayError> {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        from.readable().await.map_err(RelayError::Read)?;
        let n = match from.try_read(&mut buffer) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                counted.waits.inc();
                continue;
            }
            Err(error) => return Err(RelayError::Read(error)),
        };
        counted.reads.inc();
        if n == 0 {
            shutdown_write(to).map_err(RelayError::Write)?;
            return Ok(moved);
        }
        let mut written = 0;
        while written < n {
            tokio::time::timeout(stall, to.writable())
                .await
                .map_err(|_| RelayError::Stalled(stall))?
                .map_err(RelayError::Write)?;
            match to.try_write(&buffer[written..n]) {
                Ok(w) => {
                    written += w;
                    moved += w as u64;
                    counted.moved(w, false);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    counted.waits.inc();
                }
                Err(error) => return Err(RelayError::Write(error)),
            }
        }
        touch(last_activity, start);
    }
}

fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write) {
        // The peer may already be gone; its side of the relay reports that.
        Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, sync::Arc};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair of loopback sockets, MPTCP ones if `mptcp`.
    async fn pair(mptcp: bool) -> (TcpStream, TcpStream) {
        let protocol = mptcp.then_some(socket2::Protocol::MPTCP);
        let new_socket = || {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, protocol)
                    .unwrap();
            socket.set_nonblocking(true).unwrap();
            socket
        };
        let listener = new_socket();
        listener
            .bind(&std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        listener.listen(1).unwrap();
        let listener = TcpListener::from_std(listener.into()).unwrap();
        let client = tokio::net::TcpSocket::from_std_stream(new_socket().into())
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// What a relay task returns: its result and the pipes idle in its pool after it.
    type Relayed = (Result<Transferred, RelayError>, usize);

    /// client <-> [a relay b] <-> server; returns (client, server, relay task).
    async fn relayed(
        idle_timeout: Duration,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Relayed>) {
        relayed_with(idle_timeout, false, Arc::default()).await
    }

    /// [`relayed`], over MPTCP from b to the server if `mptcp`, counted in `counters`.
    async fn relayed_with(
        idle_timeout: Duration,
        mptcp: bool,
        counters: Arc<RelayCounters>,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<Relayed>) {
        let (client, mut a) = pair(false).await;
        let (mut b, server) = pair(mptcp).await;
        let task = tokio::spawn(async move {
            let pool = PipePool::new(4, CHUNK);
            let timeouts = Timeouts {
                idle: idle_timeout,
                dead_path: Duration::from_mins(1),
            };
            let result = relay(&mut a, &mut b, &pool, timeouts, &counters).await;
            (result, pool.idle_count())
        });
        (client, server, task)
    }

    #[test]
    fn pipes_hold_the_capacity_asked_whatever_the_page_size() {
        for capacity in [CHUNK, 256 * 1024] {
            let pipe = PipePool::new(1, capacity).take().unwrap();
            let granted =
                nix::fcntl::fcntl(&pipe.write, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
            assert_eq!(usize::try_from(granted).unwrap(), capacity);
        }
    }

    #[test]
    fn a_service_managers_default_limit_leaves_room_for_some_flows_only() {
        assert_eq!(flow_capacity(100), 0);
        assert_eq!(flow_capacity(1024), (1024 - 512 - 64) / 3);
        assert!(flow_capacity(1 << 20) > 300_000);
    }

    /// Sends `upload` from the client and a reply from the server across a relay, each
    /// side closing after it; returns the relay task's result.
    async fn exchange(
        (mut client, mut server, task): (TcpStream, TcpStream, tokio::task::JoinHandle<Relayed>),
        upload: Vec<u8>,
        reply: &'static [u8],
    ) -> Relayed {
        let expected = upload.clone();
        let server_side = tokio::spawn(async move {
            let mut received = Vec::new();
            // Reads to EOF: only ends if the client's shutdown crossed the relay.
            server.read_to_end(&mut received).await.unwrap();
            server.write_all(reply).await.unwrap();
            received
        });
        client.write_all(&upload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, reply);
        assert!(server_side.await.unwrap() == expected, "upload corrupted");
        task.await.unwrap()
    }

    /// 3 MB of a pattern no offset error keeps intact.
    fn pattern() -> Vec<u8> {
        (0..3_000_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn bytes_arrive_intact_both_ways_and_half_close_propagates() {
        let relay = relayed(Duration::from_secs(10)).await;
        let (result, idle_pipes) = exchange(relay, pattern(), b"thanks").await;
        let transferred = result.unwrap();
        assert_eq!(transferred.forward, 3_000_000);
        assert_eq!(transferred.backward, 6);
        // Each direction holds one pipe at a time and gives it back after each chunk.
        assert!(
            (1..=2).contains(&idle_pipes),
            "{idle_pipes} pipes came back to the pool, expected 1 or 2"
        );
    }

    #[tokio::test]
    async fn mptcp_sockets_are_spliced_and_every_byte_and_read_counted() {
        let counters = Arc::new(RelayCounters::default());
        let relay = relayed_with(Duration::from_secs(10), true, Arc::clone(&counters)).await;
        let reply = b"a reply read from MPTCP";
        let (result, _) = exchange(relay, pattern(), reply).await;
        assert_eq!(result.unwrap().forward, 3_000_000);
        // Each byte counted once, as spliced: the kernel splices from MPTCP too.
        assert_eq!(counters.up.spliced.get(), 3_000_000);
        assert_eq!(counters.down.spliced.get(), reply.len() as u64);
        assert_eq!(counters.up.copied.get() + counters.down.copied.get(), 0);
        // Each read brought bytes or the end of the stream, a pipe's worth at most.
        assert!(counters.up.reads.get() > 3_000_000 / CHUNK as u64);
        assert!(counters.down.reads.get() >= 2);
    }

    #[tokio::test]
    async fn a_reset_on_one_side_resets_the_other() {
        let (mut client, server, task) = relayed(Duration::from_secs(10)).await;
        socket::reset_on_close(&server);
        drop(server);
        let (result, _) = task.await.unwrap();
        assert!(result.is_err(), "relay must report the reset: {result:?}");
        let mut buffer = [0u8; 16];
        let error = client.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn idle_connections_are_reset_after_the_timeout() {
        let (mut client, _server, task) = relayed(Duration::from_millis(200)).await;
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("relay must end")
            .unwrap()
            .0;
        assert!(matches!(result, Err(RelayError::Idle(_))), "{result:?}");
        let mut buffer = [0u8; 16];
        assert!(client.read(&mut buffer).await.is_err());
    }
}
