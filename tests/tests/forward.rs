//! Port forwards: a web server in the household's LAN reached from beyond the
//! converter at one of its public ports, the gateway behind NAT on both lines (a
//! household router: the far side has no route to the LAN), over DSL- and LTE-like
//! lines. The download must be whole, faster than the best line alone, survive a line
//! going silent, and the LAN server must see the outside client's address; ports not
//! forwarded, forged claims and a second gateway's claim are refused, and a gateway's
//! older connections on offer are retired by the converter.

use std::{
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use mptcp_tests::{
    emulator::TCP_PAYLOAD_SHARE,
    household::Household,
    inbound::{self, FORWARD_PORTS, LAN_WEB, PUBLIC_PORT, public_url},
    netns::run_in,
    random_bytes, require_root,
    testbed::{CONVERTER_TOWARD_SERVER, SERVER, Uplink},
};
use mptcp_user::protocol::{
    codec::{ErrorCode, Message, Tlv},
    cookie::{KEY_LEN, Key, Subject, unix_now},
    forward::{Claim, GatewayId, OFFERS_KEPT, PortStatus, statuses},
};

/// DSL and LTE: the best line alone is the first.
const LINES: [Uplink; 2] = [Uplink::line(20, 15), Uplink::line(10, 50)];
/// The file the outside downloads: about 13 s at the sum of the lines.
const BLOB_BYTES: usize = 48 << 20;

/// A household whose gateway forwards [`PUBLIC_PORT`] (and `extra` TOML after it) to the
/// LAN web server, which serves `blob`; returns it once the converter serves the port.
struct Forwarding {
    household: Household,
    served: PathBuf,
    lan_log: PathBuf,
}

impl Forwarding {
    /// Builds the household, the LAN web server and its blob; the gateway is started by
    /// [`Self::start_gateway`].
    fn build(label: &str) -> Self {
        let mut household = Household::build_with_converter(
            label,
            &LINES,
            &[],
            &["--forward-ports", FORWARD_PORTS],
        );
        let served = household.dir.path().join("served");
        std::fs::create_dir(&served).unwrap();
        std::fs::write(served.join("blob"), random_bytes(BLOB_BYTES)).unwrap();
        std::fs::write(served.join("small"), random_bytes(64 << 10)).unwrap();
        let dir = household.dir.path().to_path_buf();
        let lan_log = inbound::start_lan_web_server(&mut household.testbed, &dir, &served).unwrap();
        Self {
            household,
            served,
            lan_log,
        }
    }

    /// Starts the gateway with the forward of [`PUBLIC_PORT`] and the `extra` TOML,
    /// and waits until every uplink is up and the port is served.
    fn start_gateway(&mut self, extra: &str) {
        let config = std::fs::read_to_string(self.household.config()).unwrap()
            + &format!(
                "\n[[gateway.forward]]\npublic = {PUBLIC_PORT}\nto = \"{LAN_WEB}\"\n{extra}"
            );
        std::fs::write(self.household.config(), config).unwrap();
        self.household.start_gateway();
        self.household.wait_probed();
        self.wait_forward(PUBLIC_PORT, "served");
    }

    /// Waits (30 s at most: a port another gateway held is claimed again every 10 s)
    /// until the forward of `port` is in a state that starts with `state`.
    fn wait_forward(&self, port: u16, state: &str) {
        inbound::wait_forward(
            &self.household.testbed,
            port,
            state,
            Duration::from_secs(30),
        )
        .unwrap();
    }

    /// [`Self::build`], then the gateway started with the forward alone.
    fn deploy(label: &str) -> Self {
        let mut forwarding = Self::build(label);
        forwarding.start_gateway("");
        forwarding
    }

    /// Starts downloading `file` from outside into the scratch directory; returns curl
    /// and where it writes.
    fn start_fetch(&self, file: &str, max_time: Duration) -> (Child, PathBuf) {
        let output = self.household.dir.path().join(format!("fetched-{file}"));
        let curl = inbound::start_fetch(
            &self.household.testbed.server,
            &public_url(file),
            &output,
            max_time,
        )
        .unwrap();
        (curl, output)
    }

    /// Downloads `file` from outside; checks it is whole.
    fn fetch(&self, file: &str, max_time: Duration) -> inbound::Fetched {
        let (curl, output) = self.start_fetch(file, max_time);
        let fetched = inbound::finish_fetch(curl).unwrap();
        self.assert_whole(file, &output);
        fetched
    }

    fn assert_whole(&self, file: &str, output: &std::path::Path) {
        let sent = std::fs::read(self.served.join(file)).unwrap();
        let received = std::fs::read(output).unwrap();
        assert!(
            sent == received,
            "{file}: {} bytes received of {}, or not the same bytes",
            received.len(),
            sent.len()
        );
    }
}

/// Connects from the server host (the outside) to the converter's public `port`.
fn connect_from_outside(forwarding: &Forwarding, port: u16) -> std::io::Result<TcpStream> {
    let address = SocketAddr::new(CONVERTER_TOWARD_SERVER.parse().unwrap(), port);
    run_in(&forwarding.household.testbed.server, move || {
        TcpStream::connect_timeout(&address, Duration::from_secs(5))
    })
}

#[test]
fn a_lan_server_is_reached_from_outside_with_the_sum_of_the_lines_and_the_client_address() {
    require_root();
    let forwarding = Forwarding::deploy("fwdsum");
    let testbed = &forwarding.household.testbed;

    // Listed as an inbound flow while it runs, with a subflow sending on each line.
    let (curl, output) = forwarding.start_fetch("blob", Duration::from_mins(1));
    let listed = wait_for_inbound_flow_on_every_line(&forwarding);
    let fetched = inbound::finish_fetch(curl).unwrap();
    forwarding.assert_whole("blob", &output);
    assert_eq!(listed["direction"], "in", "{listed}");
    assert_eq!(listed["destination"], LAN_WEB, "{listed}");
    assert!(
        listed["client"].as_str().unwrap().starts_with(SERVER),
        "{listed}"
    );

    let best_line = f64::from(LINES[0].rate_mbit) * TCP_PAYLOAD_SHARE;
    println!(
        "inbound download: {:.1} Mbit/s, the best line alone carries {best_line:.1}, first \
         byte {:.0} ms",
        fetched.mbit_per_s(),
        fetched.first_byte * 1000.0
    );
    assert!(
        fetched.mbit_per_s() > best_line * 1.1,
        "{:.1} Mbit/s, not above the best line alone ({best_line:.1})",
        fetched.mbit_per_s()
    );
    // The LAN server saw the outside client, as behind a router's own port forward.
    let lan_log = std::fs::read_to_string(&forwarding.lan_log).unwrap();
    assert!(
        lan_log.contains(&format!("{SERVER} - - ")) && lan_log.contains("GET /blob"),
        "the LAN server logged:\n{lan_log}"
    );
    // The gateway's table says the same.
    let table = testbed.gateway_cli_ok(&["flows"]);
    assert!(
        table.contains(&format!("forwards: {PUBLIC_PORT} -> {LAN_WEB}: served at")),
        "{table}"
    );

    // A port no gateway serves is refused at once, by the converter's kernel.
    let started = Instant::now();
    let refused = connect_from_outside(&forwarding, PUBLIC_PORT + 1);
    assert_eq!(
        refused.map_err(|error| error.kind()).err(),
        Some(ErrorKind::ConnectionRefused)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Waits (20 s at most) for the inbound flow to the LAN web server, listed with a
/// subflow on every line, each having sent bytes.
fn wait_for_inbound_flow_on_every_line(forwarding: &Forwarding) -> serde_json::Value {
    forwarding
        .household
        .testbed
        .wait_for_flow_on_every_uplink(LAN_WEB, Duration::from_secs(20))
        .unwrap()
}

#[test]
fn an_inbound_download_survives_a_silenced_line_and_new_ones_still_come_in() {
    require_root();
    let forwarding = Forwarding::deploy("fwdsilent");
    let (curl, output) = forwarding.start_fetch("blob", Duration::from_mins(2));
    wait_for_inbound_flow_on_every_line(&forwarding);
    forwarding.household.testbed.silence_uplink(1).unwrap();
    let fetched = inbound::finish_fetch(curl).unwrap();
    forwarding.assert_whole("blob", &output);
    println!(
        "inbound download with the DSL line silenced in its course: {:.1} Mbit/s",
        fetched.mbit_per_s()
    );
    // New inbound connections keep coming in over the line that works, within the
    // failover bound of outbound flows.
    for attempt in 0..3 {
        let fetched = forwarding.fetch("small", Duration::from_secs(10));
        println!(
            "inbound fetch {attempt} after the silence: first byte {:.0} ms",
            fetched.first_byte * 1000.0
        );
        assert!(fetched.first_byte < 3.0, "{fetched:?}");
    }
}

/// Sends `claim` to the converter from the server host and returns the connection and
/// the converter's answer.
fn claim_from_outside(forwarding: &Forwarding, claim: &Claim) -> (TcpStream, Message) {
    let bytes = claim.to_message().encode().unwrap();
    forwarding
        .household
        .testbed
        .ask_converter_from_outside(bytes)
}

/// What a read on `stream` returns within `timeout` (`Some(0)`: closed); `None` if it
/// is still open and silent.
fn read_within(mut stream: &TcpStream, timeout: Duration) -> Option<usize> {
    stream.set_read_timeout(Some(timeout)).unwrap();
    match stream.read(&mut [0u8; 64]) {
        Ok(read) => Some(read),
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(error) => panic!("{error}"),
    }
}

/// A claim of `ports` by gateway `id`, signed with `key`.
fn signed_claim(key: &Key, id: u8, ports: Vec<u16>) -> Claim {
    let mut claim = Claim {
        gateway: GatewayId([id; 16]),
        ports,
        cookie: None,
    };
    claim.cookie = Some(
        key.cookie(Subject::Forward(claim.subject()), unix_now())
            .unwrap(),
    );
    claim
}

#[test]
fn forged_claims_ports_not_allowed_and_a_second_gateway_are_refused() {
    require_root();
    let mut forwarding = Forwarding::build("fwdclaim");
    let key = Key::load(&forwarding.household.dir.path().join("key")).unwrap();
    let taken = PUBLIC_PORT + 2;

    // Another gateway (the same key, another identifier) claims a port first and keeps
    // its connection on offer.
    let (held, answer) = claim_from_outside(&forwarding, &signed_claim(&key, 0xee, vec![taken]));
    assert_eq!(statuses(&answer), Some(vec![(taken, PortStatus::Served)]));

    // Ours comes second: it gets its other port, and says why not this one. (That
    // forward connects from the gateway's own address.)
    forwarding.start_gateway(&format!(
        "\n[[gateway.forward]]\npublic = {taken}\nto = \"{LAN_WEB}\"\nsource = \"gateway\"\n"
    ));
    forwarding.wait_forward(taken, "refused: another gateway");
    let table = forwarding.household.testbed.gateway_cli_ok(&["flows"]);
    assert!(
        table.contains(&format!(
            "{taken} -> {LAN_WEB}: refused: another gateway claimed this port first"
        )),
        "{table}"
    );
    assert!(
        forwarding
            .household
            .gateway_log()
            .contains("another gateway claimed this port first"),
        "{}",
        forwarding.household.gateway_log()
    );

    // A claim signed with another key: Not Authorized, and the port stays closed.
    let forged = signed_claim(&Key::from_bytes([9; KEY_LEN]), 0xaa, vec![PUBLIC_PORT + 3]);
    let (_, answer) = claim_from_outside(&forwarding, &forged);
    assert_eq!(
        answer.tlvs,
        [Tlv::Error {
            code: ErrorCode::NotAuthorized,
            value: vec![0]
        }]
    );
    assert_eq!(
        connect_from_outside(&forwarding, PUBLIC_PORT + 3)
            .map_err(|error| error.kind())
            .err(),
        Some(ErrorKind::ConnectionRefused)
    );
    // A valid claim of ports the operator does not allow, and of ours: refused.
    let (_, answer) = claim_from_outside(
        &forwarding,
        &signed_claim(&key, 0xaa, vec![22, PUBLIC_PORT]),
    );
    assert_eq!(
        statuses(&answer),
        Some(vec![
            (22, PortStatus::NotAllowed),
            (PUBLIC_PORT, PortStatus::Taken)
        ])
    );
    // Ours still serves its port.
    forwarding.fetch("small", Duration::from_secs(10));

    // The other gateway replaces its connection by offering new ones: beyond what a
    // converter keeps, it closes the oldest idle one, which no inbound connection can be
    // taking then; the newer ones stay open.
    let newer: Vec<TcpStream> = (0..OFFERS_KEPT)
        .map(|_| {
            let (stream, answer) =
                claim_from_outside(&forwarding, &signed_claim(&key, 0xee, vec![taken]));
            assert_eq!(statuses(&answer), Some(vec![(taken, PortStatus::Served)]));
            stream
        })
        .collect();
    assert_eq!(
        read_within(&held, Duration::from_secs(5)),
        Some(0),
        "not closed"
    );
    for stream in &newer {
        assert_eq!(read_within(stream, Duration::from_millis(200)), None);
    }

    // Once the other gateway is gone (and its grace is over), ours gets the port.
    drop((held, newer));
    forwarding.wait_forward(taken, "served");
    let output = forwarding.household.dir.path().join("fetched-taken");
    let url = format!("http://{CONVERTER_TOWARD_SERVER}:{taken}/small?from-the-gateway");
    inbound::fetch(
        &forwarding.household.testbed.server,
        &url,
        &output,
        Duration::from_secs(10),
    )
    .unwrap();
    forwarding.assert_whole("small", &output);
    let lan_log = std::fs::read_to_string(&forwarding.lan_log).unwrap();
    assert!(
        lan_log
            .lines()
            .any(|line| line.starts_with("192.168.50.1 - - ") && line.contains("from-the-gateway")),
        "the LAN server logged:\n{lan_log}"
    );
}
