//! The interception benchmark: what intercepting a connection costs.
//!
//! Method (README "Benchmarks" says the same):
//! - First byte on realistic lines (DSL 20 Mbit/s 15 ms + LTE 10 Mbit/s 50 ms): the
//!   median time from connect() to the first byte of the answer over fresh connections,
//!   directly (plain forwarding over the DSL line), through the gateway without warm
//!   connections (`--pool-size 0`), and through the gateway with them (the default).
//! - Cost per new connection, eBPF vs nftables: on two identical testbeds of zero-delay
//!   HTB lines, where processing rather than propagation sets the time, one gateway
//!   intercepting with its own tc program, the other by an nftables tproxy rule. The same
//!   connect-to-first-byte exchange, many times, in alternating rounds so that both see
//!   the same machine load; medians per connection. Plain forwarding without a gateway
//!   is measured first on both, as the floor.
//! - Kernel memory of the gateway's BPF maps (their `memlock`, idle): an absolute figure,
//!   since it does not depend on the machine's load.
//! - Cost on flows the gateway leaves alone: with the server's address excluded by the
//!   selection, the same exchange, against the floor measured before any gateway ran. So
//!   it counts everything a running gateway adds to such a flow: the tc program's socket
//!   lookup per packet, and the cgroup programs that see every connect of the host
//!   (here two gateways' worth).

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{
    measure,
    testbed::{Interception, SERVER, Testbed, Uplink},
};

/// Port of the responder on the server.
const PORT: u16 = 5003;

/// Everything the benchmark measured; durations are medians per connection.
#[derive(Debug)]
pub struct InterceptionResult {
    /// First byte over the DSL line directly.
    pub first_byte_direct: Duration,
    /// First byte through the gateway (with its warm connections).
    pub first_byte_gateway: Duration,
    /// First byte through the gateway without warm connections (`--pool-size 0`).
    pub first_byte_gateway_no_pool: Duration,
    /// Plain forwarding on the zero-delay testbeds (no gateway), per round.
    pub forwarded: Vec<Duration>,
    /// Through the gateway intercepting with its tc program, per round.
    pub ebpf: Vec<Duration>,
    /// Through the gateway intercepting with an nftables tproxy rule, per round.
    pub nftables: Vec<Duration>,
    /// Forwarded past the attached tc program (destination excluded), per round.
    pub excluded: Vec<Duration>,
    /// Kernel memory of the eBPF gateway's maps, in bytes.
    pub map_memory_bytes: u64,
}

/// The median of `values` (zero for none).
fn median(values: &[Duration]) -> Duration {
    crate::median_by(values.to_vec(), Duration::as_secs_f64).unwrap_or_default()
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

impl InterceptionResult {
    /// First byte through the gateway over first byte directly.
    pub fn first_byte_ratio(&self) -> f64 {
        self.first_byte_gateway.as_secs_f64() / self.first_byte_direct.as_secs_f64()
    }

    /// Time per new connection with the eBPF programs over the same with nftables.
    pub fn ebpf_over_nftables(&self) -> f64 {
        median(&self.ebpf).as_secs_f64() / median(&self.nftables).as_secs_f64()
    }

    /// Time per new connection forwarded past the tc program over plain forwarding.
    pub fn excluded_over_forwarded(&self) -> f64 {
        median(&self.excluded).as_secs_f64() / median(&self.forwarded).as_secs_f64()
    }

    /// The results as JSON, for target/bench/.
    pub fn to_json(&self) -> serde_json::Value {
        let all = |values: &[Duration]| {
            values
                .iter()
                .map(|&value| millis(value))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "first_byte_direct_ms": millis(self.first_byte_direct),
            "first_byte_gateway_ms": millis(self.first_byte_gateway),
            "first_byte_gateway_no_pool_ms": millis(self.first_byte_gateway_no_pool),
            "first_byte_ratio": self.first_byte_ratio(),
            "per_connection_forwarded_ms": all(&self.forwarded),
            "per_connection_ebpf_ms": all(&self.ebpf),
            "per_connection_nftables_ms": all(&self.nftables),
            "per_connection_excluded_ms": all(&self.excluded),
            "ebpf_over_nftables": self.ebpf_over_nftables(),
            "excluded_over_forwarded": self.excluded_over_forwarded(),
            "map_memory_bytes": self.map_memory_bytes,
        })
    }
}

/// Runs the benchmark: `exchanges` connections per round, `rounds` alternating rounds;
/// daemon logs in `dir`.
pub fn run(
    exchanges: usize,
    rounds: usize,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> anyhow::Result<InterceptionResult> {
    let server = SocketAddr::new(SERVER.parse()?, PORT);
    let time = |testbed: &Testbed, count: usize| {
        measure::time_to_first_byte(&testbed.client, &testbed.server, server, count)
    };

    progress("first byte on DSL 20/15 + LTE 10/50: direct, then through the gateway");
    let mut lines = Testbed::new("rdl", &[Uplink::line(20, 15), Uplink::line(10, 50)])?;
    let first_byte_direct = time(&lines, 15)?;
    let lines_dir = dir.join("lines");
    std::fs::create_dir_all(&lines_dir)?;
    lines.start_gateway_and_converter(&lines_dir, &["--pool-size", "0"], &[])?;
    let first_byte_gateway_no_pool = time(&lines, 15)?;
    progress("first byte through the gateway with its warm connections");
    lines.forget("gateway");
    lines.start_gateway_intercepting(&lines_dir, Interception::Ebpf, &[])?;
    let first_byte_gateway = time(&lines, 15)?;
    drop(lines);

    progress("cost per connection: two zero-delay testbeds, eBPF and nftables");
    let uplinks = [Uplink::htb(100), Uplink::htb(100)];
    let mut with_ebpf = Testbed::new("rde", &uplinks)?;
    let mut with_nftables = Testbed::new("rdn", &uplinks)?;
    let mut forwarded = Vec::new();
    for _ in 0..rounds {
        forwarded.push(time(&with_ebpf, exchanges)?);
        forwarded.push(time(&with_nftables, exchanges)?);
    }
    for (testbed, interception, name) in [
        (&mut with_ebpf, Interception::Ebpf, "ebpf"),
        (&mut with_nftables, Interception::Nftables, "nftables"),
    ] {
        let logs = dir.join(name);
        std::fs::create_dir_all(&logs)?;
        testbed.start_daemons(&logs, interception, &[], &[])?;
    }
    let (mut ebpf, mut nftables) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        progress(&format!("  round {round}/{rounds}"));
        ebpf.push(time(&with_ebpf, exchanges)?);
        nftables.push(time(&with_nftables, exchanges)?);
    }
    with_ebpf.check_running()?;
    with_nftables.check_running()?;
    let map_memory_bytes = map_memory(with_ebpf.pid("gateway").context("no gateway")?)?;
    drop(with_nftables);

    progress("cost on excluded flows: the tc program attached, the server excluded");
    let output = with_ebpf.gateway_cli(&["selection", "add", "exclude", SERVER])?;
    anyhow::ensure!(
        output.status.success(),
        "selection add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let excluded = (0..rounds)
        .map(|_| time(&with_ebpf, exchanges))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("timing excluded flows")?;
    Ok(InterceptionResult {
        first_byte_direct,
        first_byte_gateway,
        first_byte_gateway_no_pool,
        forwarded,
        ebpf,
        nftables,
        excluded,
        map_memory_bytes,
    })
}

/// Kernel memory of the BPF maps process `pid` holds: the `memlock` of each map file
/// descriptor, from /proc/PID/fdinfo.
fn map_memory(pid: u32) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        if !info.contains("map_type:") {
            continue;
        }
        total += info
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Prints the results as a short table with the ratios.
pub fn print(result: &InterceptionResult) {
    println!(
        "first byte, DSL + LTE lines: direct {:.1} ms, through the gateway {:.1} ms (ratio \
         {:.3}), without its warm connections {:.1} ms (ratio {:.3})",
        millis(result.first_byte_direct),
        millis(result.first_byte_gateway),
        result.first_byte_ratio(),
        millis(result.first_byte_gateway_no_pool),
        result.first_byte_gateway_no_pool.as_secs_f64() / result.first_byte_direct.as_secs_f64()
    );
    println!("per new connection (median of rounds, zero-delay lines):");
    for (name, values) in [
        ("plain forwarding, no gateway", &result.forwarded),
        ("gateway, eBPF programs", &result.ebpf),
        ("gateway, nftables tproxy", &result.nftables),
        ("excluded flow past the tc program", &result.excluded),
    ] {
        let rounds: Vec<String> = values
            .iter()
            .map(|&value| format!("{:.3}", millis(value)))
            .collect();
        println!(
            "  {name:<36} {:.3} ms   rounds: {}",
            millis(median(values)),
            rounds.join(" ")
        );
    }
    println!(
        "eBPF / nftables per connection: {:.3}   excluded / plain forwarding: {:.3}",
        result.ebpf_over_nftables(),
        result.excluded_over_forwarded()
    );
    #[expect(clippy::cast_precision_loss, reason = "displayed")]
    let mib = result.map_memory_bytes as f64 / f64::from(1 << 20);
    println!("kernel memory of the gateway's BPF maps: {mib:.2} MiB");
}
