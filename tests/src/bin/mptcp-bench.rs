//! Benchmarks on the namespace testbed, run by `cargo xtask bench NAME` (as root).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mptcp_tests::{
    TempDir,
    bench::{aggregate, balanced, interception, keys, relay, scale, web},
    require_root,
};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks on the namespace testbed")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

/// The flags of `bench scale`.
#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Numbers of idle flows to hold, one after the other (capped by the hard
    /// open-file limit).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    flows: Vec<usize>,
    /// Seconds of each connection-rate measurement.
    #[arg(long, default_value_t = 5)]
    rate_seconds: u64,
    /// Numbers of parallel clients of the connection-rate measurement, one after the
    /// other.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    clients: Vec<usize>,
    /// Idle flows held through two converters behind a balancer (0: no
    /// two-converter row).
    #[arg(long, default_value_t = 1000)]
    balanced_flows: usize,
    /// Seconds of each download of the two-converter row on DSL and LTE lines.
    #[arg(long, default_value_t = 20)]
    download_seconds: u64,
    /// Alternating rounds of one converter and the balancer on those lines.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Directory for the JSON results.
    #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// One long download through the gateway vs each uplink alone and raw MPTCP.
    Aggregate {
        /// Congestion control of the daemons, the raw MPTCP flow and the single uplinks.
        #[arg(long, default_value = "bbr")]
        congestion: String,
        /// Extra arguments for both daemons, e.g. "--send-buffer=4" (repeatable).
        #[arg(long, allow_hyphen_values = true)]
        daemon_arg: Vec<String>,
        /// A sysctl for the gateway and converter hosts, e.g.
        /// "net.ipv4.tcp_wmem=4096 16384 16777216" (repeatable).
        #[arg(long)]
        host_sysctl: Vec<String>,
        /// Length of each flow.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Only these rows of the matrix (1-based; repeatable).
        #[arg(long)]
        row: Vec<usize>,
        /// Alternating rounds of the gateway and raw MPTCP tuned alike, compared by
        /// their medians [default: 5 on the zero-delay row, 1 on the others].
        #[arg(long)]
        rounds: Option<usize>,
        /// Directory for the JSON results.
        #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
        out: PathBuf,
    },
    /// What interception costs: first byte through the gateway vs direct, and time per
    /// new connection with the eBPF programs vs an nftables tproxy rule (`redirect` is
    /// an alias).
    #[command(alias = "redirect")]
    Interception {
        /// Connections timed per round.
        #[arg(long, default_value_t = 200)]
        exchanges: usize,
        /// Alternating rounds of eBPF and nftables.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Directory for the JSON results.
        #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
        out: PathBuf,
    },
    /// What authenticating a request costs a converter serving many gateways: cookie
    /// verifications with one key against many, and an unknown key id against a wrong
    /// MAC (in this process, no testbed).
    Keys {
        /// Numbers of gateways (keys) compared with one.
        #[arg(long, value_delimiter = ',', default_value = "100,10000")]
        gateways: Vec<usize>,
        /// Cookies verified per round and kind.
        #[arg(long, default_value_t = 20_000)]
        cookies: usize,
        /// Alternating rounds; medians are compared.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Directory for the JSON results.
        #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
        out: PathBuf,
    },
    /// Many idle flows held at once through gateway and converter (memory and files per
    /// flow), and new connections per second against plain forwarding.
    Scale(ScaleArgs),
    /// Browsing: a page of 31 objects over 6 connections and short downloads, directly
    /// over the best uplink and through the gateway with and without warm connections.
    Web {
        /// Alternating rounds of each comparison.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Only these rows (1: DSL + LTE, 2: DSL + satellite; repeatable).
        #[arg(long)]
        row: Vec<usize>,
        /// Directory for the JSON results.
        #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
        out: PathBuf,
    },
    /// What relaying costs per byte: bulk transfers over one fast uplink, plain routing
    /// vs the SOCKS chain, shadowsocks and the gateway; throughput and CPU seconds per GB.
    Relay {
        /// Megabytes per transfer.
        #[arg(long, default_value_t = 1000)]
        megabytes: u64,
        /// Parallel flows of each transfer (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        flows: Vec<usize>,
        /// Alternating rounds; medians are compared.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Only the 1 Gbit/s HTB line (`htb`) or only the unshaped one (`unshaped`).
        #[arg(long)]
        line: Option<String>,
        /// The carriers compared with plain routing (repeatable) [default: all].
        #[arg(long, value_enum)]
        carrier: Vec<relay::Carrier>,
        /// Directory for the JSON results.
        #[arg(long, env = "MPTCP_BENCH_DIR", default_value = "target/bench")]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    require_root();
    mptcp_tests::catch_interrupts()?;
    match Cli::parse().bench {
        Bench::Aggregate {
            congestion,
            seconds,
            row,
            rounds,
            out,
            daemon_arg,
            host_sysctl,
        } => run_aggregate(
            &aggregate::Options {
                congestion,
                daemon_args: daemon_arg,
                host_sysctls: host_sysctl,
                duration: Duration::from_secs(seconds),
                rounds,
            },
            &row,
            &out,
        ),
        Bench::Interception {
            exchanges,
            rounds,
            out,
        } => {
            let dir = TempDir::new("bench-interception")?;
            println!("interception: {rounds} rounds of {exchanges} connections");
            let result =
                interception::run(exchanges, rounds, dir.path(), &|step| println!("  {step}"))?;
            interception::print(&result);
            write_json(&out, "interception", &result.to_json())
        }
        Bench::Keys {
            gateways,
            cookies,
            rounds,
            out,
        } => {
            let options = keys::Options {
                gateways,
                cookies,
                rounds,
            };
            println!("keys: {rounds} rounds of {cookies} cookies of each kind");
            let rows = keys::run(&options, &|step| println!("  {step}"))?;
            keys::print(&rows);
            write_json(&out, "keys", &keys::to_json(&rows))
        }
        Bench::Scale(args) => run_scale(args),
        Bench::Web { rounds, row, out } => run_web(rounds, &row, &out),
        Bench::Relay {
            megabytes,
            flows,
            rounds,
            line,
            carrier,
            out,
        } => {
            let dir = TempDir::new("bench-relay")?;
            let lines = relay::default_lines()
                .into_iter()
                .filter(|uplink| match line.as_deref() {
                    Some("htb") => uplink.rate_mbit > 0,
                    Some("unshaped") => uplink.rate_mbit == 0,
                    _ => true,
                })
                .collect();
            let options = relay::Options {
                bytes: megabytes * 1_000_000,
                flows,
                rounds,
                lines,
                carriers: if carrier.is_empty() {
                    relay::Carrier::ALL.to_vec()
                } else {
                    carrier
                },
            };
            let cells = relay::run(&options, dir.path(), &|step| println!("  {step}"))?;
            relay::print(&cells);
            write_json(&out, "relay", &relay::to_json(&cells))
        }
    }
}

/// Writes `json` to `out/NAME-<unix time>.json` and says where.
fn write_json(out: &std::path::Path, name: &str, json: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join(format!("{name}-{}.json", unix_seconds()));
    std::fs::write(&path, serde_json::to_string_pretty(json)?)?;
    println!("results: {}", path.display());
    Ok(())
}

fn run_aggregate(
    options: &aggregate::Options,
    rows: &[usize],
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let congestion = &options.congestion;
    let matrix = aggregate::matrix();
    let chosen: Vec<usize> = if rows.is_empty() {
        (1..=matrix.len()).collect()
    } else {
        rows.to_vec()
    };
    println!(
        "aggregate: {} s flows, congestion control {congestion}",
        options.duration.as_secs()
    );
    let mut results = Vec::new();
    for number in chosen {
        let uplinks = matrix
            .get(number.wrapping_sub(1))
            .with_context(|| format!("no row {number}: 1..={}", matrix.len()))?;
        let dir = TempDir::new("bench")?;
        let result = aggregate::run_row(
            &format!("agg{number}"),
            uplinks,
            options,
            dir.path(),
            &|step| println!("  row {number}: {step}"),
        )
        .inspect_err(|_| print_daemon_logs(dir.path()))?;
        print_row(number, &result);
        results.push(result.to_json());
    }
    let json = serde_json::json!({
        "congestion": congestion,
        "daemon_args": options.daemon_args,
        "host_sysctls": options.host_sysctls,
        "seconds": options.duration.as_secs(),
        "rounds": options.rounds,
        "rows": results,
    });
    write_json(out, &format!("aggregate-{congestion}"), &json)
}

/// The last lines of the daemons' logs in `dir`, for a row that failed.
fn print_daemon_logs(dir: &std::path::Path) {
    for daemon in ["gateway", "converter"] {
        let log = mptcp_tests::testbed::daemon_log(dir, daemon);
        let lines: Vec<&str> = log.lines().collect();
        println!("--- the {daemon}'s last log lines:");
        for line in &lines[lines.len().saturating_sub(40)..] {
            println!("{line}");
        }
    }
}

fn print_row(number: usize, result: &aggregate::RowResult) {
    println!("row {number}: {}", result.uplinks.join(" + "));
    for (index, single) in result.singles.iter().enumerate() {
        println!("  uplink {} alone        {single:7.2} Mbit/s", index + 1);
    }
    let time_to_90 = |download: &mptcp_tests::measure::Download| {
        download.time_to_90_percent().map_or_else(
            || "-".to_owned(),
            |time| format!("{:.1} s", time.as_secs_f64()),
        )
    };
    println!(
        "  sum of uplinks        {:7.2} Mbit/s",
        result.sum_of_singles()
    );
    println!(
        "  raw MPTCP             {:7.2} Mbit/s  90% after {}",
        result.raw_mptcp.mbit_per_s(),
        time_to_90(&result.raw_mptcp)
    );
    println!(
        "  raw MPTCP tuned alike {:7.2} Mbit/s  90% after {}",
        result.raw_mptcp_tuned.mbit_per_s(),
        time_to_90(&result.raw_mptcp_tuned)
    );
    if let Some((shadowsocks, _)) = &result.shadowsocks {
        println!(
            "  shadowsocks over MPTCP{:7.2} Mbit/s  90% after {}",
            shadowsocks.mbit_per_s(),
            time_to_90(shadowsocks)
        );
    }
    println!(
        "  gateway               {:7.2} Mbit/s  90% after {}",
        result.gateway.mbit_per_s(),
        time_to_90(&result.gateway)
    );
    if result.gateway_rounds_mbit.len() > 1 {
        let rates = |rounds: &[f64]| {
            rounds
                .iter()
                .map(|rate| format!("{rate:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  rounds (medians above): gateway {}; raw tuned alike {}",
            rates(&result.gateway_rounds_mbit),
            rates(&result.raw_mptcp_tuned_rounds_mbit)
        );
    }
    let shadowsocks = result.shadowsocks.as_ref().map(|(download, _)| download);
    for (name, download) in [
        ("raw MPTCP", Some(&result.raw_mptcp)),
        ("raw tuned", Some(&result.raw_mptcp_tuned)),
        ("shadowsocks", shadowsocks),
        ("gateway", Some(&result.gateway)),
    ] {
        let Some(download) = download else { continue };
        let per_second: Vec<String> = download
            .per_second_mbit()
            .iter()
            .map(|rate| format!("{rate:.0}"))
            .collect();
        println!("  {name:<11} per second {}", per_second.join(" "));
    }
    println!(
        "  first byte: direct {:.1} ms, through the gateway {:.1} ms",
        result.first_byte_direct.as_secs_f64() * 1e3,
        result.first_byte_gateway.as_secs_f64() * 1e3
    );
    print_inbound(&result.inbound);
    let ratio = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.3}"));
    println!(
        "  CPU: daemons {:.2} s, shadowsocks {}; per byte, gateway / shadowsocks {}",
        result.gateway_cpu_s,
        result
            .shadowsocks
            .as_ref()
            .map_or_else(|| "-".to_owned(), |(_, cpu_s)| format!("{cpu_s:.2} s")),
        ratio(result.cpu_per_byte_over_shadowsocks())
    );
    println!(
        "  gateway / sum {:.3}   gateway / raw MPTCP {:.3} (tuned alike {:.3})   \
         gateway / shadowsocks {}   >= best single: {}",
        result.share_of_sum(),
        result.share_of_raw(),
        result.share_of_raw_tuned(),
        ratio(result.over_shadowsocks()),
        if result.gateway.mbit_per_s() >= result.best_single() {
            "yes"
        } else {
            "NO"
        }
    );
}

/// The inbound lines of a row: the server host downloading from the LAN host.
fn print_inbound(inbound: &aggregate::InboundResult) {
    let singles: Vec<String> = inbound
        .singles
        .iter()
        .map(|single| format!("{single:.2}"))
        .collect();
    println!(
        "  inbound: uplinks alone {} (sum {:.2}), through the port forward {:.2} Mbit/s: \
         forward / sum {:.3}, >= best single: {}",
        singles.join(" + "),
        inbound.sum_of_singles(),
        inbound.gateway.mbit_per_s(),
        inbound.share_of_sum(),
        if inbound.at_least_best_single() {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "  inbound first byte: direct over uplink 1 {:.1} ms, through the port forward {:.1} ms",
        inbound.first_byte_direct.as_secs_f64() * 1e3,
        inbound.first_byte_gateway.as_secs_f64() * 1e3
    );
}

fn run_web(rounds: usize, rows: &[usize], out: &std::path::Path) -> anyhow::Result<()> {
    let all = web::rows();
    let chosen: Vec<usize> = if rows.is_empty() {
        (1..=all.len()).collect()
    } else {
        rows.to_vec()
    };
    let mut results = Vec::new();
    for number in chosen {
        let (name, uplinks) = all
            .get(number.wrapping_sub(1))
            .with_context(|| format!("no row {number}: 1..={}", all.len()))?;
        println!("web: {name}");
        let dir = TempDir::new("bench-web")?;
        let result = web::run_row(
            &format!("web{number}"),
            (name, uplinks),
            rounds,
            dir.path(),
            &|step| println!("  {step}"),
        )?;
        web::print(&result);
        results.push(result.to_json());
    }
    write_json(out, "web", &serde_json::json!({ "rows": results }))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Runs the scale benchmark, printing its table and writing its JSON.
fn run_scale(args: ScaleArgs) -> anyhow::Result<()> {
    let rate_duration = Duration::from_secs(args.rate_seconds);
    let balanced = (args.balanced_flows > 0).then(|| balanced::Options {
        flows: args.balanced_flows,
        clients: args.clients.iter().copied().max().unwrap_or(16),
        rate_duration,
        download_duration: Duration::from_secs(args.download_seconds),
        rounds: args.rounds,
    });
    let options = scale::Options {
        counts: args.flows,
        rate_duration,
        clients: args.clients,
        balanced,
    };
    let dir = TempDir::new("bench-scale")?;
    let result = scale::run(&options, dir.path(), &|step| println!("  {step}"))?;
    scale::print(&result);
    write_json(&args.out, "scale", &result.to_json())
}
