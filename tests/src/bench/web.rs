//! The web benchmark: what browsing feels like through the gateway, against the best
//! uplink alone.
//!
//! Method (README "Benchmarks" says the same):
//! - Rows: DSL 20 Mbit/s 15 ms + LTE 10 Mbit/s 50 ms, and DSL + satellite 10 Mbit/s
//!   300 ms (the aggregate bench's rows 1 and 4), on the wire emulator.
//! - A page load: one 50 KB page, then 30 objects of 10 KB to 1 MB (fixed sizes, spread
//!   evenly on a log scale, shuffled), fetched by curl with at most 6 connections at
//!   once from python's http.server, which speaks HTTP/1.0: a connection per object, as
//!   a browser opens to the many hosts of a page. Measured: the page's first byte, and
//!   the time from the page's request to the last object.
//! - Short downloads of 100 KB, 500 KB and 2 MB, one connection each: the time to
//!   their last byte.
//! - Bursts: 8, then 32 requests for a 10 KB object at once, each on a connection of its
//!   own (curl `--parallel-immediate`), as a browser opening a page of many hosts does:
//!   the median and the 90th percentile of their first bytes.
//! - Interactive, in rounds of their own after the others (a bulk download through the
//!   gateway disturbed the next page's first byte): 100 exchanges of 64 bytes, 50 ms
//!   apart, on one connection (a terminal, a game): the median and the 95th percentile
//!   of their round trips, on idle lines and while a bulk download runs the same way
//!   (directly over the best uplink, or through the gateway with warm connections).
//! - Each directly over the best uplink (the server excluded from the selection, so
//!   plain forwarding over DSL), through the gateway with its warm connections, and
//!   through the gateway without them (`--pool-size 0`); direct and gateway rounds
//!   alternate, and the figures are medians of the rounds. The gateway is kept busy
//!   between its rounds, as on a household's evening: its pool follows demand.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    Xorshift, measure, percentile,
    testbed::{SERVER, Testbed, Uplink},
};

/// The benchmark's rows: name and uplinks.
pub fn rows() -> Vec<(&'static str, Vec<Uplink>)> {
    vec![
        (
            "DSL + LTE",
            vec![Uplink::line(20, 15), Uplink::line(10, 50)],
        ),
        (
            "DSL + satellite",
            vec![Uplink::line(20, 15), Uplink::line(10, 300)],
        ),
    ]
}

/// Short downloads' sizes, in bytes.
const SHORT_SIZES: [usize; 3] = [100 * 1024, 500 * 1024, 2 * 1024 * 1024];
/// Objects of the page.
const OBJECTS: usize = 30;
/// Connections curl opens at once for them (a browser's per-host limit).
const PARALLEL: &str = "6";
/// Requests of each burst.
const BURSTS: [usize; 2] = [8, 32];
/// Exchanges of the interactive flow, and the time between them.
const EXCHANGES: usize = 100;
const EXCHANGE_GAP: Duration = Duration::from_millis(50);
/// Port of the interactive flow's echo server.
const ECHO_PORT: u16 = 7300;
/// The bulk download that runs beside the loaded interactive flow: longer than it.
const BULK_BYTES: usize = 64 * 1024 * 1024;

/// One measurement of every figure, in seconds.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// The page's first byte.
    pub first_byte: f64,
    /// From the page's request to the last object.
    pub page_load: f64,
    /// Each short download, [`SHORT_SIZES`] in order.
    pub short: Vec<f64>,
    /// Each burst's first bytes, [`BURSTS`] in order: median and 90th percentile.
    pub bursts: Vec<(f64, f64)>,
}

/// The interactive flow's round trips, idle then beside a bulk download: median and
/// 95th percentile, in seconds.
pub type Interactive = [(f64, f64); 2];

/// One way of reaching the server, over the rounds.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// One sample per round.
    pub samples: Vec<Sample>,
}

impl Series {
    fn median(&self, figure: impl Fn(&Sample) -> f64) -> f64 {
        let values: Vec<f64> = self.samples.iter().map(figure).collect();
        crate::median_by(values, |&value| value).unwrap_or(f64::NAN)
    }

    /// Medians: first byte, page load, then each short download.
    pub fn medians(&self) -> Vec<f64> {
        let mut medians = vec![
            self.median(|sample| sample.first_byte),
            self.median(|sample| sample.page_load),
        ];
        for index in 0..SHORT_SIZES.len() {
            medians.push(self.median(|sample| sample.short[index]));
        }
        for index in 0..BURSTS.len() {
            medians.push(self.median(|sample| sample.bursts[index].0));
            medians.push(self.median(|sample| sample.bursts[index].1));
        }
        medians
    }
}

/// What one row measured.
#[derive(Clone, Debug)]
pub struct RowResult {
    /// The row's name.
    pub name: String,
    /// Directly over the best uplink.
    pub direct: Series,
    /// Through the gateway with warm connections.
    pub gateway: Series,
    /// Through the gateway without them.
    pub gateway_no_pool: Series,
    /// The interactive rounds: directly, and through the gateway.
    pub interactive: (Vec<Interactive>, Vec<Interactive>),
    /// The interactive rounds through the gateway with [`INFLIGHT_CAP`] (the direct
    /// ones alternate with them again; they are left out).
    pub interactive_capped: Vec<Interactive>,
}

/// The daemons' flags of the capped interactive rounds.
const INFLIGHT_CAP: [&str; 2] = ["--inflight-cap", "110"];

/// The names of the figures, in [`Series::medians`] order.
pub fn figure_names() -> Vec<String> {
    let mut names = vec!["first byte".to_owned(), "page load".to_owned()];
    names.extend(
        SHORT_SIZES
            .iter()
            .map(|size| format!("{} KB download", size / 1024)),
    );
    for requests in BURSTS {
        names.push(format!("burst {requests} median"));
        names.push(format!("burst {requests} p90"));
    }
    names
}

/// The names of the interactive figures, in [`interactive_medians`] order.
const INTERACTIVE_NAMES: [&str; 4] = [
    "interactive idle median",
    "interactive idle p95",
    "interactive loaded median",
    "interactive loaded p95",
];

/// The medians over rounds of each interactive figure.
fn interactive_medians(rounds: &[Interactive]) -> Vec<f64> {
    let median = |figure: &dyn Fn(&Interactive) -> f64| {
        crate::median_by(rounds.iter().map(figure).collect(), |&value| value).unwrap_or(f64::NAN)
    };
    vec![
        median(&|round| round[0].0),
        median(&|round| round[0].1),
        median(&|round| round[1].0),
        median(&|round| round[1].1),
    ]
}

impl RowResult {
    /// The row as JSON: medians in seconds and ratios to direct.
    pub fn to_json(&self) -> serde_json::Value {
        let direct = self.direct.medians();
        let series = |series: &Series| {
            let medians = series.medians();
            let figures: serde_json::Map<String, serde_json::Value> = figure_names()
                .into_iter()
                .zip(medians.iter().zip(&direct))
                .map(|(name, (value, direct))| {
                    (
                        name,
                        serde_json::json!({ "seconds": value, "over_direct": value / direct }),
                    )
                })
                .collect();
            serde_json::Value::Object(figures)
        };
        serde_json::json!({
            "row": self.name,
            "rounds": self.direct.samples.len(),
            "direct": series(&self.direct),
            "gateway": series(&self.gateway),
            "gateway_no_pool": series(&self.gateway_no_pool),
            "interactive": INTERACTIVE_NAMES
                .iter()
                .zip(interactive_medians(&self.interactive.0))
                .zip(interactive_medians(&self.interactive.1))
                .zip(interactive_medians(&self.interactive_capped))
                .map(|(((name, direct), gateway), capped)| {
                    serde_json::json!({
                        "figure": name,
                        "direct_seconds": direct,
                        "gateway_seconds": gateway,
                        "over_direct": gateway / direct,
                        "gateway_inflight_cap_seconds": capped,
                        "inflight_cap_over_direct": capped / direct,
                    })
                })
                .collect::<Vec<_>>(),
        })
    }
}

/// Prints a row as a table of medians and ratios.
pub fn print(result: &RowResult) {
    println!(
        "{}: medians of {} rounds",
        result.name,
        result.gateway.samples.len()
    );
    println!(
        "  {:<18} {:>10} {:>10} {:>7} {:>12} {:>7}",
        "", "direct", "gateway", "ratio", "no warm", "ratio"
    );
    let direct = result.direct.medians();
    let gateway = result.gateway.medians();
    let cold = result.gateway_no_pool.medians();
    for (index, name) in figure_names().iter().enumerate() {
        println!(
            "  {name:<18} {:>8.0}ms {:>8.0}ms {:>7.3} {:>10.0}ms {:>7.3}",
            direct[index] * 1e3,
            gateway[index] * 1e3,
            gateway[index] / direct[index],
            cold[index] * 1e3,
            cold[index] / direct[index],
        );
    }
    let direct = interactive_medians(&result.interactive.0);
    let gateway = interactive_medians(&result.interactive.1);
    let capped = interactive_medians(&result.interactive_capped);
    println!(
        "  {:<26} {:>8} {:>8} {:>7} {:>8} {:>7}",
        "", "direct", "gateway", "ratio", "cap 110", "ratio"
    );
    for (index, name) in INTERACTIVE_NAMES.iter().enumerate() {
        println!(
            "  {name:<26} {:>6.1}ms {:>6.1}ms {:>7.3} {:>6.1}ms {:>7.3}",
            direct[index] * 1e3,
            gateway[index] * 1e3,
            gateway[index] / direct[index],
            capped[index] * 1e3,
            capped[index] / direct[index],
        );
    }
}

/// Writes the page, its objects and the short downloads into `dir`.
fn write_site(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut random = Xorshift::new(8803);
    let mut bytes = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| random.next_u64().to_le_bytes()[0])
            .collect()
    };
    std::fs::write(dir.join("page"), bytes(50 * 1024))?;
    // Sizes from 10 KB to 1 MB, evenly on a log scale.
    let sizes: Vec<usize> = (0..OBJECTS)
        .map(|index| {
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let position = index as f64 / (OBJECTS - 1) as f64;
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "10 KB to 1 MB"
            )]
            let size = (10.0 * 1024.0 * 100f64.powf(position)) as usize;
            size
        })
        .collect();
    for (index, size) in sizes.iter().enumerate() {
        // Shuffled by a fixed stride, so that big and small ones mix in the waves.
        let name = format!("object{}", (index * 7) % OBJECTS);
        std::fs::write(dir.join(name), bytes(*size))?;
    }
    for size in SHORT_SIZES {
        std::fs::write(dir.join(format!("short{size}")), bytes(size))?;
    }
    std::fs::write(dir.join("small"), bytes(10 * 1024))?;
    std::fs::write(dir.join("bulk"), bytes(BULK_BYTES))?;
    Ok(())
}

/// Runs curl on the LAN host with `args`; its standard output.
fn curl(testbed: &Testbed, args: &[String]) -> anyhow::Result<String> {
    let output = testbed
        .client
        .command("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "120"])
        .args(args)
        .output()
        .context("curl does not run")?;
    if !output.status.success() {
        bail!("curl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The interactive flow's round trips: median and 95th percentile.
fn interactive_once(testbed: &Testbed) -> anyhow::Result<(f64, f64)> {
    let echo = SocketAddr::new(SERVER.parse()?, ECHO_PORT);
    let mut round_trips: Vec<f64> = measure::interactive(
        &testbed.client,
        &testbed.server,
        echo,
        EXCHANGES,
        EXCHANGE_GAP,
    )?
    .iter()
    .map(Duration::as_secs_f64)
    .collect();
    round_trips.sort_by(f64::total_cmp);
    Ok((
        percentile(&round_trips, 0.5),
        percentile(&round_trips, 0.95),
    ))
}

/// The interactive flow's round trips while a bulk download from the same server runs
/// beside it (started 2 s before, so that it fills the lines, and stopped after).
fn interactive_beside_a_download(testbed: &Testbed) -> anyhow::Result<(f64, f64)> {
    let mut bulk = testbed
        .client
        .command("curl")
        .args(["--silent", "--output", "/dev/null"])
        .arg(format!("http://{SERVER}/bulk"))
        .spawn()
        .context("curl does not run")?;
    std::thread::sleep(Duration::from_secs(2));
    let measured = interactive_once(testbed);
    let still_running = bulk.try_wait()?.is_none();
    let _ = bulk.kill();
    let _ = bulk.wait();
    // The lines' queues (50 ms at most) drain before the next figure.
    std::thread::sleep(Duration::from_secs(1));
    anyhow::ensure!(
        still_running,
        "the bulk download ended before the interactive flow: make it longer"
    );
    measured
}

/// One sample of every figure.
fn sample(testbed: &Testbed) -> anyhow::Result<Sample> {
    let url = |name: &str| format!("http://{SERVER}/{name}");
    let timing = |text: &str| -> anyhow::Result<Vec<f64>> {
        text.split_whitespace()
            .map(|value| value.parse::<f64>().context("curl's timing"))
            .collect()
    };
    let started = std::time::Instant::now();
    let page = timing(&curl(
        testbed,
        &[
            "--output".into(),
            "/dev/null".into(),
            "--write-out".into(),
            "%{time_starttransfer}".into(),
            url("page"),
        ],
    )?)?;
    let mut batch = vec![
        "--parallel".to_owned(),
        "--parallel-max".into(),
        PARALLEL.into(),
    ];
    for index in 0..OBJECTS {
        batch.extend([
            "--output".into(),
            "/dev/null".into(),
            url(&format!("object{index}")),
        ]);
    }
    curl(testbed, &batch)?;
    let page_load = started.elapsed().as_secs_f64();
    let mut short = Vec::new();
    for size in SHORT_SIZES {
        let total = timing(&curl(
            testbed,
            &[
                "--output".into(),
                "/dev/null".into(),
                "--write-out".into(),
                "%{time_total}".into(),
                url(&format!("short{size}")),
            ],
        )?)?;
        short.push(total[0]);
    }
    let mut bursts = Vec::new();
    for requests in BURSTS {
        let mut batch = vec![
            "--parallel".to_owned(),
            "--parallel-immediate".into(),
            "--parallel-max".into(),
            requests.to_string(),
            "--write-out".into(),
            "%{time_starttransfer}\\n".into(),
        ];
        for _ in 0..requests {
            batch.extend(["--output".into(), "/dev/null".into(), url("small")]);
        }
        let mut first_bytes = timing(&curl(testbed, &batch)?)?;
        first_bytes.sort_by(f64::total_cmp);
        bursts.push((percentile(&first_bytes, 0.5), percentile(&first_bytes, 0.9)));
    }
    Ok(Sample {
        first_byte: page[0],
        page_load,
        short,
        bursts,
    })
}

/// Runs `mptcp-user selection ...` on the testbed's gateway, failing if it fails.
fn selection(testbed: &Testbed, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["selection"];
    all.extend(args);
    let output = testbed.gateway_cli(&all)?;
    if !output.status.success() {
        bail!(
            "selection {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `rounds` alternating rounds of `measure`: direct (the server excluded), then through
/// the gateway running now. Returns (direct, gateway).
fn alternate<T>(
    testbed: &Testbed,
    rounds: usize,
    progress: &dyn Fn(&str),
    measure: impl Fn(&Testbed) -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    let (mut direct, mut gateway) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        progress(&format!("  round {round}/{rounds}"));
        selection(testbed, &["add", "exclude", SERVER])?;
        direct.push(measure(testbed)?);
        selection(testbed, &["del", SERVER])?;
        gateway.push(measure(testbed)?);
    }
    Ok((direct, gateway))
}

/// The interactive figures of one round: idle, then beside a bulk download.
fn interactive_round(testbed: &Testbed) -> anyhow::Result<Interactive> {
    Ok([
        interactive_once(testbed)?,
        interactive_beside_a_download(testbed)?,
    ])
}

/// Measures one row; daemon logs and the site go to `dir`.
pub fn run_row(
    label: &str,
    (name, uplinks): (&str, &[Uplink]),
    rounds: usize,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<RowResult> {
    let site = dir.join("site");
    write_site(&site)?;
    let mut testbed = Testbed::new(label, uplinks)?;
    testbed.start_http_server(&site, &dir.join("http.log"))?;
    testbed.start_gateway_and_converter(dir, &[], &[])?;
    // One unmeasured load: the first flows of an idle gateway find no warm connection.
    sample(&testbed)?;
    progress("direct and through the gateway with warm connections");
    let (mut direct, gateway) = alternate(&testbed, rounds, progress, sample)?;
    progress("interactive, direct and through the gateway");
    let interactive = alternate(&testbed, rounds, progress, interactive_round)?;
    progress("interactive, direct and through the gateway with --inflight-cap 110");
    testbed.forget("gateway");
    testbed.forget("converter");
    testbed.start_gateway_and_converter(dir, &INFLIGHT_CAP, &INFLIGHT_CAP)?;
    let (_, interactive_capped) = alternate(&testbed, rounds, progress, interactive_round)?;
    progress("direct and through the gateway without warm connections");
    testbed.forget("gateway");
    testbed.forget("converter");
    testbed.start_gateway_and_converter(dir, &["--pool-size", "0"], &[])?;
    let (more_direct, gateway_no_pool) = alternate(&testbed, rounds, progress, sample)?;
    direct.extend(more_direct);
    testbed.check_running()?;
    Ok(RowResult {
        name: name.to_owned(),
        direct: Series { samples: direct },
        gateway: Series { samples: gateway },
        gateway_no_pool: Series {
            samples: gateway_no_pool,
        },
        interactive,
        interactive_capped,
    })
}
