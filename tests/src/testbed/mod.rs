//! The namespace testbed: a LAN client, a gateway with N shaped uplinks, a converter
//! host, and a server behind it.
//!
//! ```text
//! client --lan0-- gateway --up1..upN-- converter --srv0-- server
//! 192.168.50.2   .50.1 | 10.0.I.1    10.0.I.2 | 203.0.113.1   203.0.113.10
//! fd00:50::2  fd00:50::1                       | 3fff:113::1  3fff:113::10
//!                                              |  10.9.0.1     10.9.0.10 (private)
//! ```
//!
//! The uplinks carry IPv4 only (the MPTCP connections to the converter); IPv6 exists on
//! the LAN and between converter and server, so LAN flows to an IPv6 server can be
//! converted. The server's IPv6 prefix is from 3fff::/20 (documentation, RFC 9637):
//! 2001:db8::/32 is among the ranges the converter refuses.
//!
//! An uplink is either a veth pair shaped by HTB (zero delay, fast to set up) or a line
//! of the wire emulator (rate, delay, loss: like DSL, LTE or satellite). The gateway's
//! uplink addresses are MPTCP `subflow` endpoints, each with a
//! source-address routing table so that its subflow leaves by its own uplink. Plain
//! forwarding (no gateway daemon) goes by uplink 1. The gateway daemon intercepts the
//! LAN with its own eBPF programs (`--lan lan0`); an nftables tproxy rule is available
//! for comparison ([`crate::carriers::intercept_with_tproxy`]).
//!
//! Layout: this module builds the topology and reads its counters; [`daemons`] starts
//! the daemons and servers and reads their logs; [`inspect`] asks the running gateway
//! what it does; [`faults`] breaks and mends links; [`uplink`] describes one uplink's
//! shape; [`router`] wires the testbed as a household router (a default route per
//! uplink, masquerade, no route back to the LAN). The other carriers the benchmarks
//! compare with live in [`crate::carriers`].

pub mod balancer;
pub mod daemons;
pub mod faults;
pub mod inspect;
pub mod router;
pub mod uplink;

use std::time::Duration;

use anyhow::Context as _;

pub use daemons::{daemon_log, log_path, wait_for_line};
pub use uplink::Uplink;

use crate::{
    emulator::EmulatedLink,
    netns::{Netns, Process},
};

/// The server's public address.
pub const SERVER: &str = "203.0.113.10";
/// The server's public IPv6 address.
pub const SERVER_V6: &str = "3fff:113::10";
/// A second server address, in a private range the converter refuses by default.
pub const SERVER_PRIVATE: &str = "10.9.0.10";
/// The converter's address (on uplink 1) and port.
pub const CONVERTER: &str = "10.0.1.2";
/// The converter's address as the server sees it: a flow from there was converted.
pub const CONVERTER_TOWARD_SERVER: &str = "203.0.113.1";
/// The converter's port.
pub const CONVERTER_PORT: u16 = mptcp_user::config::defaults::CONVERTER_LISTEN.port();
/// The gateway's transparent listener port.
pub const GATEWAY_PORT: u16 = mptcp_user::config::defaults::GATEWAY_LISTEN.port();

/// How LAN flows reach the gateway's listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    /// The gateway's own tc program (`--lan lan0`).
    Ebpf,
    /// An nftables tproxy rule (for comparison).
    Nftables,
}

/// The four hosts, torn down on drop (processes first, then namespaces).
pub struct Testbed {
    /// Started daemons and servers; dropped (killed) before the namespaces.
    processes: Vec<Process>,
    /// The emulated uplinks' wires; dropped before the namespaces.
    wires: Vec<EmulatedLink>,
    /// The LAN host.
    pub client: Netns,
    /// The multi-uplink gateway.
    pub gateway: Netns,
    /// The converter's host.
    pub converter: Netns,
    /// The destination server.
    pub server: Netns,
    /// A second converter's host, behind a balancer with the first
    /// ([`Self::add_second_converter_host`]).
    pub second_converter: Option<Netns>,
    /// The uplinks, in order (interface upI is `uplinks[I-1]`).
    pub uplinks: Vec<Uplink>,
    /// Unique name prefix of this testbed.
    pub name: String,
    /// The only capabilities daemons start with (a systemd unit's
    /// CapabilityBoundingSet), or all of root's.
    daemon_capabilities: Option<Vec<String>>,
    /// The hard open-file limit daemons start with, or the machine's.
    daemon_files: Option<u64>,
}

impl Testbed {
    /// Builds the four namespaces and wires them up, the gateway's uplinks set up by
    /// hand (a table, a source rule and an MPTCP endpoint each), as before the gateway
    /// could do it.
    pub fn new(label: &str, uplinks: &[Uplink]) -> anyhow::Result<Self> {
        Self::build(label, uplinks, true)
    }

    /// [`Self::new`] with nothing set up for the gateway's uplinks but their addresses
    /// and the main table's default route over uplink 1: the gateway's own uplink
    /// configuration must do the rest.
    pub fn with_bare_uplinks(label: &str, uplinks: &[Uplink]) -> anyhow::Result<Self> {
        Self::build(label, uplinks, false)
    }

    fn build(label: &str, uplinks: &[Uplink], set_up_uplinks: bool) -> anyhow::Result<Self> {
        let name = crate::unique_name(label);
        let mut testbed = Self {
            processes: Vec::new(),
            wires: Vec::new(),
            client: Netns::new(format!("{name}-c"))?,
            gateway: Netns::new(format!("{name}-g"))?,
            converter: Netns::new(format!("{name}-r"))?,
            server: Netns::new(format!("{name}-s"))?,
            second_converter: None,
            uplinks: uplinks.to_vec(),
            name,
            daemon_capabilities: None,
            daemon_files: None,
        };
        testbed
            .wire(set_up_uplinks)
            .context("building the testbed")?;
        Ok(testbed)
    }

    /// Creates the uplinks' interfaces, emulated or veth + HTB, not yet configured.
    fn make_uplinks(&mut self) -> anyhow::Result<()> {
        for (index, uplink) in self.uplinks.iter().enumerate() {
            let interface = format!("up{}", index + 1);
            if uplink.emulated {
                self.wires.push(EmulatedLink::new(
                    (self.gateway.name(), &interface),
                    (self.converter.name(), &interface),
                    uplink.shape(),
                    uplink.shape(),
                )?);
                self.gateway.ip(&["link", "set", &interface, "up"])?;
                self.converter.ip(&["link", "set", &interface, "up"])?;
            } else {
                veth(&self.gateway, &interface, &self.converter, &interface)?;
                if uplink.rate_mbit > 0 {
                    for netns in [&self.gateway, &self.converter] {
                        shape(netns, &interface, uplink.rate_mbit)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn wire(&mut self, set_up_uplinks: bool) -> anyhow::Result<()> {
        self.make_uplinks()?;
        self.wire_lan()?;
        let (client, gateway, converter, server) =
            (&self.client, &self.gateway, &self.converter, &self.server);

        veth(converter, "srv0", server, "srv0")?;
        converter.ip(&["addr", "add", "203.0.113.1/24", "dev", "srv0"])?;
        converter.ip(&["addr", "add", "10.9.0.1/24", "dev", "srv0"])?;
        server.ip(&["addr", "add", "203.0.113.10/24", "dev", "srv0"])?;
        server.ip(&["addr", "add", "10.9.0.10/24", "dev", "srv0"])?;
        converter.ip(&["addr", "add", "3fff:113::1/64", "dev", "srv0", "nodad"])?;
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            "srv0",
            "nodad",
        ])?;
        server.ip(&["-6", "route", "add", "default", "via", "3fff:113::1"])?;
        server.ip(&["route", "add", "default", "via", "203.0.113.1"])?;

        // Measured flows follow each other between the same hosts; the kernel's cache of
        // per-destination metrics (ssthresh, RTT) would make each start depend on how
        // the previous one ended.
        for netns in [client, gateway, converter, server] {
            netns.sysctl("net.ipv4.tcp_no_metrics_save", "1")?;
        }
        // As the converter's operator would: RFC 8803 clients may then send their
        // request in the SYN (TCP Fast Open needs the server bit, 2).
        converter.sysctl("net.ipv4.tcp_fastopen", "3")?;
        for netns in [gateway, converter] {
            netns.sysctl("net.ipv4.ip_forward", "1")?;
            netns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            netns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
            netns.sysctl("net.mptcp.enabled", "1")?;
            if netns.name() == gateway.name() && !set_up_uplinks {
                continue;
            }
            netns.ip(&[
                "mptcp",
                "limits",
                "set",
                "subflow",
                "8",
                "add_addr_accepted",
                "8",
            ])?;
        }
        for i in 1..=self.uplinks.len() {
            let interface = format!("up{i}");
            let (gateway_address, converter_address) =
                (format!("10.0.{i}.1"), format!("10.0.{i}.2"));
            gateway.ip(&[
                "addr",
                "add",
                &format!("{gateway_address}/24"),
                "dev",
                &interface,
            ])?;
            converter.ip(&[
                "addr",
                "add",
                &format!("{converter_address}/24"),
                "dev",
                &interface,
            ])?;
            if !set_up_uplinks {
                continue;
            }
            let table = (100 + i).to_string();
            gateway.ip(&["rule", "add", "from", &gateway_address, "table", &table])?;
            gateway.ip(&[
                "route",
                "add",
                "default",
                "via",
                &converter_address,
                "dev",
                &interface,
                "table",
                &table,
            ])?;
            if i > 1 {
                gateway.ip(&[
                    "mptcp",
                    "endpoint",
                    "add",
                    &gateway_address,
                    "dev",
                    &interface,
                    "subflow",
                ])?;
            }
        }
        self.route_lan_via(1)
    }

    /// The LAN: a veth pair between the client and the gateway, IPv4 and IPv6.
    fn wire_lan(&self) -> anyhow::Result<()> {
        let (client, gateway) = (&self.client, &self.gateway);
        veth(client, "lan0", gateway, "lan0")?;
        client.ip(&["addr", "add", "192.168.50.2/24", "dev", "lan0"])?;
        gateway.ip(&["addr", "add", "192.168.50.1/24", "dev", "lan0"])?;
        client.ip(&["route", "add", "default", "via", "192.168.50.1"])?;
        client.ip(&["addr", "add", "fd00:50::2/64", "dev", "lan0", "nodad"])?;
        gateway.ip(&["addr", "add", "fd00:50::1/64", "dev", "lan0", "nodad"])?;
        client.ip(&["-6", "route", "add", "default", "via", "fd00:50::1"])
    }

    /// Routes plain forwarded LAN traffic over uplink `i` (1-based) in both directions.
    pub fn route_lan_via(&self, i: usize) -> anyhow::Result<()> {
        let interface = format!("up{i}");
        self.gateway.ip(&[
            "route",
            "replace",
            "default",
            "via",
            &format!("10.0.{i}.2"),
            "dev",
            &interface,
        ])?;
        self.converter.ip(&[
            "route",
            "replace",
            "192.168.50.0/24",
            "via",
            &format!("10.0.{i}.1"),
            "dev",
            &interface,
        ])
    }

    /// Sends `message` (a Convert message's bytes) to the converter's public address
    /// from the server host, as anyone on the internet may, and reads its answer (10 s
    /// at most); returns the connection, still open, and the answer. Panics on failure.
    pub fn ask_converter_from_outside(
        &self,
        message: Vec<u8>,
    ) -> (std::net::TcpStream, mptcp_user::protocol::codec::Message) {
        use std::io::{Read as _, Write as _};

        use mptcp_user::protocol::codec::{self, Message};
        let converter =
            std::net::SocketAddr::new(CONVERTER_TOWARD_SERVER.parse().unwrap(), CONVERTER_PORT);
        crate::netns::run_in(&self.server, move || {
            let mut stream =
                std::net::TcpStream::connect_timeout(&converter, Duration::from_secs(5)).unwrap();
            stream.write_all(&message).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut answer = vec![0u8; codec::HEADER_LEN];
            stream.read_exact(&mut answer).unwrap();
            answer.resize(codec::message_len(&answer).unwrap(), 0);
            stream.read_exact(&mut answer[codec::HEADER_LEN..]).unwrap();
            (stream, Message::decode(&answer).unwrap().0)
        })
    }

    /// Where the gateway pins its maps.
    pub fn pin_path(&self) -> String {
        format!("{}/{}", mptcp_user::sys::BPFFS, self.name)
    }

    /// Gateway bytes received on each uplink so far.
    pub fn uplink_rx_bytes(&self) -> anyhow::Result<Vec<u64>> {
        (1..=self.uplinks.len())
            .map(|i| Ok(self.gateway.interface_bytes(&format!("up{i}"))?.0))
            .collect()
    }

    /// Waits until the uplinks carry less than 10 kB in half a second (at most 20 s),
    /// so that what an ended flow left behind (orphaned connections still retransmitting,
    /// say) does not steal the next measurement's capacity. Returns how long it waited.
    pub fn wait_uplinks_quiet(&self) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let mut before = self.uplink_rx_bytes()?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.uplink_rx_bytes()?;
            let moved: u64 = now.iter().zip(&before).map(|(a, b)| a - b).sum();
            if moved < 10_000 || started.elapsed() > Duration::from_secs(20) {
                return Ok(started.elapsed());
            }
            before = now;
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Processes and wires end before their namespaces go away.
        self.processes.clear();
        self.wires.clear();
        // A gateway killed by the drop above leaves its pins, which would keep its maps
        // alive in the kernel.
        let _ = std::fs::remove_dir_all(self.pin_path());
        // And its lock and status files under /run: each testbed's name is new, so
        // nothing else would ever reuse or remove them.
        let pins = std::path::Path::new(&self.pin_path()).to_path_buf();
        let _ = std::fs::remove_file(mptcp_user::sys::run_file(&pins, "lock"));
        let _ = std::fs::remove_file(mptcp_user::gateway::uplinks::status_path(&pins));
        let _ = std::fs::remove_file(mptcp_user::gateway::forwards::status_path(&pins));
    }
}

/// A veth pair from `a`'s `a_name` to `b`'s `b_name`, both up.
fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link",
        "add",
        a_name,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])
}

/// Egress shaping with HTB at `rate_mbit`.
fn shape(netns: &Netns, interface: &str, rate_mbit: u32) -> anyhow::Result<()> {
    let rate = format!("{rate_mbit}mbit");
    netns.exec(
        "tc",
        &[
            "qdisc", "add", "dev", interface, "root", "handle", "1:", "htb", "default", "10",
        ],
    )?;
    netns.exec(
        "tc",
        &[
            "class", "add", "dev", interface, "parent", "1:", "classid", "1:10", "htb", "rate",
            &rate, "ceil", &rate,
        ],
    )?;
    Ok(())
}
