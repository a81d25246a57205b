//! Every option's default, in one place: the configs read these values, and
//! [`SHOWN`] is what `--help`, the sample files under `config/` and
//! docs/configuration.md show of them (tests keep the three in step).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

/// `listen` of the gateway: its transparent listener, on every address.
pub const GATEWAY_LISTEN: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 15124, 0, 0));
/// `listen` of the converter, on every address.
pub const CONVERTER_LISTEN: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 5124, 0, 0));
/// `pin-path`: where a running gateway pins its maps (bpffs).
pub const PIN_PATH: &str = "/sys/fs/bpf/mptcp-gateway";
/// `quic-fallback`: QUIC to intercepted destinations is turned away.
pub const QUIC_FALLBACK: bool = true;
/// `pool-size`: most warm connections to the converter (a browser's burst of new
/// connections is 8 to 32).
pub const POOL_SIZE: usize = 32;
/// `intercept-mark`: the fwmark of intercepted LAN packets ("MP" in ASCII).
pub const INTERCEPT_MARK: u32 = 0x4d50;
/// `intercept-table`: the routing table of their local-delivery route.
pub const INTERCEPT_TABLE: u32 = 15124;
/// `steer-unconverted`: what is not converted follows the uplinks' health.
pub const STEER_UNCONVERTED: bool = true;
/// `state-dir`: what must survive a restart.
pub const STATE_DIR: &str = "/var/lib/mptcp-gateway";
/// `connect-timeout`, seconds: opening the upstream connection (gateway) or the
/// destination's (converter).
pub const CONNECT_TIMEOUT_S: u64 = 10;
/// `idle-timeout`, seconds without a byte either way.
pub const IDLE_TIMEOUT_S: u64 = 3600;
/// `dead-path-timeout`, seconds a flow may have no working path.
pub const DEAD_PATH_TIMEOUT_S: u64 = 60;

/// `fast-open`: the converter accepts requests in the SYN.
pub const FAST_OPEN: bool = true;
/// `speedtest-rate`, Mbit/s: the cap of the speed tests the converter serves.
pub const SPEEDTEST_RATE_MBIT: u64 = 1000;
/// `max-conns`: authenticated flows the converter relays at once.
pub const MAX_CONNS: usize = 10_000;
/// `max-pending`: connections the converter holds before they authenticate.
pub const MAX_PENDING: usize = 256;
/// `max-pending-per-source`: the same, from one source.
pub const MAX_PENDING_PER_SOURCE: usize = 16;
/// `request-timeout`, seconds a client has to send its request.
pub const REQUEST_TIMEOUT_S: u64 = 5;
/// `replay-window`, seconds a cookie's timestamp may be off this host's clock.
pub const REPLAY_WINDOW_S: u64 = 60;

/// `congestion`: congestion control of the MPTCP connections.
pub const CONGESTION: &str = "bbr";
/// `send-buffer`, MiB; 0: autotuned.
pub const SEND_BUFFER_MIB: u32 = 0;
/// `long-rtt`, ms: a subflow whose handshake takes this long is long-RTT; 0: none is.
pub const LONG_RTT_MS: u32 = 300;
/// `long-rtt-congestion`: congestion control of long-RTT subflows.
pub const LONG_RTT_CONGESTION: &str = "cubic";
/// `long-rtt-send-buffer`, MiB, of each long-RTT subflow.
pub const LONG_RTT_SEND_BUFFER_MIB: u32 = 4;
/// `notsent-lowat`, KiB: unsent bytes an MPTCP connection may queue; 0: no limit.
pub const NOTSENT_LOWAT_KIB: u32 = 256;
/// `relay-pipe`, KiB: the capacity of the relays' pipes.
pub const RELAY_PIPE_KIB: u32 = 64;
/// `inflight-cap`, percent of a subflow's bandwidth-delay product; 0: no cap.
pub const INFLIGHT_CAP_PERCENT: u32 = 0;

/// Which table of a config file an option belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `[gateway]`.
    Gateway,
    /// `[converter]`.
    Converter,
    /// `[gateway.tuning]` and `[converter.tuning]`.
    Tuning,
    /// `[gateway]` and `[converter]`.
    Both,
}

/// A default as people see it.
pub struct Shown {
    /// The table its key is in.
    pub table: Table,
    /// The key, also the flag's long name.
    pub key: &'static str,
    /// The value as a TOML file writes it.
    pub toml: String,
}

impl Shown {
    /// The value as `--help` writes it: TOML without the quotes.
    pub fn text(&self) -> &str {
        self.toml.trim_matches('"')
    }

    /// Whether it is the default of option `key` of `role` ([`Table::Gateway`] or
    /// [`Table::Converter`]): in the role's table, or its tuning table.
    pub fn is_for(&self, role: Table, key: &str) -> bool {
        self.key == key && (self.table == role || matches!(self.table, Table::Both | Table::Tuning))
    }
}

/// Every default that an option shows (options without one, like `lan`, are empty or
/// off until given).
pub fn shown() -> Vec<Shown> {
    let quoted = |text: &str| format!("{text:?}");
    let entries: Vec<(Table, &'static str, String)> = vec![
        (
            Table::Gateway,
            "listen",
            quoted(&GATEWAY_LISTEN.to_string()),
        ),
        (Table::Gateway, "pin-path", quoted(PIN_PATH)),
        (Table::Gateway, "quic-fallback", QUIC_FALLBACK.to_string()),
        (Table::Gateway, "pool-size", POOL_SIZE.to_string()),
        (
            Table::Gateway,
            "steer-unconverted",
            STEER_UNCONVERTED.to_string(),
        ),
        (Table::Gateway, "state-dir", quoted(STATE_DIR)),
        (
            Table::Gateway,
            "intercept-mark",
            format!("{INTERCEPT_MARK:#x}"),
        ),
        (
            Table::Gateway,
            "intercept-table",
            INTERCEPT_TABLE.to_string(),
        ),
        (
            Table::Both,
            "connect-timeout",
            CONNECT_TIMEOUT_S.to_string(),
        ),
        (Table::Both, "idle-timeout", IDLE_TIMEOUT_S.to_string()),
        (
            Table::Both,
            "dead-path-timeout",
            DEAD_PATH_TIMEOUT_S.to_string(),
        ),
        (
            Table::Converter,
            "listen",
            quoted(&CONVERTER_LISTEN.to_string()),
        ),
        (Table::Converter, "fast-open", FAST_OPEN.to_string()),
        (
            Table::Converter,
            "speedtest-rate",
            SPEEDTEST_RATE_MBIT.to_string(),
        ),
        (Table::Converter, "max-conns", MAX_CONNS.to_string()),
        (Table::Converter, "max-pending", MAX_PENDING.to_string()),
        (
            Table::Converter,
            "max-pending-per-source",
            MAX_PENDING_PER_SOURCE.to_string(),
        ),
        (
            Table::Converter,
            "request-timeout",
            REQUEST_TIMEOUT_S.to_string(),
        ),
        (
            Table::Converter,
            "replay-window",
            REPLAY_WINDOW_S.to_string(),
        ),
        (Table::Tuning, "congestion", quoted(CONGESTION)),
        (Table::Tuning, "send-buffer", SEND_BUFFER_MIB.to_string()),
        (Table::Tuning, "long-rtt", LONG_RTT_MS.to_string()),
        (
            Table::Tuning,
            "long-rtt-congestion",
            quoted(LONG_RTT_CONGESTION),
        ),
        (
            Table::Tuning,
            "long-rtt-send-buffer",
            LONG_RTT_SEND_BUFFER_MIB.to_string(),
        ),
        (
            Table::Tuning,
            "notsent-lowat",
            NOTSENT_LOWAT_KIB.to_string(),
        ),
        (Table::Tuning, "relay-pipe", RELAY_PIPE_KIB.to_string()),
        (
            Table::Tuning,
            "inflight-cap",
            INFLIGHT_CAP_PERCENT.to_string(),
        ),
    ];
    entries
        .into_iter()
        .map(|(table, key, toml)| Shown { table, key, toml })
        .collect()
}

/// The default of option `key` of `role`, if it shows one.
pub fn find(role: Table, key: &str) -> Option<Shown> {
    shown().into_iter().find(|shown| shown.is_for(role, key))
}
