//! Interception end to end: LAN flows taken by the gateway's eBPF programs with no
//! nftables rule, the live selection, per-cgroup opt-in, the flow listing with its
//! subflows, and fail-open.
//!
//! Who carried a connection is read off the server: a small server on port 8080 answers
//! each connection with the address it came from. Through the converter that is the
//! converter's server-side address; directly, it is the LAN client's (forwarded) or the
//! gateway's uplink address (local process).

use std::{
    fs,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use mptcp_ebpf_common::flows::FLOWS_MAP_NAME;
use mptcp_tests::{
    TempDir,
    cgroup::Cgroup,
    mptcp_user_bin,
    netns::Netns,
    require_root,
    testbed::{
        CONVERTER_PORT, GATEWAY_PORT, SERVER, SERVER_V6, Testbed, Uplink, daemon_log, log_path,
    },
    wait_until,
};
use mptcp_user::gateway::routes::DEFAULT_MARK;

const UPLINKS: [Uplink; 2] = [Uplink::htb(50), Uplink::htb(50)];
/// The port of the who-am-I server.
const WHOAMI_PORT: u16 = 8080;
/// What the server sees when the converter carried the connection.
const VIA_CONVERTER: &str = "203.0.113.1";
/// The same over IPv6.
const VIA_CONVERTER_V6: &str = "2001:db8:113::1";
/// What the server sees for a LAN client forwarded directly.
const LAN_CLIENT_DIRECT: &str = "192.168.50.2";
/// What the server sees for a gateway-host process connecting directly (uplink 1).
const GATEWAY_HOST_DIRECT: &str = "10.0.1.1";

/// Answers every connection with the peer's address, then closes.
const WHOAMI_SERVER: &str = r"
import socket, sys
server = socket.create_server(('::', int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
while True:
    connection, peer = server.accept()
    address = peer[0].removeprefix('::ffff:')
    connection.sendall(address.encode() + b'\n')
    connection.close()
";

/// Connects, prints the peer address the socket reports, then what the server said.
const WHOAMI_CLIENT: &str = r"
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
peer = connection.getpeername()
print(peer[0].removeprefix('::ffff:'), peer[1])
print(connection.makefile().readline().strip())
";

/// A testbed with the gateway and converter running and the who-am-I server started.
fn deploy(dir: &TempDir, label: &str, gateway_args: &[&str]) -> Testbed {
    let mut testbed = Testbed::new(label, &UPLINKS).unwrap();
    testbed
        .start_gateway_and_converter(dir.path(), gateway_args, &[])
        .unwrap();
    start_whoami_server(&mut testbed, dir, WHOAMI_PORT);
    testbed
}

/// Starts a who-am-I server on `port` of the server host.
fn start_whoami_server(testbed: &mut Testbed, dir: &TempDir, port: u16) {
    start_server(testbed, dir, WHOAMI_SERVER, port);
}

/// Starts the python3 `script` on the server host with `port` as its argument, and
/// waits until it listens there.
fn start_server(testbed: &mut Testbed, dir: &TempDir, script: &str, port: u16) {
    let mut server = testbed.server.command("python3");
    server.args(["-c", script, &port.to_string()]);
    let log = dir.path().join(format!("server-{port}.log"));
    testbed.start("server", &mut server, &log).unwrap();
    testbed
        .server
        .wait_listening(port, Duration::from_secs(10))
        .unwrap();
}

/// Starts the gateway (LAN lan0, the testbed's converter) through `launcher` (`ip netns
/// exec prlimit ...`, say) and waits until it is ready.
fn start_gateway_through(testbed: &mut Testbed, dir: &TempDir, mut launcher: Command) {
    launcher
        .arg(mptcp_user_bin())
        .args(["gateway", "--lan", "lan0", "--converter"])
        .arg(format!("10.0.1.2:{CONVERTER_PORT}"))
        .arg("--key-file")
        .arg(dir.path().join("key"))
        .args(["--pin-path", &testbed.pin_path()])
        .env("RUST_LOG", "info");
    let log = log_path(dir.path(), "gateway");
    testbed.start("gateway", &mut launcher, &log).unwrap();
    mptcp_tests::testbed::wait_for_line(&log, mptcp_user::gateway::READY, Duration::from_secs(10))
        .unwrap();
}

/// Runs the who-am-I client from `netns` (in `cgroup` if given): (the peer address the
/// socket reports, the address the server saw), or `None` if it failed.
fn whoami(netns: &Netns, cgroup: Option<&Cgroup>, server: &str) -> Option<(String, String)> {
    whoami_at(netns, cgroup, server, WHOAMI_PORT)
}

/// [`whoami`] with a server on `port`.
fn whoami_at(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    server: &str,
    port: u16,
) -> Option<(String, String)> {
    let mut command = netns.host_mounts_command("python3");
    command.args(["-c", WHOAMI_CLIENT, server, &port.to_string()]);
    if let Some(cgroup) = cgroup {
        cgroup.put(&mut command);
    }
    let output = command.stderr(Stdio::null()).output().unwrap();
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

/// The address the server saw for a connection from the LAN host.
fn seen_from_lan(testbed: &Testbed, server: &str) -> String {
    whoami(&testbed.client, None, server)
        .unwrap_or_else(|| panic!("LAN connection to {server} failed"))
        .1
}

fn cli(testbed: &Testbed, args: &[&str]) -> Output {
    testbed.gateway_cli(args).unwrap()
}

fn cli_ok(testbed: &Testbed, args: &[&str]) -> String {
    let output = cli(testbed, args);
    assert!(
        output.status.success(),
        "mptcp-user {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends the gateway daemon `signal` (`-9`, `-TERM`).
fn signal_gateway(testbed: &Testbed, signal: &str) {
    let pid = testbed.pid("gateway").unwrap().to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// Asserts that a command failed and said `text` on stderr.
fn assert_fails_with(output: &Output, text: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded; stderr: {stderr}");
    assert!(stderr.contains(text), "stderr: {stderr}");
}

fn flows_json(testbed: &Testbed) -> Vec<serde_json::Value> {
    serde_json::from_str(&cli_ok(testbed, &["flows", "--json"])).expect("flows --json is JSON")
}

#[test]
fn lan_flows_are_intercepted_by_ebpf_and_listed_with_their_subflows() {
    require_root();
    let dir = TempDir::new("intercept").unwrap();
    let mut testbed = deploy(&dir, "intercept", &[]);
    let ruleset = testbed.gateway.exec("nft", &["list", "ruleset"]).unwrap();
    assert!(ruleset.trim().is_empty(), "nftables rules: {ruleset}");
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    // The gateway has no IPv6 route to the server: only the converter can reach it.
    assert_eq!(seen_from_lan(&testbed, SERVER_V6), VIA_CONVERTER_V6);

    // A slow download stays live long enough to be listed.
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("big"), mptcp_tests::random_bytes(16 << 20)).unwrap();
    testbed
        .start_http_server(&www, &dir.path().join("http.log"))
        .unwrap();
    let mut curl = testbed
        .client
        .command("curl")
        .args([
            "--silent",
            "--fail",
            "--limit-rate",
            "2M",
            "--output",
            "/dev/null",
        ])
        .arg(format!("http://{SERVER}/big"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(6);
    let listed = loop {
        let flows = flows_json(&testbed);
        let live = flows.into_iter().find(|flow| {
            flow["destination"] == format!("{SERVER}:80")
                && flow["subflows"].as_array().is_some_and(|subflows| {
                    subflows.len() >= 2
                        && subflows
                            .iter()
                            .all(|subflow| subflow["bytes_down"].as_u64() > Some(0))
                })
        });
        if let Some(flow) = live {
            break flow;
        }
        assert!(
            Instant::now() < deadline,
            "no live flow with two busy subflows listed; gateway log: {}",
            daemon_log(dir.path(), "gateway")
        );
        thread::sleep(Duration::from_millis(200));
    };
    let _ = curl.kill();
    let _ = curl.wait();
    assert_eq!(listed["intercepted"], "lan");
    assert!(
        listed["client"]
            .as_str()
            .unwrap()
            .starts_with("192.168.50.2:")
    );
    let mut uplinks: Vec<&str> = listed["subflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|subflow| {
            subflow["local"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
        })
        .collect();
    uplinks.sort_unstable();
    assert_eq!(uplinks, ["10.0.1.1", "10.0.2.1"], "flow: {listed}");
    assert!(listed["bytes_down"].as_u64() > Some(0));

    // An ended flow leaves the listing.
    wait_until(
        Duration::from_secs(5),
        || flows_json(&testbed).is_empty(),
        || "ended flow still listed".to_owned(),
    );
}

#[test]
fn selection_edits_apply_to_new_flows() {
    require_root();
    let dir = TempDir::new("selection").unwrap();
    let testbed = deploy(&dir, "selection", &[]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    cli_ok(&testbed, &["selection", "add", "exclude", SERVER]);
    assert_eq!(seen_from_lan(&testbed, SERVER), LAN_CLIENT_DIRECT);
    let listing: serde_json::Value =
        serde_json::from_str(&cli_ok(&testbed, &["selection", "list", "--json"])).unwrap();
    let has_rule = |prefix: &str, action: &str| {
        listing["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["prefix"] == prefix && rule["action"] == action)
    };
    assert!(
        has_rule(&format!("{SERVER}/32"), "exclude"),
        "policy: {listing}"
    );
    // The gateway's own networks and addresses are excluded from the start.
    assert!(has_rule("fd00:50::/64", "exclude"), "policy: {listing}");
    assert!(has_rule("192.168.50.1/32", "fixed"), "policy: {listing}");

    // Only port 443 intercepted: our port 8080 goes direct even without the exclusion.
    cli_ok(&testbed, &["selection", "del", SERVER]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    cli_ok(&testbed, &["selection", "add-port", "443"]);
    assert_eq!(seen_from_lan(&testbed, SERVER), LAN_CLIENT_DIRECT);
    cli_ok(&testbed, &["selection", "del-port", "443"]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    // The converter's address can never be intercepted (that would loop).
    let refused = cli(&testbed, &["selection", "del", "10.0.1.2"]);
    assert_fails_with(&refused, "excluded by the gateway itself");
}

#[test]
fn opted_in_cgroups_are_intercepted_and_see_the_original_peer() {
    require_root();
    let dir = TempDir::new("optin").unwrap();
    let opted = Cgroup::new("opted").unwrap();
    let other = Cgroup::new("other").unwrap();
    let opted_path = opted.path().to_str().unwrap().to_owned();
    let testbed = deploy(&dir, "optin", &["--cgroup", &opted_path]);
    let original_peer = (SERVER.to_owned(), WHOAMI_PORT.to_string());

    let (peer, seen) = whoami(&testbed.gateway, Some(&opted), SERVER).expect("opted-in connect");
    assert_eq!(
        seen, VIA_CONVERTER,
        "the opted-in process was not intercepted"
    );
    assert_eq!(
        peer.split_once(' ')
            .map(|(ip, port)| (ip.to_owned(), port.to_owned())),
        Some(original_peer.clone()),
        "getpeername must show the original destination"
    );
    let (_, seen) = whoami(&testbed.gateway, Some(&other), SERVER).expect("direct connect");
    assert_eq!(
        seen, GATEWAY_HOST_DIRECT,
        "a process outside was intercepted"
    );

    // IPv6: the gateway has no route to the server, so only interception can succeed.
    let (peer, seen) = whoami(&testbed.gateway, Some(&opted), SERVER_V6).expect("IPv6 connect");
    assert_eq!(seen, VIA_CONVERTER_V6);
    assert_eq!(peer, format!("{SERVER_V6} {WHOAMI_PORT}"));

    // At run time: opt the other one in, the first one out.
    let other_path = other.path().to_str().unwrap().to_owned();
    cli_ok(&testbed, &["optin", &other_path]);
    cli_ok(&testbed, &["optout", &opted_path]);
    let (_, seen) = whoami(&testbed.gateway, Some(&other), SERVER).expect("connect");
    assert_eq!(seen, VIA_CONVERTER, "optin did not take effect");
    let (peer, seen) = whoami(&testbed.gateway, Some(&opted), SERVER).expect("connect");
    assert_eq!(seen, GATEWAY_HOST_DIRECT, "optout did not take effect");
    assert_eq!(peer, format!("{SERVER} {WHOAMI_PORT}"));
}

#[test]
fn killed_gateway_fails_open_within_a_second() {
    require_root();
    let dir = TempDir::new("failopen").unwrap();
    let opted = Cgroup::new("failopen").unwrap();
    let testbed = deploy(
        &dir,
        "failopen",
        &["--cgroup", opted.path().to_str().unwrap()],
    );
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    let killed = Instant::now();
    signal_gateway(&testbed, "-9");
    // New flows must work directly within a second of the kill.
    let direct = loop {
        if let Some((_, seen)) = whoami(&testbed.client, None, SERVER) {
            break seen;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "no LAN flow works after the kill"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let took = killed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the first direct LAN flow took {took:?}"
    );
    assert_eq!(direct, LAN_CLIENT_DIRECT);
    let (_, seen) = whoami(&testbed.gateway, Some(&opted), SERVER).expect("local connect");
    assert_eq!(seen, GATEWAY_HOST_DIRECT);
}

#[test]
fn terminated_gateway_removes_what_it_installed() {
    require_root();
    let dir = TempDir::new("cleanup").unwrap();
    let testbed = deploy(&dir, "cleanup", &[]);
    let pin_path = testbed.pin_path();
    assert!(Path::new(&pin_path).join(FLOWS_MAP_NAME).exists());
    let mark = format!("fwmark {DEFAULT_MARK:#x}");
    let rules = |family: &str| {
        testbed
            .gateway
            .exec("ip", &[family, "rule", "show"])
            .unwrap()
    };
    assert!(rules("-4").contains(&mark), "{}", rules("-4"));

    // A second gateway with the same pin path refuses to start.
    let binary = mptcp_user_bin();
    let second = testbed
        .gateway
        .host_mounts_command(&binary.to_string_lossy())
        .args([
            "gateway",
            "--direct",
            "--listen",
            "[::]:15999",
            "--pin-path",
            &pin_path,
        ])
        .output()
        .unwrap();
    assert_fails_with(&second, "another gateway is already running");

    signal_gateway(&testbed, "-TERM");
    wait_until(
        Duration::from_secs(10),
        || {
            !Path::new(&pin_path).exists()
                && !rules("-4").contains(&mark)
                && !rules("-6").contains(&mark)
        },
        || "pins or rules left after SIGTERM".to_owned(),
    );
    assert_eq!(seen_from_lan(&testbed, SERVER), LAN_CLIENT_DIRECT);
    let gone = cli(&testbed, &["flows"]);
    assert_fails_with(&gone, "no running gateway found");
}

#[test]
fn lan_flows_to_the_listeners_port_elsewhere_are_relayed() {
    require_root();
    let dir = TempDir::new("port").unwrap();
    let opted = Cgroup::new("port").unwrap();
    let opted_path = opted.path().to_str().unwrap().to_owned();
    let mut testbed = deploy(&dir, "port", &["--cgroup", &opted_path]);
    // A server that happens to use the gateway's listener port.
    start_whoami_server(&mut testbed, &dir, GATEWAY_PORT);

    let seen = whoami_at(&testbed.client, None, SERVER, GATEWAY_PORT)
        .expect("LAN connection to the server's port 15124");
    assert_eq!(seen.1, VIA_CONVERTER, "not relayed through the converter");
    let (peer, seen) = whoami_at(&testbed.gateway, Some(&opted), SERVER, GATEWAY_PORT)
        .expect("local connection to the server's port 15124");
    assert_eq!(seen, VIA_CONVERTER, "the opted-in connect was not relayed");
    assert_eq!(peer, format!("{SERVER} {GATEWAY_PORT}"));

    // A connection made to the listener itself is never relayed (it would loop).
    let itself = whoami_at(&testbed.gateway, None, "127.0.0.1", GATEWAY_PORT);
    assert!(
        itself.as_ref().is_none_or(|(_, seen)| seen.is_empty()),
        "the listener answered for itself: {itself:?}"
    );
    let log = daemon_log(dir.path(), "gateway");
    assert!(
        log.contains("connection to the listener itself"),
        "gateway log: {log}"
    );
}

#[test]
fn recreated_lan_interface_is_intercepted_again() {
    require_root();
    let dir = TempDir::new("relan").unwrap();
    let testbed = deploy(&dir, "relan", &[]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    testbed.recreate_lan().unwrap();
    // The gateway looks every two seconds; meanwhile flows go directly.
    wait_until(
        Duration::from_secs(10),
        || whoami(&testbed.client, None, SERVER).is_some_and(|(_, seen)| seen == VIA_CONVERTER),
        || {
            format!(
                "the new LAN interface is not intercepted; gateway log: {}",
                daemon_log(dir.path(), "gateway")
            )
        },
    );
    let log = daemon_log(dir.path(), "gateway");
    assert!(
        log.contains("LAN interface lan0 is back"),
        "gateway log: {log}"
    );
}

#[test]
fn inspection_needs_root() {
    require_root();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(mptcp_user_bin())
        .arg("flows")
        .output()
        .unwrap();
    assert_fails_with(&output, "needs root");
}

#[test]
fn a_converter_outage_sends_new_flows_direct_and_back() {
    require_root();
    let dir = TempDir::new("outage").unwrap();
    let mut testbed = deploy(&dir, "outage", &[]);
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
    thread::sleep(Duration::from_secs(3));
    assert_eq!(seen_from_lan(&testbed, SERVER), GATEWAY_HOST_DIRECT);
    let log = daemon_log(dir.path(), "gateway");
    let outage_lines = log.matches("the converter is unavailable").count()
        + log.matches("no uplink reaches the converter").count();
    assert_eq!(outage_lines, 1, "gateway log: {log}");

    // The CLI says why: the lines work, the converter does not; a live flow is direct.
    start_server(&mut testbed, &dir, HOLDING_SERVER, 9402);
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
    let flows = flows_json(&testbed);
    let uplinks: Vec<serde_json::Value> =
        serde_json::from_str(&cli_ok(&testbed, &["uplinks", "--json"])).unwrap();
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
    let testbed = deploy(&dir, "filtered", &[]);
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
    thread::sleep(Duration::from_secs(4));
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
fn a_gateway_started_like_a_service_without_cgroups_still_intercepts_the_lan() {
    require_root();
    let dir = TempDir::new("nocgroup").unwrap();
    let mut testbed = Testbed::new("nocgroup", &UPLINKS).unwrap();
    testbed.start_converter(dir.path(), &[]).unwrap();
    // `ip netns exec` remounts /sys: no cgroup v2 hierarchy, and a bpffs of its own.
    // Started as a service manager would, with a soft limit of 1024 open files.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let mut launcher = testbed.gateway.command("prlimit");
    launcher.arg(format!("--nofile=1024:{hard}"));
    start_gateway_through(&mut testbed, &dir, launcher);
    start_whoami_server(&mut testbed, &dir, WHOAMI_PORT);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    let log = daemon_log(dir.path(), "gateway");
    assert!(
        log.contains("running without the cgroup programs"),
        "gateway log: {log}"
    );
    // It raised its soft limit to the hard one.
    let capacity = mptcp_user::net::relay::flow_capacity(hard);
    assert!(
        log.contains(&format!(
            "open-file limit {hard}: room for about {capacity} flows"
        )),
        "gateway log: {log}"
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

#[test]
fn a_full_gateway_sends_new_flows_direct_instead_of_stalling_them() {
    require_root();
    let dir = TempDir::new("full").unwrap();
    let mut testbed = Testbed::new("full", &UPLINKS).unwrap();
    testbed.start_converter(dir.path(), &[]).unwrap();
    // A hard limit of 1024 open files: room for about 149 flows.
    let mut launcher = testbed.gateway.host_mounts_command("prlimit");
    launcher.arg("--nofile=1024:1024");
    start_gateway_through(&mut testbed, &dir, launcher);
    let port = 9400;
    start_server(&mut testbed, &dir, HOLDING_SERVER, port);

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
    let mut testbed = deploy(&dir, "standby", &["--converter", &standby]);
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

/// A QUIC server (aioquic, self-signed certificate) on UDP port 443, and a UDP echo on
/// the port given; prints "ready" once both listen.
const QUIC_SERVER: &str = r#"
import asyncio, datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from aioquic.asyncio import serve
from aioquic.quic.configuration import QuicConfiguration

key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "server")])
now = datetime.datetime.now(datetime.timezone.utc)
certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
    .public_key(key.public_key()).serial_number(1)
    .not_valid_before(now - datetime.timedelta(days=1))
    .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
configuration = QuicConfiguration(is_client=False, alpn_protocols=["hq-interop"])
configuration.certificate = certificate
configuration.private_key = key

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, peer):
        self.transport.sendto(data, peer)

async def main():
    await serve("0.0.0.0", 443, configuration=configuration)
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    await asyncio.Future()

asyncio.run(main())
"#;

/// A QUIC handshake (aioquic's protocol engine) over a connected UDP socket, as
/// browsers use: prints "handshake SECONDS" when it completes, "refused SECONDS" when an
/// ICMP error (port unreachable, prohibited) came back, "timeout" after the seconds
/// given.
const QUIC_PROBE: &str = r#"
import socket, ssl, sys, time
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted

server = (sys.argv[1], 443)
patience = float(sys.argv[2])
configuration = QuicConfiguration(is_client=True, alpn_protocols=["hq-interop"])
configuration.verify_mode = ssl.CERT_NONE
connection = QuicConnection(configuration=configuration)
connection.connect(server, now=time.time())
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(server)
start = time.monotonic()
try:
    while time.monotonic() - start < patience:
        for data, _ in connection.datagrams_to_send(now=time.time()):
            udp.send(data)
        udp.settimeout(max(0.01, patience - (time.monotonic() - start)))
        connection.receive_datagram(udp.recv(65536), server, now=time.time())
        event = connection.next_event()
        while event is not None:
            if isinstance(event, HandshakeCompleted):
                print("handshake", round(time.monotonic() - start, 6))
                sys.exit(0)
            event = connection.next_event()
    print("timeout")
except socket.timeout:
    print("timeout")
except OSError as error:
    print("refused", round(time.monotonic() - start, 6), error.strerror)
"#;

/// Sends one datagram to `server`:`port` from the LAN and waits 2 s for the echo.
const UDP_ECHO_CLIENT: &str = r"
import socket, sys
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect((sys.argv[1], int(sys.argv[2])))
udp.settimeout(2)
udp.send(b'ping')
print(udp.recv(64).decode())
";

/// What the QUIC probe from the LAN host to `server` says: "handshake", "refused" (with
/// how long it took) or "timeout" (after 3 s).
fn quic_from_lan(testbed: &Testbed, server: &str) -> (String, Duration) {
    quic_probe(testbed, server, Duration::from_secs(3))
}

/// Asserts that QUIC from the LAN is refused. The kernel rate-limits its ICMP errors
/// to one host (a small burst, then about one every two seconds here, where each costs
/// the tokens of two limiters), so a probe may go unanswered: it is tried again after
/// two seconds, three times at most. (A browser's TCP attempt runs meanwhile anyway.)
fn assert_turned_away(testbed: &Testbed) {
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        let (verdict, _) = quic_probe(testbed, SERVER, Duration::from_secs(1));
        if verdict == "refused" {
            return;
        }
        verdicts.push(verdict);
        thread::sleep(Duration::from_secs(2));
    }
    panic!("QUIC is not turned away: {verdicts:?}");
}

fn quic_probe(testbed: &Testbed, server: &str, patience: Duration) -> (String, Duration) {
    let output = testbed
        .client
        .command(&mptcp_tests::quic_python().to_string_lossy())
        .args(["-c", QUIC_PROBE, server])
        .arg(patience.as_secs_f64().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut words = text.split(' ');
    let verdict = words.next().unwrap_or_default();
    let seconds: f64 = words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    (verdict.to_owned(), Duration::from_secs_f64(seconds))
}

#[test]
fn quic_is_turned_away_so_browsers_use_tcp_and_comes_back_when_asked() {
    require_root();
    let dir = TempDir::new("quic").unwrap();
    let mut testbed = deploy(&dir, "quic", &[]);
    let echo_port = 4000;
    let mut server = testbed
        .server
        .command(&mptcp_tests::quic_python().to_string_lossy());
    server.args(["-c", QUIC_SERVER, &echo_port.to_string()]);
    let log = dir.path().join("quic-server.log");
    testbed.start("quic-server", &mut server, &log).unwrap();
    mptcp_tests::testbed::wait_for_line(&log, "ready", Duration::from_secs(20)).unwrap();
    start_whoami_server(&mut testbed, &dir, 443);

    // QUIC fails at once; TCP to the same port goes through the converter.
    let (verdict, took) = quic_from_lan(&testbed, SERVER);
    println!("QUIC through the gateway: {verdict} after {took:?}");
    assert_eq!(verdict, "refused");
    assert!(took < Duration::from_millis(500), "{took:?}");
    let (_, seen) = whoami_at(&testbed.client, None, SERVER, 443).expect("TCP to port 443");
    assert_eq!(seen, VIA_CONVERTER);
    // Other UDP is left alone.
    let echo = testbed
        .client
        .exec(
            "python3",
            &["-c", UDP_ECHO_CLIENT, SERVER, &echo_port.to_string()],
        )
        .unwrap();
    assert_eq!(echo.trim(), "ping");
    assert!(cli_ok(&testbed, &["selection", "list"]).contains("quic: turned away"));

    // A destination the selection excludes keeps its QUIC.
    cli_ok(&testbed, &["selection", "add", "exclude", SERVER]);
    assert_eq!(quic_from_lan(&testbed, SERVER).0, "handshake");
    cli_ok(&testbed, &["selection", "del", SERVER]);
    assert_turned_away(&testbed);

    // Switched off live, QUIC works; switched on, it is turned away again.
    cli_ok(&testbed, &["selection", "quic", "off"]);
    assert_eq!(quic_from_lan(&testbed, SERVER).0, "handshake");
    cli_ok(&testbed, &["selection", "quic", "on"]);
    assert_turned_away(&testbed);

    // A killed gateway leaves QUIC working.
    signal_gateway(&testbed, "-9");
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(5),
        || quic_from_lan(&testbed, SERVER).0 == "handshake",
        || "QUIC does not work after the gateway died".to_owned(),
    );
    println!("QUIC works again {:?} after the kill", killed.elapsed());
}

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
    start_whoami_server(&mut testbed, &dir, WHOAMI_PORT);
    // No flow yet: no warm connection either.
    thread::sleep(Duration::from_millis(600));
    assert_eq!(converter_connections(&testbed), 0);
    for _ in 0..4 {
        assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    }
    // The flows ended; warm connections wait for the next ones.
    thread::sleep(Duration::from_millis(300));
    let warm = converter_connections(&testbed);
    assert!((1..=3).contains(&warm), "{warm} warm connections");

    // Each flow now comes when the warm connections have gone stale: none is used.
    for _ in 0..4 {
        thread::sleep(Duration::from_millis(1500));
        assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    }
    let log = daemon_log(dir.path(), "gateway");
    assert!(!log.contains("refused"), "{log}");
    assert!(!log.contains("go direct"), "{log}");
}
