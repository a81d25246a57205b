//! Failover and the pool: when the converter is away (killed, filtered, or a standby
//! takes over), when the gateway is full, new LAN flows still go somewhere, directly if
//! need be, and come back to the converter; warm connections wait for flows and none
//! is used once stale. Who carried a connection is read off the server
//! ([`mptcp_tests::whoami`]).

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    TempDir, mptcp_user_bin, require_root,
    testbed::{CONVERTER_PORT, SERVER, Testbed, daemon_log},
    wait_until,
    whoami::{
        self, GATEWAY_HOST_DIRECT, LAN_CLIENT_DIRECT, UPLINKS, VIA_CONVERTER, WHOAMI_PORT, deploy,
        seen_from_lan,
    },
};

/// Waits (10 s at most) until the gateway's probes reach the converter over no uplink:
/// each is `no-converter` (the converter refused) or `down` (nothing answered).
fn wait_until_probes_miss_the_converter(testbed: &Testbed) {
    wait_until(
        Duration::from_secs(10),
        || {
            let states = testbed.uplink_states();
            !states.is_empty()
                && states
                    .iter()
                    .all(|(_, state)| matches!(state.as_str(), "no-converter" | "down"))
        },
        || {
            format!(
                "the probes still reach the converter: {:?}",
                testbed.uplink_states()
            )
        },
    );
}

/// Answers each connection with the peer's address and keeps it open.
const HOLDING_SERVER: &str = r"
import socket, sys
server = socket.create_server(('0.0.0.0', int(sys.argv[1])), backlog=1024)
held = []
while True:
    connection, peer = server.accept()
    connection.sendall(peer[0].encode() + b'\n')
    held.append(connection)
";

/// Opens `count` connections one after the other and keeps them all open; prints how
/// many the server saw from each address, and how many failed.
const HOLDING_CLIENT: &str = r"
import collections, socket, sys
seen = collections.Counter()
held = []
for _ in range(int(sys.argv[3])):
    try:
        connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
        seen[connection.makefile().readline().strip()] += 1
        held.append(connection)
    except OSError:
        seen['failed'] += 1
for address, count in sorted(seen.items()):
    print(address, count)
";

/// Connects, prints the server's greeting and keeps the connection open.
const HOLD_ONE: &str = r"
import socket, sys, time
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(connection.makefile().readline().strip(), flush=True)
time.sleep(60)
";

/// The MPTCP connections established on the converter's port (warm ones and flows').
fn converter_connections(testbed: &Testbed) -> usize {
    testbed
        .converter
        .exec(
            "ss",
            &[
                "-HMn",
                "state",
                "established",
                &format!("( sport = :{CONVERTER_PORT} )"),
            ],
        )
        .unwrap()
        .lines()
        .count()
}

#[test]
fn a_converter_outage_sends_new_flows_direct_and_back() {
    require_root();
    let dir = TempDir::new("outage").unwrap();
    let mut testbed = deploy(dir.path(), "outage", &[]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    // The converter dies: new LAN flows are carried directly, from the first one on.
    testbed.forget("converter");
    let killed = Instant::now();
    assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    let first = killed.elapsed();
    println!("converter killed: the first new flow answered after {first:?}");
    assert!(first < Duration::from_secs(5), "{first:?}");
    for _ in 0..4 {
        assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    }
    // Once the probes have seen it too, one line in the log said so, not one per flow.
    wait_until_probes_miss_the_converter(&testbed);
    assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    let log = daemon_log(dir.path(), "gateway");
    let outage_lines = log.matches("the converter is unavailable").count()
        + log.matches("no uplink reaches the converter").count();
    assert_eq!(outage_lines, 1, "gateway log: {log}");

    // The CLI says why: the lines work, the converter does not; a live flow is direct.
    testbed
        .start_python_server(dir.path(), HOLDING_SERVER, &["9402"], 9402)
        .unwrap();
    let mut held = testbed
        .client
        .command("python3")
        .args(["-c", HOLD_ONE, SERVER, "9402"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut greeting = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(held.stdout.as_mut().unwrap()),
        &mut greeting,
    )
    .unwrap();
    assert_eq!(greeting.trim(), GATEWAY_HOST_DIRECT);
    let flows = testbed.flows();
    let uplinks: Vec<serde_json::Value> =
        serde_json::from_str(&testbed.gateway_cli_ok(&["uplinks", "--json"])).unwrap();
    let _ = held.kill();
    let _ = held.wait();
    assert!(
        flows
            .iter()
            .any(|flow| flow["direct"] == true && flow["destination"] == format!("{SERVER}:9402")),
        "{flows:?}"
    );
    assert!(
        uplinks
            .iter()
            .all(|uplink| uplink["health"] == "no-converter"),
        "{uplinks:?}"
    );
    let direct: u64 = uplinks
        .iter()
        .map(|uplink| uplink["direct_flows"].as_u64().unwrap())
        .sum();
    assert_eq!(direct, 1, "{uplinks:?}");

    // It comes back: new flows go through it again within seconds.
    testbed.start_converter(dir.path(), &[]).unwrap();
    let restarted = Instant::now();
    wait_until(
        Duration::from_secs(10),
        || seen_from_lan(&testbed, SERVER) == VIA_CONVERTER,
        || "new flows do not return to the converter".to_owned(),
    );
    println!(
        "converter back: flows through it again after {:?}",
        restarted.elapsed()
    );
}

#[test]
fn a_filtered_converter_port_sends_new_flows_direct_within_seconds() {
    require_root();
    let dir = TempDir::new("filtered").unwrap();
    let testbed = deploy(dir.path(), "filtered", &[]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    // The converter's port answers nothing any more, as behind a firewall.
    let nft = |args: &[&str]| testbed.converter.exec("nft", args).unwrap();
    nft(&["add", "table", "inet", "filtered"]);
    nft(&[
        "add",
        "chain",
        "inet",
        "filtered",
        "input",
        "{ type filter hook input priority 0; }",
    ]);
    let port = CONVERTER_PORT.to_string();
    nft(&[
        "add", "rule", "inet", "filtered", "input", "tcp", "dport", &port, "drop",
    ]);
    let filtered = Instant::now();
    assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    println!(
        "converter filtered: the first new flow answered after {:?}",
        filtered.elapsed()
    );
    assert!(filtered.elapsed() < Duration::from_secs(5));
    // Once the probes know, new flows skip the converter at once.
    wait_until_probes_miss_the_converter(&testbed);
    let skipped = Instant::now();
    assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    println!("then after {:?}", skipped.elapsed());
    assert!(skipped.elapsed() < Duration::from_secs(1));
    nft(&["delete", "table", "inet", "filtered"]);
    wait_until(
        Duration::from_secs(10),
        || seen_from_lan(&testbed, SERVER) == VIA_CONVERTER,
        || "new flows do not return to the converter".to_owned(),
    );
}

#[test]
fn a_full_gateway_sends_new_flows_direct_instead_of_stalling_them() {
    require_root();
    let dir = TempDir::new("full").unwrap();
    let mut testbed = Testbed::new("full", &UPLINKS).unwrap();
    testbed.start_converter(dir.path(), &[]).unwrap();
    // A hard limit of 1024 open files: room for about 149 flows.
    let mut launcher = testbed.gateway.host_mounts_command("prlimit");
    launcher.arg("--nofile=1024:1024");
    testbed.start_gateway_through(dir.path(), launcher).unwrap();
    let port = 9400;
    testbed
        .start_python_server(dir.path(), HOLDING_SERVER, &[&port.to_string()], port)
        .unwrap();

    let output = testbed
        .client
        .command("python3")
        .args(["-c", HOLDING_CLIENT, SERVER, &port.to_string(), "250"])
        .output()
        .unwrap();
    let counts: std::collections::BTreeMap<String, u32> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (address, count) = line.split_once(' ')?;
            Some((address.to_owned(), count.parse().ok()?))
        })
        .collect();
    println!("250 held flows through a gateway with room for about 149: {counts:?}");
    let log_text = daemon_log(dir.path(), "gateway");
    assert_eq!(counts.get("failed"), None, "{counts:?}; {log_text}");
    assert!(
        counts.get(VIA_CONVERTER).is_some_and(|&n| n >= 100),
        "{counts:?}"
    );
    assert!(
        counts.get(LAN_CLIENT_DIRECT).is_some_and(|&n| n >= 50),
        "{counts:?}"
    );
    assert!(
        log_text.contains("new flows go direct until some end"),
        "{log_text}"
    );
    assert!(!log_text.contains("Too many open files"), "{log_text}");
}

#[test]
fn a_standby_converter_takes_the_flows_when_the_first_is_away() {
    require_root();
    let dir = TempDir::new("standby").unwrap();
    let standby = format!("10.0.1.2:{}", CONVERTER_PORT + 1);
    let mut testbed = deploy(dir.path(), "standby", &["--converter", &standby]);
    let mut command = testbed.converter.daemon_command(&mptcp_user_bin());
    command
        .args([
            "converter",
            "--listen",
            &format!("0.0.0.0:{}", CONVERTER_PORT + 1),
        ])
        .arg("--key-file")
        .arg(dir.path().join("key"));
    testbed
        .start("standby", &mut command, &dir.path().join("standby.log"))
        .unwrap();
    testbed
        .converter
        .wait_listening(CONVERTER_PORT + 1, Duration::from_secs(10))
        .unwrap();
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    // The first converter dies: every new flow is still converted, by the standby.
    testbed.forget("converter");
    for _ in 0..5 {
        assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    }
    let log = || daemon_log(dir.path(), "gateway");
    wait_until(
        Duration::from_secs(10),
        || log().contains(&format!("new flows go through the converter {standby}")),
        || format!("the probes never chose the standby: {}", log()),
    );
    assert!(!log().contains("go direct"), "{}", log());

    // It comes back: the probes prefer it again.
    testbed.start_converter(dir.path(), &[]).unwrap();
    wait_until(
        Duration::from_secs(10),
        || {
            log().contains(&format!(
                "new flows go through the converter 10.0.1.2:{CONVERTER_PORT}"
            ))
        },
        || format!("the first converter never taken back: {}", log()),
    );
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
}

#[test]
fn warm_connections_wait_for_flows_and_none_goes_stale() {
    require_root();
    let dir = TempDir::new("warm").unwrap();
    let mut testbed = Testbed::new("warm", &UPLINKS).unwrap();
    // The converter drops connections that send nothing within a second: the gateway's
    // warm ones go stale between 1 s and their retirement at 3 s.
    testbed
        .start_gateway_and_converter(
            dir.path(),
            &["--pool-size", "3"],
            &["--request-timeout", "1"],
        )
        .unwrap();
    whoami::start_server(&mut testbed, dir.path(), WHOAMI_PORT);
    // No flow yet: no warm connection either.
    thread::sleep(Duration::from_millis(600));
    assert_eq!(converter_connections(&testbed), 0);
    for _ in 0..4 {
        assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    }
    // The flows ended; warm connections wait for the next ones (stale after 1 s).
    wait_until(
        Duration::from_secs(1),
        || (1..=3).contains(&converter_connections(&testbed)),
        || format!("{} warm connections", converter_connections(&testbed)),
    );

    // Each flow now comes when the warm connections have gone stale: none is used.
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    }
    let log = daemon_log(dir.path(), "gateway");
    assert!(!log.contains("refused"), "{log}");
    assert!(!log.contains("go direct"), "{log}");
}
