//! The wire emulator checked against itself: round-trip time and single-flow goodput
//! over an emulated line match the configured figures within 10%.

use std::{net::SocketAddr, time::Duration};

use mptcp_tests::{
    emulator::TCP_PAYLOAD_SHARE,
    measure::{self, Transport},
    require_root,
    testbed::{Testbed, Uplink},
};

/// A DSL-like line: what the aggregation benchmark uses most.
const DSL: Uplink = Uplink::line(20, 15);

fn within_ten_percent(measured: f64, expected: f64) -> bool {
    (measured / expected - 1.0).abs() <= 0.10
}

#[test]
fn round_trip_time_is_twice_the_delay() {
    require_root();
    let testbed = Testbed::new("emu-rtt", &[DSL]).unwrap();
    let rtt = measure::ping_rtt(&testbed.gateway, "10.0.1.2", 20).unwrap();
    let expected = 2.0 * f64::from(DSL.delay_ms) / 1000.0;
    eprintln!("RTT {rtt:?}, configured {expected} s");
    assert!(
        within_ten_percent(rtt.as_secs_f64(), expected),
        "RTT {rtt:?}, configured {expected} s"
    );
}

#[test]
fn single_flow_goodput_matches_the_rate() {
    require_root();
    let testbed = Testbed::new("emu-rate", &[DSL]).unwrap();
    let download = measure::download(
        &testbed.gateway,
        &testbed.converter,
        SocketAddr::from(([10, 0, 1, 2], 5001)),
        Transport::Tcp,
        None,
        Duration::from_secs(6),
    )
    .unwrap();
    let goodput = download.steady_mbit_per_s(Duration::from_secs(1));
    let expected = f64::from(DSL.rate_mbit) * TCP_PAYLOAD_SHARE;
    eprintln!("goodput {goodput:.2} Mbit/s, expected {expected:.2}");
    assert!(
        within_ten_percent(goodput, expected),
        "goodput {goodput:.2} Mbit/s, expected {expected:.2} (per second: {:?})",
        download.per_second_mbit()
    );
}

#[test]
fn loss_costs_a_cubic_flow_throughput() {
    require_root();
    // With 2% random loss cubic cannot fill the line, while the lossless line is full:
    // the emulator really drops frames.
    let testbed = Testbed::new("emu-loss", &[DSL.with_loss(2.0)]).unwrap();
    let download = measure::download(
        &testbed.gateway,
        &testbed.converter,
        SocketAddr::from(([10, 0, 1, 2], 5001)),
        Transport::Tcp,
        Some("cubic"),
        Duration::from_secs(4),
    )
    .unwrap();
    let goodput = download.steady_mbit_per_s(Duration::from_secs(1));
    eprintln!("goodput with 2% loss: {goodput:.2} Mbit/s");
    assert!(
        goodput < 0.7 * f64::from(DSL.rate_mbit),
        "goodput {goodput:.2} Mbit/s despite 2% loss"
    );
}
