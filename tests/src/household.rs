//! A household behind the gateway, for the tests of what the gateway does not convert
//! (UDP, DNS, TCP to destinations it does not intercept): the testbed wired as a
//! household router ([`Testbed::router`]), the gateway started from a config file
//! naming its uplinks (with their roles), the LAN's DNS ([`crate::dns`]), a UDP echo
//! server ([`crate::udp`]) and a greeting server ([`crate::greeting`]) on the server
//! host. Each of the three answers with the address it saw, so a test reads off which
//! uplink carried a flow: 10.0.I.1 is uplink I ([`uplink_address`]).

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{
    TempDir, dns,
    greeting::{GreetingServer, greeting},
    netns::run_in,
    testbed::{CONVERTER, CONVERTER_PORT, SERVER, SERVER_PRIVATE, Testbed, Uplink, daemon_log},
    udp::{self, EchoServer, UdpFlow},
    wait_until,
};

/// The echo server's port on [`SERVER`].
pub const UDP_PORT: u16 = 7070;
/// The greeting server's port, reached at [`SERVER_PRIVATE`]: a private destination the
/// gateway does not intercept.
pub const TCP_PORT: u16 = 8090;
/// How long a TCP connect to [`SERVER_PRIVATE`] may take before it counts as failed.
const TCP_PATIENCE: Duration = Duration::from_secs(1);

/// The address the far side sees for traffic that left by uplink `i` (1-based).
pub fn uplink_address(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, i, 1))
}

/// Where the echo server answers.
fn echo_server() -> SocketAddr {
    SocketAddr::new(SERVER.parse().unwrap(), UDP_PORT)
}

/// A household router testbed with its servers; dropped in order: the testbed (daemons,
/// then namespaces), the servers, then the scratch directory with the logs.
pub struct Household {
    /// The testbed, wired as a household router.
    pub testbed: Testbed,
    _echo: EchoServer,
    _greeting: GreetingServer,
    /// Logs, key, config file, and the gateway's state directory.
    pub dir: TempDir,
}

impl Household {
    /// Builds the household on `uplinks` and starts the converter, the DNS and the
    /// servers, and writes the gateway's config file: uplink I gets the TOML lines
    /// `uplink_keys[I-1]` (`role = "metered"`, say), if there are any. The gateway is
    /// not started.
    ///
    /// # Panics
    /// When any of it fails.
    pub fn build(label: &str, uplinks: &[Uplink], uplink_keys: &[&str]) -> Self {
        Self::build_with_converter(label, uplinks, uplink_keys, &[])
    }

    /// [`Self::build`] with these flags on the converter's command line.
    ///
    /// # Panics
    /// When any of it fails.
    pub fn build_with_converter(
        label: &str,
        uplinks: &[Uplink],
        uplink_keys: &[&str],
        converter_args: &[&str],
    ) -> Self {
        let dir = TempDir::new(label).unwrap();
        let mut testbed = Testbed::router(label, uplinks).unwrap();
        testbed.start_converter(dir.path(), converter_args).unwrap();
        dns::start(&mut testbed, dir.path()).unwrap();
        let echo = EchoServer::start(&testbed.server, echo_server()).unwrap();
        let greeting = GreetingServer::start(&testbed.server, TCP_PORT).unwrap();
        let household = Self {
            testbed,
            _echo: echo,
            _greeting: greeting,
            dir,
        };
        household.write_config(uplink_keys);
        household
    }

    /// [`Self::build`], then the gateway started and every uplink probed up.
    pub fn deploy(label: &str, uplinks: &[Uplink], uplink_keys: &[&str]) -> Self {
        let mut household = Self::build(label, uplinks, uplink_keys);
        household.start_gateway();
        household.wait_probed();
        household
    }

    /// The gateway's config file.
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }

    /// The config: the testbed's converter, the LAN, every uplink with its next hop
    /// learned from its DHCP-style default route, and the state directory in our
    /// scratch directory (never the machine's /var/lib).
    fn write_config(&self, uplink_keys: &[&str]) {
        let dir = self.dir.path();
        let mut text = format!(
            "[gateway]\n\
             converter = \"{CONVERTER}:{CONVERTER_PORT}\"\n\
             key-file = \"{key}\"\n\
             lan = [\"lan0\"]\n\
             pin-path = \"{pin}\"\n\
             state-dir = \"{state}\"\n",
            key = dir.join("key").display(),
            pin = self.testbed.pin_path(),
            state = dir.display(),
        );
        for i in 1..=self.testbed.uplinks.len() {
            let keys = uplink_keys.get(i - 1).copied().unwrap_or_default();
            let _ = write!(
                text,
                "\n[[gateway.uplink]]\ninterface = \"up{i}\"\n{keys}\n"
            );
        }
        std::fs::write(self.config(), text).unwrap();
    }

    /// Starts the gateway from the config file; returns once it is ready.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_gateway(&mut self) {
        self.start_gateway_with(&[]);
    }

    /// [`Self::start_gateway`] with these flags after the config file's.
    ///
    /// # Panics
    /// When it does not start.
    pub fn start_gateway_with(&mut self, flags: &[&str]) {
        let config = self.config();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(flags);
        self.testbed.start_gateway(self.dir.path(), &args).unwrap();
    }

    /// Stops the gateway with `signal` and waits until it has exited.
    ///
    /// # Panics
    /// When it does not exit within 10 s.
    pub fn stop_gateway(&mut self, signal: Signal) {
        self.testbed.stop("gateway", signal).unwrap();
    }

    /// Waits (10 s at most) until the gateway's probes say every uplink is up.
    ///
    /// # Panics
    /// When they do not.
    pub fn wait_probed(&self) {
        wait_until(
            Duration::from_secs(10),
            || {
                let states = self.testbed.uplink_states();
                states.len() == self.testbed.uplinks.len()
                    && states.iter().all(|(_, state)| state == "up")
            },
            || format!("uplinks not all up: {:?}", self.testbed.uplink_states()),
        );
    }

    /// A fresh UDP exchange from the LAN host ([`udp::exchange`]): the address the
    /// server saw, or `None` when no answer came within half a second.
    pub fn udp(&self) -> Option<IpAddr> {
        udp::exchange(&self.testbed.client, echo_server())
    }

    /// Starts an ongoing UDP flow from the LAN host to the echo server.
    ///
    /// # Panics
    /// When its socket cannot be made.
    pub fn udp_flow(&self) -> UdpFlow {
        UdpFlow::start(&self.testbed.client, echo_server()).unwrap()
    }

    /// Sends `bytes` bytes of UDP from the LAN host to the echo server.
    ///
    /// # Panics
    /// When its socket cannot be made.
    pub fn send_udp_bytes(&self, bytes: usize) {
        udp::send_bytes(&self.testbed.client, echo_server(), bytes).unwrap();
    }

    /// A TCP connection from the LAN host to [`SERVER_PRIVATE`] (not intercepted): the
    /// address the server saw, or `None` when it did not connect and greet within a
    /// second.
    pub fn tcp_private(&self) -> Option<IpAddr> {
        let server = SocketAddr::new(SERVER_PRIVATE.parse().unwrap(), TCP_PORT);
        run_in(&self.testbed.client, move || {
            let (_, seen) = greeting(server, TCP_PATIENCE).ok()?;
            seen.parse().ok()
        })
    }

    /// Whether the LAN host resolves a name through the gateway's DNS forwarder.
    pub fn resolves(&self) -> bool {
        dns::resolves(&self.testbed.client)
    }

    /// `mptcp-user uplinks --json`: one object per uplink.
    ///
    /// # Panics
    /// When the command fails or its output is not JSON.
    pub fn uplinks(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.testbed.gateway_cli_ok(&["uplinks", "--json"]))
            .expect("uplinks --json is JSON")
    }

    /// The object of [`Self::uplinks`] for `interface`.
    ///
    /// # Panics
    /// When there is none.
    pub fn uplink(&self, interface: &str) -> serde_json::Value {
        let uplinks = self.uplinks();
        uplinks
            .iter()
            .find(|uplink| uplink["interface"] == interface)
            .unwrap_or_else(|| panic!("no uplink {interface}: {uplinks:?}"))
            .clone()
    }

    /// What `interface` carries of the unconverted traffic, as the gateway says
    /// (`default`, `udp`); `None` when it says nothing of it.
    pub fn carries(&self, interface: &str) -> Option<BTreeSet<String>> {
        let uplink = self.uplink(interface);
        let carries = uplink["carries"].as_array()?;
        Some(
            carries
                .iter()
                .filter_map(|what| Some(what.as_str()?.to_owned()))
                .collect(),
        )
    }

    /// What the gateway logged so far.
    pub fn gateway_log(&self) -> String {
        daemon_log(self.dir.path(), "gateway")
    }

    /// The gateway's log lines that move a route from one uplink to another
    /// (`default route: up1 -> up2: ...`).
    pub fn switches(&self) -> Vec<String> {
        self.gateway_log()
            .lines()
            .filter(|line| line.contains("route: ") && line.contains(" -> "))
            .map(str::to_owned)
            .collect()
    }
}

/// How often [`first_success`] starts another attempt.
pub const ATTEMPT_EVERY: Duration = Duration::from_millis(250);

/// Starts `attempt` every [`ATTEMPT_EVERY`] from now on, each on a thread of its own
/// (an attempt may wait up to a second for its answer), until one succeeds or `limit`
/// has passed since `since`: how long after `since` the first success came, and what it
/// returned; `None` when none did.
pub fn first_success<T: Send>(
    since: Instant,
    limit: Duration,
    attempt: impl Fn() -> Option<T> + Sync,
) -> Option<(Duration, T)> {
    let first = std::sync::Mutex::new(None::<(Duration, T)>);
    std::thread::scope(|scope| {
        while first.lock().unwrap().is_none() && since.elapsed() < limit {
            scope.spawn(|| {
                if let Some(value) = attempt() {
                    let after = since.elapsed();
                    let mut first = first.lock().unwrap();
                    if first.as_ref().is_none_or(|(earlier, _)| after < *earlier) {
                        *first = Some((after, value));
                    }
                }
            });
            std::thread::sleep(ATTEMPT_EVERY);
        }
    });
    first.into_inner().unwrap()
}
