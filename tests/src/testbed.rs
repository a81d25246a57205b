//! The namespace testbed: a LAN client, a gateway with N shaped uplinks, a converter
//! converter host, and a server behind it.
//!
//! ```text
//! client --lan0-- gateway --up1..upN-- converter --srv0-- server
//! 192.168.50.2   .50.1 | 10.0.I.1    10.0.I.2 | 203.0.113.1   203.0.113.10
//! fd00:50::2  fd00:50::1                       | 2001:db8:113::1  2001:db8:113::10
//!                                              |  10.9.0.1     10.9.0.10 (private)
//! ```
//!
//! The uplinks carry IPv4 only (the MPTCP connections to the converter); IPv6 exists on
//! the LAN and between converter and server, so LAN flows to an IPv6 server can be
//! converted.
//!
//! An uplink is either a veth pair shaped by HTB (zero delay, fast to set up) or a line
//! of the wire emulator (rate, delay, loss: like DSL, LTE or satellite). The gateway's
//! uplink addresses are MPTCP `subflow` endpoints, each with a
//! source-address routing table so that its subflow leaves by its own uplink. Plain
//! forwarding (no gateway daemon) goes by uplink 1. The gateway daemon intercepts the
//! LAN with its own eBPF programs (`--lan lan0`); an nftables tproxy rule is available
//! for comparison (`intercept_with_tproxy`).

use std::{path::Path, process::Command, time::Duration};

use anyhow::Context as _;

use crate::{
    emulator::{EmulatedLink, Shape},
    netns::{Netns, Process},
};

/// The server's public address.
pub const SERVER: &str = "203.0.113.10";
/// The server's public IPv6 address.
pub const SERVER_V6: &str = "2001:db8:113::10";
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
/// fwmark and table of the tproxy policy route.
const TPROXY_MARK: &str = "1";
const TPROXY_TABLE: &str = "100";

/// How LAN flows reach the gateway's listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interception {
    /// The gateway's own tc program (`--lan lan0`).
    Ebpf,
    /// An nftables tproxy rule (for comparison).
    Nftables,
}

/// One uplink's shape, the same in both directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Uplink {
    /// Rate in Mbit/s.
    pub rate_mbit: u32,
    /// One-way delay in ms; zero with HTB.
    pub delay_ms: u32,
    /// Random loss in percent, each direction.
    pub loss_percent: f64,
    /// Whether the wire emulator carries it (else a veth pair shaped by HTB).
    pub emulated: bool,
}

impl Uplink {
    /// A zero-delay veth pair shaped by HTB (0: not shaped).
    pub const fn htb(rate_mbit: u32) -> Self {
        Self {
            rate_mbit,
            delay_ms: 0,
            loss_percent: 0.0,
            emulated: false,
        }
    }

    /// A veth pair with no shaping at all: as fast as the machine moves bytes.
    pub const fn unshaped() -> Self {
        Self::htb(0)
    }

    /// A line of the wire emulator with this rate and one-way delay.
    pub const fn line(rate_mbit: u32, delay_ms: u32) -> Self {
        Self {
            rate_mbit,
            delay_ms,
            loss_percent: 0.0,
            emulated: true,
        }
    }

    /// The same line, losing `loss_percent` of its frames each way.
    #[must_use]
    pub const fn with_loss(self, loss_percent: f64) -> Self {
        Self {
            loss_percent,
            ..self
        }
    }

    /// The emulator's shape for this line. Its queue holds one round trip (a modem
    /// buffer sized to the bandwidth-delay product), at least 50 ms.
    pub fn shape(&self) -> Shape {
        let delay = Duration::from_millis(self.delay_ms.into());
        Shape {
            rate_mbit: self.rate_mbit.into(),
            delay,
            jitter: Duration::ZERO,
            loss_percent: self.loss_percent,
            queue: (2 * delay).max(Duration::from_millis(50)),
        }
    }
}

impl std::fmt::Display for Uplink {
    /// `20 Mbit/s 15 ms 1% loss`, or `20 Mbit/s HTB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate_mbit == 0 {
            return write!(f, "unshaped veth");
        }
        write!(f, "{} Mbit/s", self.rate_mbit)?;
        if !self.emulated {
            return write!(f, " HTB");
        }
        write!(f, " {} ms", self.delay_ms)?;
        if self.loss_percent > 0.0 {
            write!(f, " {}% loss", self.loss_percent)?;
        }
        Ok(())
    }
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
    /// The uplinks, in order (interface upI is `uplinks[I-1]`).
    pub uplinks: Vec<Uplink>,
    /// Unique name prefix of this testbed.
    pub name: String,
    /// The only capabilities daemons start with (a systemd unit's
    /// CapabilityBoundingSet), or all of root's.
    daemon_capabilities: Option<Vec<String>>,
}

impl Testbed {
    /// Starts the daemons from now on with only `capabilities` (names as in a systemd
    /// unit: `CAP_BPF`, ...), as a unit's CapabilityBoundingSet does: root keeps its
    /// identity but loses every other capability.
    pub fn limit_daemon_capabilities(&mut self, capabilities: &[&str]) {
        self.daemon_capabilities = Some(capabilities.iter().map(|&name| name.to_owned()).collect());
    }

    /// The command that starts a daemon in `netns`: as a service manager would, with
    /// the capabilities [`Self::limit_daemon_capabilities`] left, if it was called.
    fn daemon_command(&self, netns: &Netns) -> Command {
        let binary = crate::mptcp_user_bin();
        let Some(capabilities) = &self.daemon_capabilities else {
            return netns.daemon_command(&binary);
        };
        let kept: Vec<String> = capabilities
            .iter()
            .map(|name| format!("+{}", name.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let bounding = format!("-all,{}", kept.join(","));
        let mut command = netns.daemon_command(Path::new("setpriv"));
        command
            .arg(format!("--bounding-set={bounding}"))
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(binary);
        command
    }

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
            uplinks: uplinks.to_vec(),
            name,
            daemon_capabilities: None,
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
        converter.ip(&["addr", "add", "2001:db8:113::1/64", "dev", "srv0", "nodad"])?;
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            "srv0",
            "nodad",
        ])?;
        server.ip(&["-6", "route", "add", "default", "via", "2001:db8:113::1"])?;
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

    /// Deletes the LAN's veth pair and creates it again, as a network restart that
    /// rebuilds a router's LAN bridge does.
    pub fn recreate_lan(&self) -> anyhow::Result<()> {
        self.gateway.ip(&["link", "del", "lan0"])?;
        self.wire_lan()
    }

    /// Intercepts every TCP flow arriving on the gateway's LAN interface to its transparent
    /// listener, with an nftables tproxy rule and a local-delivery policy route.
    pub fn intercept_with_tproxy(&self) -> anyhow::Result<()> {
        let rules = format!(
            "table inet mptcp_testbed {{
                chain prerouting {{
                    type filter hook prerouting priority mangle; policy accept;
                    iifname \"lan0\" meta l4proto tcp ip daddr != 192.168.50.1 \
                        tproxy ip to :{GATEWAY_PORT} meta mark set {TPROXY_MARK} accept
                    iifname \"lan0\" meta l4proto tcp ip6 daddr != fd00:50::1 \
                        tproxy ip6 to :{GATEWAY_PORT} meta mark set {TPROXY_MARK} accept
                }}
            }}"
        );
        let mut nft = self.gateway.command("nft");
        nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = nft.spawn().context("starting nft")?;
        std::io::Write::write_all(
            &mut child.stdin.take().context("nft stdin")?,
            rules.as_bytes(),
        )?;
        anyhow::ensure!(child.wait()?.success(), "nft rejected the tproxy rules");
        for (family, everything) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
            self.gateway.ip(&[
                family,
                "rule",
                "add",
                "fwmark",
                TPROXY_MARK,
                "lookup",
                TPROXY_TABLE,
            ])?;
            self.gateway.ip(&[
                family,
                "route",
                "replace",
                "local",
                everything,
                "dev",
                "lo",
                "table",
                TPROXY_TABLE,
            ])?;
        }
        Ok(())
    }

    /// Removes what [`Self::intercept_with_tproxy`] installed.
    pub fn remove_tproxy(&self) -> anyhow::Result<()> {
        self.gateway
            .exec("nft", &["delete", "table", "inet", "mptcp_testbed"])?;
        for family in ["-4", "-6"] {
            self.gateway.ip(&[
                family,
                "rule",
                "del",
                "fwmark",
                TPROXY_MARK,
                "lookup",
                TPROXY_TABLE,
            ])?;
        }
        Ok(())
    }

    /// Starts the tool people use today for this job, OpenMPTCProuter-style: shadowsocks
    /// (`ss-redir` on the gateway, `ss-server` on the converter host), both forced onto
    /// MPTCP by mptcpize, AES-128-GCM, the LAN steered to ss-redir by the tproxy rule.
    /// Their TCP uses `congestion`. Logs go to `dir`.
    pub fn start_shadowsocks(&mut self, dir: &Path, congestion: &str) -> anyhow::Result<()> {
        const SS_PORT: &str = "8388";
        let common = ["-k", "testbed-password", "-m", "aes-128-gcm", "--no-delay"];
        for netns in [&self.gateway, &self.converter] {
            netns
                .sysctl("net.ipv4.tcp_congestion_control", congestion)
                .with_context(|| format!("{congestion} cannot be this host's default"))?;
        }
        let mut server = self.converter.command("mptcpize");
        server
            .args(["run", "ss-server", "-s", "0.0.0.0", "-p", SS_PORT])
            .args(common);
        self.start("ss-server", &mut server, &dir.join("ss-server.log"))?;
        let mut redir = self.gateway.command("mptcpize");
        redir
            .args(["run", "ss-redir", "-s", CONVERTER, "-p", SS_PORT, "-T"])
            .args(["-b", "0.0.0.0", "-l", &GATEWAY_PORT.to_string()])
            .args(common);
        self.start("ss-redir", &mut redir, &dir.join("ss-redir.log"))?;
        self.converter
            .wait_listening(8388, Duration::from_secs(10))?;
        self.gateway
            .wait_listening(GATEWAY_PORT, Duration::from_secs(10))?;
        self.intercept_with_tproxy()
    }

    /// Stops what [`Self::start_shadowsocks`] started and removes its tproxy rule.
    pub fn stop_shadowsocks(&mut self) -> anyhow::Result<()> {
        self.processes
            .retain(|process| !matches!(process.label(), "ss-redir" | "ss-server"));
        self.remove_tproxy()
    }

    /// Starts the SOCKS chain people used before (and the seed's): redsocks on the
    /// gateway, the LAN's TCP steered to it by an nftables redirect, relaying to dante
    /// on the converter host over SOCKS5; both forced onto MPTCP by mptcpize, no
    /// encryption. Configs and logs go to `dir`.
    pub fn start_socks_chain(&mut self, dir: &Path) -> anyhow::Result<()> {
        const SOCKS_PORT: u16 = 1080;
        let dante = dir.join("danted.conf");
        std::fs::write(
            &dante,
            format!(
                "logoutput: stderr\n\
                 internal: 0.0.0.0 port = {SOCKS_PORT}\n\
                 external: {CONVERTER_TOWARD_SERVER}\n\
                 clientmethod: none\n\
                 socksmethod: none\n\
                 user.privileged: root\n\
                 user.unprivileged: nobody\n\
                 client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
                 socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n"
            ),
        )?;
        let mut server = self.converter.command("mptcpize");
        server
            .args(["run", "danted", "-f"])
            .arg(&dante)
            .arg("-p")
            .arg(dir.join("danted.pid"));
        self.start("danted", &mut server, &dir.join("danted.log"))?;
        let redsocks = dir.join("redsocks.conf");
        std::fs::write(
            &redsocks,
            format!(
                "base {{ log_info = off; log = stderr; daemon = off; redirector = iptables; }}\n\
                 redsocks {{ local_ip = 0.0.0.0; local_port = {GATEWAY_PORT}; \
                 ip = {CONVERTER}; port = {SOCKS_PORT}; type = socks5; }}\n"
            ),
        )?;
        let mut client = self.gateway.command("mptcpize");
        client.args(["run", "redsocks", "-c"]).arg(&redsocks);
        self.start("redsocks", &mut client, &dir.join("redsocks.log"))?;
        self.converter
            .wait_listening(SOCKS_PORT, Duration::from_secs(10))?;
        self.gateway
            .wait_listening(GATEWAY_PORT, Duration::from_secs(10))?;
        self.gateway.exec(
            "nft",
            &[&format!(
                "add table ip mptcp_socks; \
                 add chain ip mptcp_socks prerouting {{ type nat hook prerouting priority dstnat; }}; \
                 add rule ip mptcp_socks prerouting iifname lan0 meta l4proto tcp \
                 redirect to :{GATEWAY_PORT}"
            )],
        )?;
        Ok(())
    }

    /// Stops what [`Self::start_socks_chain`] started and removes its redirect.
    pub fn stop_socks_chain(&mut self) -> anyhow::Result<()> {
        self.processes
            .retain(|process| !matches!(process.label(), "redsocks" | "danted"));
        self.gateway
            .exec("nft", &["delete", "table", "ip", "mptcp_socks"])
            .map(drop)
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

    /// Starts a process in `netns`, owned by the testbed, with its stderr in `log`.
    pub fn start(&mut self, label: &str, command: &mut Command, log: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(log)?;
        command.stdout(log.try_clone()?).stderr(log);
        self.processes.push(Process::spawn(label, command)?);
        Ok(())
    }

    /// The process id of the started process labelled `label` ("gateway", "converter").
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|process| process.label() == label)
            .map(Process::pid)
    }

    /// Forgets the processes labelled `label` (killing any still running): for a
    /// daemon the test killed itself, before starting another.
    pub fn forget(&mut self, label: &str) {
        self.processes.retain(|process| process.label() != label);
    }

    /// Checks that every started process still runs.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::check_running)
    }

    /// Writes a fresh key, starts the converter on the converter host (`converter_args` added
    /// to its command line) and the gateway intercepting lan0 with its eBPF programs
    /// (`gateway_args` added, e.g. another --key-file), and waits until both listen.
    /// Logs go to `dir`.
    pub fn start_gateway_and_converter(
        &mut self,
        dir: &Path,
        gateway_args: &[&str],
        converter_args: &[&str],
    ) -> anyhow::Result<()> {
        self.start_daemons(dir, Interception::Ebpf, gateway_args, converter_args)
    }

    /// Starts the converter with the key `dir/key` (written first if there is none),
    /// `args` added, logging to `dir/converter.log`; returns once it listens.
    pub fn start_converter(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let binary = crate::mptcp_user_bin();
        let key = dir.join("key");
        if !key.exists() {
            crate::netns::run(Command::new(&binary).arg("keygen").arg(&key))?;
        }
        let mut converter = self.daemon_command(&self.converter);
        converter
            .args([
                "converter",
                "--listen",
                &format!("0.0.0.0:{CONVERTER_PORT}"),
            ])
            .arg("--key-file")
            .arg(&key)
            .args(args);
        self.start("converter", &mut converter, &dir.join("converter.log"))?;
        self.converter
            .wait_listening(CONVERTER_PORT, Duration::from_secs(10))
    }

    /// Starts the gateway with `args` alone (a `--config` file, say), logging to
    /// `dir/gateway.log`; returns once it is ready.
    pub fn start_gateway(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut gateway = self.daemon_command(&self.gateway);
        gateway.arg("gateway").args(args).env("RUST_LOG", "info");
        self.start("gateway", &mut gateway, &dir.join("gateway.log"))?;
        wait_for_line(
            &dir.join("gateway.log"),
            mptcp_user::gateway::READY,
            Duration::from_secs(10),
        )?;
        self.check_running()
    }

    /// [`Self::start_gateway_and_converter`], with the LAN intercepted by `interception`.
    pub fn start_daemons(
        &mut self,
        dir: &Path,
        interception: Interception,
        gateway_args: &[&str],
        converter_args: &[&str],
    ) -> anyhow::Result<()> {
        self.start_converter(dir, converter_args)?;
        self.start_gateway_intercepting(dir, interception, gateway_args)
    }

    /// The gateway half of [`Self::start_daemons`], for a converter already running
    /// with the key `dir/key`: to start a gateway again with other arguments, say.
    pub fn start_gateway_intercepting(
        &mut self,
        dir: &Path,
        interception: Interception,
        gateway_args: &[&str],
    ) -> anyhow::Result<()> {
        let listen = format!("[::]:{GATEWAY_PORT}");
        let converter = format!("{CONVERTER}:{CONVERTER_PORT}");
        let pin_path = self.pin_path();
        let key = dir.join("key").to_string_lossy().into_owned();
        let mut args = vec!["--listen", &listen, "--converter", &converter];
        args.extend(["--pin-path", &pin_path]);
        if interception == Interception::Ebpf {
            args.extend(["--lan", "lan0"]);
        }
        if !gateway_args.contains(&"--key-file") {
            args.extend(["--key-file", &key]);
        }
        args.extend(gateway_args);
        self.start_gateway(dir, &args)?;
        if interception == Interception::Nftables {
            self.intercept_with_tproxy()?;
        }
        self.check_running()
    }

    /// Deletes uplink `i`'s veth pair and creates it again with its addresses, as a
    /// modem that reconnects does (zero-delay uplinks; no HTB shaping afterwards).
    pub fn recreate_uplink(&self, i: usize) -> anyhow::Result<()> {
        let interface = format!("up{i}");
        self.gateway.ip(&["link", "del", &interface])?;
        veth(&self.gateway, &interface, &self.converter, &interface)?;
        self.gateway
            .ip(&["addr", "add", &format!("10.0.{i}.1/24"), "dev", &interface])?;
        self.converter
            .ip(&["addr", "add", &format!("10.0.{i}.2/24"), "dev", &interface])
    }

    /// Makes uplink `i` silent, as a dead line is: every packet on it vanishes, both
    /// ways, while the interfaces, addresses and routes stay up. Dropped at the
    /// converter's end (nftables netdev hooks), so the gateway's stack sees nothing
    /// unusual.
    pub fn silence_uplink(&self, i: usize) -> anyhow::Result<()> {
        let table = format!("silence_up{i}");
        self.converter
            .exec("nft", &["add", "table", "netdev", &table])?;
        for (chain, hook) in [("in", "ingress"), ("out", "egress")] {
            let spec =
                format!("{{ type filter hook {hook} device up{i} priority 0; policy drop; }}");
            self.converter
                .exec("nft", &["add", "chain", "netdev", &table, chain, &spec])?;
        }
        Ok(())
    }

    /// Undoes [`Self::silence_uplink`].
    pub fn restore_uplink(&self, i: usize) -> anyhow::Result<()> {
        self.converter
            .exec(
                "nft",
                &["delete", "table", "netdev", &format!("silence_up{i}")],
            )
            .map(drop)
    }

    /// Where the gateway pins its maps.
    pub fn pin_path(&self) -> String {
        format!("{}/{}", mptcp_user::sys::BPFFS, self.name)
    }

    /// `mptcp-user uplinks --json`: (interface, state) of each uplink; none when no
    /// gateway runs.
    pub fn uplink_states(&self) -> Vec<(String, String)> {
        let output = self.gateway_cli(&["uplinks", "--json"]).unwrap();
        let rows: Vec<serde_json::Value> =
            serde_json::from_slice(&output.stdout).unwrap_or_default();
        rows.iter()
            .map(|row| {
                (
                    row["interface"].as_str().unwrap_or_default().to_owned(),
                    row["health"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// Runs `mptcp-user ARGS --pin-path <ours>` on the gateway host (the inspection and
    /// policy commands), returning its output whatever its exit status.
    pub fn gateway_cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let binary = crate::mptcp_user_bin();
        self.gateway
            .host_mounts_command(&binary.to_string_lossy())
            .args(args)
            .args(["--pin-path", &self.pin_path()])
            .output()
            .context("running mptcp-user")
    }

    /// Serves the files of `dir` over HTTP on port 80 of the server, IPv4 and IPv6
    /// (python3's stock http.server: a real third-party server).
    pub fn start_http_server(&mut self, dir: &Path, log: &Path) -> anyhow::Result<()> {
        let mut server = self.server.command("python3");
        server
            .args(["-m", "http.server", "80", "--bind", "::", "--directory"])
            .arg(dir);
        self.start("http server", &mut server, log)?;
        self.server.wait_listening(80, Duration::from_secs(10))
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
        for extension in ["lock", "uplinks.json"] {
            let _ = std::fs::remove_file(mptcp_user::sys::run_file(&pins, extension));
        }
    }
}

/// Waits until the log file at `path` has a line containing `text`.
pub fn wait_for_line(path: &Path, text: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{} has no line {text:?} after {timeout:?}; it says:\n{log}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
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
