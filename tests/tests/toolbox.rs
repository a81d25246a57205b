//! The operator's tools on a running gateway and converter: `mptcp-user speedtest`
//! and the Prometheus metrics.

use std::time::Duration;

use mptcp_tests::{
    TempDir,
    measure::{self, Transport},
    metrics::{self, CONVERTER_METRICS, GATEWAY_METRICS, sample},
    require_root,
    testbed::{CONVERTER, CONVERTER_PORT, GATEWAY_PORT, SERVER, Testbed, Uplink},
    wait_until,
};

#[test]
fn speedtest_measures_each_uplink_and_their_sum() {
    require_root();
    let dir = TempDir::new("toolbox-speed").unwrap();
    let lines = [Uplink::line(20, 15), Uplink::line(10, 25)];
    let mut testbed = Testbed::new("speed", &lines).unwrap();
    testbed
        .start_gateway_and_converter(dir.path(), &[], &[])
        .unwrap();
    testbed.wait_uplinks_up().unwrap();
    let converter = format!("{CONVERTER}:{CONVERTER_PORT}");
    let key = dir.path().join("key");
    let output = testbed
        .gateway_cli(&[
            "speedtest",
            "--converter",
            &converter,
            "--key-file",
            &key.to_string_lossy(),
            "--seconds",
            "8",
            "--json",
        ])
        .unwrap();
    assert!(
        output.status.success(),
        "speedtest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(rows.len(), 3, "a row per uplink and one for all: {rows:?}");
    let within = |measured: f64, expected: f64| (measured / expected - 1.0).abs() <= 0.10;
    for (row, line) in rows.iter().zip(&lines) {
        let rate = f64::from(line.rate_mbit);
        for direction in ["down_mbit", "up_mbit"] {
            let measured = row[direction].as_f64().unwrap();
            assert!(
                within(measured, rate),
                "{} {direction}: {measured:.1} Mbit/s on a {rate} Mbit/s line",
                row["path"]
            );
        }
    }
    // All together: the sum of the lines, less what MPTCP leaves of it over a few
    // seconds. Measured here with 6 s tests: 0.95 of the sum up, mostly 0.94 to 0.97
    // down, but 0.83 and once (in CI) 0.74: short downloads vary (the aggregate bench's
    // long ones get 0.97). So 8 s, and the best line plus a third of the other at
    // least (0.78 of the sum): a single path could not give that, and a second one
    // barely used would not either.
    let sum: f64 = lines.iter().map(|line| f64::from(line.rate_mbit)).sum();
    let best = f64::from(lines[0].rate_mbit);
    let other = f64::from(lines[1].rate_mbit);
    let all = &rows[2];
    assert_eq!(all["path"], "all");
    for direction in ["down_mbit", "up_mbit"] {
        let measured = all[direction].as_f64().unwrap();
        assert!(
            measured >= best + other / 3.0,
            "all {direction}: {measured:.1} Mbit/s over lines summing to {sum} Mbit/s"
        );
    }

    // A request with another key is refused: the test is for the converter's gateways.
    let other_key = dir.path().join("other-key");
    mptcp_user::protocol::cookie::Key::generate(&other_key).unwrap();
    let stranger = testbed
        .gateway_cli(&[
            "speedtest",
            "--converter",
            &converter,
            "--key-file",
            &other_key.to_string_lossy(),
        ])
        .unwrap();
    let stderr = String::from_utf8_lossy(&stranger.stderr);
    assert!(
        !stranger.status.success() && stderr.contains("refused the test"),
        "{stderr}"
    );
}

/// A TCP download from the server to the LAN host, `seconds` long.
fn download(testbed: &Testbed, seconds: Duration) -> anyhow::Result<measure::Download> {
    measure::download(
        &testbed.client,
        &testbed.server,
        format!("{SERVER}:5001").parse().unwrap(),
        Transport::Tcp,
        None,
        seconds,
    )
}

/// `GET /metrics` from inside `netns`.
fn scrape(netns: &mptcp_tests::netns::Netns, address: &'static str) -> String {
    metrics::scrape(netns, address).unwrap()
}

#[test]
fn metrics_count_flows_bytes_and_uplinks_during_a_download() {
    require_root();
    let dir = TempDir::new("toolbox-metrics").unwrap();
    let mut testbed = Testbed::new("metrics", &[Uplink::htb(50), Uplink::htb(50)]).unwrap();
    testbed
        .start_gateway_and_converter(
            dir.path(),
            &["--metrics", GATEWAY_METRICS],
            &["--metrics", CONVERTER_METRICS],
        )
        .unwrap();
    testbed.wait_uplinks_up().unwrap();
    let before = (
        scrape(&testbed.gateway, GATEWAY_METRICS),
        scrape(&testbed.converter, CONVERTER_METRICS),
    );
    let download = std::thread::scope(|scope| {
        let running = scope.spawn(|| download(&testbed, Duration::from_secs(4)));
        // Scraped once the flow is live and has moved a few megabytes, not after a
        // fixed time the machine may not keep.
        let splice_down = r#"mptcp_gateway_relayed_bytes_total{path="splice",direction="down"}"#;
        let mut during = None;
        wait_until(
            Duration::from_secs(4),
            || {
                let now = (
                    scrape(&testbed.gateway, GATEWAY_METRICS),
                    scrape(&testbed.converter, CONVERTER_METRICS),
                );
                let moved =
                    sample(&now.0, splice_down).saturating_sub(sample(&before.0, splice_down));
                let ready = moved > 2_000_000;
                during = Some(now);
                ready
            },
            || "the download never moved 2 MB".to_owned(),
        );
        (running.join().unwrap().unwrap(), during.unwrap())
    });
    let (received, during) = download;
    println!("gateway during the download:\n{}", during.0);
    let lan_flow = r#"{taken="lan",carried="converter"}"#;
    assert_eq!(
        sample(&during.0, &format!("mptcp_gateway_live_flows{lan_flow}")),
        1
    );
    assert!(sample(&during.0, &format!("mptcp_gateway_flows_total{lan_flow}")) >= 1);
    assert_eq!(sample(&during.1, "mptcp_converter_live_relays"), 1);
    let gateway_counters = [
        r#"mptcp_gateway_relayed_bytes_total{path="splice",direction="down"}"#,
        r#"mptcp_gateway_uplink_bytes_total{uplink="up1",direction="down"}"#,
        r#"mptcp_gateway_uplink_bytes_total{uplink="up2",direction="down"}"#,
    ];
    let converter_counters =
        [r#"mptcp_converter_relayed_bytes_total{path="splice",direction="down"}"#];
    let moved = gateway_counters
        .iter()
        .map(|metric| (metric, &before.0, &during.0))
        .chain(
            converter_counters
                .iter()
                .map(|metric| (metric, &before.1, &during.1)),
        );
    for (metric, before, during) in moved {
        let moved = sample(during, metric).saturating_sub(sample(before, metric));
        assert!(
            moved > 1_000_000,
            "{metric} moved {moved} bytes by mid-download"
        );
    }
    for uplink in ["up1", "up2"] {
        let state = format!(r#"mptcp_gateway_uplink_state{{uplink="{uplink}",state="up"}}"#);
        assert_eq!(sample(&during.0, &state), 1, "{uplink} not up");
        let subflows = format!(r#"mptcp_gateway_uplink_subflows{{uplink="{uplink}"}}"#);
        assert!(
            sample(&during.0, &subflows) >= 1,
            "no subflow over {uplink}"
        );
    }
    // After the download the relayed bytes cover it, and the flow is no longer live.
    let total = received.samples.iter().sum::<u64>();
    wait_until(
        Duration::from_secs(5),
        || {
            let after = scrape(&testbed.gateway, GATEWAY_METRICS);
            sample(&after, &format!("mptcp_gateway_live_flows{lan_flow}")) == 0
        },
        || "the flow stayed live in the metrics".to_owned(),
    );
    // The bytes that came with the converter's answer were copied, the rest spliced.
    let after = scrape(&testbed.gateway, GATEWAY_METRICS);
    let relayed = metrics::relayed_bytes(&after, "mptcp_gateway", "down");
    assert!(
        relayed >= total,
        "relayed {relayed} bytes, the client got {total}"
    );
}

#[test]
fn flows_of_direct_mode_are_counted_as_direct_not_as_the_converters() {
    require_root();
    let dir = TempDir::new("toolbox-direct").unwrap();
    let mut testbed = Testbed::new("direct", &[Uplink::htb(50), Uplink::htb(50)]).unwrap();
    let pin_path = testbed.pin_path();
    let listen = format!("[::]:{GATEWAY_PORT}");
    testbed
        .start_gateway(
            dir.path(),
            &[
                "--direct",
                "--lan",
                "lan0",
                "--listen",
                &listen,
                "--pin-path",
                &pin_path,
                "--metrics",
                GATEWAY_METRICS,
            ],
        )
        .unwrap();
    let during = std::thread::scope(|scope| {
        let running = scope.spawn(|| download(&testbed, Duration::from_secs(3)));
        let live = r#"mptcp_gateway_live_flows{taken="lan",carried="direct"}"#;
        let during = std::cell::RefCell::new(String::new());
        wait_until(
            Duration::from_secs(3),
            || {
                let text = scrape(&testbed.gateway, GATEWAY_METRICS);
                let counted = sample(&text, live) == 1;
                *during.borrow_mut() = text;
                counted
            },
            || {
                format!(
                    "the direct flow is not counted as direct:\n{}",
                    during.borrow()
                )
            },
        );
        running.join().unwrap().unwrap();
        during.into_inner()
    });
    assert!(
        !during.contains(r#"carried="converter""#) && !during.contains(r#"carried="fallback""#),
        "a direct-mode flow counted as another kind:\n{during}"
    );
}
