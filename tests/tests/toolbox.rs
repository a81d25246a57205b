//! The operator's tools on a running gateway and converter: `mptcp-user speedtest`
//! and the Prometheus metrics.

use std::time::Duration;

use mptcp_tests::{
    TempDir, require_root,
    testbed::{CONVERTER, CONVERTER_PORT, Testbed, Uplink},
    wait_until,
};

/// Waits until `mptcp-user uplinks` says every uplink is up.
fn wait_uplinks_up(testbed: &Testbed) {
    let states = || {
        let output = testbed.gateway_cli(&["uplinks", "--json"]).unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).unwrap_or_default();
        rows.iter()
            .map(|row| row["health"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    wait_until(
        Duration::from_secs(15),
        || {
            let states = states();
            !states.is_empty() && states.iter().all(|state| state == "up")
        },
        || format!("uplinks never all up: {:?}", states()),
    );
}

#[test]
fn speedtest_measures_each_uplink_and_their_sum() {
    require_root();
    let dir = TempDir::new("toolbox-speed").unwrap();
    let lines = [Uplink::line(20, 15), Uplink::line(10, 25)];
    let mut testbed = Testbed::new("speed", &lines).unwrap();
    testbed
        .start_gateway_and_converter(dir.path(), &[], &[])
        .unwrap();
    wait_uplinks_up(&testbed);
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
            "4",
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
    let sum: f64 = lines.iter().map(|line| f64::from(line.rate_mbit)).sum();
    let all = &rows[2];
    assert_eq!(all["path"], "all");
    for direction in ["down_mbit", "up_mbit"] {
        let measured = all[direction].as_f64().unwrap();
        assert!(
            within(measured, sum),
            "all {direction}: {measured:.1} Mbit/s over lines summing to {sum} Mbit/s"
        );
    }

    // A request with another key is refused: the test is for the converter's gateways.
    let other_key = dir.path().join("other-key");
    mptcp_user::convert::cookie::Key::generate(&other_key).unwrap();
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
