//! The converter's options (`mptcp-user converter`, the `[converter]` table).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    defaults, over_file, prefixes,
    tuning::{self, TuningOptions},
};
use crate::{
    converter::ConverterConfig,
    net::addr::{self, parse_prefix},
};

options! {
/// Options of `mptcp-user converter` (flags, or keys of `[converter]`).
#[derive(Debug, Default, Args, Deserialize)]
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

    /// Pre-shared key; requests without a valid cookie get "Not Authorized".
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// Allow destinations in this prefix although the default policy refuses them
    /// (loopback, private, link-local, CGNAT, multicast, this host); repeatable.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_prefix)]
    #[serde(default, deserialize_with = "prefixes")]
    pub allow: Vec<IpNet>,

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
        let key_file = self
            .key_file
            .context("the converter needs a key file (key-file = PATH, see `mptcp-user keygen`)")?;
        Ok(ConverterConfig {
            listen: self.listen.unwrap_or(defaults::CONVERTER_LISTEN),
            key_file,
            allow: self.allow,
            allow_clients: self
                .allow_clients
                .iter()
                .copied()
                .map(addr::canonical_prefix)
                .collect(),
            fast_open: self.fast_open.unwrap_or(defaults::FAST_OPEN),
            speedtest_mbit: self.speedtest_rate.unwrap_or(defaults::SPEEDTEST_RATE_MBIT),
            metrics: self.metrics,
            max_conns: self.max_conns.unwrap_or(defaults::MAX_CONNS),
            max_pending: (
                self.max_pending.unwrap_or(defaults::MAX_PENDING),
                self.max_pending_per_source
                    .unwrap_or(defaults::MAX_PENDING_PER_SOURCE),
            ),
            request_timeout: Duration::from_secs(
                self.request_timeout.unwrap_or(defaults::REQUEST_TIMEOUT_S),
            ),
            connect_timeout: Duration::from_secs(
                self.connect_timeout.unwrap_or(defaults::CONNECT_TIMEOUT_S),
            ),
            timeouts: tuning::timeouts(self.idle_timeout, self.dead_path_timeout),
            replay_window: Duration::from_secs(
                self.replay_window.unwrap_or(defaults::REPLAY_WINDOW_S),
            ),
            tuning: self.tuning.into_config(),
        })
    }
}
