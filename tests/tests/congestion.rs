//! Per-uplink congestion control: `--uplink-congestion` gives the subflows over one
//! uplink their own algorithm, on the gateway (the sender of uploads) and on the
//! converter (the sender of downloads), while the others keep `--congestion`.
//! Read off `ss -ti` on both ends during a download.

use std::{
    collections::BTreeMap,
    fs,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use mptcp_tests::{
    TempDir, random_bytes, require_root,
    testbed::{REMOTE, SERVER, Testbed, Uplink},
};

/// The congestion control of each socket in the output of `ss -tinH state established`
/// (a line "Recv-Q Send-Q local peer", then an indented line of details that starts
/// with the algorithm), keyed by (local, peer) addresses without ports.
fn congestion_by_socket(ss_output: &str) -> BTreeMap<(String, String), String> {
    let mut sockets = BTreeMap::new();
    let mut current = None;
    for line in ss_output.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if !line.starts_with(char::is_whitespace) && fields.len() >= 4 {
            current = Some((address(fields[2]), address(fields[3])));
        } else if let (Some(socket), Some(name)) = (current.take(), fields.first()) {
            sockets.insert(socket, (*name).to_owned());
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
        .start_gateway_and_remote(dir.path(), &rule, &rule)
        .unwrap();
    let www = dir.path().join("www");
    fs::create_dir(&www).unwrap();
    fs::write(www.join("big"), random_bytes(8 << 20)).unwrap();
    testbed
        .start_http_server(&www, &dir.path().join("http.log"))
        .unwrap();
    let _download = Download(
        testbed
            .client
            .command("curl")
            .args(["--silent", "--limit-rate", "1M", "--output", "/dev/null"])
            .arg(format!("http://{SERVER}/big"))
            .spawn()
            .unwrap(),
    );
    let ss = |netns: &mptcp_tests::netns::Netns| {
        congestion_by_socket(
            &netns
                .exec("ss", &["-tinH", "state", "established"])
                .unwrap(),
        )
    };
    // The subflows are the sockets between the gateway's uplink addresses and the
    // converter's address; the join comes a moment after the first one.
    let subflows = || {
        let gateway: BTreeMap<String, String> = ss(&testbed.gateway)
            .into_iter()
            .filter(|((_, peer), _)| peer == REMOTE)
            .map(|((local, _), name)| (local, name))
            .collect();
        let remote: BTreeMap<String, String> = ss(&testbed.remote)
            .into_iter()
            .filter(|((local, _), _)| local == REMOTE)
            .map(|((_, peer), name)| (peer, name))
            .collect();
        (gateway, remote)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (gateway, remote) = loop {
        let (gateway, remote) = subflows();
        if (gateway.len() >= 2 && remote.len() >= 2) || Instant::now() > deadline {
            break (gateway, remote);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let expected: BTreeMap<String, String> = [("10.0.1.1", "reno"), ("10.0.2.1", "cubic")]
        .into_iter()
        .map(|(address, name)| (address.to_owned(), name.to_owned()))
        .collect();
    assert_eq!(
        gateway,
        expected,
        "gateway subflows by local address; gateway log:\n{}",
        fs::read_to_string(dir.path().join("gateway.log")).unwrap_or_default()
    );
    assert_eq!(remote, expected, "converter subflows by peer address");
}
