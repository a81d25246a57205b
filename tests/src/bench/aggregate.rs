//! The aggregation benchmark: one long download from the server to the LAN host on a
//! testbed of realistic uplinks, through the gateway and, in the same run, over each
//! uplink alone and over raw kernel MPTCP between the gateway and converter hosts.
//!
//! Method (README "Benchmarks" says the same):
//! - each uplink alone: plain IP forwarding through the gateway host, routed over that
//!   uplink only, the server sending with the same congestion control as the daemons;
//! - raw MPTCP: a sender on the converter host, a receiver on the gateway host, one MPTCP
//!   connection with a subflow per uplink, no relay, the kernel's defaults;
//! - raw MPTCP tuned alike: the same while the daemons run, so that their sock_ops
//!   program tunes its subflows as it tunes theirs (long-RTT subflows): the ceiling for
//!   the gateway, and what the relay itself costs;
//! - shadowsocks, the tool people use for this today (OpenMPTCProuter's default):
//!   `ss-redir` on the gateway host and `ss-server` on the converter host, both forced
//!   onto MPTCP with mptcpize, AES-128-GCM, the LAN steered by an nftables tproxy rule;
//! - gateway: the LAN host's TCP flow is steered to the gateway, carried over MPTCP to
//!   the converter, and on to the server.
//!
//! Time to first byte: the median of nine fresh connections that send 4 bytes and wait
//! for the answer, over uplink 1 without the gateway, and through the gateway (whose
//! first subflow also takes uplink 1).
//!
//! Inbound, the other way: the server host downloads from the LAN host, over each uplink
//! alone (plain routing: a router's own port forward on that line) and through a port
//! forward of the converter ([`crate::inbound`]); and the first byte of a fresh
//! connection each way.
//!
//! Each is one flow for the same duration, one after the other on the same testbed;
//! goodput is payload bytes over the whole flow, slow start included.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{
    carriers, inbound,
    measure::{self, Download, Transport},
    median_by,
    testbed::{CONVERTER, CONVERTER_TOWARD_SERVER, SERVER, Testbed, Uplink},
};

/// Port of the benchmark's sender on the server (through the gateway) and on the converter
/// host (raw MPTCP).
const PORT: u16 = 5001;
/// Port of the responder that times connect-to-first-byte.
const FIRST_BYTE_PORT: u16 = 5002;
/// Exchanges timed each way; the median is reported.
const FIRST_BYTE_EXCHANGES: usize = 9;
/// Port of the LAN host's sender for the inbound download, and the converter's public
/// port forwarded to it.
const INBOUND_PORT: u16 = 5003;
/// The same for the inbound first-byte responder.
const INBOUND_FIRST_BYTE_PORT: u16 = 5004;
/// The LAN host's address.
const LAN_HOST: &str = "192.168.50.2";

/// The uplink sets the benchmark runs: clean delayed lines, a lossy LTE line, a
/// satellite line, and zero-delay HTB veths.
pub fn matrix() -> Vec<Vec<Uplink>> {
    vec![
        vec![Uplink::line(20, 15), Uplink::line(10, 50)],
        vec![
            Uplink::line(10, 10),
            Uplink::line(20, 20),
            Uplink::line(30, 40),
        ],
        vec![Uplink::line(20, 15), Uplink::line(10, 50).with_loss(1.0)],
        vec![Uplink::line(20, 15), Uplink::line(10, 300)],
        vec![Uplink::htb(10), Uplink::htb(20), Uplink::htb(30)],
    ]
}

/// What one row measured, in Mbit/s unless named otherwise.
#[derive(Clone, Debug)]
pub struct RowResult {
    /// The uplinks, as text.
    pub uplinks: Vec<String>,
    /// Goodput over each uplink alone.
    pub singles: Vec<f64>,
    /// Raw kernel MPTCP between gateway and converter hosts.
    pub raw_mptcp: Download,
    /// The same with the daemons' subflow tuning (the median round).
    pub raw_mptcp_tuned: Download,
    /// Its goodput in each round.
    pub raw_mptcp_tuned_rounds_mbit: Vec<f64>,
    /// The LAN host's flow through shadowsocks over MPTCP (the tool people use today),
    /// with the CPU seconds ss-redir and ss-server used; `None` when it could not run
    /// with the row's congestion control.
    pub shadowsocks: Option<(Download, f64)>,
    /// The LAN host's flow through gateway and converter (the median round).
    pub gateway: Download,
    /// CPU seconds the gateway and converter daemons used for it.
    pub gateway_cpu_s: f64,
    /// Its goodput in each round.
    pub gateway_rounds_mbit: Vec<f64>,
    /// Median connect-to-first-byte over uplink 1 without the gateway.
    pub first_byte_direct: Duration,
    /// The same through gateway and converter (whose first subflow uses uplink 1).
    pub first_byte_gateway: Duration,
    /// The other way: the server host downloading from the LAN host.
    pub inbound: InboundResult,
}

/// What a row measured inbound (the server host downloads from the LAN host).
#[derive(Clone, Debug)]
pub struct InboundResult {
    /// Goodput over each uplink alone, Mbit/s.
    pub singles: Vec<f64>,
    /// Through the converter's port forward.
    pub gateway: Download,
    /// Median connect-to-first-byte over uplink 1 without the gateway.
    pub first_byte_direct: Duration,
    /// The same through the port forward.
    pub first_byte_gateway: Duration,
}

impl InboundResult {
    /// Sum of the single-uplink goodputs.
    pub fn sum_of_singles(&self) -> f64 {
        self.singles.iter().sum()
    }

    /// The forward's goodput over the sum of the single uplinks.
    pub fn share_of_sum(&self) -> f64 {
        self.gateway.mbit_per_s() / self.sum_of_singles()
    }

    /// Whether the forward got at least the best single uplink's goodput.
    pub fn at_least_best_single(&self) -> bool {
        self.gateway.mbit_per_s() >= self.singles.iter().copied().fold(0.0, f64::max)
    }
}

impl RowResult {
    /// Sum of the single-uplink goodputs.
    pub fn sum_of_singles(&self) -> f64 {
        self.singles.iter().sum()
    }

    /// The best single uplink's goodput.
    pub fn best_single(&self) -> f64 {
        self.singles.iter().copied().fold(0.0, f64::max)
    }

    /// The gateway's goodput over the sum of the single uplinks.
    pub fn share_of_sum(&self) -> f64 {
        self.gateway.mbit_per_s() / self.sum_of_singles()
    }

    /// The gateway's goodput over raw MPTCP's.
    pub fn share_of_raw(&self) -> f64 {
        self.gateway.mbit_per_s() / self.raw_mptcp.mbit_per_s()
    }

    /// The gateway's goodput over raw MPTCP's with the same subflow tuning: the relay's
    /// cost.
    pub fn share_of_raw_tuned(&self) -> f64 {
        self.gateway.mbit_per_s() / self.raw_mptcp_tuned.mbit_per_s()
    }

    /// The gateway's goodput over shadowsocks-over-MPTCP's.
    pub fn over_shadowsocks(&self) -> Option<f64> {
        let (shadowsocks, _) = self.shadowsocks.as_ref()?;
        Some(self.gateway.mbit_per_s() / shadowsocks.mbit_per_s())
    }

    /// CPU time per byte moved, the gateway's daemons over shadowsocks'.
    pub fn cpu_per_byte_over_shadowsocks(&self) -> Option<f64> {
        let (shadowsocks, cpu_s) = self.shadowsocks.as_ref()?;
        Some((self.gateway_cpu_s / self.gateway.mbit_per_s()) / (cpu_s / shadowsocks.mbit_per_s()))
    }

    /// The row as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let seconds =
            |download: &Download| download.time_to_90_percent().map(|time| time.as_secs_f64());
        serde_json::json!({
            "uplinks": self.uplinks,
            "single_mbit": self.singles,
            "sum_of_singles_mbit": self.sum_of_singles(),
            "raw_mptcp_mbit": self.raw_mptcp.mbit_per_s(),
            "raw_mptcp_time_to_90_s": seconds(&self.raw_mptcp),
            "raw_mptcp_per_second_mbit": self.raw_mptcp.per_second_mbit(),
            "raw_mptcp_tuned_mbit": self.raw_mptcp_tuned.mbit_per_s(),
            "raw_mptcp_tuned_per_second_mbit": self.raw_mptcp_tuned.per_second_mbit(),
            "raw_mptcp_tuned_rounds_mbit": self.raw_mptcp_tuned_rounds_mbit,
            "shadowsocks_mbit": self.shadowsocks.as_ref().map(|(download, _)| download.mbit_per_s()),
            "shadowsocks_per_second_mbit":
                self.shadowsocks.as_ref().map(|(download, _)| download.per_second_mbit()),
            "gateway_over_shadowsocks": self.over_shadowsocks(),
            "shadowsocks_cpu_s": self.shadowsocks.as_ref().map(|(_, cpu_s)| cpu_s),
            "gateway_cpu_s": self.gateway_cpu_s,
            "cpu_per_byte_gateway_over_shadowsocks": self.cpu_per_byte_over_shadowsocks(),
            "gateway_mbit": self.gateway.mbit_per_s(),
            "gateway_time_to_90_s": seconds(&self.gateway),
            "gateway_per_second_mbit": self.gateway.per_second_mbit(),
            "gateway_rounds_mbit": self.gateway_rounds_mbit,
            "share_of_sum": self.share_of_sum(),
            "share_of_raw_mptcp": self.share_of_raw(),
            "share_of_raw_mptcp_tuned": self.share_of_raw_tuned(),
            "at_least_best_single": self.gateway.mbit_per_s() >= self.best_single(),
            "first_byte_direct_ms": self.first_byte_direct.as_secs_f64() * 1e3,
            "first_byte_gateway_ms": self.first_byte_gateway.as_secs_f64() * 1e3,
            "inbound_single_mbit": self.inbound.singles,
            "inbound_sum_of_singles_mbit": self.inbound.sum_of_singles(),
            "inbound_gateway_mbit": self.inbound.gateway.mbit_per_s(),
            "inbound_gateway_per_second_mbit": self.inbound.gateway.per_second_mbit(),
            "inbound_share_of_sum": self.inbound.share_of_sum(),
            "inbound_at_least_best_single": self.inbound.at_least_best_single(),
            "first_byte_inbound_direct_ms": self.inbound.first_byte_direct.as_secs_f64() * 1e3,
            "first_byte_inbound_gateway_ms": self.inbound.first_byte_gateway.as_secs_f64() * 1e3,
        })
    }
}

/// Rounds on zero-delay rows by default: there BBR swings by 10-20% from one flow to
/// the next (42-56 Mbit/s on 10 + 20 + 30 Mbit/s), too much to compare single flows.
pub const ZERO_DELAY_ROUNDS: usize = 5;

/// How the rows are run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Congestion control of every sender.
    pub congestion: String,
    /// Extra arguments for both daemons.
    pub daemon_args: Vec<String>,
    /// `KEY=VALUE` sysctls set on the gateway and converter hosts first (e.g. buffer
    /// limits): they apply to raw MPTCP, shadowsocks and the gateway alike.
    pub host_sysctls: Vec<String>,
    /// Length of each flow.
    pub duration: Duration,
    /// Alternating rounds of the gateway's flow and raw MPTCP tuned alike, whose
    /// medians are compared; `None`: [`ZERO_DELAY_ROUNDS`] on rows of zero-delay HTB
    /// veths, 1 on emulated lines.
    pub rounds: Option<usize>,
}

/// Runs one row: builds its testbed, measures each uplink alone (each way), raw MPTCP,
/// shadowsocks, then the gateway (daemons started with `--congestion` and the extra
/// arguments of `options`, logs in `dir`) and raw MPTCP tuned alike, in alternating
/// rounds, and last the inbound flow through the converter's port forward.
pub fn run_row(
    label: &str,
    uplinks: &[Uplink],
    options: &Options,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RowResult> {
    let (congestion, duration) = (options.congestion.as_str(), options.duration);
    let mut testbed = Testbed::new(label, uplinks)?;
    set_host_sysctls(&testbed, &options.host_sysctls)?;
    let server = SocketAddr::new(SERVER.parse()?, PORT);
    // The LAN host's download from the server, by whatever path the testbed gives it.
    let lan_download = |testbed: &Testbed| {
        measure::download(
            &testbed.client,
            &testbed.server,
            server,
            Transport::Tcp,
            Some(congestion),
            duration,
        )
    };
    // The server host's download from the LAN host at `address` (the LAN host's own,
    // or the converter's public port forwarded to it).
    let inbound_download = |testbed: &Testbed, address: SocketAddr| {
        measure::download(
            &testbed.server,
            &testbed.client,
            address,
            Transport::Tcp,
            Some(congestion),
            duration,
        )
    };
    let (singles, inbound_singles) =
        measure_singles(&testbed, &lan_download, &inbound_download, progress)?;
    let first_byte_address = SocketAddr::new(server.ip(), FIRST_BYTE_PORT);
    let first_byte_direct = measure::time_to_first_byte(
        &testbed.client,
        &testbed.server,
        first_byte_address,
        FIRST_BYTE_EXCHANGES,
    )?;
    let inbound_first_byte_direct = measure::time_to_first_byte(
        &testbed.server,
        &testbed.client,
        lan_host(INBOUND_FIRST_BYTE_PORT),
        FIRST_BYTE_EXCHANGES,
    )?;

    let raw_download = |testbed: &Testbed| {
        measure::download(
            &testbed.gateway,
            &testbed.converter,
            SocketAddr::new(CONVERTER.parse()?, PORT),
            Transport::Mptcp,
            Some(congestion),
            duration,
        )
    };
    testbed.wait_uplinks_quiet()?;
    progress("raw MPTCP, gateway host <- converter host");
    let raw_mptcp = raw_download(&testbed)?;
    let shadowsocks = measure_shadowsocks(&mut testbed, dir, congestion, &lan_download, progress)?;

    start_daemons(&mut testbed, options, dir)?;
    let first_byte_gateway = measure::time_to_first_byte(
        &testbed.client,
        &testbed.server,
        first_byte_address,
        FIRST_BYTE_EXCHANGES,
    )?;
    let zero_delay = uplinks.iter().any(|uplink| !uplink.emulated);
    let rounds = options
        .rounds
        .unwrap_or(if zero_delay { ZERO_DELAY_ROUNDS } else { 1 });
    let (gateway_rounds, raw_tuned_rounds) =
        alternate(&testbed, rounds, &lan_download, &raw_download, progress)?;
    testbed.check_running()?;
    let gateway_rounds_mbit = gateway_rounds
        .iter()
        .map(|(download, _)| download.mbit_per_s())
        .collect();
    let raw_mptcp_tuned_rounds_mbit = raw_tuned_rounds.iter().map(Download::mbit_per_s).collect();
    let (gateway, gateway_cpu_s) = median_by(gateway_rounds, |(download, _)| download.mbit_per_s())
        .context("no gateway round")?;
    let raw_mptcp_tuned =
        median_by(raw_tuned_rounds, Download::mbit_per_s).context("no raw MPTCP round")?;

    let (inbound_first_byte_gateway, inbound_gateway) =
        measure_forward(&testbed, &inbound_download, progress)?;
    testbed.check_running()?;
    Ok(RowResult {
        uplinks: uplinks.iter().map(ToString::to_string).collect(),
        singles,
        raw_mptcp,
        raw_mptcp_tuned,
        raw_mptcp_tuned_rounds_mbit,
        shadowsocks,
        gateway,
        gateway_cpu_s,
        gateway_rounds_mbit,
        first_byte_direct,
        first_byte_gateway,
        inbound: InboundResult {
            singles: inbound_singles,
            gateway: inbound_gateway,
            first_byte_direct: inbound_first_byte_direct,
            first_byte_gateway: inbound_first_byte_gateway,
        },
    })
}

/// Each uplink alone, each way: the LAN host's download and the server host's download
/// from the LAN host (plain routing over that uplink), Mbit/s.
fn measure_singles(
    testbed: &Testbed,
    lan_download: &dyn Fn(&Testbed) -> anyhow::Result<Download>,
    inbound_download: &dyn Fn(&Testbed, SocketAddr) -> anyhow::Result<Download>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut singles, mut inbound_singles) = (Vec::new(), Vec::new());
    for (index, uplink) in testbed.uplinks.iter().enumerate() {
        progress(&format!("uplink {} alone ({uplink}), each way", index + 1));
        testbed.route_lan_via(index + 1)?;
        singles.push(lan_download(testbed)?.mbit_per_s());
        inbound_singles.push(inbound_download(testbed, lan_host(INBOUND_PORT))?.mbit_per_s());
    }
    testbed.route_lan_via(1)?;
    Ok((singles, inbound_singles))
}

/// Through the converter's port forwards, once the gateway has them: the first byte of
/// a fresh connection (the median) and the server host's download from the LAN host.
fn measure_forward(
    testbed: &Testbed,
    inbound_download: &dyn Fn(&Testbed, SocketAddr) -> anyhow::Result<Download>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Duration, Download)> {
    let public =
        |port: u16| SocketAddr::new(CONVERTER_TOWARD_SERVER.parse().expect("an address"), port);
    for port in [INBOUND_PORT, INBOUND_FIRST_BYTE_PORT] {
        inbound::wait_forward(testbed, port, "served", Duration::from_secs(15))?;
    }
    let first_byte = measure::time_to_first_byte(
        &testbed.server,
        &testbed.client,
        public(INBOUND_FIRST_BYTE_PORT),
        FIRST_BYTE_EXCHANGES,
    )?;
    testbed.wait_uplinks_quiet()?;
    progress("inbound, through the converter's port forward");
    let download = inbound_download(testbed, public(INBOUND_PORT))?;
    Ok((first_byte, download))
}

/// Sets each `KEY=VALUE` of `settings` on the gateway and converter hosts.
fn set_host_sysctls(testbed: &Testbed, settings: &[String]) -> anyhow::Result<()> {
    for setting in settings {
        let (key, value) = setting
            .split_once('=')
            .with_context(|| format!("{setting:?} is not KEY=VALUE"))?;
        testbed.gateway.sysctl(key, value)?;
        testbed.converter.sysctl(key, value)?;
    }
    Ok(())
}

/// The LAN host's `port`.
fn lan_host(port: u16) -> SocketAddr {
    SocketAddr::new(LAN_HOST.parse().expect("an address"), port)
}

/// The LAN host's download through shadowsocks over MPTCP, with the CPU seconds
/// ss-redir and ss-server used; `None` when it cannot run with `congestion`.
fn measure_shadowsocks(
    testbed: &mut Testbed,
    dir: &Path,
    congestion: &str,
    lan_download: &dyn Fn(&Testbed) -> anyhow::Result<Download>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<Option<WithCpu>> {
    testbed.wait_uplinks_quiet()?;
    progress("shadowsocks over MPTCP: ss-redir + ss-server under mptcpize");
    match carriers::start_shadowsocks(testbed, dir, congestion) {
        Ok(()) => {
            let measured = with_cpu_time(testbed, &["ss-redir", "ss-server"], lan_download)?;
            testbed.check_running()?;
            carriers::stop_shadowsocks(testbed)?;
            // Killed, they leave orphaned MPTCP connections retransmitting for a second
            // or two: measured, they cost the next flow half its first second.
            testbed.wait_uplinks_quiet()?;
            Ok(Some(measured))
        }
        // shadowsocks takes the namespace's default algorithm, and a namespace may only
        // default to one of net.ipv4.tcp_allowed_congestion_control.
        Err(error) => {
            progress(&format!("shadowsocks skipped: {error:#}"));
            Ok(None)
        }
    }
}

/// Starts the converter and the gateway with `--congestion` and the extra arguments of
/// `options`, and the port forwards of the inbound measurements.
fn start_daemons(testbed: &mut Testbed, options: &Options, dir: &Path) -> anyhow::Result<()> {
    let mut args = vec!["--congestion", options.congestion.as_str()];
    args.extend(options.daemon_args.iter().map(String::as_str));
    let forwards =
        [INBOUND_PORT, INBOUND_FIRST_BYTE_PORT].map(|port| format!("{port}={LAN_HOST}:{port}"));
    let mut gateway_args = args.clone();
    gateway_args.extend(forwards.iter().flat_map(|forward| ["--forward", forward]));
    let forward_ports = format!("{INBOUND_PORT}-{INBOUND_FIRST_BYTE_PORT}");
    let mut converter_args = args;
    converter_args.extend(["--forward-ports", &forward_ports]);
    testbed.start_gateway_and_converter(dir, &gateway_args, &converter_args)
}

/// A flow and the CPU seconds its daemons used.
type WithCpu = (Download, f64);

/// Measures the gateway's flow (with its daemons' CPU seconds) and raw MPTCP tuned
/// alike in `rounds` alternating rounds, the daemons running.
fn alternate(
    testbed: &Testbed,
    rounds: usize,
    lan_download: &dyn Fn(&Testbed) -> anyhow::Result<Download>,
    raw_download: &dyn Fn(&Testbed) -> anyhow::Result<Download>,
    progress: &dyn Fn(&str),
) -> anyhow::Result<(Vec<WithCpu>, Vec<Download>)> {
    let (mut gateway_rounds, mut raw_tuned_rounds) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        let of = if rounds > 1 {
            format!(" (round {round} of {rounds})")
        } else {
            String::new()
        };
        testbed.wait_uplinks_quiet()?;
        progress(&format!("through gateway and converter{of}"));
        gateway_rounds.push(with_cpu_time(
            testbed,
            &["gateway", "converter"],
            lan_download,
        )?);
        testbed.wait_uplinks_quiet()?;
        progress(&format!("raw MPTCP, the daemons' subflow tuning{of}"));
        raw_tuned_rounds.push(raw_download(testbed)?);
    }
    Ok((gateway_rounds, raw_tuned_rounds))
}

/// Runs `measure` and returns its result with the CPU seconds the testbed's processes
/// labelled `labels` used meanwhile.
fn with_cpu_time<T>(
    testbed: &Testbed,
    labels: &[&str],
    measure: impl FnOnce(&Testbed) -> anyhow::Result<T>,
) -> anyhow::Result<(T, f64)> {
    let pids = labels
        .iter()
        .map(|label| {
            testbed
                .pid(label)
                .with_context(|| format!("no process {label}"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let total =
        || -> anyhow::Result<f64> { pids.iter().map(|&pid| measure::cpu_seconds(pid)).sum() };
    let before = total()?;
    let result = measure(testbed)?;
    Ok((result, total()? - before))
}
