//! Throughput and round-trip measurements between the testbed's namespaces, made in
//! this process: a thread enters each namespace, so the timing is ours, not a tool's
//! printout's.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::{Netns, enter};

/// How often the receiver samples its byte count.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// Plain TCP, or Multipath TCP on both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Mptcp,
}

/// What one bulk download delivered, sampled every [`SAMPLE`].
#[derive(Clone, Debug)]
pub struct Download {
    /// Bytes received in each sample interval.
    pub samples: Vec<u64>,
}

impl Download {
    /// Mean goodput over the whole download, in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        rate_mbit(&self.samples)
    }

    /// Mean goodput once past the first `skip`, in Mbit/s (the steady state).
    pub fn steady_mbit_per_s(&self, skip: Duration) -> f64 {
        let skip = usize::try_from(skip.as_millis() / SAMPLE.as_millis()).unwrap_or(usize::MAX);
        rate_mbit(self.samples.get(skip..).unwrap_or_default())
    }

    /// Goodput of each whole second, in Mbit/s.
    pub fn per_second_mbit(&self) -> Vec<f64> {
        self.samples.chunks_exact(10).map(rate_mbit).collect()
    }

    /// When the rate over the preceding second first reached 90% of the final rate (the
    /// mean of the last five seconds).
    pub fn time_to_90_percent(&self) -> Option<Duration> {
        let last_five = self.samples.len().saturating_sub(50);
        let target = 0.9 * rate_mbit(&self.samples[last_five..]);
        (10..=self.samples.len())
            .find(|&end| rate_mbit(&self.samples[end - 10..end]) >= target)
            .map(|end| SAMPLE * u32::try_from(end).unwrap_or(u32::MAX))
    }
}

#[allow(clippy::cast_precision_loss)]
fn rate_mbit(samples: &[u64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let bytes: u64 = samples.iter().sum();
    bytes as f64 * 8.0 / (samples.len() as f64 * SAMPLE.as_secs_f64()) / 1e6
}

/// One bulk download for `duration`: a sender in `server` listening on `address`, a
/// receiver in `client` connecting to it. Both ends use `transport` and, if given, the
/// congestion control `congestion`.
pub fn download(
    client: &Netns,
    server: &Netns,
    address: SocketAddr,
    transport: Transport,
    congestion: Option<&str>,
    duration: Duration,
) -> anyhow::Result<Download> {
    let sender_congestion = congestion.map(str::to_owned);
    let receiver_congestion = sender_congestion.clone();
    client_and_server(
        (client, server),
        address,
        transport,
        move |listener| {
            let (stream, _) = listener.accept().context("no receiver connected")?;
            if let Some(name) = &sender_congestion {
                stream.set_tcp_congestion(name.as_bytes())?;
            }
            // The receiver resets the connection when it is done; should that reset be
            // lost, the send timeout ends the sender anyway.
            stream.set_write_timeout(Some(Duration::from_secs(5)))?;
            let mut stream = std::net::TcpStream::from(stream);
            let block = vec![0u8; 128 * 1024];
            while stream.write_all(&block).is_ok() {}
            Ok(())
        },
        move || receive(address, transport, receiver_congestion.as_deref(), duration),
    )
}

/// Which way a bulk transfer's bytes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the server to the client.
    Down,
    /// From the client to the server.
    Up,
}

/// Moves `bytes` in all over `flows` parallel plain TCP connections from `client` to a
/// server in `server` listening on `address`, `direction` saying who sends; returns
/// the time from the first connect to the last byte received.
pub fn transfer(
    client: &Netns,
    server: &Netns,
    address: SocketAddr,
    bytes: u64,
    flows: usize,
    direction: Direction,
) -> anyhow::Result<Duration> {
    let per_flow = bytes / u64::try_from(flows)?;
    client_and_server(
        (client, server),
        address,
        Transport::Tcp,
        move |listener| {
            let streams = (0..flows)
                .map(|_| Ok(std::net::TcpStream::from(listener.accept()?.0)))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("not every flow connected")?;
            move_in_parallel(streams, per_flow, direction == Direction::Down)
        },
        move || {
            let started = Instant::now();
            let streams = (0..flows)
                .map(|_| {
                    let socket = socket(address, Transport::Tcp)?;
                    socket
                        .connect_timeout(&address.into(), Duration::from_secs(10))
                        .with_context(|| format!("connecting to {address}"))?;
                    Ok(std::net::TcpStream::from(socket))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            move_in_parallel(streams, per_flow, direction == Direction::Up)?;
            Ok(started.elapsed())
        },
    )
}

/// One thread per stream: sends `bytes` and closes its side, then waits for the
/// peer's close (`send`), or reads until the peer closes, then closes.
fn move_in_parallel(
    streams: Vec<std::net::TcpStream>,
    bytes: u64,
    send: bool,
) -> anyhow::Result<()> {
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            thread::spawn(move || -> anyhow::Result<()> {
                stream.set_read_timeout(Some(Duration::from_mins(1)))?;
                let mut buffer = vec![0u8; 256 * 1024];
                if send {
                    let mut left = bytes;
                    while left > 0 {
                        let chunk = usize::try_from(left.min(buffer.len() as u64))?;
                        stream.write_all(&buffer[..chunk]).context("sending")?;
                        left -= chunk as u64;
                    }
                    stream.shutdown(std::net::Shutdown::Write)?;
                }
                let mut received = 0u64;
                loop {
                    match stream.read(&mut buffer).context("receiving")? {
                        0 => break,
                        read => received += read as u64,
                    }
                }
                if !send && received != bytes {
                    bail!("received {received} of {bytes} bytes");
                }
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a transfer thread panicked"))??;
    }
    Ok(())
}

/// The processes whose command name is one of `names` (every worker of a forking
/// daemon, in every namespace: a benchmark runs one of each).
pub fn pids_named(names: &[&str]) -> anyhow::Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if names.contains(&comm.trim()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// CPU seconds the whole machine has spent busy (every CPU, user, system, interrupts),
/// from /proc/stat.
pub fn machine_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed /proc/stat")?;
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(index, _)| !matches!(index, 3 | 4))
        .map(|(_, ticks)| ticks)
        .sum();
    ticks_to_seconds(busy)
}

/// Times `count` request/response exchanges on fresh connections from `client` to a
/// responder in `server` listening on `address`: from the start of connect() to the
/// first byte of the answer. Returns the median.
pub fn time_to_first_byte(
    client: &Netns,
    server: &Netns,
    address: SocketAddr,
    count: usize,
) -> anyhow::Result<Duration> {
    let times = client_and_server(
        (client, server),
        address,
        Transport::Tcp,
        move |listener| {
            for _ in 0..count {
                let (stream, _) = listener.accept().context("no client connected")?;
                let mut stream = std::net::TcpStream::from(stream);
                stream.read_exact(&mut [0u8; 4])?;
                stream.write_all(b"pong")?;
            }
            Ok(())
        },
        move || {
            (0..count)
                .map(|_| {
                    let start = Instant::now();
                    let mut stream =
                        std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    stream.write_all(b"ping")?;
                    stream.read_exact(&mut [0u8; 1])?;
                    Ok(start.elapsed())
                })
                .collect::<anyhow::Result<Vec<Duration>>>()
        },
    )?;
    crate::median_by(times, Duration::as_secs_f64).context("no exchange was timed")
}

/// Times `exchanges` round trips of 64 bytes on one connection from `client` to an echo
/// server in `server` listening on `address`, `gap` apart, as a terminal or a game
/// does: from each write to the whole echo. Returns every round trip, in order.
pub fn interactive(
    client: &Netns,
    server: &Netns,
    address: SocketAddr,
    exchanges: usize,
    gap: Duration,
) -> anyhow::Result<Vec<Duration>> {
    const MESSAGE: usize = 64;
    client_and_server(
        (client, server),
        address,
        Transport::Tcp,
        move |listener| {
            let (stream, _) = listener.accept().context("no client connected")?;
            stream.set_tcp_nodelay(true)?;
            let mut stream = std::net::TcpStream::from(stream);
            let mut message = [0u8; MESSAGE];
            while stream.read_exact(&mut message).is_ok() {
                stream.write_all(&message)?;
            }
            Ok(())
        },
        move || {
            let mut stream =
                std::net::TcpStream::connect_timeout(&address, Duration::from_secs(10))?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut message = [7u8; MESSAGE];
            let mut round_trips = Vec::with_capacity(exchanges);
            for _ in 0..exchanges {
                let start = Instant::now();
                stream.write_all(&message)?;
                stream.read_exact(&mut message)?;
                round_trips.push(start.elapsed());
                thread::sleep(gap);
            }
            Ok(round_trips)
        },
    )
}

/// Runs `serve` in a thread inside `server`'s namespace, with a listener on `address`'s
/// port (every address of its family), and once it listens, `connect` in a thread
/// inside `client`'s namespace. Returns what `connect` returned, after both ended.
fn client_and_server<T: Send + 'static>(
    (client, server): (&Netns, &Netns),
    address: SocketAddr,
    transport: Transport,
    serve: impl FnOnce(Socket) -> anyhow::Result<()> + Send + 'static,
    connect: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let (listening_tx, listening_rx) = mpsc::channel();
    let server_netns = server.name().to_owned();
    let server_thread = thread::spawn(move || -> anyhow::Result<()> {
        enter(&server_netns)?;
        let listener = socket(address, transport)?;
        listener.set_reuse_address(true)?;
        listener.bind(&SocketAddr::new(unspecified(address.ip()), address.port()).into())?;
        listener.listen(16)?;
        // accept() honours the receive timeout: a client that never comes must not
        // hang the server.
        listener.set_read_timeout(Some(Duration::from_secs(30)))?;
        let _ = listening_tx.send(());
        serve(listener)
    });
    let client_result = listening_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| anyhow::anyhow!("the server side did not start listening"))
        .and_then(|()| {
            let client_netns = client.name().to_owned();
            thread::spawn(move || {
                enter(&client_netns)?;
                connect()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the client side panicked"))?
        });
    let server_result = server_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the server side panicked"))?;
    let value = client_result?;
    server_result?;
    Ok(value)
}

/// Connects to `address` and counts what arrives for `duration`.
fn receive(
    address: SocketAddr,
    transport: Transport,
    congestion: Option<&str>,
    duration: Duration,
) -> anyhow::Result<Download> {
    let socket = socket(address, transport)?;
    if let Some(name) = congestion {
        socket.set_tcp_congestion(name.as_bytes())?;
    }
    socket
        .connect_timeout(&address.into(), Duration::from_secs(10))
        .with_context(|| format!("connecting to {address}"))?;
    socket.set_read_timeout(Some(SAMPLE / 4))?;
    // Close with a reset: a plain close with unread data leaves an MPTCP sender
    // blocked on a full window.
    socket.set_linger(Some(Duration::ZERO))?;
    let mut stream = std::net::TcpStream::from(socket);
    let mut buffer = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let intervals = u32::try_from(duration.as_millis() / SAMPLE.as_millis())?;
    let mut samples = vec![0u64; intervals as usize];
    loop {
        let interval = start.elapsed().as_millis() / SAMPLE.as_millis();
        let Some(slot) = usize::try_from(interval)
            .ok()
            .and_then(|i| samples.get_mut(i))
        else {
            break;
        };
        if crate::interrupted() {
            bail!("interrupted");
        }
        match stream.read(&mut buffer) {
            Ok(0) => bail!("the sender closed after {:?}", start.elapsed()),
            Ok(read) => *slot += read as u64,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error).context("receiving"),
        }
    }
    Ok(Download { samples })
}

/// An IPv4 stream socket whose connect() returns at once and sends the first write in
/// the SYN, once the kernel holds a Fast Open cookie for the destination
/// (TCP_FASTOPEN_CONNECT).
pub fn fast_open_socket(transport: Transport) -> anyhow::Result<Socket> {
    let socket = socket(SocketAddr::from(([0, 0, 0, 0], 0)), transport)?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::TcpFastOpenConnect,
        &true,
    )?;
    Ok(socket)
}

/// A stream socket for `address`'s family.
fn socket(address: SocketAddr, transport: Transport) -> std::io::Result<Socket> {
    let protocol = match transport {
        Transport::Tcp => Protocol::TCP,
        Transport::Mptcp => Protocol::MPTCP,
    };
    Socket::new(Domain::for_address(address), Type::STREAM, Some(protocol))
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The mean round-trip time of `count` pings from `from` to `address`, after one
/// unmeasured ping that resolves the neighbour's address.
pub fn ping_rtt(from: &Netns, address: &str, count: u32) -> anyhow::Result<Duration> {
    from.exec("ping", &["-q", "-n", "-c", "1", address])?;
    let output = from.exec(
        "ping",
        &["-q", "-n", "-i", "0.2", "-c", &count.to_string(), address],
    )?;
    // "rtt min/avg/max/mdev = 30.1/30.4/31.0/0.2 ms"
    let average = output
        .lines()
        .find_map(|line| line.split(" = ").nth(1))
        .and_then(|figures| figures.split('/').nth(1))
        .and_then(|average| average.parse::<f64>().ok())
        .with_context(|| format!("no RTT in ping's output: {output}"))?;
    Ok(Duration::from_secs_f64(average / 1000.0))
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|field| field.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    ticks_to_seconds(ticks)
}

/// Clock ticks (of /proc's counters) in seconds.
fn ticks_to_seconds(ticks: u64) -> anyhow::Result<f64> {
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
        .context("the clock tick rate is unknown")?;
    #[expect(clippy::cast_precision_loss, reason = "tick counts are small")]
    Ok(ticks as f64 / per_second as f64)
}
