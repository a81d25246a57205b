//! The gateway's options (`mptcp-user gateway`, the `[gateway]` table).

use std::{net::SocketAddr, path::PathBuf};

use anyhow::bail;
use clap::Args;
use ipnet::IpNet;
use mptcp_ebpf_common::selection::quic_mark;
use serde::Deserialize;

use super::{
    defaults, one_or_more, over_file, prefixes,
    tuning::{self, TuningOptions},
};
use crate::{
    gateway::{
        GatewayConfig,
        forwards::{self, ForwardConfig, Source},
        interception::InterceptionConfig,
        uplinks::{self, UplinkConfig},
        upstream::UpstreamConfig,
    },
    net::addr::parse_prefix,
};

options! {
/// Options of `mptcp-user gateway` (flags, or keys of `[gateway]`).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GatewayOptions {
    /// Read options from this TOML file's [gateway] table; flags given here win.
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Intercept the TCP flows arriving on this LAN interface (repeatable). Without it,
    /// only opted-in cgroups are intercepted.
    #[arg(long = "lan", value_name = "IFACE")]
    #[serde(default)]
    pub lan: Vec<String>,

    /// Intercept the TCP connects of the processes in this cgroup v2 directory and its
    /// descendants (repeatable), e.g. /sys/fs/cgroup/system.slice/app.service. More can
    /// be added while running with `mptcp-user optin`.
    #[arg(long = "cgroup", value_name = "PATH")]
    #[serde(default, rename = "cgroup")]
    pub cgroups: Vec<PathBuf>,

    /// Intercept destinations in this prefix (repeatable); the longest matching prefix
    /// wins. By default everything is intercepted except private, loopback, link-local,
    /// CGNAT and multicast ranges, this host's networks and addresses, and the converter.
    #[arg(long = "include", value_name = "CIDR", value_parser = parse_prefix)]
    #[serde(default, deserialize_with = "prefixes")]
    pub include: Vec<IpNet>,

    /// Never intercept destinations in this prefix (repeatable).
    #[arg(long = "exclude", value_name = "CIDR", value_parser = parse_prefix)]
    #[serde(default, deserialize_with = "prefixes")]
    pub exclude: Vec<IpNet>,

    /// Intercept only flows to this destination port (repeatable); all ports when absent.
    #[arg(long = "port", value_name = "PORT")]
    #[serde(default, rename = "port")]
    pub ports: Vec<u16>,

    /// Turn QUIC (UDP to port 443) of the intercepted destinations away with ICMP port
    /// unreachable, so that browsers fall back to TCP, which is aggregated; `false`
    /// leaves it alone. Live: `mptcp-user selection quic on|off`.
    #[arg(long, value_name = "BOOL")]
    pub quic_fallback: Option<bool>,

    /// Most warm connections kept open to the converter, so that a new flow's request
    /// leaves at once (0: none). The pool follows demand up to it: about one per two
    /// recent flows, and as many as the largest recent burst of new flows.
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,

    /// Serve Prometheus metrics on this address and port (`GET /metrics`), e.g.
    /// 127.0.0.1:9124; none by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Serve the household's status page on this address and port (`/`, and its data
    /// as JSON at `/api/status`), e.g. the LAN address 192.168.1.1:8080; none by
    /// default. An address of every interface (0.0.0.0, [::]) is refused unless
    /// --status-on-all-interfaces true is given.
    #[arg(long, value_name = "ADDR:PORT")]
    pub status: Option<SocketAddr>,

    /// Let --status listen on every interface, the uplinks' too.
    #[arg(long, value_name = "BOOL")]
    pub status_on_all_interfaces: Option<bool>,

    /// A port forward (repeatable, 64 at most): connections to the converter's public
    /// port PUBLIC reach the LAN host ADDR:PORT, over every uplink:
    /// PUBLIC=ADDR:PORT[,allow=CIDR]...[,source=client|gateway]. In a file:
    /// [[gateway.forward]] with public, to, allow (a list of who may connect; everyone
    /// by default) and source (the LAN host sees the client's address, `client`, or the
    /// gateway's). The converter must allow the port (its forward-ports).
    #[arg(long = "forward", value_name = "FORWARD")]
    #[serde(default, rename = "forward")]
    pub forwards: Vec<ForwardConfig>,

    /// An uplink (repeatable):
    /// IFACE[,next-hop=ADDR][,backup|,metered][,allowance=SIZE][,allowance-period=month|day].
    /// In a file: [[gateway.uplink]] with interface, next-hop, role (primary, backup or
    /// metered), allowance (a metered line's bytes per period, e.g. "20GB") and
    /// allowance-period (month or day).
    #[arg(long = "uplink", value_name = "UPLINK")]
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<UplinkConfig>,

    /// Steer what the gateway does not convert (DNS, UDP, TCP it does not intercept, this
    /// host's own traffic) to the best working uplink, and move it when that uplink dies
    /// (with configured uplinks); `false` leaves it to the main routing table.
    #[arg(long, value_name = "BOOL")]
    pub steer_unconverted: Option<bool>,

    /// Directory of what must survive a restart: the metered uplinks' usage.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// fwmark of the policy route that delivers intercepted LAN packets locally.
    #[arg(long, alias = "steer-mark", value_name = "MARK", value_parser = parse_mark)]
    pub intercept_mark: Option<u32>,

    /// Routing table of that policy route.
    #[arg(long, alias = "steer-table", value_name = "TABLE")]
    pub intercept_table: Option<u32>,

    /// Directory on bpffs where the maps are pinned for `mptcp-user flows`.
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,

    /// Transparent listener that intercepted connections are handed to; [::]:PORT also
    /// serves IPv4.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// The converter, e.g. vps.example.net:5124 (`--remote` is an alias); repeatable:
    /// standbys, used in this order when the ones before do not answer. In a file, a
    /// string or a list.
    #[arg(long = "converter", alias = "remote", value_name = "HOST:PORT")]
    #[serde(default, deserialize_with = "one_or_more")]
    pub converter: Vec<String>,

    /// Pre-shared key shared with the converter (see `mptcp-user keygen`). SIGHUP reads
    /// the file again (a rotated key); live flows go on.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// No converter: open MPTCP straight to each original destination (the kernel falls
    /// back to TCP where the server does not speak MPTCP).
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,

    /// Seconds to open the upstream connection (and get the converter's answer).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,

    /// Seconds without a byte either way after which a connection is reset.
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds after which a flow whose every path is dead ends with a reset on both
    /// sides: a peer that answers no TCP keepalive or takes no byte for that long, or a
    /// converter no uplink's probe has reached for that long (the probes take a few
    /// seconds more to notice).
    #[arg(long, value_name = "SECS")]
    pub dead_path_timeout: Option<u64>,

    #[command(flatten)]
    #[serde(default)]
    pub tuning: TuningOptions,
}
}

impl GatewayOptions {
    /// These flags over the `[gateway]` table of `--config`, if any.
    pub fn with_file(self) -> anyhow::Result<Self> {
        let path = self.config.clone();
        over_file(self, path.as_ref(), "gateway", |file| file.gateway)
    }

    /// The gateway's config, defaults filled in and checked.
    pub fn into_config(self) -> anyhow::Result<GatewayConfig> {
        let upstream = match (self.direct, self.converter.is_empty(), self.key_file) {
            (true, true, None) => UpstreamConfig::Direct,
            (true, ..) => bail!("direct mode takes no converter and no key file"),
            (false, false, Some(key_file)) => UpstreamConfig::Converter {
                addresses: self.converter,
                key_file,
            },
            (false, true, _) => {
                bail!("the gateway needs a converter (converter = HOST:PORT) or direct mode")
            }
            (false, false, None) => {
                bail!("the converter needs a key file (key-file = PATH, see `mptcp-user keygen`)")
            }
        };
        uplinks::check_unique(&self.uplinks)?;
        forwards::config::check_all(&self.forwards)?;
        if !self.forwards.is_empty() && matches!(upstream, UpstreamConfig::Direct) {
            bail!("port forwards come through a converter: direct mode has none");
        }
        if self.lan.is_empty()
            && let Some(forward) = self
                .forwards
                .iter()
                .find(|forward| forward.source == Source::Client)
        {
            bail!(
                "forward {}: the LAN host sees the client's address only through a LAN \
                 interface of the gateway's (lan = ...); or say source = \"gateway\"",
                forward.public
            );
        }
        let steer_unconverted = self
            .steer_unconverted
            .unwrap_or(defaults::STEER_UNCONVERTED);
        let table = self.intercept_table.unwrap_or(defaults::INTERCEPT_TABLE);
        check_intercept_table(table)?;
        let mark = self.intercept_mark.unwrap_or(defaults::INTERCEPT_MARK);
        if steer_unconverted
            && !self.uplinks.is_empty()
            && (mark | quic_mark(mark)) & uplinks::MARK_MASK != 0
        {
            bail!(
                "intercept-mark {mark:#x} shares bits with the marks of the uplinks \
                 ({:#x}); choose another, or steer-unconverted = false",
                uplinks::MARK_MASK
            );
        }
        Ok(GatewayConfig {
            listen: self.listen.unwrap_or(defaults::GATEWAY_LISTEN),
            upstream,
            connect_timeout: super::seconds(
                "connect-timeout",
                self.connect_timeout,
                defaults::CONNECT_TIMEOUT_S,
                super::CONNECT_SECONDS,
            )?,
            timeouts: tuning::timeouts(self.idle_timeout, self.dead_path_timeout)?,
            interception: InterceptionConfig {
                lan: self.lan,
                cgroups: self.cgroups,
                include: self.include,
                exclude: self.exclude,
                ports: self.ports,
                quic_fallback: self.quic_fallback.unwrap_or(defaults::QUIC_FALLBACK),
                mark,
                table,
                pin_path: self
                    .pin_path
                    .unwrap_or_else(|| PathBuf::from(defaults::PIN_PATH)),
            },
            uplinks: self.uplinks,
            steer_unconverted,
            state_dir: self
                .state_dir
                .unwrap_or_else(|| PathBuf::from(defaults::STATE_DIR)),
            tuning: self.tuning.into_config(),
            pool_size: self.pool_size.unwrap_or(defaults::POOL_SIZE),
            metrics: self.metrics,
            status: match self.status {
                Some(address) => {
                    let everywhere = self.status_on_all_interfaces.unwrap_or(false);
                    crate::gateway::status::check_address(address, everywhere)?;
                    Some(address)
                }
                None => None,
            },
            forwards: self.forwards,
        })
    }
}

/// The gateway's tables are `intercept-table - 1` (QUIC) to `intercept-table + 10`
/// (the uplinks' and the steering's), and its rules' priorities up to
/// `intercept-table + 12`: none may be a table of the system's (253 to 255: default,
/// main, local), and all must come before the main table's rule (32766).
fn check_intercept_table(table: u32) -> anyhow::Result<()> {
    const LAST_TABLE: u32 = 10;
    const LAST_PRIORITY: u32 = 12;
    let clear_of_system = |first: u32, last: u32| !(first..=last).any(|t| (253..=255).contains(&t));
    if table < 2
        || table
            .checked_add(LAST_PRIORITY)
            .is_none_or(|last| last >= 32_766)
        || !clear_of_system(table - 1, table + LAST_TABLE)
    {
        bail!(
            "intercept-table {table}: the gateway uses the tables {} to {} and rule \
             priorities up to {}: choose one from 2 to 242 or 257 to 32753",
            table.saturating_sub(1),
            table.saturating_add(LAST_TABLE),
            table.saturating_add(LAST_PRIORITY)
        );
    }
    Ok(())
}

/// A fwmark, in decimal or, as `ip rule` shows it, hex (`0x4d50`).
fn parse_mark(text: &str) -> Result<u32, String> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => text.parse(),
    }
    .map_err(|error| format!("{text:?}: not a mark ({error})"))
}
