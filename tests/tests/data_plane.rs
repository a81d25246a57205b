//! The data plane on the namespace testbed: LAN flows steered (by tproxy, for now) to
//! the gateway, carried over MPTCP on every uplink to the converter, and on to a server.
//! Real third-party programs at the ends: curl on the LAN host, python3's http.server.

use std::{fs, path::Path, process::Command};

use mptcp_tests::{
    TempDir, require_root,
    testbed::{SERVER, SERVER_PRIVATE, Testbed, Uplink},
};

/// Uplinks fast enough to keep the tests short, unequal like real ones.
const UPLINKS: [Uplink; 2] = [Uplink { rate_mbit: 80 }, Uplink { rate_mbit: 40 }];

/// A file of `len` pseudo-random bytes (incompressible, and no two runs alike).
fn write_random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut state = u64::from(std::process::id()) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    fs::write(path, &bytes).unwrap();
    bytes
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

#[test]
fn download_arrives_intact_over_both_uplinks() {
    require_root();
    let dir = TempDir::new("download").unwrap();
    let mut testbed = Testbed::new("dl", &UPLINKS).unwrap();
    testbed.start_gateway_and_remote(dir.path(), &[]).unwrap();
    let served = dir.path().join("www");
    fs::create_dir(&served).unwrap();
    let original = write_random_file(&served.join("file"), 24 * 1024 * 1024);
    testbed
        .start_http_server(&served, &dir.path().join("http.log"))
        .unwrap();

    let before = testbed.uplink_rx_bytes().unwrap();
    let output = dir.path().join("downloaded");
    let url = format!("http://{SERVER}/file");
    assert!(
        curl(&testbed, &["--output", output.to_str().unwrap(), &url]),
        "download failed"
    );
    let after = testbed.uplink_rx_bytes().unwrap();

    assert!(
        fs::read(&output).unwrap() == original,
        "downloaded bytes differ"
    );
    for (uplink, (before, after)) in before.iter().zip(&after).enumerate() {
        let carried = after - before;
        assert!(
            carried > original.len() as u64 / 10,
            "uplink {} carried only {carried} bytes of {}",
            uplink + 1,
            original.len()
        );
    }
    let gateway_log = fs::read_to_string(dir.path().join("gateway.log")).unwrap();
    assert!(
        !gateway_log.contains("refused"),
        "gateway log: {gateway_log}"
    );
}
