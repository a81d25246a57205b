//! `cargo xtask demo`: the gateway on a namespace testbed with two unequal, realistic
//! uplinks. A LAN host downloads a file with curl, first over the best uplink alone,
//! then through the gateway, and the demo prints what each got, and what `mptcp-user
//! flows` showed during the second download.

use std::{process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use mptcp_tests::{
    TempDir, catch_interrupts,
    emulator::TCP_PAYLOAD_SHARE,
    interrupted, random_bytes, require_root,
    testbed::{SERVER, Testbed, Uplink},
};

/// The demo's uplinks: a DSL line and an LTE line, as in a household.
const UPLINKS: [(&str, Uplink); 2] = [("DSL", Uplink::line(20, 15)), ("LTE", Uplink::line(10, 50))];

/// Size of the downloaded file: long enough for congestion control to settle.
const FILE_MIB: usize = 32;

/// When the demo lists the live flow with `mptcp-user flows`.
const FLOWS_AFTER: Duration = Duration::from_secs(4);

/// One curl download: bytes and seconds.
struct Transfer {
    bytes: f64,
    seconds: f64,
}

impl Transfer {
    fn mbit_per_s(&self) -> f64 {
        self.bytes * 8.0 / self.seconds / 1e6
    }
}

fn main() -> anyhow::Result<()> {
    require_root();
    catch_interrupts()?;
    let result = run();
    if interrupted() {
        println!("\ninterrupted: testbed removed");
        return Ok(());
    }
    result
}

fn run() -> anyhow::Result<()> {
    let uplinks: Vec<Uplink> = UPLINKS.iter().map(|(_, uplink)| *uplink).collect();
    println!("Building the testbed: LAN host, gateway, converter, server");
    for (i, (name, uplink)) in UPLINKS.iter().enumerate() {
        println!("  uplink {} {name}: {uplink}", i + 1);
    }
    let dir = TempDir::new("demo")?;
    let mut testbed = Testbed::new("demo", &uplinks)?;
    let www = dir.path().join("www");
    std::fs::create_dir(&www)?;
    std::fs::write(www.join("file"), random_bytes(FILE_MIB << 20))?;
    testbed.start_http_server(&www, &dir.path().join("http.log"))?;

    let best = best_uplink(&uplinks);
    println!(
        "\n1. Without the gateway: curl over the best uplink alone ({})",
        UPLINKS[best].0
    );
    testbed.route_lan_via(best + 1)?;
    let (single, _) = curl(&testbed, None)?;
    testbed.route_lan_via(1)?;

    println!("\n2. Through the gateway: MPTCP over both uplinks to the converter");
    testbed.start_gateway_and_converter(dir.path(), &[], &[])?;
    let before = testbed.uplink_rx_bytes()?;
    let flows = || {
        testbed
            .gateway_cli(&["flows"])
            .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
            .unwrap_or_default()
    };
    let (aggregated, listing) = curl(&testbed, Some(&flows))?;
    let after = testbed.uplink_rx_bytes()?;
    testbed.check_running()?;

    println!();
    print_table(&uplinks, &single, &aggregated, &before, &after);
    if let Some(listing) = listing {
        println!(
            "\n`mptcp-user flows` {FLOWS_AFTER:?} into the download through the gateway:\n{listing}"
        );
    }
    Ok(())
}

/// Index of the uplink with the highest rate.
fn best_uplink(uplinks: &[Uplink]) -> usize {
    (0..uplinks.len())
        .max_by_key(|&i| uplinks[i].rate_mbit)
        .unwrap_or(0)
}

/// Downloads the served file from the LAN host with curl, showing curl's progress bar.
/// If given, `snapshot` runs once, [`FLOWS_AFTER`] into the download; its output comes
/// back with the transfer.
fn curl(
    testbed: &Testbed,
    snapshot: Option<&dyn Fn() -> String>,
) -> anyhow::Result<(Transfer, Option<String>)> {
    let started = std::time::Instant::now();
    let mut snapshot_taken = None;
    let mut child = testbed
        .client
        .command("curl")
        .args([
            "--fail",
            "--progress-bar",
            "--max-time",
            "60",
            "--output",
            "/dev/null",
            "--write-out",
            "%{size_download} %{time_total}",
            &format!("http://{SERVER}/file"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting curl")?;
    while child.try_wait()?.is_none() {
        if let Some(take) = snapshot
            && snapshot_taken.is_none()
            && started.elapsed() >= FLOWS_AFTER
        {
            snapshot_taken = Some(take());
        }
        if interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("curl failed: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(bytes)), Some(Ok(seconds))) if seconds > 0.0 => {
            Ok((Transfer { bytes, seconds }, snapshot_taken))
        }
        _ => bail!("unexpected output from curl: {text}"),
    }
}

fn print_table(
    uplinks: &[Uplink],
    single: &Transfer,
    aggregated: &Transfer,
    before: &[u64],
    after: &[u64],
) {
    let line_sum: f64 = uplinks.iter().map(|u| f64::from(u.rate_mbit)).sum();
    let carried_total: u64 = after.iter().zip(before).map(|(a, b)| a - b).sum();
    println!("| uplink | line | share of the gateway's download |");
    println!("|---|---|---|");
    for (i, ((name, uplink), (a, b))) in UPLINKS.iter().zip(after.iter().zip(before)).enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let share = (a - b) as f64 / carried_total.max(1) as f64;
        println!("| {} {name} | {uplink} | {:.0}% |", i + 1, 100.0 * share);
    }
    println!();
    println!("| download of {FILE_MIB} MiB with curl | time | rate |");
    println!("|---|---|---|");
    println!(
        "| best single uplink, no gateway | {:.1} s | {:.1} Mbit/s |",
        single.seconds,
        single.mbit_per_s()
    );
    println!(
        "| through the gateway, both uplinks | {:.1} s | {:.1} Mbit/s |",
        aggregated.seconds,
        aggregated.mbit_per_s()
    );
    println!();
    println!(
        "speed-up: {:.2}x; share of the sum of the uplinks ({line_sum} Mbit/s, at most {:.1} \
         Mbit/s of TCP payload): {:.0}%",
        aggregated.mbit_per_s() / single.mbit_per_s(),
        line_sum * TCP_PAYLOAD_SHARE,
        100.0 * aggregated.mbit_per_s() / (line_sum * TCP_PAYLOAD_SHARE)
    );
}
