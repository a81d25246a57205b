//! Options of the daemons, from flags and from a TOML config file, and the plain configs
//! they turn into. Every file key is also a flag of the same name; a flag given on the
//! command line wins over the file, and what neither says takes the default (shown in
//! `--help` and in the sample files under `config/`).
//!
//! A file holds a `[gateway]` table, a `[converter]` table, or both, each with its
//! `tuning` table; the gateway's uplinks are `[[gateway.uplink]]` entries. Unknown keys
//! are errors, which name the line.

use std::{
    fmt::Display,
    fs,
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::{
    bpf::tuning::{TuningConfig, UplinkCongestion},
    converter::{self, ConverterConfig, admission},
    gateway::{
        self, GatewayConfig,
        interception::InterceptionConfig,
        pool, routes,
        uplinks::{self, UplinkConfig},
        upstream::UpstreamConfig,
    },
    net::{
        addr::{self, parse_prefix},
        relay::Timeouts,
    },
    protocol::cookie,
};

/// A config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[gateway]`.
    pub gateway: Option<GatewayOptions>,
    /// `[converter]`.
    pub converter: Option<ConverterOptions>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`; errors name the line and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("bad config file {}", path.display()))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// `mptcp-user config check PATH`: every table of the file turns into a valid config,
/// and the interfaces it names exist here.
pub fn check(path: &Path) -> anyhow::Result<String> {
    let file = ConfigFile::load(path)?;
    let mut found = Vec::new();
    if let Some(gateway) = file.gateway {
        let config = gateway.into_config()?;
        config.check_interfaces()?;
        found.push(format!(
            "gateway ({} uplinks, {} LAN interfaces)",
            config.uplinks.len(),
            config.interception.lan.len()
        ));
    }
    if let Some(converter) = file.converter {
        converter.into_config()?;
        found.push("converter".to_owned());
    }
    if found.is_empty() {
        bail!(
            "{} has neither a [gateway] nor a [converter] table",
            path.display()
        );
    }
    Ok(format!("{}: valid {}", path.display(), found.join(" and ")))
}

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
    /// leaves it alone. Live: `mptcp-user selection quic on|off` [default: true].
    #[arg(long, value_name = "BOOL")]
    pub quic_fallback: Option<bool>,

    /// Most warm connections kept open to the converter, so that a new flow's request
    /// leaves at once (0: none) [default: 4].
    #[arg(long, value_name = "N")]
    pub pool_size: Option<usize>,

    /// Serve Prometheus metrics on this address and port (`GET /metrics`), e.g.
    /// 127.0.0.1:9124; none by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// An uplink (repeatable): IFACE[,next-hop=ADDR][,backup]. In a file:
    /// [[gateway.uplink]] with interface, next-hop and backup.
    #[arg(long = "uplink", value_name = "UPLINK")]
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<UplinkConfig>,

    /// fwmark of the policy route that delivers intercepted LAN packets locally
    /// [default: 0x4d50].
    #[arg(long, alias = "steer-mark", value_name = "MARK")]
    pub intercept_mark: Option<u32>,

    /// Routing table of that policy route [default: 15124].
    #[arg(long, alias = "steer-table", value_name = "TABLE")]
    pub intercept_table: Option<u32>,

    /// Directory on bpffs where the maps are pinned for `mptcp-user flows`
    /// [default: /sys/fs/bpf/mptcp-gateway].
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,

    /// Transparent listener that intercepted connections are handed to; [::]:PORT also
    /// serves IPv4 [default: [::]:15124].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// The converter, e.g. vps.example.net:5124 (`--remote` is an alias); repeatable:
    /// standbys, used in this order when the ones before do not answer. In a file, a
    /// string or a list.
    #[arg(long = "converter", alias = "remote", value_name = "HOST:PORT")]
    #[serde(default, deserialize_with = "one_or_more")]
    pub converter: Vec<String>,

    /// Pre-shared key shared with the converter (see `mptcp-user keygen`).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// No converter: open MPTCP straight to each original destination (the kernel falls
    /// back to TCP where the server does not speak MPTCP).
    #[arg(long)]
    #[serde(default)]
    pub direct: bool,

    /// Seconds to open the upstream connection (and get the converter's answer)
    /// [default: 10].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,

    /// Seconds without a byte either way after which a connection is reset
    /// [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds after which a flow whose every path is dead ends with a reset on both
    /// sides: a peer that answers no TCP keepalive or takes no byte for that long, or,
    /// on the gateway, a converter no uplink's probe has reached for that long (the
    /// probes take a few seconds more to notice) [default: 60].
    #[arg(long, value_name = "SECS")]
    pub dead_path_timeout: Option<u64>,

    #[command(flatten)]
    #[serde(default)]
    pub tuning: TuningOptions,
}

impl GatewayOptions {
    /// These flags over the `[gateway]` table of `--config`, if any.
    pub fn with_file(self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let file = ConfigFile::load(path)?
            .gateway
            .with_context(|| format!("{} has no [gateway] table", path.display()))?;
        Ok(self.or(file))
    }

    /// Each option from `self` where given, else from `file`.
    fn or(self, file: Self) -> Self {
        Self {
            config: self.config,
            lan: or_list(self.lan, file.lan),
            cgroups: or_list(self.cgroups, file.cgroups),
            include: or_list(self.include, file.include),
            exclude: or_list(self.exclude, file.exclude),
            ports: or_list(self.ports, file.ports),
            quic_fallback: self.quic_fallback.or(file.quic_fallback),
            pool_size: self.pool_size.or(file.pool_size),
            metrics: self.metrics.or(file.metrics),
            uplinks: or_list(self.uplinks, file.uplinks),
            intercept_mark: self.intercept_mark.or(file.intercept_mark),
            intercept_table: self.intercept_table.or(file.intercept_table),
            pin_path: self.pin_path.or(file.pin_path),
            listen: self.listen.or(file.listen),
            converter: or_list(self.converter, file.converter),
            key_file: self.key_file.or(file.key_file),
            direct: self.direct || file.direct,
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            dead_path_timeout: self.dead_path_timeout.or(file.dead_path_timeout),
            tuning: self.tuning.or(file.tuning),
        }
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
        let defaults = InterceptionConfig::default();
        Ok(GatewayConfig {
            listen: self.listen.unwrap_or_else(|| {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, gateway::DEFAULT_LISTEN_PORT))
            }),
            upstream,
            connect_timeout: Duration::from_secs(self.connect_timeout.unwrap_or(10)),
            timeouts: timeouts(self.idle_timeout, self.dead_path_timeout),
            interception: InterceptionConfig {
                lan: self.lan,
                cgroups: self.cgroups,
                include: self.include,
                exclude: self.exclude,
                ports: self.ports,
                quic_fallback: self.quic_fallback.unwrap_or(defaults.quic_fallback),
                mark: self.intercept_mark.unwrap_or(routes::DEFAULT_MARK),
                table: self.intercept_table.unwrap_or(routes::DEFAULT_TABLE),
                pin_path: self.pin_path.unwrap_or(defaults.pin_path),
            },
            uplinks: self.uplinks,
            tuning: self.tuning.into_config(),
            pool_size: self.pool_size.unwrap_or(pool::DEFAULT_POOL_SIZE),
            metrics: self.metrics,
        })
    }
}

/// Options of `mptcp-user converter` (flags, or keys of `[converter]`).
#[derive(Debug, Default, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConverterOptions {
    /// Read options from this TOML file's [converter] table; flags given here win.
    #[arg(long, value_name = "PATH")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address and port to accept MPTCP connections from gateways on; [::]:PORT also
    /// serves IPv4 [default: [::]:5124].
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
    /// without a Fast Open cookie (libconvert) only with 0x200 too (515) [default: true].
    #[arg(long, value_name = "BOOL")]
    pub fast_open: Option<bool>,

    /// Rate cap of the speed tests this converter serves to its gateways
    /// (`mptcp-user speedtest`; one at a time, 20 s at most each way), in Mbit/s; 0: none
    /// [default: 1000].
    #[arg(long, value_name = "MBIT")]
    pub speedtest_rate: Option<u64>,

    /// Serve Prometheus metrics on this address and port (`GET /metrics`), e.g.
    /// 127.0.0.1:9124; none by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Most authenticated connections relayed at once; beyond it, "Resource Exceeded"
    /// [default: 10000].
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,

    /// Most connections held before they authenticate; a new one beyond it evicts the
    /// oldest, so strangers cannot crowd out gateways [default: 256].
    #[arg(long, value_name = "N")]
    pub max_pending: Option<usize>,

    /// Most connections held before they authenticate from one source (an IPv4
    /// address, an IPv6 /64); beyond it, new ones are closed [default: 16].
    #[arg(long, value_name = "N")]
    pub max_pending_per_source: Option<usize>,

    /// Seconds a client has to send its Convert request [default: 5].
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<u64>,

    /// Seconds to connect to a destination before answering "Network Failure"
    /// [default: 10].
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,

    /// Seconds without a byte either way after which a connection is reset
    /// [default: 3600].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds after which a flow whose every path is dead ends with a reset on both
    /// sides: a peer that answers no TCP keepalive or takes no byte for that long, or,
    /// on the gateway, a converter no uplink's probe has reached for that long (the
    /// probes take a few seconds more to notice) [default: 60].
    #[arg(long, value_name = "SECS")]
    pub dead_path_timeout: Option<u64>,

    /// Seconds a cookie's timestamp may differ from this host's clock [default: 60].
    #[arg(long, value_name = "SECS")]
    pub replay_window: Option<u64>,

    #[command(flatten)]
    #[serde(default)]
    pub tuning: TuningOptions,
}

impl ConverterOptions {
    /// These flags over the `[converter]` table of `--config`, if any.
    pub fn with_file(self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let file = ConfigFile::load(path)?
            .converter
            .with_context(|| format!("{} has no [converter] table", path.display()))?;
        Ok(self.or(file))
    }

    /// Each option from `self` where given, else from `file`.
    fn or(self, file: Self) -> Self {
        Self {
            config: self.config,
            listen: self.listen.or(file.listen),
            key_file: self.key_file.or(file.key_file),
            allow: or_list(self.allow, file.allow),
            allow_clients: or_list(self.allow_clients, file.allow_clients),
            fast_open: self.fast_open.or(file.fast_open),
            speedtest_rate: self.speedtest_rate.or(file.speedtest_rate),
            metrics: self.metrics.or(file.metrics),
            max_conns: self.max_conns.or(file.max_conns),
            max_pending: self.max_pending.or(file.max_pending),
            max_pending_per_source: self.max_pending_per_source.or(file.max_pending_per_source),
            request_timeout: self.request_timeout.or(file.request_timeout),
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            idle_timeout: self.idle_timeout.or(file.idle_timeout),
            dead_path_timeout: self.dead_path_timeout.or(file.dead_path_timeout),
            replay_window: self.replay_window.or(file.replay_window),
            tuning: self.tuning.or(file.tuning),
        }
    }

    /// The converter's config, defaults filled in and checked.
    pub fn into_config(self) -> anyhow::Result<ConverterConfig> {
        let key_file = self
            .key_file
            .context("the converter needs a key file (key-file = PATH, see `mptcp-user keygen`)")?;
        Ok(ConverterConfig {
            listen: self.listen.unwrap_or_else(|| {
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, converter::DEFAULT_PORT))
            }),
            key_file,
            allow: self.allow,
            allow_clients: self
                .allow_clients
                .iter()
                .copied()
                .map(addr::canonical_prefix)
                .collect(),
            fast_open: self.fast_open.unwrap_or(true),
            speedtest_mbit: self.speedtest_rate.unwrap_or(1000),
            metrics: self.metrics,
            max_conns: self.max_conns.unwrap_or(10_000),
            max_pending: (
                self.max_pending.unwrap_or(admission::DEFAULT_MAX_PENDING),
                self.max_pending_per_source
                    .unwrap_or(admission::DEFAULT_MAX_PENDING_PER_SOURCE),
            ),
            request_timeout: Duration::from_secs(self.request_timeout.unwrap_or(5)),
            connect_timeout: Duration::from_secs(self.connect_timeout.unwrap_or(10)),
            timeouts: timeouts(self.idle_timeout, self.dead_path_timeout),
            replay_window: self
                .replay_window
                .map_or(cookie::DEFAULT_WINDOW, Duration::from_secs),
            tuning: self.tuning.into_config(),
        })
    }
}

/// Tuning options both daemons share (flags, or keys of the role's `tuning` table).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TuningOptions {
    /// Congestion control of the MPTCP connections (all their subflows), e.g. bbr, cubic
    /// [default: bbr].
    #[arg(long, value_name = "NAME")]
    pub congestion: Option<String>,

    /// Fixed send buffer of every MPTCP connection in MiB (the kernel doubles it for
    /// bookkeeping). 0: the kernel's autotuning; at most 1024. Long round trips are
    /// better served by --long-rtt-send-buffer, which leaves the others autotuned
    /// [default: 0].
    #[arg(long, value_name = "MIB")]
    pub send_buffer: Option<u32>,

    /// Congestion control of the subflows over the uplinks in CIDR (repeatable), e.g.
    /// `203.0.113.7/32=bbr` for a lossy LTE line while the others keep --congestion.
    /// The gateway matches a subflow's local address, the converter its peer's (the
    /// uplink's public address). Set by the sock_ops program on each new subflow.
    #[arg(long = "uplink-congestion", value_name = "CIDR=NAME")]
    #[serde(default, deserialize_with = "parsed_strings")]
    pub uplink_congestion: Vec<UplinkCongestion>,

    /// Subflows whose handshake takes at least this many milliseconds (a geostationary
    /// satellite uplink: 550 ms and more) get --long-rtt-congestion, unless an
    /// --uplink-congestion rule names their uplink, and --long-rtt-send-buffer.
    /// 0: no such rule [default: 300].
    #[arg(long, value_name = "MS")]
    pub long_rtt: Option<u32>,

    /// Congestion control of long-RTT subflows [default: cubic].
    #[arg(long, value_name = "NAME")]
    pub long_rtt_congestion: Option<String>,

    /// Send buffer of each long-RTT subflow in MiB (doubled by the kernel, capped by
    /// net.core.wmem_max); it raises the MPTCP connection's, the sum of its subflows'.
    /// 0: autotuned [default: 4].
    #[arg(long, value_name = "MIB")]
    pub long_rtt_send_buffer: Option<u32>,

    /// Capacity of the relays' pipes in KiB, and so the most one splice moves (the
    /// kernel rounds it up to a power of two pages; 1024 at most without
    /// CAP_SYS_RESOURCE) [default: 64].
    #[arg(long, value_name = "KIB")]
    pub relay_pipe: Option<u32>,
}

impl TuningOptions {
    /// Each option from `self` where given, else from `file`.
    fn or(self, file: Self) -> Self {
        Self {
            congestion: self.congestion.or(file.congestion),
            send_buffer: self.send_buffer.or(file.send_buffer),
            uplink_congestion: or_list(self.uplink_congestion, file.uplink_congestion),
            long_rtt: self.long_rtt.or(file.long_rtt),
            long_rtt_congestion: self.long_rtt_congestion.or(file.long_rtt_congestion),
            long_rtt_send_buffer: self.long_rtt_send_buffer.or(file.long_rtt_send_buffer),
            relay_pipe: self.relay_pipe.or(file.relay_pipe),
        }
    }

    /// The tuning config, defaults filled in (checked by [`crate::bpf::tuning::Tuning::new`]).
    pub fn into_config(self) -> TuningConfig {
        let defaults = TuningConfig::default();
        TuningConfig {
            congestion: self.congestion.unwrap_or(defaults.congestion),
            send_buffer_mib: self.send_buffer.unwrap_or(defaults.send_buffer_mib),
            uplink_congestion: self.uplink_congestion,
            long_rtt_ms: self.long_rtt.unwrap_or(defaults.long_rtt_ms),
            long_rtt_congestion: self
                .long_rtt_congestion
                .unwrap_or(defaults.long_rtt_congestion),
            long_rtt_send_buffer_mib: self
                .long_rtt_send_buffer
                .unwrap_or(defaults.long_rtt_send_buffer_mib),
            relay_pipe_kib: self.relay_pipe.unwrap_or(defaults.relay_pipe_kib),
        }
    }
}

/// The relay's timeouts, defaults filled in.
fn timeouts(idle_s: Option<u64>, dead_path_s: Option<u64>) -> Timeouts {
    Timeouts {
        idle: Duration::from_secs(idle_s.unwrap_or(3600)),
        dead_path: Duration::from_secs(dead_path_s.unwrap_or(60).max(1)),
    }
}

/// A repeated flag's values where given, else the file's list.
fn or_list<T>(flags: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flags.is_empty() { file } else { flags }
}

/// One string, or a list of them.
fn one_or_more<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(one) => vec![one],
        OneOrMore::More(more) => more,
    })
}

/// A list of prefixes, parsed as on the command line (host bits cleared).
fn prefixes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_prefix(text).map_err(|error| D::Error::custom(format!("{error:#}"))))
        .collect()
}

/// A list of values parsed from strings, as on the command line.
fn parsed_strings<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| text.parse().map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `text` gets, as one line.
    fn error_of(text: &str) -> String {
        let error = ConfigFile::parse(text)
            .and_then(|file| file.gateway.context("no gateway")?.into_config())
            .expect_err("must be refused");
        format!("{error:#}").replace('\n', " ")
    }

    #[test]
    fn the_sample_files_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let gateway = ConfigFile::load(&root.join("gateway.toml")).unwrap();
        let config = gateway.gateway.unwrap().into_config().unwrap();
        assert_eq!(config.uplinks.len(), 2);
        assert!(config.uplinks[1].backup);
        let converter = ConfigFile::load(&root.join("converter.toml")).unwrap();
        converter.converter.unwrap().into_config().unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_key() {
        let unknown = error_of("[gateway]\ndirect = true\nlan = [\"br0\"]\nspeed = 3\n");
        assert!(
            unknown.contains("line 4") && unknown.contains("speed"),
            "{unknown}"
        );
        let prefix = error_of("[gateway]\ndirect = true\n\nexclude = [\"10.0.0.0/40\"]\n");
        assert!(
            prefix.contains("line 4") && prefix.contains("10.0.0.0/40"),
            "{prefix}"
        );
        let uplink = error_of(
            "[gateway]\ndirect = true\n[[gateway.uplink]]\ninterface = \"dsl0\"\nmtu = 1400\n",
        );
        assert!(
            uplink.contains("line 5") && uplink.contains("mtu"),
            "{uplink}"
        );
        let twice = error_of(
            "[gateway]\ndirect = true\n[[gateway.uplink]]\ninterface = \"dsl0\"\n\
             [[gateway.uplink]]\ninterface = \"dsl0\"\n",
        );
        assert!(twice.contains("dsl0 is configured twice"), "{twice}");
        let no_key = error_of("[gateway]\nconverter = \"vps:5124\"\n");
        assert!(no_key.contains("key file"), "{no_key}");
    }

    #[test]
    fn converters_are_one_or_a_list_preferred_first() {
        for (text, expected) in [
            ("converter = \"a:1\"", vec!["a:1"]),
            ("converter = [\"a:1\", \"b:2\"]", vec!["a:1", "b:2"]),
        ] {
            let file =
                ConfigFile::parse(&format!("[gateway]\nkey-file = \"/k\"\n{text}\n")).unwrap();
            let config = file.gateway.unwrap().into_config().unwrap();
            let UpstreamConfig::Converter { addresses, .. } = config.upstream else {
                panic!("no converter");
            };
            assert_eq!(addresses, expected);
        }
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = ConfigFile::parse(
            "[gateway]\nconverter = \"vps:5124\"\nkey-file = \"/k\"\nlan = [\"br0\"]\n\
             idle-timeout = 60\n[gateway.tuning]\ncongestion = \"cubic\"\n",
        )
        .unwrap()
        .gateway
        .unwrap();
        let flags = GatewayOptions {
            idle_timeout: Some(5),
            lan: vec!["lan1".to_owned()],
            ..GatewayOptions::default()
        };
        let config = flags.or(file).into_config().unwrap();
        assert_eq!(config.timeouts.idle, Duration::from_secs(5));
        assert_eq!(config.timeouts.dead_path, Duration::from_mins(1));
        assert_eq!(config.interception.lan, ["lan1"]);
        assert_eq!(config.tuning.congestion, "cubic");
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.interception.mark, routes::DEFAULT_MARK);
    }
}
