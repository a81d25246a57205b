//! Kernel behaviour the design depends on, kept as tests so that a kernel that changes
//! it is noticed.
//!
//! MPTCP with TCP Fast Open is broken on the passive side (kernel 6.18): when an MPTCP
//! server accepts a connection whose SYN carried data (the client had a cookie) and
//! writes its answer before the client's third handshake ACK has arrived, the answer
//! stays in the MPTCP-level send queue and leaves only with the client's next packet.
//! So the gateway does not use TFO towards the converter; its warm connections save
//! the handshake's round trip instead. When this test fails, the kernel is fixed: TFO
//! could then do the same without holding connections open.
//!
//! The converter accepts TFO all the same, for RFC 8803 clients: an answer written
//! once the MPTCP client's key has arrived (the third ACK) leaves at once, which the
//! test checks too, and plain TCP clients are never held.
//!
//! MPTCP's receive side withholds data ACKs (kernels 6.15 to at least 6.18): data that
//! arrives while the receiving application is in a read waits in the subflow, the
//! subflow's ACK carries the old data ACK, and nothing announces the data once it has
//! been read, so a sender whose send buffer is full waits for its MPTCP retransmission
//! timer (200 ms). On a fast line that caps a flow at a fraction of a gigabit, whatever
//! the relay does (docs/benchmarks.md, `bench relay`). The test counts the sender's
//! MPTCP-level retransmissions on a line that loses nothing; when it fails, the kernel
//! is fixed.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    measure::{self, Transport},
    netns::{Netns, run_in},
    require_root,
    testbed::{CONVERTER, Testbed, Uplink},
};
use socket2::{Domain, Protocol, Socket, Type};

const TFO_PORT: u16 = 7100;
/// An answer later than this waited for something other than the line.
const STALLED: Duration = Duration::from_secs(1);

fn protocol(mptcp: bool) -> Protocol {
    if mptcp {
        Protocol::MPTCP
    } else {
        Protocol::TCP
    }
}

/// A listener in `netns` on `address` (TCP Fast Open on if `fast_open`).
fn listener_in(
    netns: &Netns,
    address: SocketAddr,
    protocol: Protocol,
    fast_open: bool,
) -> TcpListener {
    run_in(netns, move || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(protocol)).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&address.into()).unwrap();
        if fast_open {
            mptcp_user::sys::set_fast_open(&socket, 16).unwrap();
        }
        socket.listen(16).unwrap();
        socket.into()
    })
}

/// When a test server answers.
#[derive(Clone, Copy)]
enum Answer {
    /// As soon as the request is read.
    AtOnce,
    /// Once an MPTCP client's key has arrived, as the converter does.
    OnceTheKeyArrived,
}

/// A listener with TCP Fast Open on, in `netns`, that answers each 4-byte request with
/// "pong" (`when` says when) and keeps the connection until the client closes.
fn tfo_server(netns: &Netns, mptcp: bool, when: Answer) -> SocketAddr {
    let port = TFO_PORT + u16::from(mptcp) + 2 * when as u16;
    let address: SocketAddr = format!("{CONVERTER}:{port}").parse().unwrap();
    let listener = listener_in(netns, address, protocol(mptcp), true);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut request = [0u8; 4];
                if stream.read_exact(&mut request).is_ok() {
                    if let Answer::OnceTheKeyArrived = when {
                        while !mptcp_user::sys::mptcp_can_send(&stream) {
                            thread::sleep(Duration::from_millis(1));
                        }
                    }
                    let _ = stream.write_all(b"pong");
                    let _ = stream.read(&mut [0u8; 1]);
                }
            });
        }
    });
    address
}

/// Times `attempts` connections from `netns` to `server` with TCP_FASTOPEN_CONNECT:
/// from connect() to the answer's first byte (or the stall bound). The first attempt
/// has no cookie (the cache is emptied) and fetches one; the others use it.
fn tfo_exchanges(netns: &Netns, server: SocketAddr, mptcp: bool, attempts: usize) -> Vec<Duration> {
    netns.flush_tcp_metrics().unwrap();
    let transport = if mptcp {
        Transport::Mptcp
    } else {
        Transport::Tcp
    };
    run_in(netns, move || {
        (0..attempts)
            .map(|_| {
                let socket = measure::fast_open_socket(transport).unwrap();
                let started = Instant::now();
                socket.connect(&server.into()).unwrap();
                let mut stream = TcpStream::from(socket);
                // With a cookie, this goes out in the SYN.
                stream.write_all(b"ping").unwrap();
                stream.set_read_timeout(Some(STALLED * 3)).unwrap();
                let answered = stream.read_exact(&mut [0u8; 4]).is_ok();
                let took = started.elapsed();
                if answered { took } else { STALLED * 3 }
            })
            .collect()
    })
}

#[test]
fn mptcp_fast_open_still_holds_the_servers_first_answer() {
    require_root();
    let testbed = Testbed::new("tfo", &[Uplink::line(20, 15)]).unwrap();
    for netns in [&testbed.gateway, &testbed.converter] {
        netns.sysctl("net.ipv4.tcp_fastopen", "3").unwrap();
        // No cookie from an earlier run: the first attempt fetches one.
        netns.flush_tcp_metrics().unwrap();
    }

    // The control: plain TCP Fast Open answers in one round trip once it has a cookie.
    let tcp_server = tfo_server(&testbed.converter, false, Answer::AtOnce);
    let tcp = tfo_exchanges(&testbed.gateway, tcp_server, false, 3);
    println!("plain TCP with TFO: {tcp:?}");
    assert!(
        tcp[1] < tcp[0] * 3 / 4,
        "TFO did not save a round trip for plain TCP ({tcp:?}): the test setup is wrong"
    );

    let mptcp_server = tfo_server(&testbed.converter, true, Answer::AtOnce);
    let mptcp = tfo_exchanges(&testbed.gateway, mptcp_server, true, 3);
    println!("MPTCP with TFO: {mptcp:?}");
    assert!(
        mptcp[0] < STALLED,
        "the first (cookie-less) attempt stalled: {mptcp:?}"
    );
    // What the converter does: answer MPTCP clients once their key has arrived. The
    // answer then never stalls, and the request still came in the SYN (the server works
    // on it during the round trip the third ACK takes).
    let waiting_server = tfo_server(&testbed.converter, true, Answer::OnceTheKeyArrived);
    let waited = tfo_exchanges(&testbed.gateway, waiting_server, true, 3);
    println!("MPTCP with TFO, answered once the key arrived: {waited:?}");
    assert!(
        waited.iter().all(|&took| took < STALLED),
        "an answer written once the client's key arrived stalled: {waited:?}"
    );
    // A plain TCP client with TFO of the same MPTCP listener is fine: one round trip.
    let plain_to_mptcp = tfo_exchanges(&testbed.gateway, waiting_server, false, 3);
    println!("plain TCP with TFO to the MPTCP listener: {plain_to_mptcp:?}");
    assert!(
        plain_to_mptcp[1] < plain_to_mptcp[0] * 3 / 4,
        "plain TCP TFO to an MPTCP listener did not save a round trip: {plain_to_mptcp:?}"
    );
    assert!(
        mptcp[1..].iter().all(|&took| took >= STALLED),
        "MPTCP with TFO answered without stalling ({mptcp:?}): the kernel's passive-side \
         bug looks fixed; TFO between gateway and converter could now save the \
         handshake's round trip (see tests/tests/kernel.rs)"
    );
}

/// Port of the bulk server.
const BULK_PORT: u16 = 7110;
/// Bytes of each bulk download.
const BULK_BYTES: usize = 300_000_000;
/// Downloads tried before concluding that the receiver announces its data in time: the
/// stall comes in bursts, and 8 downloads once saw only 2 (CI, 2026-12-04).
const BULK_ATTEMPTS: usize = 20;

/// An MPTCP listener in `netns` that sends [`BULK_BYTES`] to each client, in writes of
/// 4 MiB as fast as the send buffer takes them, then closes.
fn bulk_server(netns: &Netns) -> SocketAddr {
    let address: SocketAddr = format!("{CONVERTER}:{BULK_PORT}").parse().unwrap();
    let listener = listener_in(netns, address, Protocol::MPTCP, false);
    thread::spawn(move || {
        let chunk = vec![7u8; 4 << 20];
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut left = BULK_BYTES;
            while left > 0 {
                let n = left.min(chunk.len());
                if stream.write_all(&chunk[..n]).is_err() {
                    break;
                }
                left -= n;
            }
            let _ = stream.shutdown(Shutdown::Write);
            let _ = stream.read(&mut [0u8; 1]);
        }
    });
    address
}

/// Downloads from `server` over MPTCP in reads of 64 KiB (a relay's pipe); returns the
/// bytes and how long it took.
fn bulk_download(netns: &Netns, server: SocketAddr) -> (usize, Duration) {
    run_in(netns, move || {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::MPTCP)).unwrap();
        let started = Instant::now();
        socket.connect(&server.into()).unwrap();
        let mut stream = TcpStream::from(socket);
        let mut buffer = vec![0u8; 64 << 10];
        let mut received = 0;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
        (received, started.elapsed())
    })
}

#[test]
fn mptcp_receiver_still_withholds_data_acks_on_a_fast_line() {
    require_root();
    let testbed = Testbed::new("dack", &[Uplink::unshaped()]).unwrap();
    let server = bulk_server(&testbed.converter);
    let retransmissions = || {
        testbed
            .converter
            .netstat_counter("MPTcpExt", "MPTCPRetrans")
            .unwrap()
    };
    let before = retransmissions();
    let mut stalled = 0;
    for attempt in 1..=BULK_ATTEMPTS {
        let (received, took) = bulk_download(&testbed.gateway, server);
        assert_eq!(received, BULK_BYTES, "a download was cut short");
        stalled = retransmissions() - before;
        #[expect(clippy::cast_precision_loss, reason = "a rate is displayed")]
        let gbit = received as f64 * 8.0 / took.as_secs_f64() / 1e9;
        println!("download {attempt}: {gbit:.2} Gbit/s, {stalled} MPTCP retransmissions so far");
        // Each one is a 200 ms wait; a few are no accident on a line that loses nothing.
        if stalled >= 3 {
            return;
        }
    }
    panic!(
        "{BULK_ATTEMPTS} downloads over a lossless fast line needed only {stalled} MPTCP \
         retransmissions: the kernel's receiver looks fixed (it announces data it has \
         delivered). Re-measure `cargo xtask bench relay --line unshaped` and drop the \
         workaround notes in docs/benchmarks.md and tests/tests/kernel.rs"
    );
}
