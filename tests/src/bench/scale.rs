//! The scale benchmark: many idle flows held at once through gateway and converter, and
//! how many new connections a second they take.
//!
//! Method (README "Benchmarks" says the same):
//! - Both daemons start as a service manager starts them (soft limit of 1024 open files
//!   under the machine's hard limit, which they raise), on a testbed of two zero-delay
//!   100 Mbit/s HTB uplinks, where processing rather than propagation sets the pace.
//! - New connections per second: client threads on the LAN host (4, then 16) connect,
//!   read the server's one-line greeting and close, as fast as they can for a few
//!   seconds; through plain forwarding (before the daemons start), then through the
//!   gateway. Each connection's time from connect() to the greeting's first byte gives
//!   the median and the 99th percentile.
//! - Held flows, for each count N: N connections from the LAN host, opened and kept
//!   open, each answered by the server with the address it saw (the converter's when the
//!   flow was converted). Once all are open, each daemon's RSS and open files are read
//!   against the same before, per flow, and its pipes counted (an idle flow holds none:
//!   only the pool's idle pipes may remain). Then one byte is echoed on every flow, so
//!   each is shown to work end to end while all are held. Then all close, and the
//!   daemons' open files other than pooled pipes must return to where they were.
//! - N is capped by the hard open-file limit: at `flow_capacity(hard)` the gateway sends
//!   new flows direct by design, so a count beyond it measures shedding, not holding.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::balanced::{self, Balanced};
use crate::{
    footprint::{Footprint, raise_own_file_limit},
    greeting::{GreetingServer, greeting, listen_in},
    netns::{Netns, enter},
    percentile,
    testbed::{CONVERTER_TOWARD_SERVER, SERVER, Testbed, Uplink, balancer::SECOND_CONVERTER},
};

/// The labels of the converters a testbed may run: the first, and the second behind a
/// balancer.
const CONVERTER_LABELS: [&str; 2] = ["converter", "converter2"];

/// Port of the server that greets and closes (connection rate).
pub(crate) const RATE_PORT: u16 = 5101;
/// Port of the server that greets and holds (held flows).
const HOLD_PORT: u16 = 5102;
/// Threads opening the held flows.
const HOLD_THREADS: usize = 4;
/// How long one step may wait on a socket.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the benchmark measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Numbers of idle flows to hold, one after the other.
    pub counts: Vec<usize>,
    /// How long each connection-rate measurement runs.
    pub rate_duration: Duration,
    /// Numbers of parallel clients of the connection rate, one after the other.
    pub clients: Vec<usize>,
    /// The two-converter row, if wanted.
    pub balanced: Option<balanced::Options>,
}

/// One daemon while it held the flows: its footprint before and during.
#[derive(Debug, Clone, Copy)]
pub struct DaemonLoad {
    /// Before the flows were opened.
    pub before: Footprint,
    /// With all of them open and idle.
    pub held: Footprint,
    /// After they closed (and the daemon let go of them).
    pub after: Footprint,
}

#[expect(clippy::cast_precision_loss, reason = "counts are small")]
impl DaemonLoad {
    /// RSS added per held flow, KiB.
    pub fn rss_kib_per_flow(&self, flows: usize) -> f64 {
        self.held.rss_kib.saturating_sub(self.before.rss_kib) as f64 / flows.max(1) as f64
    }

    /// Open files added per held flow.
    pub fn files_per_flow(&self, flows: usize) -> f64 {
        self.held.files.saturating_sub(self.before.files) as f64 / flows.max(1) as f64
    }

    /// Open files other than pooled pipes still held after all flows closed.
    pub fn leaked_files(&self) -> u64 {
        self.after
            .sockets_and_others()
            .saturating_sub(self.before.sockets_and_others())
    }
}

/// One count of held flows.
#[derive(Debug, Clone)]
pub struct Held {
    /// Flows opened.
    pub flows: usize,
    /// How many the server saw from each address ("failed": never greeted).
    pub seen_from: BTreeMap<String, usize>,
    /// Flows that echoed a byte while all were held.
    pub echoed: usize,
    /// How long opening them all took.
    pub open_time: Duration,
    /// The gateway's footprint.
    pub gateway: DaemonLoad,
    /// Each running converter's footprint: the first's, then the second's if there is
    /// one.
    pub converters: Vec<DaemonLoad>,
}

impl Held {
    /// Flows a converter carried (the server saw one of the converters' addresses).
    pub fn converted(&self) -> usize {
        [CONVERTER_TOWARD_SERVER, SECOND_CONVERTER]
            .iter()
            .filter_map(|address| self.seen_from.get(*address))
            .sum()
    }

    /// Each daemon's name ("gateway", "converter", "converter2") and footprint.
    pub fn daemons(&self) -> Vec<(&'static str, &DaemonLoad)> {
        let names = ["gateway"].into_iter().chain(CONVERTER_LABELS);
        names
            .zip([&self.gateway].into_iter().chain(&self.converters))
            .collect()
    }

    /// RSS per flow of all the daemons together, KiB.
    pub fn rss_kib_per_flow(&self) -> f64 {
        self.daemons()
            .iter()
            .map(|(_, load)| load.rss_kib_per_flow(self.flows))
            .sum()
    }
}

/// Everything the benchmark measured.
#[derive(Debug, Clone)]
pub struct ScaleResult {
    /// The hard open-file limit the daemons ran under.
    pub hard_limit: u64,
    /// The flows each daemon has room for under it.
    pub capacity: u64,
    /// New connections, one row per number of clients.
    pub rates: Vec<RateRow>,
    /// The held-flow rows.
    pub held: Vec<Held>,
    /// The two-converter row.
    pub balanced: Option<Balanced>,
}

impl ScaleResult {
    /// The results as JSON, for target/bench/.
    pub fn to_json(&self) -> serde_json::Value {
        let load = |load: &DaemonLoad, flows: usize| {
            serde_json::json!({
                "rss_kib_before": load.before.rss_kib,
                "rss_kib_held": load.held.rss_kib,
                "rss_kib_per_flow": load.rss_kib_per_flow(flows),
                "files_before": load.before.files,
                "files_held": load.held.files,
                "files_per_flow": load.files_per_flow(flows),
                "pipes_held": load.held.pipes,
                "files_leaked": load.leaked_files(),
            })
        };
        let held: Vec<_> = self
            .held
            .iter()
            .map(|held| {
                serde_json::json!({
                    "flows": held.flows,
                    "seen_from": held.seen_from,
                    "converted": held.converted(),
                    "echoed": held.echoed,
                    "open_seconds": held.open_time.as_secs_f64(),
                    "rss_kib_per_flow_all": held.rss_kib_per_flow(),
                    "daemons": held
                        .daemons()
                        .into_iter()
                        .map(|(name, daemon)| (name, load(daemon, held.flows)))
                        .collect::<BTreeMap<_, _>>(),
                })
            })
            .collect();
        let rates: Vec<_> = self
            .rates
            .iter()
            .map(|row| {
                serde_json::json!({
                    "clients": row.clients,
                    "connections_per_s_forwarded": row.forwarded.per_s,
                    "connections_per_s_gateway": row.gateway.per_s,
                    "gateway_over_forwarded": row.ratio(),
                    "rate_failures": [row.forwarded.failed, row.gateway.failed],
                    "first_byte_ms_forwarded": [row.forwarded.median_ms, row.forwarded.p99_ms],
                    "first_byte_ms_gateway": [row.gateway.median_ms, row.gateway.p99_ms],
                })
            })
            .collect();
        serde_json::json!({
            "hard_limit": self.hard_limit,
            "capacity": self.capacity,
            "rates": rates,
            "held": held,
            "balanced": self.balanced.as_ref().map(Balanced::to_json),
        })
    }
}

/// The flow counts `options` asks for that the hard limit `capacity` allows: a count
/// beyond it becomes the largest whole thousand below it (said through `progress`).
pub fn counts_within(counts: &[usize], capacity: u64, progress: &dyn Fn(&str)) -> Vec<usize> {
    let room = usize::try_from(capacity).unwrap_or(usize::MAX);
    let mut chosen: Vec<usize> = counts
        .iter()
        .map(|&count| {
            if count <= room {
                return count;
            }
            let fitting = (room / 1000 * 1000).max(room.min(100));
            progress(&format!(
                "{count} flows do not fit the hard open-file limit (room for about {room} \
                 flows a daemon; each needs 3 files under load): holding {fitting} instead"
            ));
            fitting
        })
        .collect();
    chosen.dedup();
    chosen
}

/// Runs the benchmark; daemon logs go to `dir`.
pub fn run(options: &Options, dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<ScaleResult> {
    let hard_limit = raise_own_file_limit()?;
    let capacity = mptcp_user::net::relay::flow_capacity(hard_limit);
    let counts = counts_within(&options.counts, capacity, progress);
    let mut testbed = Testbed::new("scale", &[Uplink::htb(100), Uplink::htb(100)])?;
    let rate_server = GreetingServer::start(&testbed.server, RATE_PORT)?;

    let mut forwarded = Vec::new();
    for &clients in &options.clients {
        progress(&format!(
            "new connections per second through plain forwarding, {clients} clients"
        ));
        forwarded.push(connection_rate(
            &testbed.client,
            clients,
            options.rate_duration,
        )?);
    }
    testbed.start_gateway_and_converter(dir, &[], &[])?;
    let mut rates = Vec::new();
    for (&clients, forwarded) in options.clients.iter().zip(forwarded) {
        progress(&format!(
            "new connections per second through the gateway, {clients} clients"
        ));
        let gateway = connection_rate(&testbed.client, clients, options.rate_duration)?;
        rates.push(RateRow {
            clients,
            forwarded,
            gateway,
        });
    }
    drop(rate_server);

    let mut held = Vec::new();
    for count in counts {
        progress(&format!("{count} idle flows held at once"));
        held.push(hold(&mut testbed, count)?);
    }
    drop(testbed);
    let balanced = options
        .balanced
        .as_ref()
        .map(|balanced| balanced::run(balanced, dir, progress))
        .transpose()?;
    Ok(ScaleResult {
        hard_limit,
        capacity,
        rates,
        held,
        balanced,
    })
}

/// Prints the result as a table.
pub fn print(result: &ScaleResult) {
    println!(
        "scale: hard open-file limit {}, room for about {} flows a daemon",
        result.hard_limit, result.capacity
    );
    for row in &result.rates {
        println!(
            "  {} clients, new connections/s: plain forwarding {:.0}, through the gateway \
             {:.0} (ratio {:.2}; failed {} / {})",
            row.clients,
            row.forwarded.per_s,
            row.gateway.per_s,
            row.ratio(),
            row.forwarded.failed,
            row.gateway.failed
        );
        for (name, rate) in [
            ("plain forwarding", &row.forwarded),
            ("gateway", &row.gateway),
        ] {
            println!(
                "    connect to greeting, {name}: median {:.2} ms, 99th percentile {:.2} ms \
                 ({:.1}x the median)",
                rate.median_ms,
                rate.p99_ms,
                rate.p99_ms / rate.median_ms
            );
        }
    }
    for held in &result.held {
        println!(
            "  {} flows held: {} converted, {} echoed, opened in {:.1} s; seen from {:?}",
            held.flows,
            held.converted(),
            held.echoed,
            held.open_time.as_secs_f64(),
            held.seen_from
        );
        for (name, load) in held.daemons() {
            println!(
                "    {name:<10} {:5.1} KiB RSS/flow, {:.2} files/flow, pipe fds {} held ({} \
                 before), {} files left after close (warm connections, up to {})",
                load.rss_kib_per_flow(held.flows),
                load.files_per_flow(held.flows),
                load.held.pipes,
                load.before.pipes,
                load.leaked_files(),
                mptcp_user::config::defaults::POOL_SIZE
            );
        }
        println!(
            "    all daemons {:.1} KiB RSS/flow",
            held.rss_kib_per_flow()
        );
    }
    if let Some(balanced) = &result.balanced {
        balanced.print();
    }
}

/// Runs `work(thread index)` on `threads` threads inside `netns`; their results.
fn in_netns<T: Send + 'static>(
    netns: &Netns,
    threads: usize,
    work: impl Fn(usize) -> anyhow::Result<T> + Send + Sync + 'static,
) -> anyhow::Result<Vec<T>> {
    let work = Arc::new(work);
    let threads: Vec<_> = (0..threads)
        .map(|index| {
            let name = netns.name().to_owned();
            let work = Arc::clone(&work);
            thread::spawn(move || {
                enter(&name)?;
                work(index)
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|thread| {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))?
        })
        .collect()
}

/// New connections from some clients at once, through plain forwarding and through
/// the gateway.
#[derive(Debug, Clone, Copy)]
pub struct RateRow {
    /// Parallel clients.
    pub clients: usize,
    /// Through plain forwarding.
    pub forwarded: Rate,
    /// Through the gateway.
    pub gateway: Rate,
}

impl RateRow {
    /// The gateway's rate over plain forwarding's.
    pub fn ratio(&self) -> f64 {
        self.gateway.per_s / self.forwarded.per_s
    }
}

/// New connections from parallel clients.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Connections a second.
    pub per_s: f64,
    /// Connections that failed.
    pub failed: u64,
    /// From connect() to the greeting's first byte: the median and the 99th
    /// percentile, milliseconds.
    pub median_ms: f64,
    /// See `median_ms`.
    pub p99_ms: f64,
}

/// Connections a second from `clients` threads in `client` to the greeting server
/// (each: connect, read the greeting, close) over `duration`, how many failed, and how
/// long each took to its greeting.
#[expect(clippy::cast_precision_loss, reason = "counts are small")]
pub(crate) fn connection_rate(
    client: &Netns,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let server = SocketAddr::new(SERVER.parse()?, RATE_PORT);
    let start = Instant::now();
    let counts = in_netns(client, clients, move |_| {
        let mut done = 0u64;
        let mut failed = 0u64;
        let mut took = Vec::new();
        while start.elapsed() < duration {
            let began = Instant::now();
            // The server closes first, as web servers do: waiting for its end keeps the
            // client free of TIME_WAIT sockets, whose port search would dominate.
            let exchange = greeting(server, PATIENCE).and_then(|(mut stream, _)| {
                took.push(began.elapsed());
                let end = stream.read(&mut [0u8; 1])?;
                if end == 0 {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::InvalidData.into())
                }
            });
            match exchange {
                Ok(()) => done += 1,
                Err(_) => failed += 1,
            }
        }
        Ok((done, failed, took))
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let done: u64 = counts.iter().map(|(done, _, _)| done).sum();
    let failed: u64 = counts.iter().map(|(_, failed, _)| failed).sum();
    if done == 0 {
        bail!("no connection to {server} succeeded ({failed} failed)");
    }
    let mut took: Vec<f64> = counts
        .iter()
        .flat_map(|(_, _, took)| took.iter().map(|time| time.as_secs_f64() * 1e3))
        .collect();
    took.sort_by(f64::total_cmp);
    Ok(Rate {
        per_s: done as f64 / elapsed,
        failed,
        median_ms: percentile(&took, 0.5),
        p99_ms: percentile(&took, 0.99),
    })
}

/// Opens `count` flows from the LAN host through the testbed's running gateway and
/// converter, and holds them; see the module's method.
pub fn hold(testbed: &mut Testbed, count: usize) -> anyhow::Result<Held> {
    raise_own_file_limit()?;
    let Some(gateway_pid) = testbed.pid("gateway") else {
        bail!("the gateway is not running");
    };
    // The converters running: the first, and the second behind a balancer.
    let converter_pids: Vec<u32> = CONVERTER_LABELS
        .iter()
        .map_while(|label| testbed.pid(label))
        .collect();
    if converter_pids.is_empty() {
        bail!("no converter is running");
    }
    let pids: Vec<u32> = [gateway_pid].into_iter().chain(converter_pids).collect();
    let before = pids
        .iter()
        .map(|&pid| Footprint::of(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let listener = listen_in(&testbed.server, HOLD_PORT)?;
    listener.set_nonblocking(false)?;
    let server = thread::spawn(move || serve_and_echo(&listener, count));

    let started = Instant::now();
    let target = SocketAddr::new(SERVER.parse()?, HOLD_PORT);
    let opened = in_netns(&testbed.client, HOLD_THREADS, move |index| {
        let mine = count / HOLD_THREADS + usize::from(index < count % HOLD_THREADS);
        Ok((0..mine)
            .map(|_| greeting(target, PATIENCE))
            .collect::<Vec<_>>())
    })?;
    let open_time = started.elapsed();
    let mut seen_from = BTreeMap::new();
    let mut streams = Vec::new();
    for result in opened.into_iter().flatten() {
        match result {
            Ok((stream, address)) => {
                *seen_from.entry(address).or_insert(0) += 1;
                streams.push(stream);
            }
            Err(_) => *seen_from.entry("failed".to_owned()).or_insert(0) += 1,
        }
    }
    // Give the daemons a moment to settle before reading their footprint.
    thread::sleep(Duration::from_millis(500));
    let held = pids
        .iter()
        .map(|&pid| Footprint::of(pid))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let echoed = echo_all(&mut streams);
    let server_streams = server
        .join()
        .map_err(|_| anyhow::anyhow!("the holding server panicked"))??;
    drop(streams);
    drop(server_streams);
    let mut loads = Vec::new();
    for ((&pid, before), held) in pids.iter().zip(before).zip(held) {
        let after = settled_footprint(pid, &before)?;
        loads.push(DaemonLoad {
            before,
            held,
            after,
        });
    }
    testbed.check_running()?;
    let mut loads = loads.into_iter();
    Ok(Held {
        flows: count,
        seen_from,
        echoed,
        open_time,
        gateway: loads.next().context("no gateway load")?,
        converters: loads.collect(),
    })
}

/// The server side of [`hold`]: accepts `count` connections, greeting each, then echoes
/// one byte on each; returns them, still open.
fn serve_and_echo(listener: &TcpListener, count: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(count);
    // accept() gives up after the patience: flows that never arrive must not hang it.
    socket2::SockRef::from(listener).set_read_timeout(Some(PATIENCE))?;
    while streams.len() < count {
        let Ok((mut stream, peer)) = listener.accept() else {
            break;
        };
        writeln!(stream, "{}", peer.ip())?;
        streams.push(stream);
    }
    for stream in &mut streams {
        stream.set_read_timeout(Some(PATIENCE))?;
        let mut byte = [0u8];
        if stream.read_exact(&mut byte).is_ok() {
            let _ = stream.write_all(&byte);
        }
    }
    Ok(streams)
}

/// Sends a byte on every stream, then reads it back from each; how many came back.
fn echo_all(streams: &mut [TcpStream]) -> usize {
    for stream in streams.iter_mut() {
        let _ = stream.write_all(b"e");
    }
    streams
        .iter()
        .filter(|&stream| {
            let mut byte = [0u8];
            let mut reader: &TcpStream = stream;
            reader.read_exact(&mut byte).is_ok() && byte == *b"e"
        })
        .count()
}

/// Process `pid`'s footprint once its open files other than pipes are back to
/// `before`'s, or after 10 s.
fn settled_footprint(pid: u32, before: &Footprint) -> anyhow::Result<Footprint> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = Footprint::of(pid)?;
        if now.sockets_and_others() <= before.sockets_and_others() || Instant::now() > deadline {
            return Ok(now);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::counts_within;

    #[test]
    fn counts_beyond_the_capacity_shrink_to_a_whole_thousand_below_it() {
        assert_eq!(counts_within(&[1000, 10_000], 6474, &|_| {}), [1000, 6000]);
        assert_eq!(
            counts_within(&[1000, 10_000], 20_000, &|_| {}),
            [1000, 10_000]
        );
        assert_eq!(counts_within(&[500], 149, &|_| {}), [100]);
    }
}
