//! `mptcp-user speedtest`: from the gateway host, each uplink alone (plain TCP from its
//! address), then all of them at once (MPTCP, as flows go), down and up, against the
//! converter's test source and sink ([`crate::protocol::speedtest`]). A live progress
//! line on a terminal, then a table or JSON.

use std::{
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    uplinks::{self, Health},
    upstream::{CONVERTER_TIMEOUT, Upstream, UpstreamConfig, connect_converter},
};
use crate::{
    net::socket::Attempt,
    protocol::{
        codec::{Request, Response},
        cookie::{Key, unix_now},
        speedtest::{Command, DESTINATION, Meter, Received},
        wire,
    },
};

/// What `mptcp-user speedtest` is told.
pub struct SpeedtestConfig {
    /// The gateway's converters (the first is tested) and key.
    pub upstream: UpstreamConfig,
    /// Where the running gateway pinned its maps (its status file names the uplinks).
    pub pin_path: PathBuf,
    /// How long each test runs, each way.
    pub seconds: u64,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// One line of the result.
#[derive(Debug, Serialize)]
pub struct PathResult {
    /// An uplink's interface, or `all`.
    pub path: String,
    /// The uplink's address; none for `all`.
    pub address: Option<IpAddr>,
    /// Download, Mbit/s.
    pub down_mbit: f64,
    /// Upload, Mbit/s.
    pub up_mbit: f64,
    /// The test connection's handshake time, in ms.
    pub rtt_ms: f64,
    /// Download as a share of the uplinks' summed downloads.
    pub share: f64,
}

/// Runs the tests and prints the results.
pub fn run(config: &SpeedtestConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(measure(config))?;
    if config.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        print!("{}", table(&results));
    }
    Ok(())
}

/// Each uplink alone, then all together.
async fn measure(config: &SpeedtestConfig) -> anyhow::Result<Vec<PathResult>> {
    let upstream = Upstream::resolve(&config.upstream).await?;
    let (Some(key), Some(&converter)) = (upstream.key(), upstream.converters().first()) else {
        bail!("a speed test needs a converter: the gateway runs in direct mode");
    };
    let statuses = uplinks::read_status(&config.pin_path).with_context(|| {
        format!(
            "no running gateway with its maps in {} (its status file names the uplinks)",
            config.pin_path.display()
        )
    })?;
    let duration = Duration::from_secs(config.seconds);
    let tester = Tester {
        converter,
        key,
        progress: std::io::stderr().is_terminal(),
    };
    let mut results = Vec::new();
    let mut all_attempts = Vec::new();
    for status in &statuses {
        let Some(address) = status.address else {
            eprintln!("{}: skipped, it has no address", status.interface);
            continue;
        };
        if !matches!(status.health, Health::Up | Health::MptcpBlocked) {
            eprintln!("{}: skipped, it is {}", status.interface, status.health);
            continue;
        }
        let attempt = Attempt {
            source: address.into(),
            head_start: CONVERTER_TIMEOUT,
        };
        all_attempts.push(attempt);
        let (down_mbit, up_mbit, rtt_ms) = tester
            .both_ways(&status.interface, false, &[attempt], duration)
            .await
            .with_context(|| format!("the test over {} failed", status.interface))?;
        results.push(PathResult {
            path: status.interface.clone(),
            address: Some(address.into()),
            down_mbit,
            up_mbit,
            rtt_ms,
            share: 0.0,
        });
    }
    if all_attempts.is_empty() {
        bail!("no uplink reaches the converter: nothing to test (see `mptcp-user uplinks`)");
    }
    let (down_mbit, up_mbit, rtt_ms) = tester
        .both_ways("all", true, &all_attempts, duration)
        .await
        .context("the test over all uplinks failed")?;
    results.push(PathResult {
        path: "all".to_owned(),
        address: None,
        down_mbit,
        up_mbit,
        rtt_ms,
        share: 0.0,
    });
    let sum: f64 = results[..results.len() - 1]
        .iter()
        .map(|result| result.down_mbit)
        .sum();
    for result in &mut results {
        result.share = if sum > 0.0 {
            result.down_mbit / sum
        } else {
            0.0
        };
    }
    Ok(results)
}

/// The results as a table, the way people post them.
fn table(results: &[PathResult]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:>12} {:>12} {:>8} {:>6}\n",
        "PATH", "ADDRESS", "DOWN Mbit/s", "UP Mbit/s", "RTT ms", "SHARE"
    );
    for result in results {
        let address = result
            .address
            .map_or_else(|| "MPTCP".to_owned(), |address| address.to_string());
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:>12.1} {:>12.1} {:>8.0} {:>6.2}",
            result.path, address, result.down_mbit, result.up_mbit, result.rtt_ms, result.share
        );
    }
    out
}

/// Runs tests against one converter.
struct Tester {
    converter: SocketAddr,
    key: Key,
    /// Whether to draw a progress line on stderr.
    progress: bool,
}

impl Tester {
    /// Download, then upload, over connections from `attempts`; Mbit/s down and up,
    /// and the download connection's handshake time in ms.
    async fn both_ways(
        &self,
        label: &str,
        mptcp: bool,
        attempts: &[Attempt],
        duration: Duration,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let (down, rtt) = self
            .run(label, mptcp, attempts, Command::Down(duration))
            .await?;
        let (up, _) = self
            .run(label, mptcp, attempts, Command::Up(duration))
            .await?;
        Ok((down, up, rtt))
    }

    /// One test: Mbit/s, and the connection's handshake time in ms.
    async fn run(
        &self,
        label: &str,
        mptcp: bool,
        attempts: &[Attempt],
        command: Command,
    ) -> anyhow::Result<(f64, f64)> {
        let started = Instant::now();
        let mut stream = connect_converter(self.converter, mptcp, attempts, |_| Ok(()))
            .await
            .with_context(|| format!("cannot connect to the converter {}", self.converter))?;
        let handshake = started.elapsed();
        let request = Request {
            destination: DESTINATION,
            cookie: Some(self.key.cookie(DESTINATION, unix_now())?),
        };
        let mut first = request.to_message().encode()?;
        first.extend_from_slice(format!("{command}\n").as_bytes());
        stream.write_all(&first).await?;
        let (answer, early) =
            tokio::time::timeout(CONVERTER_TIMEOUT, wire::read_message(&mut stream))
                .await
                .context("the converter did not answer")??;
        if let Response::Error(code) = Response::from_message(&answer) {
            bail!("the converter refused the test: {code}");
        }
        let moved = Arc::new(AtomicU64::new(early.len() as u64));
        let progress = self
            .progress
            .then(|| tokio::spawn(show_progress(label.to_owned(), command, Arc::clone(&moved))));
        let mbit = match command {
            Command::Down(duration) => download(&mut stream, &moved, duration).await?,
            Command::Up(duration) => upload(&mut stream, &moved, duration).await?,
        };
        if let Some(progress) = progress {
            progress.abort();
            eprint!("\r{:72}\r", "");
        }
        Ok((mbit, handshake.as_secs_f64() * 1000.0))
    }
}

/// Reads until the converter closes; Mbit/s after the warm-up.
async fn download(
    stream: &mut TcpStream,
    moved: &AtomicU64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut buffer = vec![0u8; 256 * 1024];
    let mut meter = Meter::new(duration);
    let early = moved.load(Ordering::Relaxed);
    if early > 0 {
        meter.record(early);
    }
    loop {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(mbit(meter.received()));
        }
        meter.record(read as u64);
        moved.fetch_add(read as u64, Ordering::Relaxed);
    }
}

/// Sends for `duration`, closes the sending side, and reads what the converter counted.
async fn upload(
    stream: &mut TcpStream,
    moved: &AtomicU64,
    duration: Duration,
) -> anyhow::Result<f64> {
    let zeros = vec![0u8; 64 * 1024];
    let started = Instant::now();
    while started.elapsed() < duration {
        stream.write_all(&zeros).await?;
        moved.fetch_add(zeros.len() as u64, Ordering::Relaxed);
    }
    stream.shutdown().await?;
    let mut line = String::new();
    tokio::time::timeout(
        duration + CONVERTER_TIMEOUT,
        stream.read_to_string(&mut line),
    )
    .await
    .context("the converter did not say what it received")??;
    Ok(mbit(line.trim().parse()?))
}

/// The rate of `received`, in Mbit/s.
#[expect(clippy::cast_precision_loss, reason = "rates are displayed")]
fn mbit(received: Received) -> f64 {
    let seconds = received.duration.as_secs_f64();
    if seconds > 0.0 {
        received.bytes as f64 * 8.0 / seconds / 1e6
    } else {
        0.0
    }
}

/// Redraws `label direction [####    ] rate` on stderr every quarter of a second.
async fn show_progress(label: String, command: Command, moved: Arc<AtomicU64>) {
    const WIDTH: usize = 20;
    let (direction, duration) = match command {
        Command::Down(duration) => ("down", duration),
        Command::Up(duration) => ("up", duration),
    };
    let started = Instant::now();
    let mut before = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = (moved.load(Ordering::Relaxed), Instant::now());
        let rate = mbit(Received {
            bytes: now.0 - before.0,
            duration: now.1 - before.1,
        });
        before = now;
        let filled = usize::try_from(
            started.elapsed().as_millis() * WIDTH as u128 / duration.as_millis().max(1),
        )
        .unwrap_or(WIDTH)
        .min(WIDTH);
        eprint!(
            "\r{label:<12} {direction:<4} [{}{}] {rate:>8.1} Mbit/s",
            "#".repeat(filled),
            " ".repeat(WIDTH - filled)
        );
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_path_with_its_share() {
        let results = [
            PathResult {
                path: "dsl0".to_owned(),
                address: Some("192.0.2.7".parse().unwrap()),
                down_mbit: 19.04,
                up_mbit: 9.5,
                rtt_ms: 31.2,
                share: 0.657,
            },
            PathResult {
                path: "all".to_owned(),
                address: None,
                down_mbit: 28.1,
                up_mbit: 14.0,
                rtt_ms: 31.0,
                share: 0.97,
            },
        ];
        let table = table(&results);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("dsl0") && lines[1].contains("192.0.2.7"));
        assert!(lines[1].contains("19.0") && lines[1].contains("0.66"));
        assert!(lines[2].starts_with("all") && lines[2].contains("MPTCP"));
    }
}
