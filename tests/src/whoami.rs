//! Who carried a LAN flow, read off the server: a small server (python3) answers each
//! connection with the address it came from. Through the converter that is the
//! converter's server-side address; directly, it is the LAN client's (forwarded) or the
//! gateway's uplink address (a local process). The interception and failover tests use
//! it.

use std::{path::Path, process::Stdio};

use crate::{
    cgroup::Cgroup,
    netns::Netns,
    testbed::{Testbed, Uplink},
};

/// The uplinks of [`deploy`]'s testbed.
pub const UPLINKS: [Uplink; 2] = [Uplink::htb(50), Uplink::htb(50)];
/// The port of the who-am-I server.
pub const WHOAMI_PORT: u16 = 8080;
/// What the server sees when the converter carried the connection.
pub const VIA_CONVERTER: &str = "203.0.113.1";
/// The same over IPv6.
pub const VIA_CONVERTER_V6: &str = "3fff:113::1";
/// What the server sees for a LAN client forwarded directly.
pub const LAN_CLIENT_DIRECT: &str = "192.168.50.2";
/// What the server sees for a gateway-host process connecting directly (uplink 1), or
/// for a LAN flow the gateway carried itself, directly.
pub const GATEWAY_HOST_DIRECT: &str = "10.0.1.1";

/// Answers every connection with the peer's address, then closes.
const WHOAMI_SERVER: &str = r"
import socket, sys
server = socket.create_server(('::', int(sys.argv[1])), family=socket.AF_INET6, dualstack_ipv6=True)
while True:
    connection, peer = server.accept()
    address = peer[0].removeprefix('::ffff:')
    connection.sendall(address.encode() + b'\n')
    connection.close()
";

/// Connects, prints the peer address the socket reports, then what the server said.
const WHOAMI_CLIENT: &str = r"
import socket, sys
connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
peer = connection.getpeername()
print(peer[0].removeprefix('::ffff:'), peer[1])
print(connection.makefile().readline().strip())
";

/// A testbed on [`UPLINKS`] with the gateway (`gateway_args` added) and converter
/// running and the who-am-I server started on [`WHOAMI_PORT`]; logs go to `dir`.
///
/// # Panics
/// When any of it fails to start.
pub fn deploy(dir: &Path, label: &str, gateway_args: &[&str]) -> Testbed {
    let mut testbed = Testbed::new(label, &UPLINKS).unwrap();
    testbed
        .start_gateway_and_converter(dir, gateway_args, &[])
        .unwrap();
    start_server(&mut testbed, dir, WHOAMI_PORT);
    testbed
}

/// Starts a who-am-I server on `port` of the server host.
///
/// # Panics
/// When it does not listen within 10 s.
pub fn start_server(testbed: &mut Testbed, dir: &Path, port: u16) {
    testbed
        .start_python_server(dir, WHOAMI_SERVER, &[&port.to_string()], port)
        .unwrap();
}

/// Runs the who-am-I client from `netns` (in `cgroup` if given) against the server on
/// [`WHOAMI_PORT`]: (the peer address the socket reports, the address the server saw),
/// or `None` if it failed.
pub fn whoami(netns: &Netns, cgroup: Option<&Cgroup>, server: &str) -> Option<(String, String)> {
    whoami_at(netns, cgroup, server, WHOAMI_PORT)
}

/// [`whoami`] with a server on `port`.
///
/// # Panics
/// When the client cannot be started.
pub fn whoami_at(
    netns: &Netns,
    cgroup: Option<&Cgroup>,
    server: &str,
    port: u16,
) -> Option<(String, String)> {
    let mut command = netns.host_mounts_command("python3");
    command.args(["-c", WHOAMI_CLIENT, server, &port.to_string()]);
    if let Some(cgroup) = cgroup {
        cgroup.put(&mut command);
    }
    let output = command.stderr(Stdio::null()).output().unwrap();
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.lines();
    Some((lines.next()?.to_owned(), lines.next()?.to_owned()))
}

/// The address the server saw for a connection from the LAN host.
///
/// # Panics
/// When the connection failed.
pub fn seen_from_lan(testbed: &Testbed, server: &str) -> String {
    whoami(&testbed.client, None, server)
        .unwrap_or_else(|| panic!("LAN connection to {server} failed"))
        .1
}
