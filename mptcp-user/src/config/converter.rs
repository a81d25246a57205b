//! The converter's options (`mptcp-user converter`, the `[converter]` table).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    CONNECT_SECONDS, defaults, over_file, parsed_strings, prefixes, seconds,
    tuning::{self, TuningOptions},
    within,
};
use crate::{
    converter::{
        ConverterConfig, DenyRule, PolicyConfig,
        accounts::{self, AccountConfig},
    },
    net::addr::{self, parse_prefix},
};

options! {
/// Options of `mptcp-user converter` (flags, or keys of `[converter]`).
#[derive(Clone, Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConverterOptions {
    /// Read options from this TOML file's [converter] table; flags given here win.
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port to accept MPTCP connections from gateways on; [::]:PORT also
    /// serves IPv4.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Behind a load balancer: announce this address of the host to the gateways
    /// (ADDR:PORT, a port other than --listen's), so that they open their other
    /// subflows there and not through the balancer (sets the MPTCP "C" flag in this
    /// network namespace; docs/operators.md). Restored at exit. None by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub announce: Option<SocketAddr>,

    /// Pre-shared key of the converter's gateway (named `default`); requests without a
    /// valid cookie get "Not Authorized". Optional beside `gateway` entries.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// A gateway this converter serves, with keys and limits of its own (repeatable):
    /// NAME=KEY_FILE[,key=KEY_FILE]...[,max-conns=N][,forward-ports=PORTS]... In a file:
    /// [[converter.gateway]] with name, key-files (a second one during a key rotation),
    /// max-conns (its share of the converter's) and forward-ports (instead of the
    /// converter's). SIGHUP reloads the gateways and their keys; live flows go on.
    #[arg(long = "gateway", value_name = "GATEWAY")]
    #[serde(default, rename = "gateway")]
    pub gateways: Vec<AccountConfig>,

    /// Allow destinations in this prefix although the default policy refuses them
    /// (loopback, private, link-local, CGNAT, multicast, this host); repeatable.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_prefix)]
    #[serde(default, deserialize_with = "prefixes")]
    pub allow: Vec<IpNet>,

    /// Refuse destinations in this prefix, or only one port of them (`CIDR[:PORT]`, e.g.
    /// `0.0.0.0/0:22`), whatever else allows them; repeatable.
    #[arg(long = "deny", value_name = "CIDR[:PORT]")]
    #[serde(default, deserialize_with = "parsed_strings")]
    pub deny: Vec<DenyRule>,

    /// An address of this host its interfaces do not show, refused as a destination
    /// like its own: a cloud host's public address behind 1:1 NAT, a provider's host
    /// services (e.g. 168.63.129.16); repeatable.
    #[arg(long = "own-address", value_name = "IP")]
    #[serde(default, rename = "own-address", deserialize_with = "parsed_strings")]
    pub own_addresses: Vec<IpAddr>,

    /// Allow destination port 25 (mail from server to server, what open relays are
    /// abused for: refused by default; mail clients use 587 and 465).
    #[arg(long)]
    #[serde(default)]
    pub allow_smtp: bool,

    /// Let clients from this network convert without the HMAC cookie (Convert clients
    /// that have none; the destination policy still applies); repeatable. Anyone there
    /// can use the converter: see docs/security.md.
    #[arg(long = "allow-client", value_name = "CIDR", value_parser = parse_prefix)]
    #[serde(default, rename = "allow-client", deserialize_with = "prefixes")]
    pub allow_clients: Vec<IpNet>,

    /// Accept a Convert request in the SYN (TCP Fast Open, RFC 8803 section 4.2) from
    /// clients that send it there; the kernel does so only with the server bit of
    /// net.ipv4.tcp_fastopen set (`sysctl -w net.ipv4.tcp_fastopen=3`), and from clients
    /// without a Fast Open cookie (libconvert) only with 0x200 too (515).
    #[arg(long, value_name = "BOOL")]
    pub fast_open: Option<bool>,

    /// Rate cap of the speed tests this converter serves to its gateways
    /// (`mptcp-user speedtest`; one at a time, 20 s at most each way), in Mbit/s; 0: none.
    #[arg(long, value_name = "MBIT")]
    pub speedtest_rate: Option<u64>,

    /// Serve Prometheus metrics on this address and port (`GET /metrics`), e.g.
    /// 127.0.0.1:9124; none by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Most authenticated connections relayed at once; beyond it, "Resource Exceeded".
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,

    /// Most connections held before they authenticate; a new one beyond it evicts the
    /// oldest, so strangers cannot crowd out gateways.
    #[arg(long, value_name = "N")]
    pub max_pending: Option<usize>,

    /// Most connections held before they authenticate from one source (an IPv4
    /// address, an IPv6 /64); beyond it, new ones are closed.
    #[arg(long, value_name = "N")]
    pub max_pending_per_source: Option<usize>,

    /// Seconds a client has to send its Convert request.
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<u64>,

    /// Seconds to connect to a destination before answering "Network Failure".
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,

    /// Seconds without a byte either way after which a connection is reset.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds after which a flow whose every path is dead ends with a reset on both
    /// sides: a peer that answers no TCP keepalive or takes no byte for that long.
    #[arg(long, value_name = "SECS")]
    pub dead_path_timeout: Option<u64>,

    /// Seconds a cookie's timestamp may differ from this host's clock.
    #[arg(long, value_name = "SECS")]
    pub replay_window: Option<u64>,

    /// Public ports gateways may claim for port forwards (inbound connections to their
    /// LAN), e.g. `8000-9000,25565`; none by default. A port is opened only while a
    /// gateway with a valid key serves it.
    #[arg(long, value_name = "PORTS")]
    pub forward_ports: Option<String>,

    #[command(flatten)]
    #[serde(default)]
    pub tuning: TuningOptions,
}
}

impl ConverterOptions {
    /// These flags over the `[converter]` table of `--config`, if any.
    pub fn with_file(self) -> anyhow::Result<Self> {
        let path = self.config.clone();
        over_file(self, path.as_ref(), "converter", |file| file.converter)
    }

    /// The converter's config, defaults filled in and checked.
    pub fn into_config(self) -> anyhow::Result<ConverterConfig> {
        let mut accounts: Vec<AccountConfig> = self
            .key_file
            .map(AccountConfig::default_for)
            .into_iter()
            .collect();
        accounts.extend(self.gateways);
        if accounts.is_empty() {
            bail!(
                "the converter needs a key file (key-file = PATH, see `mptcp-user keygen`) \
                 or [[converter.gateway]] entries"
            );
        }
        accounts::check_all(&accounts)?;
        let max_pending = count("max-pending", self.max_pending, defaults::MAX_PENDING, 1)?;
        let max_pending_per_source = count(
            "max-pending-per-source",
            self.max_pending_per_source,
            defaults::MAX_PENDING_PER_SOURCE,
            1,
        )?
        .min(max_pending);
        let listen = self.listen.unwrap_or(defaults::CONVERTER_LISTEN);
        if let Some(announce) = self.announce
            && announce.port() == listen.port()
        {
            bail!(
                "announce {announce}: a port other than listen's ({}), which the kernel \
                 would not announce behind a balancer",
                listen.port()
            );
        }
        Ok(ConverterConfig {
            listen,
            announce: self.announce,
            accounts,
            policy: PolicyConfig {
                allow: self.allow,
                deny: self.deny,
                own_addresses: self
                    .own_addresses
                    .into_iter()
                    .map(addr::canonical)
                    .collect(),
                allow_smtp: self.allow_smtp,
            },
            allow_clients: self
                .allow_clients
                .iter()
                .copied()
                .map(addr::canonical_prefix)
                .collect(),
            fast_open: self.fast_open.unwrap_or(defaults::FAST_OPEN),
            speedtest_mbit: within(
                "speedtest-rate",
                self.speedtest_rate,
                defaults::SPEEDTEST_RATE_MBIT,
                0..=100_000,
            )?,
            metrics: self.metrics,
            max_conns: count("max-conns", self.max_conns, defaults::MAX_CONNS, 1)?,
            max_pending: (max_pending, max_pending_per_source),
            request_timeout: seconds(
                "request-timeout",
                self.request_timeout,
                defaults::REQUEST_TIMEOUT_S,
                CONNECT_SECONDS,
            )?,
            connect_timeout: seconds(
                "connect-timeout",
                self.connect_timeout,
                defaults::CONNECT_TIMEOUT_S,
                CONNECT_SECONDS,
            )?,
            timeouts: tuning::timeouts(self.idle_timeout, self.dead_path_timeout)?,
            replay_window: seconds(
                "replay-window",
                self.replay_window,
                defaults::REPLAY_WINDOW_S,
                1..=3600,
            )?,
            tuning: self.tuning.into_config(),
            forward_ports: self
                .forward_ports
                .as_deref()
                .unwrap_or_default()
                .parse()
                .context("bad forward-ports")?,
        })
    }
}

/// A count option (connections): from `least` to a million, which keeps the semaphore
/// and the budget far from their limits.
fn count(name: &str, value: Option<usize>, default: usize, least: usize) -> anyhow::Result<usize> {
    within(name, value, default, least..=1_000_000)
}
