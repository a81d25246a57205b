//! The sock_ops program records the TCP connections of the cgroup it is attached to, and
//! only those, and forgets them when they close.

use std::{
    io::Read as _,
    net::{Ipv4Addr, TcpListener, TcpStream},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use mptcp_ebpf_common::connections::{Connection, DIRECTION_ACTIVE};
use mptcp_tests::{cgroup::Cgroup, require_root};
use mptcp_user::ebpf::Programs;

/// Connections in the map, as (cookie, connection).
fn recorded(programs: &Programs) -> Vec<(u64, Connection)> {
    programs
        .connections()
        .expect("connections map")
        .iter()
        .map(|entry| entry.expect("map entry"))
        .collect()
}

fn recorded_with_local_port(programs: &Programs, port: u16) -> Option<Connection> {
    recorded(programs)
        .into_iter()
        .map(|(_, connection)| connection)
        .find(|connection| connection.local_port == u32::from(port))
}

#[test]
fn sock_ops_records_connections_of_its_cgroup_only() {
    require_root();
    let cgroup = Cgroup::new("sockops").expect("cgroup");
    let mut programs = Programs::load().expect("load eBPF");
    programs.attach_sock_ops(cgroup.path()).expect("attach");

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let server_port = listener.local_addr().unwrap().port();

    // A client inside the cgroup: bash connects, then waits for the server to close.
    let mut inside = Command::new("bash");
    inside
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/127.0.0.1/{server_port}; cat <&3"),
        ])
        .stdout(Stdio::null());
    cgroup.put(&mut inside);
    let mut inside = inside.spawn().expect("spawn client in cgroup");
    let (inside_conn, inside_peer) = listener.accept().expect("accept");

    // A client outside the cgroup: this test process.
    let outside_conn = TcpStream::connect((Ipv4Addr::LOCALHOST, server_port)).expect("connect");
    let outside_port = outside_conn.local_addr().unwrap().port();
    let (outside_accepted, _) = listener.accept().expect("accept");

    let entry = recorded_with_local_port(&programs, inside_peer.port())
        .expect("the cgroup's connection is in the map");
    assert_eq!(entry.direction, DIRECTION_ACTIVE);
    assert_eq!(entry.remote_port, u32::from(server_port));
    assert_eq!(entry.family, libc::AF_INET as u32);
    assert_eq!(entry.remote_addr[0].to_ne_bytes(), [127, 0, 0, 1]);
    assert!(
        recorded_with_local_port(&programs, outside_port).is_none(),
        "a connection from outside the cgroup was recorded"
    );
    assert!(
        recorded_with_local_port(&programs, server_port).is_none(),
        "the accepting side lives outside the cgroup and must not be recorded"
    );

    // Closing the connection removes its entry (state callback, TCP_CLOSE).
    drop(inside_conn);
    let status = inside.wait().expect("client exits");
    assert!(status.success(), "client failed: {status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while recorded_with_local_port(&programs, inside_peer.port()).is_some() {
        assert!(Instant::now() < deadline, "entry still present after close");
        thread::sleep(Duration::from_millis(20));
    }

    drop(outside_accepted);
    let mut rest = Vec::new();
    let _ = (&outside_conn).read_to_end(&mut rest);
}
