//! The demo (`cargo xtask demo`, and `cargo xtask run` with no arguments): the download
//! through the gateway is faster than over the best uplink alone, both uplinks carry it,
//! and no namespace is left behind, also when interrupted.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use mptcp_tests::{require_root, wait_until};
use mptcp_user::gateway::control::FLOWS_HEADER;
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
        FLOWS_HEADER[0],
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in: {stdout}");
    }
    // 20 + 10 Mbit/s against 20 alone: 1.5x at best, 1.47x measured. A gateway that
    // carried the flow on one uplink would get 1.0x or less.
    let speed_up = number_after(&stdout, "speed-up: ");
    assert!(speed_up > 1.25, "speed-up {speed_up}x in: {stdout}");
    let subflows = stdout.matches("  subflow ").count();
    assert!(subflows >= 2, "{subflows} subflows listed in: {stdout}");
    assert_eq!(leftover_namespaces(pid), Vec::<String>::new());
}

/// Whether a curl runs in a namespace of the demo with process id `pid`: a download is
/// under way.
fn downloading(pid: u32) -> bool {
    leftover_namespaces(pid).iter().any(|line| {
        // "NAME (id: N)"
        let name = line.split_whitespace().next().unwrap_or_default();
        let pids = Command::new("ip")
            .args(["netns", "pids", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .any(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|command| command.trim() == "curl")
            })
    })
}

/// The number printed right after `label` in `text`.
fn number_after(text: &str, label: &str) -> f64 {
    let (_, rest) = text
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in: {text}"));
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {label:?} in: {text}"))
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
    wait_until(
        Duration::from_secs(20),
        || downloading(pid),
        || "the first download never started".to_owned(),
    );
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
