//! The demo (`cargo xtask demo`, and `cargo xtask run` with no arguments): it prints its
//! table, and leaves no namespace behind, also when interrupted.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mptcp_tests::require_root;
use nix::{sys::signal, unistd::Pid};

fn demo() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mptcp-demo"));
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    command
}

/// The namespaces a demo with process id `pid` made that still exist.
fn leftover_namespaces(pid: u32) -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("-demo-{pid}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn demo_prints_both_downloads_and_cleans_up() {
    require_root();
    let child = demo().spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "demo failed: {stdout}");
    for expected in [
        "| best single uplink, no gateway |",
        "| through the gateway, both uplinks |",
        "| 2 LTE | 10 Mbit/s 50 ms |",
        "speed-up: ",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in: {stdout}");
    }
    assert_eq!(leftover_namespaces(pid), Vec::<String>::new());
}

#[test]
fn interrupted_demo_removes_its_testbed() {
    require_root();
    let mut child = demo().spawn().unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Interrupt while the first download runs, when everything is in place.
    assert!(
        lines.any(|line| line.unwrap().starts_with("1. ")),
        "the demo never started downloading"
    );
    assert!(!leftover_namespaces(pid).is_empty());
    std::thread::sleep(Duration::from_secs(2));
    signal::kill(
        Pid::from_raw(pid.try_into().unwrap()),
        signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the demo ignored SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        lines.any(|line| line.unwrap().contains("interrupted")),
        "no word of the interruption"
    );
    assert_eq!(leftover_namespaces(pid), Vec::<String>::new());
}
