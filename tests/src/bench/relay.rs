//! `cargo xtask bench relay`: what relaying costs per byte. One uplink between the
//! gateway and converter hosts, shaped to 1 Gbit/s by HTB and unshaped; bulk transfers
//! of a fixed size from the server to the LAN host (down) and back (up), over 1 and 8
//! parallel flows, carried by:
//! - plain routing: the gateway host forwards, nothing relays (the baseline);
//! - shadowsocks-libev (`ss-redir` + `ss-server` under mptcpize, as in bench
//!   aggregate), a copying relay people use today;
//! - the smallest relay chain (`tcp-relay`: a blocking copier on each host, plain TCP
//!   between them): what any terminating relay costs on this machine, the yardstick
//!   for ours;
//! - the gateway and converter (splice); also with pipes of 1 MiB, without the limit
//!   on unsent bytes (`--notsent-lowat 0`), and with the send buffer for fast lines
//!   (`--send-buffer 64`).
//!
//! Every carrier runs each transfer in alternating rounds; the medians are compared.
//! For each: throughput over plain routing's, CPU seconds per GB of the relay
//! processes (both ends), and of the whole machine (/proc/stat, every process and
//! interrupt: the sender and receiver, the kernel's TCP and MPTCP, the relays). For
//! ours also, from the daemons' metrics: bytes per read call and wake-ups per MB.

use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use serde_json::json;

use crate::{
    carriers,
    measure::{self, Direction},
    median_by,
    metrics::{self, CONVERTER_METRICS, GATEWAY_METRICS},
    testbed::{SERVER, Testbed, Uplink},
};

/// Port of the transfers' server.
const PORT: u16 = 5300;
/// Congestion control of every carrier, so that only the relaying differs.
const CONGESTION: &str = "bbr";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes per transfer (all flows together).
    pub bytes: u64,
    /// Parallel flows of each transfer.
    pub flows: Vec<usize>,
    /// Alternating rounds.
    pub rounds: usize,
    /// The lines to run on, one testbed each.
    pub lines: Vec<Uplink>,
    /// The carriers compared with plain routing (which always runs).
    pub carriers: Vec<Carrier>,
}

/// Who carries the LAN host's flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Carrier {
    /// The gateway host forwards; nothing relays.
    Plain,
    /// ss-redir and ss-server over MPTCP.
    Shadowsocks,
    /// redsocks and dante (SOCKS5) over MPTCP, without encryption.
    SocksChain,
    /// tcp-relay on both hosts, plain TCP between them.
    RelayChain,
    /// The gateway and the converter.
    Gateway,
    /// The gateway and the converter without a limit on unsent bytes.
    GatewayNoLowat,
    /// The gateway and the converter with a fixed send buffer of 64 MiB.
    GatewayBigSendBuffer,
    /// The gateway and the converter with pipes of 1 MiB (`--relay-pipe 1024`).
    GatewayBigPipes,
    /// The gateway and the converter with the in-flight cap (`--inflight-cap 110`).
    GatewayInflightCap,
}

impl Carrier {
    /// Every carrier, in the order of each round.
    pub const ALL: [Self; 9] = [
        Self::Plain,
        Self::RelayChain,
        Self::SocksChain,
        Self::Shadowsocks,
        Self::Gateway,
        Self::GatewayNoLowat,
        Self::GatewayBigSendBuffer,
        Self::GatewayBigPipes,
        Self::GatewayInflightCap,
    ];

    /// Its name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain routing",
            Self::Shadowsocks => "shadowsocks",
            Self::SocksChain => "redsocks + dante",
            Self::RelayChain => "TCP relay chain",
            Self::Gateway => "gateway",
            Self::GatewayNoLowat => "gateway, unlimited unsent bytes",
            Self::GatewayBigSendBuffer => "gateway, 64 MiB send buffer",
            Self::GatewayBigPipes => "gateway, 1 MiB pipes",
            Self::GatewayInflightCap => "gateway, in-flight cap 110",
        }
    }

    /// The daemon flags that make it, if it is ours.
    fn gateway_flags(self) -> Option<&'static [&'static str]> {
        match self {
            Self::Plain | Self::Shadowsocks | Self::SocksChain | Self::RelayChain => None,
            Self::Gateway => Some(&[]),
            Self::GatewayNoLowat => Some(&["--notsent-lowat", "0"]),
            Self::GatewayBigSendBuffer => Some(&["--send-buffer", "64"]),
            Self::GatewayBigPipes => Some(&["--relay-pipe", "1024"]),
            Self::GatewayInflightCap => Some(&["--inflight-cap", "110"]),
        }
    }

    /// The command names of its relay processes (dante forks workers; the gateway
    /// and the converter are both mptcp-user).
    fn processes(self) -> &'static [&'static str] {
        match self {
            Self::Plain => &[],
            Self::Shadowsocks => &["ss-redir", "ss-server"],
            Self::SocksChain => &["redsocks", "danted"],
            Self::RelayChain => &["tcp-relay"],
            Self::Gateway
            | Self::GatewayNoLowat
            | Self::GatewayBigSendBuffer
            | Self::GatewayBigPipes
            | Self::GatewayInflightCap => &["mptcp-user"],
        }
    }
}

/// One transfer's cost.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Wall-clock time of the transfer.
    pub seconds: f64,
    /// CPU seconds of the relay processes.
    pub relay_cpu_s: f64,
    /// CPU seconds of the whole machine.
    pub machine_cpu_s: f64,
    /// Our daemons' relay calls, both ends and directions together (none for the
    /// others).
    pub calls: Option<RelayCalls>,
}

/// What our relays' metrics counted during one transfer.
#[derive(Clone, Copy, Debug, Default)]
pub struct RelayCalls {
    /// Bytes relayed.
    pub bytes: u64,
    /// Read calls that brought bytes.
    pub reads: u64,
    /// Waits for a socket to become ready (EAGAIN).
    pub waits: u64,
}

impl RelayCalls {
    /// The counters of both daemons now.
    fn read(testbed: &Testbed) -> anyhow::Result<Self> {
        let mut calls = Self::default();
        for (netns, address, prefix) in [
            (&testbed.gateway, GATEWAY_METRICS, "mptcp_gateway"),
            (&testbed.converter, CONVERTER_METRICS, "mptcp_converter"),
        ] {
            let text = metrics::scrape(netns, address)?;
            for direction in ["up", "down"] {
                calls.bytes += metrics::relayed_bytes(&text, prefix, direction);
                let labels = format!(r#"{{direction="{direction}"}}"#);
                calls.reads +=
                    metrics::sample(&text, &format!("{prefix}_relay_reads_total{labels}"));
                calls.waits +=
                    metrics::sample(&text, &format!("{prefix}_relay_waits_total{labels}"));
            }
        }
        Ok(calls)
    }

    /// What was counted since `before`.
    fn since(self, before: Self) -> Self {
        Self {
            bytes: self.bytes - before.bytes,
            reads: self.reads - before.reads,
            waits: self.waits - before.waits,
        }
    }

    /// Bytes per read call, and wake-ups per MB (10^6 bytes).
    #[expect(clippy::cast_precision_loss, reason = "ratios are displayed")]
    pub fn ratios(self) -> (f64, f64) {
        (
            self.bytes as f64 / self.reads.max(1) as f64,
            self.waits as f64 / (self.bytes.max(1) as f64 / 1e6),
        )
    }
}

/// The medians of one carrier on one transfer.
#[derive(Clone, Debug)]
pub struct Cell {
    /// The line.
    pub line: String,
    /// Which way.
    pub direction: Direction,
    /// Parallel flows.
    pub flows: usize,
    /// The carrier.
    pub carrier: Carrier,
    /// Every round's sample.
    pub rounds: Vec<Sample>,
    /// Bytes moved per transfer.
    pub bytes: u64,
}

impl Cell {
    /// The round with the median time.
    pub fn median(&self) -> Option<Sample> {
        median_by(self.rounds.clone(), |sample| sample.seconds)
    }

    /// Throughput of the median round, Mbit/s.
    #[expect(clippy::cast_precision_loss, reason = "byte counts are displayed")]
    pub fn mbit(&self) -> f64 {
        self.median()
            .map_or(0.0, |sample| self.bytes as f64 * 8.0 / sample.seconds / 1e6)
    }

    /// CPU seconds per GB (10^9 bytes): the relays' and the machine's, medians of the
    /// rounds.
    #[expect(clippy::cast_precision_loss, reason = "byte counts are displayed")]
    pub fn cpu_per_gb(&self) -> (f64, f64) {
        let gb = self.bytes as f64 / 1e9;
        let relay = median_by(self.rounds.clone(), |sample| sample.relay_cpu_s)
            .map_or(0.0, |sample| sample.relay_cpu_s / gb);
        let machine = median_by(self.rounds.clone(), |sample| sample.machine_cpu_s)
            .map_or(0.0, |sample| sample.machine_cpu_s / gb);
        (relay, machine)
    }
}

/// Runs every line, carrier, direction and flow count; `progress` hears each step.
pub fn run(options: &Options, dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Cell>> {
    let server = SocketAddr::new(SERVER.parse()?, PORT);
    let mut cells = Vec::new();
    for line in &options.lines {
        let mut testbed = Testbed::new("relay", &[*line])?;
        let carriers: Vec<Carrier> = Carrier::ALL
            .into_iter()
            .filter(|carrier| *carrier == Carrier::Plain || options.carriers.contains(carrier))
            .collect();
        // One cell per carrier and transfer, in the table's order.
        let mut line_cells: Vec<Cell> = carriers
            .iter()
            .flat_map(|&carrier| {
                [Direction::Down, Direction::Up]
                    .into_iter()
                    .flat_map(move |direction| {
                        options.flows.iter().map(move |&flows| Cell {
                            line: line.to_string(),
                            direction,
                            flows,
                            carrier,
                            rounds: Vec::new(),
                            bytes: options.bytes,
                        })
                    })
            })
            .collect();
        for round in 1..=options.rounds {
            for &carrier in &carriers {
                progress(&format!("{line}, round {round}: {}", carrier.name()));
                start(&mut testbed, carrier, dir)?;
                for cell in line_cells.iter_mut().filter(|cell| cell.carrier == carrier) {
                    let (direction, flows) = (cell.direction, cell.flows);
                    let sample =
                        measure_one(&testbed, carrier, server, options.bytes, flows, direction)
                            .with_context(|| {
                                format!("{} {direction:?} x{flows}", carrier.name())
                            })?;
                    cell.rounds.push(sample);
                }
                testbed.check_running()?;
                stop(&mut testbed, carrier)?;
            }
        }
        cells.extend(line_cells);
    }
    Ok(cells)
}

/// Starts what `carrier` needs.
fn start(testbed: &mut Testbed, carrier: Carrier, dir: &Path) -> anyhow::Result<()> {
    match carrier {
        Carrier::Plain => testbed.route_lan_via(1),
        Carrier::Shadowsocks => carriers::start_shadowsocks(testbed, dir, CONGESTION),
        Carrier::SocksChain => {
            hosts_default_congestion(testbed)?;
            carriers::start_socks_chain(testbed, dir)
        }
        Carrier::RelayChain => {
            hosts_default_congestion(testbed)?;
            carriers::start_tcp_relay_chain(testbed, dir)
        }
        Carrier::Gateway
        | Carrier::GatewayNoLowat
        | Carrier::GatewayBigSendBuffer
        | Carrier::GatewayBigPipes
        | Carrier::GatewayInflightCap => {
            let flags = carrier.gateway_flags().unwrap_or_default();
            let common = ["--congestion", CONGESTION];
            let gateway = [&common[..], &["--metrics", GATEWAY_METRICS], flags].concat();
            let converter = [&common[..], &["--metrics", CONVERTER_METRICS], flags].concat();
            testbed.start_gateway_and_converter(dir, &gateway, &converter)
        }
    }
}

/// Makes [`CONGESTION`] the default of both hosts, for carriers whose TCP takes the
/// default (as shadowsocks' does, set by its own start).
fn hosts_default_congestion(testbed: &Testbed) -> anyhow::Result<()> {
    for netns in [&testbed.gateway, &testbed.converter] {
        netns.sysctl("net.ipv4.tcp_congestion_control", CONGESTION)?;
    }
    Ok(())
}

/// Stops what [`start`] started, and lets the line go quiet.
fn stop(testbed: &mut Testbed, carrier: Carrier) -> anyhow::Result<()> {
    match carrier {
        Carrier::Plain => {}
        Carrier::Shadowsocks => carriers::stop_shadowsocks(testbed)?,
        Carrier::SocksChain => carriers::stop_socks_chain(testbed)?,
        Carrier::RelayChain => carriers::stop_tcp_relay_chain(testbed)?,
        Carrier::Gateway
        | Carrier::GatewayNoLowat
        | Carrier::GatewayBigSendBuffer
        | Carrier::GatewayBigPipes
        | Carrier::GatewayInflightCap => {
            testbed.forget("gateway");
            testbed.forget("converter");
        }
    }
    testbed.wait_uplinks_quiet().map(drop)
}

/// One transfer with its CPU costs.
fn measure_one(
    testbed: &Testbed,
    carrier: Carrier,
    server: SocketAddr,
    bytes: u64,
    flows: usize,
    direction: Direction,
) -> anyhow::Result<Sample> {
    let pids = measure::pids_named(carrier.processes())?;
    anyhow::ensure!(
        carrier == Carrier::Plain || !pids.is_empty(),
        "no {:?} process runs",
        carrier.processes()
    );
    let relay_cpu =
        || -> anyhow::Result<f64> { pids.iter().map(|&pid| measure::cpu_seconds(pid)).sum() };
    let ours = carrier.gateway_flags().is_some();
    let calls_before = ours.then(|| RelayCalls::read(testbed)).transpose()?;
    let (relay_before, machine_before) = (relay_cpu()?, measure::machine_cpu_seconds()?);
    let took = measure::transfer(
        &testbed.client,
        &testbed.server,
        server,
        bytes,
        flows,
        direction,
    )?;
    let (relay_cpu_s, machine_cpu_s) = (
        relay_cpu()? - relay_before,
        measure::machine_cpu_seconds()? - machine_before,
    );
    let calls = match calls_before {
        Some(before) => Some(RelayCalls::read(testbed)?.since(before)),
        None => None,
    };
    Ok(Sample {
        seconds: took.as_secs_f64(),
        relay_cpu_s,
        machine_cpu_s,
        calls,
    })
}

/// The plain routing cell of the same transfer as `cell`.
fn baseline<'a>(cells: &'a [Cell], cell: &Cell) -> Option<&'a Cell> {
    cells.iter().find(|other| {
        other.carrier == Carrier::Plain
            && other.line == cell.line
            && other.direction == cell.direction
            && other.flows == cell.flows
    })
}

/// Prints the table: each transfer, each carrier, with its ratios to plain routing.
pub fn print(cells: &[Cell]) {
    println!(
        "| line | transfer | carrier | Mbit/s | / plain | relay CPU s/GB | machine CPU s/GB | / plain | KB/read | waits/MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for cell in cells {
        let (relay, machine) = cell.cpu_per_gb();
        let plain = baseline(cells, cell);
        let throughput = plain.map_or(f64::NAN, |plain| cell.mbit() / plain.mbit());
        let machine_ratio = plain.map_or(f64::NAN, |plain| machine / plain.cpu_per_gb().1);
        let relay_calls = match cell.median().and_then(|sample| sample.calls) {
            Some(counted) => {
                let (per_read, per_mb) = counted.ratios();
                format!("{:.1} | {per_mb:.1}", per_read / 1e3)
            }
            None => "- | -".to_owned(),
        };
        println!(
            "| {} | {:?} x{} | {} | {:.0} | {throughput:.3} | {relay:.2} | {machine:.2} | {machine_ratio:.2} | {relay_calls} |",
            cell.line,
            cell.direction,
            cell.flows,
            cell.carrier.name(),
            cell.mbit(),
        );
    }
}

/// The results as JSON, every round included.
pub fn to_json(cells: &[Cell]) -> serde_json::Value {
    json!(
        cells
            .iter()
            .map(|cell| {
                let (relay, machine) = cell.cpu_per_gb();
                json!({
                    "line": cell.line,
                    "direction": format!("{:?}", cell.direction).to_lowercase(),
                    "flows": cell.flows,
                    "carrier": cell.carrier.name(),
                    "bytes": cell.bytes,
                    "mbit": cell.mbit(),
                    "relay_cpu_s_per_gb": relay,
                    "machine_cpu_s_per_gb": machine,
                    "rounds": cell.rounds.iter().map(|sample| json!({
                        "seconds": sample.seconds,
                        "relay_cpu_s": sample.relay_cpu_s,
                        "machine_cpu_s": sample.machine_cpu_s,
                        "relay_calls": sample.calls.map(|calls| json!({
                            "bytes": calls.bytes,
                            "reads": calls.reads,
                            "waits": calls.waits,
                        })),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect::<Vec<_>>()
    )
}

/// The default lines: HTB at 1 Gbit/s, and no shaping at all.
pub fn default_lines() -> Vec<Uplink> {
    vec![Uplink::htb(1000), Uplink::unshaped()]
}
