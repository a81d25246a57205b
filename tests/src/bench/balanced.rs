//! The two-converter row of the scale benchmark: two converters behind one balanced
//! address (an nftables DNAT with a consistent hash, standing in for an operator's load
//! balancer; [`crate::testbed::balancer`]), each announcing its own address.
//!
//! Method (docs/benchmarks.md says the same):
//! - Held flows and new connections: on two zero-delay 100 Mbit/s HTB lines, the gateway
//!   (uplinks of its own, its converter the balanced address) holds N idle flows as in
//!   [`super::scale::hold`]; the server's answer says which converter carried each,
//!   and each daemon's RSS and open files are read. Then new connections a second from
//!   parallel clients, as in the one-converter row.
//! - Share of the sum: on a DSL line (20 Mbit/s, 15 ms) and an LTE one (10 Mbit/s,
//!   50 ms), each line alone (plain forwarding), then one download through one converter
//!   (no balancer, no announce) and one through the balancer, alternating for a few
//!   rounds with the daemons restarted each time; each as a share of the lines' sum.

use std::{net::SocketAddr, path::Path, time::Duration};

use nix::sys::signal::Signal;

use super::scale::{Held, RATE_PORT, Rate, connection_rate, hold};
use crate::{
    greeting::GreetingServer,
    measure::{self, Transport},
    testbed::{
        CONVERTER, CONVERTER_PORT, Interception, SERVER, Testbed, Uplink, balancer::BALANCED,
    },
};

/// Port of the download sender on the server.
const DOWNLOAD_PORT: u16 = 5103;
/// Congestion control of the daemons and of the single-line downloads, as the aggregate
/// benchmark's default.
const CONGESTION: &str = "bbr";

/// What the two-converter row measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Idle flows held through the balancer.
    pub flows: usize,
    /// Parallel clients of the connection-rate measurement.
    pub clients: usize,
    /// How long the connection-rate measurement runs.
    pub rate_duration: Duration,
    /// How long each download on the DSL and LTE lines runs.
    pub download_duration: Duration,
    /// Alternating rounds of one converter and the balancer.
    pub rounds: usize,
}

/// What the two-converter row measured.
#[derive(Debug, Clone)]
pub struct Balanced {
    /// The idle flows held through the balancer.
    pub held: Held,
    /// New connections through the balancer.
    pub rate: Rate,
    /// The DSL and LTE downloads.
    pub lines: LinesShare,
}

/// One download through one converter and through the balancer, on the same lines.
#[derive(Debug, Clone)]
pub struct LinesShare {
    /// The lines, as text.
    pub uplinks: Vec<String>,
    /// Goodput of each line alone, Mbit/s.
    pub singles: Vec<f64>,
    /// Goodput through one converter, each round, Mbit/s.
    pub one_converter: Vec<f64>,
    /// Goodput through the balancer, each round, Mbit/s.
    pub balanced: Vec<f64>,
}

#[expect(clippy::cast_precision_loss, reason = "a few rounds")]
impl LinesShare {
    /// The lines' sum, Mbit/s.
    pub fn sum_of_singles(&self) -> f64 {
        self.singles.iter().sum()
    }

    /// The mean share of the sum through one converter.
    pub fn one_converter_share(&self) -> f64 {
        self.one_converter.iter().sum::<f64>()
            / self.one_converter.len() as f64
            / self.sum_of_singles()
    }

    /// The mean share of the sum through the balancer.
    pub fn balanced_share(&self) -> f64 {
        self.balanced.iter().sum::<f64>() / self.balanced.len() as f64 / self.sum_of_singles()
    }
}

impl Balanced {
    /// The results as JSON, for target/bench/.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "flows": self.held.flows,
            "seen_from": self.held.seen_from,
            "converted": self.held.converted(),
            "echoed": self.held.echoed,
            "rss_kib_per_flow_all": self.held.rss_kib_per_flow(),
            "connections_per_s": self.rate.per_s,
            "first_byte_ms": [self.rate.median_ms, self.rate.p99_ms],
            "lines": self.lines.uplinks,
            "singles_mbit": self.lines.singles,
            "one_converter_mbit": self.lines.one_converter,
            "balanced_mbit": self.lines.balanced,
            "one_converter_share_of_sum": self.lines.one_converter_share(),
            "balanced_share_of_sum": self.lines.balanced_share(),
        })
    }

    /// Prints the row.
    pub fn print(&self) {
        let held = &self.held;
        println!(
            "  two converters behind a balancer: {} flows held, {} converted, {} echoed; \
             seen from {:?}",
            held.flows,
            held.converted(),
            held.echoed,
            held.seen_from
        );
        for (name, load) in held.daemons() {
            println!(
                "    {name:<10} {:5.1} KiB RSS/flow, {:.2} files/flow",
                load.rss_kib_per_flow(held.flows),
                load.files_per_flow(held.flows)
            );
        }
        println!(
            "    new connections/s {:.0} (failed {}), connect to greeting median {:.2} ms, \
             99th percentile {:.2} ms",
            self.rate.per_s, self.rate.failed, self.rate.median_ms, self.rate.p99_ms
        );
        let lines = &self.lines;
        println!(
            "    {}: alone {:.1?} Mbit/s; one converter {:.1?} ({:.2} of the sum), balancer \
             {:.1?} ({:.2} of the sum)",
            lines.uplinks.join(" + "),
            lines.singles,
            lines.one_converter,
            lines.one_converter_share(),
            lines.balanced,
            lines.balanced_share()
        );
    }
}

/// Runs the row; daemon logs go to `dir`.
pub fn run(options: &Options, dir: &Path, progress: &dyn Fn(&str)) -> anyhow::Result<Balanced> {
    let htb = [Uplink::htb(100), Uplink::htb(100)];
    let mut testbed = Testbed::with_bare_uplinks("scale2", &htb)?;
    testbed.add_two_balanced_converter_hosts()?;
    start_balanced(&mut testbed, dir)?;
    progress(&format!(
        "two converters behind a balancer: {} idle flows held at once",
        options.flows
    ));
    let held = hold(&mut testbed, options.flows)?;
    progress(&format!(
        "two converters behind a balancer: new connections per second, {} clients",
        options.clients
    ));
    let rate_server = GreetingServer::start(&testbed.server, RATE_PORT)?;
    let rate = connection_rate(&testbed.client, options.clients, options.rate_duration)?;
    drop(rate_server);
    drop(testbed);
    let lines = lines_share(options, dir, progress)?;
    Ok(Balanced { held, rate, lines })
}

/// The DSL and LTE downloads of the row (see the module's method).
pub fn lines_share(
    options: &Options,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<LinesShare> {
    let lines = [Uplink::line(20, 15), Uplink::line(10, 50)];
    let mut testbed = Testbed::with_bare_uplinks("scale3", &lines)?;
    testbed.add_two_balanced_converter_hosts()?;
    let server = SocketAddr::new(SERVER.parse()?, DOWNLOAD_PORT);
    let download = |testbed: &Testbed| {
        testbed.wait_uplinks_quiet()?;
        let download = measure::download(
            &testbed.client,
            &testbed.server,
            server,
            Transport::Tcp,
            Some(CONGESTION),
            options.download_duration,
        )?;
        Ok::<_, anyhow::Error>(download.mbit_per_s())
    };
    let mut singles = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        progress(&format!("line {} alone ({line})", index + 1));
        testbed.route_lan_via(index + 1)?;
        singles.push(download(&testbed)?);
    }
    testbed.route_lan_via(1)?;

    let (mut one_converter, mut balanced) = (Vec::new(), Vec::new());
    for round in 1..=options.rounds {
        progress(&format!("round {round}: through one converter"));
        testbed.start_converter(dir, &["--congestion", CONGESTION])?;
        start_gateway(&mut testbed, dir, CONVERTER)?;
        one_converter.push(download(&testbed)?);
        stop_daemons(&mut testbed)?;
        progress(&format!("round {round}: through the balancer"));
        start_balanced(&mut testbed, dir)?;
        balanced.push(download(&testbed)?);
        stop_daemons(&mut testbed)?;
    }
    Ok(LinesShare {
        uplinks: lines.iter().map(ToString::to_string).collect(),
        singles,
        one_converter,
        balanced,
    })
}

/// Starts both converters behind the balancer and the gateway toward it.
fn start_balanced(testbed: &mut Testbed, dir: &Path) -> anyhow::Result<()> {
    testbed.start_balanced_converters(dir, &["--congestion", CONGESTION])?;
    start_gateway(testbed, dir, BALANCED)
}

/// Starts the gateway on the testbed's two uplinks (set up by itself), its converter at
/// `converter`, and waits until both uplinks are up.
fn start_gateway(testbed: &mut Testbed, dir: &Path, converter: &str) -> anyhow::Result<()> {
    let converter = format!("{converter}:{CONVERTER_PORT}");
    let args = [
        "--converter",
        &converter,
        "--uplink",
        "up1",
        "--uplink",
        "up2,next-hop=10.0.2.2",
        "--congestion",
        CONGESTION,
    ];
    testbed.start_gateway_intercepting(dir, Interception::Ebpf, &args)?;
    testbed.wait_uplinks_up()
}

/// Stops the gateway and whichever converters run, as a service manager does.
fn stop_daemons(testbed: &mut Testbed) -> anyhow::Result<()> {
    for label in ["gateway", "converter", "converter2"] {
        if testbed.pid(label).is_some() {
            testbed.stop(label, Signal::SIGTERM)?;
        }
    }
    Ok(())
}
