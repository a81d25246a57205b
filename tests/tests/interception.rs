//! Interception end to end: LAN flows taken by the gateway's eBPF programs with no
//! nftables rule, the live selection, per-cgroup opt-in, the flow listing with its
//! subflows, and fail-open. Who carried a connection is read off the server
//! ([`mptcp_tests::whoami`]). What happens when the converter is away or the gateway
//! full is in failover.rs.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use mptcp_ebpf_common::flows::FLOWS_MAP_NAME;
use mptcp_tests::{
    TempDir,
    cgroup::Cgroup,
    mptcp_user_bin,
    netns::run_in,
    require_root,
    testbed::{GATEWAY_PORT, SERVER, SERVER_V6, Testbed, daemon_log},
    wait_until,
    whoami::{
        self, GATEWAY_HOST_DIRECT, LAN_CLIENT_DIRECT, UPLINKS, VIA_CONVERTER, VIA_CONVERTER_V6,
        WHOAMI_PORT, deploy, seen_from_lan, whoami, whoami_at,
    },
};
use mptcp_user::config::defaults::INTERCEPT_MARK;

fn cli(testbed: &Testbed, args: &[&str]) -> Output {
    testbed.gateway_cli(args).unwrap()
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

#[test]
fn lan_flows_are_intercepted_by_ebpf_and_listed_with_their_subflows() {
    require_root();
    let dir = TempDir::new("intercept").unwrap();
    let mut testbed = deploy(dir.path(), "intercept", &[]);
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
    let listed = testbed
        .wait_for_flow_on_every_uplink(&format!("{SERVER}:80"), Duration::from_secs(6))
        .unwrap_or_else(|error| {
            panic!(
                "{error}; gateway log: {}",
                daemon_log(dir.path(), "gateway")
            )
        });
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
        || testbed.flows().is_empty(),
        || "ended flow still listed".to_owned(),
    );
}

#[test]
fn selection_edits_apply_to_new_flows() {
    require_root();
    let dir = TempDir::new("selection").unwrap();
    let testbed = deploy(dir.path(), "selection", &[]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);

    testbed.gateway_cli_ok(&["selection", "add", "exclude", SERVER]);
    assert_eq!(seen_from_lan(&testbed, SERVER), LAN_CLIENT_DIRECT);
    let listing: serde_json::Value =
        serde_json::from_str(&testbed.gateway_cli_ok(&["selection", "list", "--json"])).unwrap();
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
    testbed.gateway_cli_ok(&["selection", "del", SERVER]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    testbed.gateway_cli_ok(&["selection", "add-port", "443"]);
    assert_eq!(seen_from_lan(&testbed, SERVER), LAN_CLIENT_DIRECT);
    testbed.gateway_cli_ok(&["selection", "del-port", "443"]);
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
    let testbed = deploy(dir.path(), "optin", &["--cgroup", &opted_path]);
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
    testbed.gateway_cli_ok(&["optin", &other_path]);
    testbed.gateway_cli_ok(&["optout", &opted_path]);
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
        dir.path(),
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
    let testbed = deploy(dir.path(), "cleanup", &[]);
    let pin_path = testbed.pin_path();
    assert!(Path::new(&pin_path).join(FLOWS_MAP_NAME).exists());
    let mark = format!("fwmark {INTERCEPT_MARK:#x}");
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
    let mut testbed = deploy(dir.path(), "port", &["--cgroup", &opted_path]);
    // A server that happens to use the gateway's listener port.
    whoami::start_server(&mut testbed, dir.path(), GATEWAY_PORT);

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

/// Connects `argv[3]` times from one source port, reading each answer to its end, and
/// prints the answers: the gateway closes first, so each new connection reuses the
/// four-tuple of one it holds in TIME_WAIT.
const SAME_PORT_CLIENT: &str = r"
import socket, sys
for _ in range(int(sys.argv[3])):
    connection = socket.socket()
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    connection.bind(('0.0.0.0', 40404))
    connection.settimeout(5)
    connection.connect((sys.argv[1], int(sys.argv[2])))
    answer = b''
    while chunk := connection.recv(4096):
        answer += chunk
    connection.close()
    print(answer.decode().strip())
";

#[test]
fn a_client_reusing_its_port_is_intercepted_without_a_retry() {
    require_root();
    let dir = TempDir::new("reuse").unwrap();
    let testbed = deploy(dir.path(), "reuse", &[]);
    let retries_before = testbed
        .client
        .netstat_counter("TcpExt", "TCPSynRetrans")
        .unwrap();
    let connections = 20;
    let output = testbed
        .client
        .exec(
            "python3",
            &[
                "-c",
                SAME_PORT_CLIENT,
                SERVER,
                &WHOAMI_PORT.to_string(),
                &connections.to_string(),
            ],
        )
        .unwrap();
    let answers: Vec<&str> = output.lines().collect();
    assert_eq!(
        answers,
        vec![VIA_CONVERTER; connections],
        "gateway log: {}",
        daemon_log(dir.path(), "gateway")
    );
    // The connections did meet the gateway's TIME_WAIT sockets...
    let time_wait = testbed
        .gateway
        .exec(
            "ss",
            &["-Htn", "state", "time-wait", "dst", "192.168.50.2:40404"],
        )
        .unwrap();
    assert!(!time_wait.trim().is_empty(), "no TIME_WAIT socket left");
    // ...and each SYN was answered at once: a SYN met with an ACK of the old
    // connection is reset by the client and sent again 10 ms later.
    let retries = testbed
        .client
        .netstat_counter("TcpExt", "TCPSynRetrans")
        .unwrap()
        - retries_before;
    assert_eq!(retries, 0, "SYNs sent again");
}

#[test]
fn the_listener_takes_no_connection_from_outside() {
    require_root();
    let dir = TempDir::new("outside").unwrap();
    let testbed = deploy(dir.path(), "outside", &[]);
    // From the internet side of uplink 1, and from a LAN host, to the gateway's own
    // addresses on the listener's port: dropped, not accepted and logged.
    for (netns, address) in [
        (&testbed.converter, "10.0.1.1"),
        (&testbed.client, "192.168.50.1"),
    ] {
        let target: std::net::SocketAddr = format!("{address}:{GATEWAY_PORT}").parse().unwrap();
        let connected = run_in(netns, move || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2)).is_ok()
        });
        assert!(
            !connected,
            "{target} accepted a connection from {}",
            netns.name()
        );
    }
    let log = daemon_log(dir.path(), "gateway");
    assert!(!log.contains("not intercepted"), "{log}");
    // Intercepted flows still reach it.
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
}

#[test]
fn the_inflight_cap_loads_and_flows_still_convert() {
    require_root();
    let dir = TempDir::new("cap").unwrap();
    // The cap's code is verified only when it is on (off, the verifier drops it).
    let testbed = deploy(dir.path(), "cap", &["--inflight-cap", "110"]);
    assert_eq!(seen_from_lan(&testbed, SERVER), VIA_CONVERTER);
    let log = daemon_log(dir.path(), "gateway");
    assert!(log.contains("in flight at most 110 %"), "{log}");
}

#[test]
fn recreated_lan_interface_is_intercepted_again() {
    require_root();
    let dir = TempDir::new("relan").unwrap();
    let testbed = deploy(dir.path(), "relan", &[]);
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
fn inspection_and_the_gateway_need_root() {
    require_root();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(mptcp_user_bin())
            .args(args)
            .output()
            .unwrap()
    };
    assert_fails_with(&as_nobody(&["flows"]), "needs root");
    // Said before anything is tried, with what a service needs instead of root.
    let gateway = as_nobody(&["gateway", "--direct", "--lan", "lo"]);
    assert_fails_with(
        &gateway,
        "the gateway needs root, or CAP_NET_ADMIN, CAP_BPF",
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
    testbed.start_gateway_through(dir.path(), launcher).unwrap();
    whoami::start_server(&mut testbed, dir.path(), WHOAMI_PORT);
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
    let mut testbed = deploy(dir.path(), "quic", &[]);
    let echo_port = 4000;
    let mut server = testbed
        .server
        .command(&mptcp_tests::quic_python().to_string_lossy());
    server.args(["-c", QUIC_SERVER, &echo_port.to_string()]);
    let log = dir.path().join("quic-server.log");
    testbed.start("quic-server", &mut server, &log).unwrap();
    mptcp_tests::testbed::wait_for_line(&log, "ready", Duration::from_secs(20)).unwrap();
    whoami::start_server(&mut testbed, dir.path(), 443);

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
    assert!(
        testbed
            .gateway_cli_ok(&["selection", "list"])
            .contains("quic: turned away")
    );

    // A destination the selection excludes keeps its QUIC.
    testbed.gateway_cli_ok(&["selection", "add", "exclude", SERVER]);
    assert_eq!(quic_from_lan(&testbed, SERVER).0, "handshake");
    testbed.gateway_cli_ok(&["selection", "del", SERVER]);
    assert_turned_away(&testbed);

    // Switched off live, QUIC works; switched on, it is turned away again.
    testbed.gateway_cli_ok(&["selection", "quic", "off"]);
    assert_eq!(quic_from_lan(&testbed, SERVER).0, "handshake");
    testbed.gateway_cli_ok(&["selection", "quic", "on"]);
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
