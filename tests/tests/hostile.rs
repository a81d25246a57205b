//! The converter under hostile input, probed from the outside as a stranger on the
//! internet would: raw requests built from RFC 8803's layouts and our cookie format,
//! sent from the gateway host (no gateway daemon runs). Each must get the right Error
//! TLV, or a close, within its deadline, and leave nothing behind.

use std::{
    fs,
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    TempDir,
    footprint::{Footprint, raise_own_file_limit},
    greeting::GreetingServer,
    measure::{Transport, fast_open_socket},
    mptcp_user_bin,
    netns::{enter, run_in},
    require_root,
    testbed::{
        CONVERTER, CONVERTER_PORT, CONVERTER_TOWARD_SERVER, SERVER, Testbed, Uplink, daemon_log,
    },
    wait_until,
};
use mptcp_user::protocol::{
    codec::{ErrorCode, Message, Request, Response, Tlv},
    cookie::{KEY_LEN, Key, unix_now},
};

const UPLINKS: [Uplink; 2] = [Uplink::htb(50), Uplink::htb(50)];
/// Port of the server's greeting server: it answers with the address it saw.
const GREETING_PORT: u16 = 7000;

fn converter_address() -> SocketAddr {
    format!("{CONVERTER}:{CONVERTER_PORT}").parse().unwrap()
}

fn greeting_server_address() -> SocketAddr {
    format!("{SERVER}:{GREETING_PORT}").parse().unwrap()
}

/// A testbed with the converter running (`args` added), the greeting server on the
/// server host, and the key the converter uses.
fn converter(dir: &TempDir, label: &str, args: &[&str]) -> (Testbed, GreetingServer, Key) {
    let mut testbed = Testbed::new(label, &UPLINKS).unwrap();
    testbed.start_converter(dir.path(), args).unwrap();
    let server = GreetingServer::start(&testbed.server, GREETING_PORT).unwrap();
    let key = Key::load(&dir.path().join("key")).unwrap();
    (testbed, server, key)
}

/// A Convert request to `destination`, its cookie made with `key` at Unix time `time`.
fn request(key: &Key, destination: SocketAddr, time: u64) -> Vec<u8> {
    Request {
        destination,
        cookie: Some(key.cookie(destination, time).unwrap()),
    }
    .to_message()
    .encode()
    .unwrap()
}

/// A TCP connection to the converter from the gateway host's `source` address (or the
/// kernel's choice).
fn connect(source: Option<IpAddr>) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(source) = source {
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    }
    socket
        .connect_timeout(&converter_address().into(), Duration::from_secs(5))
        .unwrap();
    socket.into()
}

/// Everything the converter sends on `stream` until it closes, or until `deadline`.
fn read_to_close(stream: &mut TcpStream, deadline: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(deadline)).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

/// Sends `bytes` to the converter from the gateway host; its response, and the bytes
/// after it (the destination's), read until the converter closes or for 10 s.
fn ask(testbed: &Testbed, bytes: Vec<u8>) -> (Response, Vec<u8>) {
    let answer = run_in(&testbed.gateway, move || {
        let mut stream = connect(None);
        stream.write_all(&bytes).unwrap();
        read_to_close(&mut stream, Duration::from_secs(10))
    });
    let (message, used) =
        Message::decode(&answer).unwrap_or_else(|error| panic!("{error}: {answer:02x?}"));
    (Response::from_message(&message), answer[used..].to_vec())
}

/// The converter's answer to a request for `destination`, with a fresh cookie.
fn verdict(testbed: &Testbed, key: &Key, destination: SocketAddr) -> Response {
    ask(testbed, request(key, destination, unix_now())).0
}

/// Open files of process `pid`, the relays' pooled pipes left out: the pool keeps a
/// few for the next flows.
fn open_fds(pid: u32) -> usize {
    let footprint = Footprint::of(pid).unwrap();
    usize::try_from(footprint.sockets_and_others()).unwrap()
}

/// Waits up to 10 s for process `pid` to hold at most `files` open files; how many it
/// holds then.
fn settle_fds(pid: u32, files: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = open_fds(pid);
        if now <= files || Instant::now() > deadline {
            return now;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_cookies_and_bad_messages_get_their_error_and_leave_nothing() {
    require_root();
    let dir = TempDir::new("hostile-auth").unwrap();
    let (testbed, _server, key) = converter(&dir, "hauth", &[]);
    let pid = testbed.pid("converter").unwrap();
    let destination = greeting_server_address();
    let files = open_fds(pid);

    let good = request(&key, destination, unix_now());
    let (response, greeting) = ask(&testbed, good.clone());
    assert_eq!(response, Response::Connected);
    assert_eq!(greeting, format!("{CONVERTER_TOWARD_SERVER}\n").as_bytes());
    let not_authorized = Response::Error(ErrorCode::NotAuthorized);
    assert_eq!(ask(&testbed, good).0, not_authorized, "a replay");
    let stranger = Key::from_bytes([7; KEY_LEN]);
    assert_eq!(
        verdict(&testbed, &stranger, destination),
        not_authorized,
        "a wrong key"
    );
    let future = request(&key, destination, unix_now() + 3600);
    assert_eq!(ask(&testbed, future).0, not_authorized, "a stale timestamp");
    let no_cookie = Request {
        destination,
        cookie: None,
    };
    assert_eq!(
        ask(&testbed, no_cookie.to_message().encode().unwrap()).0,
        Response::Error(ErrorCode::MissingCookie)
    );
    let mut short_cookie = Request {
        destination,
        cookie: Some(key.cookie(destination, unix_now()).unwrap()),
    };
    short_cookie.cookie.as_mut().unwrap().truncate(20);
    assert_eq!(
        ask(&testbed, short_cookie.to_message().encode().unwrap()).0,
        not_authorized,
        "a short cookie"
    );
    // The longest message the header allows (255 words), its TLV claiming more.
    let mut oversize = vec![0x01, 0xff, 0x22, 0x63, 0x0a, 0xff];
    oversize.resize(255 * 4, 0xee);
    let started = Instant::now();
    assert_eq!(
        ask(&testbed, oversize).0,
        Response::Error(ErrorCode::MalformedMessage)
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{started:?}");

    // A valid request, then a reset at once: the converter's side ends too.
    let fresh = request(&key, destination, unix_now());
    run_in(&testbed.gateway, move || {
        let stream = connect(None);
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        (&stream).write_all(&fresh).unwrap();
    });
    let left = settle_fds(pid, files);
    assert!(left <= files, "{left} open files, {files} before");
    let log = daemon_log(dir.path(), "converter");
    assert!(log.contains("replayed nonce"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_cookie_seen_before_a_restart_is_refused_after_it() {
    require_root();
    let dir = TempDir::new("hostile-restart").unwrap();
    let (mut testbed, _server, key) = converter(&dir, "hrestart", &[]);
    // Captured at the start of a second, and the converter restarted at once (a
    // crash-looping unit): the restart falls within the cookie's second.
    let before = unix_now();
    wait_until(
        Duration::from_secs(2),
        || unix_now() > before,
        || "the clock stands still".to_owned(),
    );
    let captured = request(&key, greeting_server_address(), unix_now());
    assert_eq!(ask(&testbed, captured.clone()).0, Response::Connected);
    testbed.forget("converter");
    testbed.start_converter(dir.path(), &[]).unwrap();
    assert_eq!(
        ask(&testbed, captured).0,
        Response::Error(ErrorCode::NotAuthorized)
    );
    assert!(
        daemon_log(dir.path(), "converter").contains("not after the second this converter started"),
        "{}",
        daemon_log(dir.path(), "converter")
    );
    // A gateway's fresh request is served as before.
    assert_eq!(
        verdict(&testbed, &key, greeting_server_address()),
        Response::Connected
    );
}

#[test]
fn destinations_inside_the_converters_own_networks_are_refused() {
    require_root();
    let dir = TempDir::new("hostile-dest").unwrap();
    // 10.0.0.0/8 allowed: it holds the server's private address, and the converter's own.
    let (testbed, _server, key) = converter(
        &dir,
        "hdest",
        &["--allow", "10.0.0.0/8", "--deny", "10.9.0.0/24:7001"],
    );
    let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), GREETING_PORT);
    let not_authorized = Response::Error(ErrorCode::NotAuthorized);
    assert_eq!(
        verdict(&testbed, &key, at("10.9.0.10")),
        Response::Connected
    );
    // Denied ports, and mail, are refused before any connect is tried (nothing
    // listens there: a connect would answer otherwise).
    for port in [7001, 25] {
        let destination = SocketAddr::new("10.9.0.10".parse().unwrap(), port);
        assert_eq!(
            verdict(&testbed, &key, destination),
            not_authorized,
            "{port}"
        );
    }
    for refused in [
        CONVERTER,   // its own address, inside the allowed prefix
        "10.0.2.2",  // its other uplink address, too
        "127.0.0.1", // loopback
        "::1",
        "169.254.1.1",        // link-local
        "fe80::1",            // link-local
        "192.168.1.1",        // private, not allowed
        "224.0.0.1",          // multicast
        "::7f00:1",           // IPv4-compatible 127.0.0.1
        "::ffff:0:7f00:1",    // SIIT 127.0.0.1
        "64:ff9b::7f00:1",    // NAT64 to 127.0.0.1
        "64:ff9b::a00:102",   // NAT64 to its own 10.0.1.2
        "2002:c0a8:101::1",   // 6to4 of 192.168.1.1
        "fec0::1",            // site-local
        "64:ff9b:1::cb00:71", // local-use NAT64
        "198.18.0.1",         // benchmarking
        "2001:db8::1",        // documentation
    ] {
        assert_eq!(
            verdict(&testbed, &key, at(refused)),
            not_authorized,
            "{refused}"
        );
    }
    // An address the host gains while it runs is refused from then on.
    let gained = "198.51.100.9";
    testbed
        .converter
        .ip(&["addr", "add", &format!("{gained}/32"), "dev", "lo"])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while verdict(&testbed, &key, at(gained)) != not_authorized {
        assert!(Instant::now() < deadline, "{gained} is still a destination");
        thread::sleep(Duration::from_millis(200));
    }
    // The first refusals are logged with their reason (later ones within 10 s only
    // counted: strangers can cause them too).
    let log = daemon_log(dir.path(), "converter");
    assert!(
        log.contains(&format!("{CONVERTER} is an address of this host")),
        "{log}"
    );
}

#[test]
fn slow_strangers_cannot_crowd_out_a_gateway() {
    require_root();
    raise_own_file_limit().unwrap();
    let dir = TempDir::new("hostile-slow").unwrap();
    // Without the pending budget, 100 silent connections would take every place.
    let (testbed, _server, key) = converter(&dir, "hslow", &["--max-conns", "100"]);
    let pid = testbed.pid("converter").unwrap();
    let files = open_fds(pid);
    let rss_kib = || Footprint::of(pid).unwrap().rss_kib;
    let rss_before = rss_kib();
    // 2000 connections from 100 addresses of the gateway host's first uplink.
    for host in 100..200 {
        testbed
            .gateway
            .ip(&["addr", "add", &format!("10.0.1.{host}/24"), "dev", "up1"])
            .unwrap();
    }
    let mut slow: Vec<TcpStream> = run_in(&testbed.gateway, || {
        (0..2000)
            .map(|i| connect(Some(format!("10.0.1.{}", 100 + i % 100).parse().unwrap())))
            .collect()
    });
    // They trickle the start of a 1020-byte message, a byte every 2 s, for 10 s.
    let header = [0x01u8, 0xff, 0x22, 0x63, 0x0a];
    let started = Instant::now();
    let mut gateway_answer = None;
    let mut most_files = 0;
    for (round, byte) in header.iter().enumerate() {
        for stream in &mut slow {
            stream.set_nonblocking(true).unwrap();
            let _ = stream.write(&[*byte]);
        }
        most_files = most_files.max(open_fds(pid));
        if round == 1 {
            // A gateway from another address meanwhile: served at once.
            let asked = Instant::now();
            gateway_answer = Some((
                verdict(&testbed, &key, greeting_server_address()),
                asked.elapsed(),
            ));
        }
        thread::sleep(Duration::from_secs(2));
    }
    let (answer, took) = gateway_answer.unwrap();
    println!(
        "during the attack: a gateway answered in {took:?}; the converter held at most \
         {most_files} files ({files} before), RSS {} KiB more",
        rss_kib().saturating_sub(rss_before)
    );
    assert_eq!(answer, Response::Connected);
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The pending budget (256) bounds what they hold.
    assert!(
        most_files < files + 300,
        "{most_files} files, {files} before"
    );
    assert!(
        rss_kib() < rss_before + 32 * 1024,
        "RSS grew by more than 32 MiB"
    );

    // By now (10 s; request timeout 5 s, then at most 2 s of draining) the converter
    // closed every one of them.
    assert!(started.elapsed() >= Duration::from_secs(9));
    let still_open = slow
        .iter()
        .filter(|&stream| {
            let mut buffer = [0u8; 64];
            let mut reader: &TcpStream = stream;
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(error) if error.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        })
        .count();
    assert_eq!(still_open, 0, "connections the converter still holds");
    drop(slow);
    let left = settle_fds(pid, files);
    assert!(left <= files, "{left} open files, {files} before");
    let log = daemon_log(dir.path(), "converter");
    assert!(
        log.contains("unauthenticated connections over budget"),
        "{log}"
    );
}

#[test]
fn refused_requests_count_against_their_source_and_log_little() {
    require_root();
    let dir = TempDir::new("hostile-refused").unwrap();
    let (testbed, _server, _key) = converter(&dir, "hrefused", &[]);
    let pid = testbed.pid("converter").unwrap();
    let files = open_fds(pid);
    // 100 well-formed requests without a cookie from one address, left open: each is
    // answered Missing Cookie, and the converter then waits for the client to close.
    let no_cookie = Request {
        destination: greeting_server_address(),
        cookie: None,
    }
    .to_message()
    .encode()
    .unwrap();
    let refused: Vec<TcpStream> = run_in(&testbed.gateway, move || {
        (0..100)
            .map(|_| {
                let mut stream = connect(None);
                stream.write_all(&no_cookie).unwrap();
                stream
            })
            .collect()
    });
    thread::sleep(Duration::from_millis(500));
    let held = open_fds(pid).saturating_sub(files);
    // One source's share of the pending budget is 16.
    assert!(held <= 20, "the converter holds {held} refused connections");
    let log = daemon_log(dir.path(), "converter");
    let lines = log.lines().filter(|line| line.contains("refused")).count();
    println!("100 refused requests left open: {held} held, {lines} log lines");
    assert!(lines <= 12, "{lines} log lines for the refusals: {log}");
    drop(refused);
    let left = settle_fds(pid, files);
    assert!(left <= files, "{left} open files, {files} before");
}

#[test]
fn a_flood_of_connections_leaves_nothing_behind() {
    require_root();
    let dir = TempDir::new("hostile-flood").unwrap();
    let (testbed, _server, key) = converter(&dir, "hflood", &[]);
    let pid = testbed.pid("converter").unwrap();
    let files = open_fds(pid);
    // Four threads for three seconds: connect and hang up, or send garbage and go.
    let threads: Vec<_> = (0..4)
        .map(|thread_index| {
            let name = testbed.gateway.name().to_owned();
            thread::spawn(move || {
                enter(&name).unwrap();
                let started = Instant::now();
                let mut count = 0u32;
                while started.elapsed() < Duration::from_secs(3) {
                    let mut stream = connect(None);
                    if (count + thread_index).is_multiple_of(2) {
                        let _ = stream.write_all(b"\x01\x02garbage");
                    }
                    count += 1;
                }
                count
            })
        })
        .collect();
    let connections: u32 = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .sum();
    println!("{connections} connections in 3 s");
    assert!(connections > 1000, "only {connections} connections");
    let left = settle_fds(pid, files);
    assert!(left <= files, "{left} open files, {files} before");
    assert_eq!(
        verdict(&testbed, &key, greeting_server_address()),
        Response::Connected
    );
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    require_root();
    let dir = TempDir::new("hostile-key").unwrap();
    let key = dir.path().join("key");
    Key::generate(&key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let pin_path = format!("/sys/fs/bpf/{}", mptcp_tests::unique_name("key"));
    for role_args in [
        vec!["converter", "--listen", "127.0.0.1:0"],
        vec![
            "gateway",
            "--converter",
            "127.0.0.1:5124",
            "--pin-path",
            &pin_path,
        ],
    ] {
        let role = role_args[0];
        let started = Instant::now();
        let output = Command::new("timeout")
            .arg("10")
            .arg(mptcp_user_bin())
            .args(&role_args)
            .arg("--key-file")
            .arg(&key)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{role} started: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{role} ran: {stderr}"
        );
        assert!(
            stderr.contains("open to group or others") && stderr.contains("chmod 600"),
            "{role}: {stderr}"
        );
    }
    // The gateway took its instance lock before it read the key; the lock file stays
    // by design, and this pin path is never used again.
    let _ = fs::remove_file(mptcp_user::sys::run_file(Path::new(&pin_path), "lock"));
}

/// Sends `bytes` from `source` and returns what came back before the close, or the
/// error that ended the read (a reset).
fn exchange_from(
    testbed: &Testbed,
    source: Option<IpAddr>,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, ErrorKind> {
    run_in(&testbed.gateway, move || {
        let mut stream = connect(source);
        stream.write_all(&bytes).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map(|_| answer)
            .map_err(|error| error.kind())
    })
}

/// The TLVs of the converter's answer to `tlvs`.
fn answer_tlvs(testbed: &Testbed, tlvs: Vec<Tlv>) -> Vec<Tlv> {
    let bytes = Message::new(tlvs).encode().unwrap();
    let answer = exchange_from(testbed, None, bytes).unwrap();
    Message::decode(&answer).unwrap().0.tlvs
}

#[test]
fn the_converter_answers_as_rfc_8803_says() {
    require_root();
    let dir = TempDir::new("hostile-rfc").unwrap();
    let (testbed, _server, key) = converter(&dir, "hrfc", &[]);
    let destination = greeting_server_address();
    let connect = |tcp_options: Vec<u8>| Tlv::Connect {
        destination,
        tcp_options,
    };
    let cookie = || Tlv::Cookie(key.cookie(destination, unix_now()).unwrap());

    // Info alone (section 6.2.3): the Supported TCP Extensions TLV, not an error.
    let supported = Tlv::SupportedTcpExtensions(vec![4, 8, 30]);
    assert_eq!(
        answer_tlvs(&testbed, vec![Tlv::Info]),
        std::slice::from_ref(&supported)
    );
    // Info with a request: the same, then the Extended TCP Header with the options of
    // the server's SYN+ACK that TCP_INFO tells (MSS first).
    let answered = answer_tlvs(&testbed, vec![Tlv::Info, connect(Vec::new()), cookie()]);
    println!("answer to Info + Connect: {answered:02x?}");
    assert_eq!(answered[0], supported);
    assert!(
        matches!(&answered[1], Tlv::ExtendedTcpHeader(options) if options.starts_with(&[2, 4])),
        "{answered:?}"
    );
    // TCP options: NOP and MSS ignored; TFO refused, and named.
    let ignored = vec![1, 1, 2, 4, 5, 0xb4];
    assert!(matches!(
        answer_tlvs(&testbed, vec![connect(ignored), cookie()])[0],
        Tlv::ExtendedTcpHeader(_)
    ));
    assert_eq!(
        answer_tlvs(&testbed, vec![connect(vec![34, 2, 0, 0]), cookie()]),
        [Tlv::Error {
            code: ErrorCode::UnsupportedTcpOption,
            value: vec![34]
        }]
    );
    // A TLV twice (section 6.2.1): Malformed Message, echoing the message.
    let twice = answer_tlvs(&testbed, vec![connect(Vec::new()), cookie(), cookie()]);
    assert!(
        matches!(&twice[0], Tlv::Error { code: ErrorCode::MalformedMessage, value } if value[0] == 0 && value[1..].starts_with(&[1])),
        "{twice:?}"
    );
    // Total Length 0 (section 6.1), or not the Convert magic: a reset.
    for bytes in [vec![1, 0, 0x22, 0x63], vec![1, 2, 0x12, 0x34, 1, 1, 0, 0]] {
        assert_eq!(
            exchange_from(&testbed, None, bytes.clone()),
            Err(ErrorKind::ConnectionReset),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn listed_client_networks_convert_without_a_cookie() {
    require_root();
    let dir = TempDir::new("hostile-clients").unwrap();
    let (testbed, _server, _) = converter(&dir, "hclient", &["--allow-client", "10.0.2.0/24"]);
    let no_cookie = Request {
        destination: greeting_server_address(),
        cookie: None,
    }
    .to_message()
    .encode()
    .unwrap();
    let from = |source: &str| {
        let answer =
            exchange_from(&testbed, Some(source.parse().unwrap()), no_cookie.clone()).unwrap();
        Response::from_message(&Message::decode(&answer).unwrap().0)
    };
    assert_eq!(from("10.0.2.1"), Response::Connected);
    assert_eq!(from("10.0.1.1"), Response::Error(ErrorCode::MissingCookie));
    // The destination policy still applies to listed clients.
    let loopback = Request {
        destination: "127.0.0.1:22".parse().unwrap(),
        cookie: None,
    }
    .to_message()
    .encode()
    .unwrap();
    let answer = exchange_from(&testbed, Some("10.0.2.1".parse().unwrap()), loopback).unwrap();
    assert_eq!(
        Response::from_message(&Message::decode(&answer).unwrap().0),
        Response::Error(ErrorCode::NotAuthorized)
    );
}

/// Times `attempts` requests sent in the SYN (TCP Fast Open) from the gateway host to
/// the converter, over plain TCP or MPTCP: from connect() to the answer's first byte.
/// Each with all that came back before the converter closed. The first attempt has no
/// cookie (the cache is emptied) and fetches one; the others use it.
fn fast_open_requests(
    testbed: &Testbed,
    mptcp: bool,
    request: &[u8],
    attempts: usize,
) -> Vec<(Duration, Vec<u8>)> {
    testbed.gateway.flush_tcp_metrics().unwrap();
    let request = request.to_vec();
    let transport = if mptcp {
        Transport::Mptcp
    } else {
        Transport::Tcp
    };
    run_in(&testbed.gateway, move || {
        (0..attempts)
            .map(|_| {
                let socket = fast_open_socket(transport).unwrap();
                let started = Instant::now();
                socket.connect(&converter_address().into()).unwrap();
                let mut stream = TcpStream::from(socket);
                // With a cookie from an earlier connection, this goes out in the SYN.
                stream.write_all(&request).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut answer = vec![0];
                stream.read_exact(&mut answer).unwrap();
                let took = started.elapsed();
                answer.extend(read_to_close(&mut stream, Duration::from_secs(5)));
                (took, answer)
            })
            .collect()
    })
}

/// The converter's count of connections accepted with data in the SYN.
fn fast_open_accepted(testbed: &Testbed) -> u64 {
    let netstat = testbed
        .converter
        .exec("cat", &["/proc/net/netstat"])
        .unwrap();
    let mut lines = netstat.lines().filter(|line| line.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "TCPFastOpenPassive")
        .map(|(_, value)| value.parse().unwrap())
        .unwrap()
}

#[test]
fn rfc_clients_may_send_their_request_in_the_syn() {
    require_root();
    let dir = TempDir::new("hostile-tfo").unwrap();
    // A line with delay: the round trip Fast Open saves is worth measuring.
    let mut testbed = Testbed::new("htfo", &[Uplink::line(20, 15)]).unwrap();
    testbed
        .start_converter(dir.path(), &["--allow-client", "10.0.1.0/24"])
        .unwrap();
    let _server = GreetingServer::start(&testbed.server, GREETING_PORT).unwrap();
    let request = Request {
        destination: greeting_server_address(),
        cookie: None,
    }
    .to_message()
    .encode()
    .unwrap();
    let accepted_before = fast_open_accepted(&testbed);
    let mut in_the_syn = 0;
    for mptcp in [false, true] {
        let exchanges = fast_open_requests(&testbed, mptcp, &request, 3);
        let times: Vec<Duration> = exchanges.iter().map(|(took, _)| *took).collect();
        println!("{}: {times:?}", if mptcp { "MPTCP" } else { "plain TCP" });
        for (_, answer) in &exchanges {
            let (message, used) =
                Message::decode(answer).unwrap_or_else(|error| panic!("{error}: {answer:02x?}"));
            assert_eq!(Response::from_message(&message), Response::Connected);
            assert_eq!(
                String::from_utf8_lossy(&answer[used..]).trim(),
                CONVERTER_TOWARD_SERVER
            );
        }
        // An MPTCP client's answer waits for its key (the third ACK), never longer.
        assert!(
            times.iter().all(|&took| took < Duration::from_secs(1)),
            "a request in the SYN stalled: {times:?}"
        );
        if !mptcp {
            assert!(
                times[1] < times[0] * 3 / 4 && times[2] < times[0] * 3 / 4,
                "a plain TCP client's request in the SYN saved no round trip: {times:?}"
            );
        }
        in_the_syn += exchanges.len() - 1;
    }
    assert_eq!(
        fast_open_accepted(&testbed) - accepted_before,
        u64::try_from(in_the_syn).unwrap(),
        "the converter did not take every request with a cookie in the SYN"
    );
    assert!(!daemon_log(dir.path(), "converter").contains("not accepted"));
}
