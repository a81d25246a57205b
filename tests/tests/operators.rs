//! A converter run for several households: each gateway with its own key and limits
//! (`[[converter.gateway]]`). One household's gateway (the testbed's, intercepting its
//! LAN) and another's (a Convert client with its own key, from the server host) share
//! one converter; each keeps to its own `max-conns` without taking the other's room,
//! and both keys are rotated live with SIGHUP (to the converter, and to the gateway
//! for its own) while their flows go on.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use mptcp_tests::{
    TempDir,
    greeting::listen_in,
    metrics::{CONVERTER_METRICS, sample, scrape},
    mptcp_user_bin,
    netns::{Netns, run, run_in},
    require_root,
    testbed::{SERVER, Testbed, Uplink, daemon_log},
    wait_until,
};
use mptcp_user::protocol::{
    codec::{ErrorCode, Request, Response},
    cookie::{Key, unix_now},
};
use nix::sys::signal::{Signal, kill};

const UPLINKS: [Uplink; 2] = [Uplink::htb(50), Uplink::htb(50)];
/// Port of the echo server on the server host.
const ECHO_PORT: u16 = 7300;
/// The limits of the two households.
const SMITH_MAX_CONNS: usize = 3;
const JONES_MAX_CONNS: usize = 2;

/// An echo server on the server host: each connection gets its lines back, for as long
/// as it stays open. Its threads end with the test process.
fn start_echo_server(netns: &Netns) {
    let listener = listen_in(netns, ECHO_PORT).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(writer, "{line}").is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Sends a line on `stream` and checks it comes back within 10 s.
fn echoes(stream: &mut TcpStream, line: &str) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    if writeln!(stream, "{line}").is_err() {
        return false;
    }
    let mut back = vec![0u8; line.len() + 1];
    stream.read_exact(&mut back).is_ok() && back == format!("{line}\n").as_bytes()
}

/// The other household's gateway: a Convert client on the server host with the key in
/// `key`, asking for the echo server; the converter's answer and, if connected, the
/// relayed connection.
fn convert(testbed: &Testbed, key: &Path) -> (Response, TcpStream) {
    let key = Key::load(key).unwrap();
    let destination: SocketAddr = format!("{SERVER}:{ECHO_PORT}").parse().unwrap();
    let request = Request {
        destination,
        cookie: Some(key.cookie(destination, unix_now()).unwrap()),
    }
    .to_message()
    .encode()
    .unwrap();
    let (stream, answer) = testbed.ask_converter_from_outside(request);
    (Response::from_message(&answer), stream)
}

/// A connection of the testbed's LAN host to the echo server (through its gateway).
fn lan_connection(testbed: &Testbed) -> TcpStream {
    let echo: SocketAddr = format!("{SERVER}:{ECHO_PORT}").parse().unwrap();
    run_in(&testbed.client, move || {
        TcpStream::connect_timeout(&echo, Duration::from_secs(5)).unwrap()
    })
}

fn keygen(path: &Path) {
    run(Command::new(mptcp_user_bin()).arg("keygen").arg(path)).unwrap();
}

/// The converter's config: the two households, with the key files named.
fn write_config(dir: &Path, smith_keys: &[&str], jones_keys: &[&str]) {
    let paths = |names: &[&str]| {
        let quoted: Vec<String> = names
            .iter()
            .map(|name| format!("\"{}\"", dir.join(name).display()))
            .collect();
        quoted.join(", ")
    };
    let config = format!(
        "[[converter.gateway]]\nname = \"smith\"\nkey-files = [{}]\nmax-conns = \
         {SMITH_MAX_CONNS}\n\n[[converter.gateway]]\nname = \"jones\"\nkey-files = [{}]\n\
         max-conns = {JONES_MAX_CONNS}\n",
        paths(smith_keys),
        paths(jones_keys)
    );
    std::fs::write(dir.join("converter.toml"), config).unwrap();
}

/// Sends daemon `label` SIGHUP and waits until its log holds `done` `nth` times.
fn reload(testbed: &Testbed, dir: &Path, label: &str, done: &str, nth: usize) {
    let pid = testbed.pid(label).unwrap();
    kill(
        nix::unistd::Pid::from_raw(pid.try_into().unwrap()),
        Signal::SIGHUP,
    )
    .unwrap();
    wait_until(
        Duration::from_secs(10),
        || daemon_log(dir, label).matches(done).count() >= nth,
        || format!("reload {nth} not logged:\n{}", daemon_log(dir, label)),
    );
}

/// Sends the converter SIGHUP and waits until it logged its `nth` reload.
fn reload_converter(testbed: &Testbed, dir: &Path, nth: usize) {
    let done = "SIGHUP: the keys and limits of 3 gateways reloaded";
    reload(testbed, dir, "converter", done, nth);
}

/// Waits (5 s at most) until `gateway` has `count` live relays on the converter: a
/// closed flow's relay ends a moment after, and counts against its limit meanwhile.
fn wait_for_live_relays(testbed: &Testbed, gateway: &str, count: u64) {
    wait_until(
        Duration::from_secs(5),
        || gateway_metric(testbed, "live_relays", gateway) == count,
        || format!("{gateway} did not get down to {count} live relays"),
    );
}

/// The converter's metric `name` for gateway `gateway`.
fn gateway_metric(testbed: &Testbed, name: &str, gateway: &str) -> u64 {
    let text = scrape(&testbed.converter, CONVERTER_METRICS).unwrap();
    sample(
        &text,
        &format!("mptcp_converter_gateway_{name}{{gateway=\"{gateway}\"}}"),
    )
}

/// Smith's gateway takes its new key on SIGHUP, without a restart: its flow through
/// the converter goes on, and new flows are still converted (with the old key they
/// would be refused once the converter drops it, and end).
fn rotate_the_gateways_key(
    testbed: &Testbed,
    path: &Path,
    gateway_key: &Path,
    smith_flows: Vec<TcpStream>,
) {
    drop(smith_flows);
    wait_for_live_relays(testbed, "smith", 0);
    let mut smith_held = lan_connection(testbed);
    assert!(echoes(&mut smith_held, "smith held"));
    write_config(path, &["smith.key", "smith-new.key"], &["jones-new.key"]);
    reload_converter(testbed, path, 3);
    let staged = path.join("gateway.key.new");
    std::fs::copy(path.join("smith-new.key"), &staged).unwrap();
    std::fs::rename(&staged, gateway_key).unwrap();
    let done = "SIGHUP: new flows and claims are signed with the key now in";
    reload(testbed, path, "gateway", done, 1);
    write_config(path, &["smith-new.key"], &["jones-new.key"]);
    reload_converter(testbed, path, 4);
    let relayed = gateway_metric(testbed, "relays_total", "smith");
    let mut smith_new = lan_connection(testbed);
    assert!(echoes(&mut smith_new, "smith with the new key"));
    assert_eq!(
        gateway_metric(testbed, "relays_total", "smith"),
        relayed + 1,
        "the new flow went through the converter"
    );
    assert!(echoes(&mut smith_held, "smith held after the rotation"));
}

#[test]
fn households_keep_to_their_own_limits_and_keys_rotate_live() {
    require_root();
    let dir = TempDir::new("tenants").unwrap();
    let path = dir.path();
    for key in ["smith.key", "smith-new.key", "jones.key", "jones-new.key"] {
        keygen(&path.join(key));
    }
    // The gateway's copy of smith's key: a rotation replaces it.
    let gateway_key = path.join("gateway.key");
    std::fs::copy(path.join("smith.key"), &gateway_key).unwrap();
    write_config(path, &["smith.key"], &["jones.key"]);
    let mut testbed = Testbed::new("tenants", &UPLINKS).unwrap();
    let config = path.join("converter.toml");
    testbed
        .start_gateway_and_converter(
            path,
            &["--key-file", gateway_key.to_str().unwrap()],
            &[
                "--config",
                config.to_str().unwrap(),
                "--metrics",
                CONVERTER_METRICS,
            ],
        )
        .unwrap();
    start_echo_server(&testbed.server);

    // Smith's household opens more flows than its share: all of them work (those
    // beyond it go direct), and the converter relays its share exactly.
    let mut smith: Vec<TcpStream> = (0..SMITH_MAX_CONNS + 2)
        .map(|_| lan_connection(&testbed))
        .collect();
    for (i, stream) in smith.iter_mut().enumerate() {
        assert!(echoes(stream, &format!("smith {i}")), "smith's flow {i}");
    }
    assert_eq!(
        gateway_metric(&testbed, "live_relays", "smith"),
        SMITH_MAX_CONNS as u64
    );
    assert!(gateway_metric(&testbed, "max_conns_refusals_total", "smith") >= 1);

    // Jones's gets its own share whatever smith's does, and no more.
    let jones_key = path.join("jones.key");
    let mut held = convert(&testbed, &jones_key);
    assert_eq!(held.0, Response::Connected);
    assert!(echoes(&mut held.1, "jones held"));
    let second = convert(&testbed, &jones_key);
    assert_eq!(second.0, Response::Connected);
    assert_eq!(
        convert(&testbed, &jones_key).0,
        Response::Error(ErrorCode::ResourceExceeded)
    );
    drop(second);
    // Jones's only relay is then the one the test holds.
    wait_for_live_relays(&testbed, "jones", 1);

    // Jones rotates its key: the new one beside the old, then the old one removed.
    let new_key = path.join("jones-new.key");
    assert_eq!(
        convert(&testbed, &new_key).0,
        Response::Error(ErrorCode::NotAuthorized)
    );
    write_config(path, &["smith.key"], &["jones.key", "jones-new.key"]);
    reload_converter(&testbed, path, 1);
    for key in [&jones_key, &new_key] {
        assert_eq!(convert(&testbed, key).0, Response::Connected, "{key:?}");
        wait_for_live_relays(&testbed, "jones", 1);
    }
    write_config(path, &["smith.key"], &["jones-new.key"]);
    reload_converter(&testbed, path, 2);
    assert_eq!(
        convert(&testbed, &jones_key).0,
        Response::Error(ErrorCode::NotAuthorized)
    );
    assert_eq!(convert(&testbed, &new_key).0, Response::Connected);

    // The flows that were live through both reloads go on, both households'.
    assert!(echoes(&mut held.1, "jones after the rotation"));
    for (i, stream) in smith.iter_mut().enumerate() {
        assert!(
            echoes(stream, &format!("smith {i} again")),
            "smith's flow {i}"
        );
    }
    let log = daemon_log(path, "converter");
    assert!(
        log.contains(
            "(jones): refused (Resource Exceeded): gateway jones already relays its max-conns (2)"
        ),
        "{log}"
    );

    rotate_the_gateways_key(&testbed, path, &gateway_key, smith);
    testbed.check_running().unwrap();
}
