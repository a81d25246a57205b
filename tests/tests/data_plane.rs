//! The data plane on the namespace testbed: LAN flows intercepted by the gateway,
//! carried over MPTCP on every uplink to the converter, and on to a server. Real
//! third-party programs at the ends: curl on the LAN host, python3's http.server.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    process::Command,
};

use mptcp_tests::{
    TempDir, random_bytes, require_root,
    testbed::{SERVER, SERVER_PRIVATE, SERVER_V6, Testbed, Uplink, daemon_log},
};
use mptcp_user::protocol::codec::ErrorCode;

/// Uplinks fast enough to keep the tests short, unequal like real ones.
const UPLINKS: [Uplink; 2] = [Uplink::htb(80), Uplink::htb(40)];

/// A testbed with the converter and the gateway running (`gateway_args` added to the
/// gateway's command line), keeping its key and logs in `dir`.
fn deploy(dir: &TempDir, label: &str, gateway_args: &[&str]) -> Testbed {
    let mut testbed = Testbed::new(label, &UPLINKS).unwrap();
    testbed
        .start_gateway_and_converter(dir.path(), gateway_args, &[])
        .unwrap();
    testbed
}

/// Serves `files` (name, contents) from python3's http.server on the server host.
fn serve_files(testbed: &mut Testbed, dir: &TempDir, files: &[(&str, &[u8])]) {
    let served = dir.path().join("www");
    fs::create_dir(&served).unwrap();
    for (name, contents) in files {
        fs::write(served.join(name), contents).unwrap();
    }
    testbed
        .start_http_server(&served, &dir.path().join("http.log"))
        .unwrap();
}

/// Runs curl in the LAN namespace; returns whether it succeeded.
fn curl(testbed: &Testbed, args: &[&str]) -> bool {
    let status = testbed
        .client
        .command("curl")
        .args(["--silent", "--show-error", "--max-time", "60"])
        .args(args)
        .status()
        .expect("curl runs");
    status.success()
}

/// Downloads `url` with curl from the LAN host; returns the bytes and what each uplink
/// carried meanwhile.
fn download(testbed: &Testbed, dir: &TempDir, url: &str) -> (Vec<u8>, Vec<u64>) {
    let output = dir.path().join("downloaded");
    let before = testbed.uplink_rx_bytes().unwrap();
    assert!(
        curl(
            testbed,
            &["--fail", "--output", output.to_str().unwrap(), url]
        ),
        "download from {url} failed; gateway log: {}",
        daemon_log(dir.path(), "gateway")
    );
    let after = testbed.uplink_rx_bytes().unwrap();
    let carried = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    (fs::read(&output).unwrap(), carried)
}

#[test]
fn download_arrives_intact_over_both_uplinks() {
    require_root();
    let dir = TempDir::new("download").unwrap();
    let mut testbed = deploy(&dir, "dl", &[]);
    let original = random_bytes(24 * 1024 * 1024);
    serve_files(&mut testbed, &dir, &[("file", &original)]);

    let (downloaded, carried) = download(&testbed, &dir, &format!("http://{SERVER}/file"));

    assert!(downloaded == original, "downloaded bytes differ");
    for (uplink, carried) in carried.iter().enumerate() {
        assert!(
            *carried > original.len() as u64 / 10,
            "uplink {} carried only {carried} bytes of {}",
            uplink + 1,
            original.len()
        );
    }
    // A flow that fails is logged as `CLIENT -> DESTINATION: why`.
    let gateway_log = daemon_log(dir.path(), "gateway");
    assert!(
        !gateway_log
            .lines()
            .any(|line| line.contains("192.168.50.2:") && line.contains(" -> ")),
        "gateway log: {gateway_log}"
    );
}

#[test]
fn ipv6_destination_is_converted() {
    require_root();
    let dir = TempDir::new("ipv6").unwrap();
    let mut testbed = deploy(&dir, "v6", &[]);
    let original = random_bytes(4 * 1024 * 1024);
    serve_files(&mut testbed, &dir, &[("file", &original)]);

    // The gateway host has no IPv6 route to the server: only the converter reaches it.
    let (downloaded, carried) = download(&testbed, &dir, &format!("http://[{SERVER_V6}]/file"));
    assert!(downloaded == original, "downloaded bytes differ");
    let carried: u64 = carried.iter().sum();
    assert!(
        carried > original.len() as u64,
        "the uplinks carried only {carried} bytes"
    );
}

/// A stock-library HTTP server that stores PUT bodies (python3's http.server has none).
const PUT_SERVER: &str = r"
import http.server, sys, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_PUT(self):
        length = int(self.headers['Content-Length'])
        with open(os.path.join(sys.argv[1], 'uploaded'), 'wb') as out:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                out.write(chunk)
                length -= len(chunk)
        self.send_response(201)
        self.end_headers()
http.server.HTTPServer(('0.0.0.0', 8080), Handler).serve_forever()
";

#[test]
fn upload_arrives_intact() {
    require_root();
    let dir = TempDir::new("upload").unwrap();
    let mut testbed = deploy(&dir, "ul", &[]);
    let upload_dir = dir.path().to_str().unwrap().to_owned();
    testbed
        .start_python_server(dir.path(), PUT_SERVER, &[&upload_dir], 8080)
        .unwrap();

    let file = dir.path().join("to-upload");
    let original = random_bytes(20 * 1024 * 1024);
    fs::write(&file, &original).unwrap();
    let url = format!("http://{SERVER}:8080/upload");
    assert!(
        curl(
            &testbed,
            &["--fail", "--upload-file", file.to_str().unwrap(), &url]
        ),
        "upload failed"
    );
    assert!(
        fs::read(dir.path().join("uploaded")).unwrap() == original,
        "uploaded bytes differ"
    );
}

#[test]
fn gateway_with_a_wrong_key_is_not_authorized() {
    require_root();
    let dir = TempDir::new("wrongkey").unwrap();
    let wrong_key = dir.path().join("wrong-key");
    mptcp_tests::netns::run(
        Command::new(mptcp_tests::mptcp_user_bin())
            .arg("keygen")
            .arg(&wrong_key),
    )
    .unwrap();
    let mut testbed = deploy(&dir, "key", &["--key-file", wrong_key.to_str().unwrap()]);
    serve_files(&mut testbed, &dir, &[("index.html", b"hello")]);

    assert!(
        !curl(
            &testbed,
            &["--output", "/dev/null", &format!("http://{SERVER}/")]
        ),
        "must fail"
    );
    let gateway_log = daemon_log(dir.path(), "gateway");
    assert!(
        gateway_log.contains(&ErrorCode::NotAuthorized.to_string()),
        "gateway log: {gateway_log}"
    );
    let converter_log = daemon_log(dir.path(), "converter");
    assert!(
        converter_log.contains("bad MAC"),
        "converter log: {converter_log}"
    );
    // The converter stays healthy.
    testbed.check_running().unwrap();
}

#[test]
fn private_destinations_are_refused_by_the_converter() {
    require_root();
    let dir = TempDir::new("private").unwrap();
    // The gateway itself leaves private ranges alone by default; include this one so
    // that the converter's refusal is what is tested.
    let mut testbed = deploy(&dir, "priv", &["--include", "10.9.0.0/24"]);
    serve_files(&mut testbed, &dir, &[("index.html", b"hello")]);

    // The same server on its public address works, so a failure is the policy's doing.
    assert!(curl(
        &testbed,
        &["--output", "/dev/null", &format!("http://{SERVER}/")]
    ));
    assert!(!curl(
        &testbed,
        &[
            "--output",
            "/dev/null",
            &format!("http://{SERVER_PRIVATE}/")
        ]
    ));
    let converter_log = daemon_log(dir.path(), "converter");
    assert!(
        converter_log.contains(&format!(
            "destination refused: {SERVER_PRIVATE} is in the refused range"
        )),
        "converter log: {converter_log}"
    );
}

/// Reads to EOF, then answers with 2 MB derived from what it read.
const HALF_CLOSE_SERVER: &str = r"
import socket, hashlib
listener = socket.create_server(('0.0.0.0', 7000))
while True:
    conn, _ = listener.accept()
    received = b''
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        received += chunk
    digest = hashlib.sha256(received).digest()
    conn.sendall(digest * (2 * 1024 * 1024 // 32))
    conn.close()
";

/// Sends a request, shuts down its write side, and prints whether the reply matches.
const HALF_CLOSE_CLIENT: &str = r"
import socket, hashlib, sys
request = b'half-close request ' * 1000
conn = socket.create_connection((sys.argv[1], 7000))
conn.sendall(request)
conn.shutdown(socket.SHUT_WR)
reply = b''
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    reply += chunk
expected = hashlib.sha256(request).digest() * (2 * 1024 * 1024 // 32)
print('match' if reply == expected else 'mismatch %d bytes' % len(reply))
";

#[test]
fn half_close_lets_the_client_receive_the_whole_response() {
    require_root();
    let dir = TempDir::new("halfclose").unwrap();
    let mut testbed = deploy(&dir, "half", &[]);
    testbed
        .start_python_server(dir.path(), HALF_CLOSE_SERVER, &[], 7000)
        .unwrap();

    let output = testbed
        .client
        .exec(
            "timeout",
            &["30", "python3", "-c", HALF_CLOSE_CLIENT, SERVER],
        )
        .unwrap();
    assert_eq!(output.trim(), "match");
}

/// Sends bytes to the converter from the gateway host and prints the answer in hex.
const RAW_CLIENT: &str = r"
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
conn.sendall(bytes.fromhex(sys.argv[3]))
answer = b''
while True:
    chunk = conn.recv(1024)
    if not chunk:
        break
    answer += chunk
print(answer.hex())
";

#[test]
fn converter_answers_bad_requests_with_rfc_error_codes() {
    use mptcp_tests::testbed::{CONVERTER, CONVERTER_PORT};
    require_root();
    let dir = TempDir::new("rawreq").unwrap();
    let mut testbed = deploy(&dir, "raw", &[]);
    let port = CONVERTER_PORT.to_string();
    let ask = |hex: &str| {
        testbed
            .gateway
            .exec(
                "timeout",
                &["10", "python3", "-c", RAW_CLIENT, CONVERTER, &port, hex],
            )
            .unwrap()
            .trim()
            .to_owned()
    };
    // Error TLV: 1e 01 <code> 00 after the header 01 02 22 63.
    let connect_without_cookie = "010622630a05005000000000000000000000ffffcb00710a";
    assert_eq!(
        ask(connect_without_cookie),
        "010222631e010300",
        "Missing Cookie (3)"
    );
    // Unsupported Version carries the version we speak (1) as its value.
    assert_eq!(
        ask("0206226300"),
        "010222631e010001",
        "Unsupported Version (0)"
    );
    // Unsupported Message echoes the message after a zero byte (RFC 8803, figure 23).
    assert_eq!(
        ask("0102226342010000"),
        "010422631e0302000102226342010000",
        "Unsupported Message (2)"
    );
    // A request cut short: after the 5 s request timeout, Malformed Message (1).
    assert_eq!(ask("010122"), "010222631e010100", "Malformed Message (1)");
    let converter_log = daemon_log(dir.path(), "converter");
    assert!(
        converter_log.contains(&format!("refused ({})", ErrorCode::MissingCookie)),
        "converter log: {converter_log}"
    );
    testbed.check_running().unwrap();
}

/// Open file descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Bad traffic at both daemons from inside the testbed: LAN connections to a port where
/// nothing listens (the converter gets "refused", the gateway resets the client), and
/// connections to the converter that send garbage or nothing.
fn flood(testbed: &Testbed, connections: usize) {
    use std::{
        io::{Read as _, Write as _},
        net::TcpStream,
        time::Duration,
    };
    // Sends `payload` and waits for the answer; with no payload, hangs up at once.
    let attempt = |address: &str, payload: &'static [u8]| {
        let address = address.parse().unwrap();
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            && !payload.is_empty()
        {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let _ = stream.write_all(payload);
            let _ = stream.read(&mut [0u8; 64]);
        }
    };
    std::thread::scope(|scope| {
        let (client, gateway) = (testbed.client.name(), testbed.gateway.name());
        scope.spawn(move || {
            mptcp_tests::netns::enter(client).unwrap();
            for _ in 0..connections {
                attempt(&format!("{SERVER}:9"), b"GET / HTTP/1.0\r\n\r\n");
            }
        });
        scope.spawn(move || {
            mptcp_tests::netns::enter(gateway).unwrap();
            for i in 0..connections {
                let payload: &[u8] = if i % 2 == 0 { b"\x01\x02garbage!" } else { b"" };
                attempt("10.0.1.2:5124", payload);
            }
        });
    });
}

#[test]
fn floods_of_bad_connections_leak_no_descriptors() {
    require_root();
    let dir = TempDir::new("flood").unwrap();
    let mut testbed = deploy(&dir, "flood", &[]);
    serve_files(&mut testbed, &dir, &[("index.html", b"hello")]);
    let pids = [
        testbed.pid("gateway").unwrap(),
        testbed.pid("converter").unwrap(),
    ];
    // The converter waits up to 2 s for a refused client's input to drain.
    let settle = std::time::Duration::from_secs(4);

    // The first round may grow the pipe pool; a leak grows with every round.
    flood(&testbed, 150);
    std::thread::sleep(settle);
    let after_one = pids.map(open_fds);
    flood(&testbed, 150);
    std::thread::sleep(settle);
    let after_two = pids.map(open_fds);
    for ((one, two), daemon) in after_one
        .iter()
        .zip(&after_two)
        .zip(["gateway", "converter"])
    {
        assert!(
            two <= &(one + 4),
            "{daemon}: {one} fds after one flood, {two} after two"
        );
    }
    testbed.check_running().unwrap();
    assert!(
        curl(
            &testbed,
            &["--output", "/dev/null", &format!("http://{SERVER}/")]
        ),
        "a good request fails after the floods"
    );
    let converter_log = daemon_log(dir.path(), "converter");
    assert!(
        converter_log.contains("refused") && !converter_log.contains("panicked"),
        "converter log: {converter_log}"
    );
}

#[test]
fn client_abort_mid_download_ends_the_server_side() {
    use std::{
        io::{Read as _, Write as _},
        net::{TcpListener, TcpStream},
        sync::mpsc,
        time::{Duration, Instant},
    };
    require_root();
    let dir = TempDir::new("abort").unwrap();
    let testbed = deploy(&dir, "abort", &[]);
    let (server_netns, client_netns) = (testbed.server.name(), testbed.client.name());
    let (ended_tx, ended_rx) = mpsc::channel();
    let (listening_tx, listening_rx) = mpsc::channel();
    std::thread::scope(|scope| {
        // The server streams until its connection breaks, and reports when that was.
        scope.spawn(move || {
            mptcp_tests::netns::enter(server_netns).unwrap();
            let listener = TcpListener::bind("0.0.0.0:7070").unwrap();
            listening_tx.send(()).unwrap();
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_write_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let block = vec![0u8; 64 * 1024];
            let error = loop {
                if let Err(error) = stream.write_all(&block) {
                    break error;
                }
            };
            ended_tx.send((Instant::now(), error.kind())).unwrap();
        });
        listening_rx.recv().unwrap();
        // The client reads 1 MiB, then closes with data unread: its kernel resets.
        let aborted = scope
            .spawn(move || {
                mptcp_tests::netns::enter(client_netns).unwrap();
                let mut stream = TcpStream::connect(format!("{SERVER}:7070")).unwrap();
                stream.read_exact(&mut vec![0u8; 1 << 20]).unwrap();
                Instant::now()
            })
            .join()
            .unwrap();
        let (ended, kind) = ended_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_ne!(
            kind,
            std::io::ErrorKind::WouldBlock,
            "the server was still blocked 20 s after the client left"
        );
        assert!(
            ended.duration_since(aborted) < Duration::from_secs(10),
            "the server noticed the abort only after {:?} ({kind:?})",
            ended.duration_since(aborted)
        );
    });
}

/// Sends data to each client until it goes: a stream with no length of its own, so that
/// only the way it ends says whether it is complete.
const ENDLESS_SERVER: &str = r"
import socket, sys, threading
server = socket.create_server(('0.0.0.0', int(sys.argv[1])))
def feed(client):
    try:
        while True:
            client.sendall(b'x' * 65536)
    except OSError:
        pass
while True:
    client, _ = server.accept()
    threading.Thread(target=feed, args=(client,), daemon=True).start()
";

/// Reads until the stream ends; prints `reading` once the first bytes came, then
/// `eof`, `reset` or `timeout`.
const STREAM_READER: &str = r"
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
try:
    if connection.recv(65536):
        print('reading', flush=True)
        while connection.recv(65536):
            pass
    print('eof')
except ConnectionResetError:
    print('reset')
except socket.timeout:
    print('timeout')
";

/// Kills `daemon` while the LAN host reads an endless stream through the gateway; returns
/// how the stream ended for the LAN host and how long after the kill.
fn stream_end_when_killed(daemon: &str) -> (String, std::time::Duration) {
    let port = 9300;
    let dir = TempDir::new(&format!("crash{daemon}")).unwrap();
    let mut testbed = deploy(&dir, &format!("crash{daemon}"), &[]);
    testbed
        .start_python_server(dir.path(), ENDLESS_SERVER, &[&port.to_string()], port)
        .unwrap();
    let mut reader = testbed
        .client
        .command("python3")
        .args(["-c", STREAM_READER, SERVER, &port.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(reader.stdout.take().unwrap()).lines();
    let first = said.next().transpose().unwrap();
    assert_eq!(first.as_deref(), Some("reading"), "the stream never came");
    testbed.forget(daemon);
    let killed = std::time::Instant::now();
    let end = said.next().transpose().unwrap().unwrap_or_default();
    reader.wait().unwrap();
    (end.trim().to_owned(), killed.elapsed())
}

#[test]
fn a_killed_converter_resets_the_flows_it_carried() {
    require_root();
    let (end, after) = stream_end_when_killed("converter");
    println!("converter killed: the LAN stream ended with {end} after {after:?}");
    assert_eq!(end, "reset", "a crash must not look like a complete stream");
    assert!(after < std::time::Duration::from_secs(2), "{after:?}");
}

#[test]
fn a_killed_gateway_resets_the_flows_it_carried() {
    require_root();
    let (end, after) = stream_end_when_killed("gateway");
    println!("gateway killed: the LAN stream ended with {end} after {after:?}");
    assert_eq!(end, "reset", "a crash must not look like a complete stream");
    assert!(after < std::time::Duration::from_secs(2), "{after:?}");
}

#[test]
fn a_thousand_idle_flows_are_held_end_to_end_by_daemons_started_as_services() {
    require_root();
    let dir = TempDir::new("held").unwrap();
    // Both daemons start with a soft limit of 1024 open files, which without raising
    // it holds about 500 flows.
    let mut testbed = deploy(&dir, "held", &[]);
    let held = mptcp_tests::bench::scale::hold(&mut testbed, 1000).unwrap();
    println!("{held:?}");
    assert_eq!(held.converted(), 1000, "{:?}", held.seen_from);
    assert_eq!(held.echoed, 1000);
    for (name, load) in held.daemons() {
        // Two sockets a flow, and no pipe held by an idle one: only the pool's few.
        assert!(load.files_per_flow(1000) < 2.05, "{name}: {load:?}");
        assert!(
            load.held.pipes <= load.before.pipes + 16,
            "{name}: {load:?}"
        );
        // Nothing left after they closed, but the gateway's warm connections (and their
        // converter ends).
        let warm = mptcp_user::config::defaults::POOL_SIZE as u64;
        assert!(load.leaked_files() <= warm, "{name}: {load:?}");
    }
}
