//! Per-subflow tuning: `--uplink-congestion` gives the subflows over one uplink their
//! own algorithm, and subflows with a long handshake (a satellite uplink) get the
//! long-RTT algorithm and send buffer, on the gateway (the sender of uploads) and on the
//! converter (the sender of downloads), while the others keep `--congestion`.
//! Read off `ss -tmi` on both ends during a download.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    TempDir, random_bytes, require_root,
    testbed::{CONVERTER, SERVER, Testbed, Uplink, daemon_log},
};

/// What `ss -tmi` shows of one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SocketInfo {
    /// Its congestion control.
    congestion: String,
    /// Its send buffer limit (skmem `tb`), bytes.
    send_buffer: u64,
}

/// Each socket in the output of `ss -tmiH state established` (a line "Recv-Q Send-Q
/// local peer", then an indented line of details: `skmem:(...,tbN,...) ALGORITHM ...`),
/// keyed by (local, peer) addresses without ports.
fn sockets(ss_output: &str) -> BTreeMap<(String, String), SocketInfo> {
    let mut sockets = BTreeMap::new();
    let mut current = None;
    for line in ss_output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && fields.len() >= 4 {
            current = Some((address(fields[2]), address(fields[3])));
        } else if let (Some(socket), [skmem, congestion, ..]) = (current.take(), &fields[..]) {
            let send_buffer = skmem
                .split([',', '(', ')'])
                .find_map(|field| field.strip_prefix("tb")?.parse().ok())
                .unwrap_or_else(|| panic!("no send buffer in {line:?}"));
            let congestion = (*congestion).to_owned();
            sockets.insert(
                socket,
                SocketInfo {
                    congestion,
                    send_buffer,
                },
            );
        }
    }
    sockets
}

/// The address of `address%interface:port`.
fn address(endpoint: &str) -> String {
    let address = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(address, _)| address);
    address.split('%').next().unwrap_or(address).to_owned()
}

/// Kills the download when the test ends, however it ends.
struct Download(Child);

impl Drop for Download {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a slow download from the server through the daemons (which must run) and
/// waits until both ends show a subflow per uplink. Returns the download, which stops
/// when dropped, and each end's subflows keyed by the gateway's uplink address.
fn subflows_during_download(
    testbed: &mut Testbed,
    dir: &Path,
) -> (
    Download,
    BTreeMap<String, SocketInfo>,
    BTreeMap<String, SocketInfo>,
) {
    let www = dir.join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("big"), random_bytes(8 << 20)).unwrap();
    testbed
        .start_http_server(&www, &dir.join("http.log"))
        .unwrap();
    let download = Download(
        testbed
            .client
            .command("curl")
            .args(["--silent", "--limit-rate", "1M", "--output", "/dev/null"])
            .arg(format!("http://{SERVER}/big"))
            .spawn()
            .unwrap(),
    );
    let ss = |netns: &mptcp_tests::netns::Netns| {
        sockets(
            &netns
                .exec("ss", &["-tmiH", "state", "established"])
                .unwrap(),
        )
    };
    // The subflows are the sockets between the gateway's uplink addresses and the
    // converter's address; the joins come a round trip or two after the first one.
    let subflows = || {
        let gateway: BTreeMap<String, SocketInfo> = ss(&testbed.gateway)
            .into_iter()
            .filter(|((_, peer), _)| peer == CONVERTER)
            .map(|((local, _), info)| (local, info))
            .collect();
        let converter: BTreeMap<String, SocketInfo> = ss(&testbed.converter)
            .into_iter()
            .filter(|((local, _), _)| local == CONVERTER)
            .map(|((_, peer), info)| (peer, info))
            .collect();
        (gateway, converter)
    };
    let uplinks = testbed.uplinks.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (gateway, converter) = subflows();
        if (gateway.len() >= uplinks && converter.len() >= uplinks) || Instant::now() > deadline {
            return (download, gateway, converter);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// The algorithm of each subflow.
fn congestion(subflows: &BTreeMap<String, SocketInfo>) -> BTreeMap<String, String> {
    subflows
        .iter()
        .map(|(address, info)| (address.clone(), info.congestion.clone()))
        .collect()
}

/// `[(address, algorithm)]` as a map.
fn expected(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|&(address, name)| (address.to_owned(), name.to_owned()))
        .collect()
}

/// The last number of /proc/sys/`path`.
fn sysctl(path: &str) -> u64 {
    let text = fs::read_to_string(format!("/proc/sys/{path}")).unwrap();
    text.split_whitespace().last().unwrap().parse().unwrap()
}

#[test]
fn subflows_over_the_chosen_uplink_get_their_own_congestion_control() {
    require_root();
    let dir = TempDir::new("uplinkcc").unwrap();
    let mut testbed = Testbed::new("uplinkcc", &[Uplink::htb(50), Uplink::htb(50)]).unwrap();
    // Uplink 1 carries the first subflow: the one the converter has accepted before it
    // sets --congestion on the connection, so the rule must hold over that too.
    // The others keep --congestion: cubic, which is not the host's default (bbr), so
    // the converter's subflows show that its accepted connections inherit it.
    let rule = [
        "--congestion",
        "cubic",
        "--uplink-congestion",
        "10.0.1.1/32=reno",
    ];
    testbed
        .start_gateway_and_converter(dir.path(), &rule, &rule)
        .unwrap();
    let (_download, gateway, converter) = subflows_during_download(&mut testbed, dir.path());
    let expected = expected(&[("10.0.1.1", "reno"), ("10.0.2.1", "cubic")]);
    assert_eq!(
        congestion(&gateway),
        expected,
        "gateway subflows by local address; gateway log:\n{}",
        daemon_log(dir.path(), "gateway")
    );
    assert_eq!(
        congestion(&converter),
        expected,
        "converter subflows by peer address"
    );
}

#[test]
fn long_rtt_subflows_get_the_long_rtt_algorithm_and_a_fixed_send_buffer() {
    require_root();
    let dir = TempDir::new("longrtt").unwrap();
    // A 10 ms round trip and a 440 ms one, past the default --long-rtt of 300 ms.
    let mut testbed =
        Testbed::new("longrtt", &[Uplink::line(20, 5), Uplink::line(10, 220)]).unwrap();
    testbed
        .start_gateway_and_converter(dir.path(), &[], &[])
        .unwrap();
    let (_download, gateway, converter) = subflows_during_download(&mut testbed, dir.path());
    let logs = || {
        format!(
            "gateway log:\n{}\nremote log:\n{}",
            daemon_log(dir.path(), "gateway"),
            daemon_log(dir.path(), "converter")
        )
    };
    // The defaults: bbr, and cubic for long round trips.
    let expected = expected(&[("10.0.1.1", "bbr"), ("10.0.2.1", "cubic")]);
    assert_eq!(
        congestion(&gateway),
        expected,
        "gateway subflows; {}",
        logs()
    );
    assert_eq!(
        congestion(&converter),
        expected,
        "converter subflows; {}",
        logs()
    );

    // --long-rtt-send-buffer 4, capped by net.core.wmem_max and doubled; the daemons
    // skip it, and say so, where that cap is below what autotuning may reach.
    let fixed = 2 * (4u64 << 20).min(sysctl("net/core/wmem_max"));
    if fixed > sysctl("net/ipv4/tcp_wmem") {
        for (end, subflows) in [("gateway", &gateway), ("converter", &converter)] {
            assert_eq!(subflows["10.0.2.1"].send_buffer, fixed, "{end}; {}", logs());
            assert_ne!(subflows["10.0.1.1"].send_buffer, fixed, "{end}: autotuned");
        }
    } else {
        assert!(
            logs().contains("too low for --long-rtt-send-buffer"),
            "{}",
            logs()
        );
    }
}
