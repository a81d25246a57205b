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
    testbed::{CONVERTER, CONVERTER_PORT, SERVER, Testbed, daemon_log},
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

/// Answers each connection with the peer's address and keeps it open until the peer
/// closes it.
const HOLDING_SERVER: &str = r"
import asyncio, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def hold(reader, writer):
    writer.write(writer.get_extra_info('peername')[0].encode() + b'\n')
    try:
        await writer.drain()
        await reader.read()
    except OSError:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(hold, '0.0.0.0', int(sys.argv[1]), backlog=1024)
    await server.serve_forever()
asyncio.run(main())
";

/// Opens `argv[3]` connections, `argv[4]` at a time, and keeps them all open; prints
/// how many the server saw from each address and how many failed, then `held`, and
/// holds them until its input closes.
const HOLDING_CLIENT: &str = r"
import asyncio, collections, resource, sys
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
seen = collections.Counter()
held = []
async def one(at_once):
    async with at_once:
        try:
            opened = asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
            reader, writer = await asyncio.wait_for(opened, 10)
            line = await asyncio.wait_for(reader.readline(), 10)
            seen[line.decode().strip() or 'closed'] += 1
            held.append(writer)
        except (OSError, asyncio.TimeoutError):
            seen['failed'] += 1
async def main():
    at_once = asyncio.Semaphore(int(sys.argv[4]))
    await asyncio.gather(*(one(at_once) for _ in range(int(sys.argv[3]))))
asyncio.run(main())
for address, count in sorted(seen.items()):
    print(address, count)
print('held', flush=True)
sys.stdin.read()
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
    // Both daemons under a hard limit of 1024 open files (a small router's unit):
    // room for about 149 flows each.
    testbed.limit_daemon_files(1024);
    testbed
        .start_gateway_and_converter(dir.path(), &[], &[])
        .unwrap();
    let port = 9400;
    testbed
        .start_python_server(dir.path(), HOLDING_SERVER, &[&port.to_string()], port)
        .unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("file"), mptcp_tests::random_bytes(4 << 20)).unwrap();
    testbed
        .start_http_server(&www, &dir.path().join("http.log"))
        .unwrap();
    whoami::start_server(&mut testbed, dir.path(), WHOAMI_PORT);

    for count in [1500, 5000] {
        // Opened 500 at a time: the listen queue fills while the gateway fills up.
        let mut client = testbed
            .client
            .command("python3")
            .args(["-c", HOLDING_CLIENT, SERVER, &port.to_string()])
            .args([count.to_string(), "500".to_owned()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut counts = std::collections::BTreeMap::<String, u32>::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(client.stdout.take().unwrap()))
        {
            let line = line.unwrap();
            if line == "held" {
                break;
            }
            if let Some((address, held)) = line.split_once(' ') {
                counts.insert(address.to_owned(), held.parse().unwrap());
            }
        }
        // A download while they are all held: converted or let through, it works.
        let downloaded = testbed
            .client
            .command("curl")
            .args([
                "--silent",
                "--fail",
                "--max-time",
                "30",
                "--output",
                "/dev/null",
            ])
            .args(["--write-out", "%{size_download}"])
            .arg(format!("http://{SERVER}/file"))
            .output()
            .unwrap();
        drop(client.stdin.take());
        let _ = client.wait();
        let log_text = daemon_log(dir.path(), "gateway");
        println!("{count} flows held through a gateway with room for about 149: {counts:?}");
        assert_eq!(
            counts.values().sum::<u32>(),
            count,
            "{counts:?}; {log_text}"
        );
        // Converted; let through by the programs (forwarded); or carried by the
        // gateway straight to the server when the converter could not take it (full,
        // or its budget of connections not yet authenticated spent by the burst).
        // Nothing else: no failure, no connection closed unanswered.
        let carried = |by: &str| counts.get(by).copied().unwrap_or(0);
        let by_gateway = carried(VIA_CONVERTER) + carried(GATEWAY_HOST_DIRECT);
        assert_eq!(
            by_gateway + carried(LAN_CLIENT_DIRECT),
            count,
            "{counts:?}; {log_text}"
        );
        // The gateway took what its files leave room for (149, less the listen
        // queue's 37), no fewer.
        assert!(by_gateway >= 100, "{counts:?}");
        assert_eq!(
            String::from_utf8_lossy(&downloaded.stdout),
            (4 << 20).to_string(),
            "the download during {count} held flows: {downloaded:?}"
        );
        assert!(
            log_text.contains("new flows go direct until some end"),
            "{log_text}"
        );
        for daemon in ["gateway", "converter"] {
            let log = daemon_log(dir.path(), daemon);
            assert!(!log.contains("Too many open files"), "{daemon}: {log}");
        }
        // All closed: the gateway takes new flows again.
        wait_until(
            Duration::from_secs(20),
            || seen_from_lan(&testbed, SERVER) == VIA_CONVERTER,
            || {
                format!(
                    "the gateway does not convert new flows again: {}; {}",
                    seen_from_lan(&testbed, SERVER),
                    daemon_log(dir.path(), "gateway")
                )
            },
        );
    }
}

#[test]
fn a_standby_converter_takes_the_flows_when_the_first_is_away() {
    require_root();
    let dir = TempDir::new("standby").unwrap();
    let standby = format!("{CONVERTER}:{}", CONVERTER_PORT + 1);
    let first = format!("{CONVERTER}:{CONVERTER_PORT}");
    let converters = ["--converter", &first, "--converter", &standby];
    let mut testbed = deploy(dir.path(), "standby", &converters);
    let mut command = testbed.converter.daemon_command(&mptcp_user_bin(), None);
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
        || log().contains(&format!("new flows go through the converter {first}")),
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
