//! What the gateway knows of each uplink (its health by the probes), and the status file
//! through which `mptcp-user uplinks` and `mptcp-user speedtest` read it.

use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use super::{choice::Traffic, config::Role};
use crate::sys;

/// The file, beside the daemon's lock under /run, where the gateway that pins its maps
/// in `pin_dir` writes its uplinks' status.
pub fn status_path(pin_dir: &Path) -> PathBuf {
    sys::run_file(pin_dir, "uplinks.json")
}

/// What the probes say of an uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    /// Not probed yet, or nothing to probe (no converter).
    Unknown,
    /// The converter answered an MPTCP handshake over it.
    Up,
    /// No answer: the uplink is dead, or has no address or route.
    Down,
    /// The converter answered, but without MPTCP: a middlebox on this path strips the
    /// MPTCP options, so flows that start here get no second path.
    MptcpBlocked,
    /// The converter's host refused the connection over it: the line works, the
    /// converter does not (stopped, restarting). Direct flows still use the line.
    NoConverter,
}

impl Health {
    /// Every state.
    pub const ALL: [Self; 5] = [
        Self::Unknown,
        Self::Up,
        Self::Down,
        Self::MptcpBlocked,
        Self::NoConverter,
    ];

    /// The state's name, as `mptcp-user uplinks` and the metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Up => "up",
            Self::Down => "down",
            Self::MptcpBlocked => "mptcp-blocked",
            Self::NoConverter => "no-converter",
        }
    }

    /// Whether the probe reached the converter.
    pub fn reaches_converter(self) -> bool {
        matches!(self, Self::Up | Self::MptcpBlocked)
    }

    /// Whether the probe failed: no answer, or the converter refused.
    pub fn failed(self) -> bool {
        matches!(self, Self::Down | Self::NoConverter)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the gateway knows of one uplink now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkStatus {
    /// The interface.
    pub interface: String,
    /// Its IPv4 address, if it has one.
    pub address: Option<Ipv4Addr>,
    /// The next hop its table routes through (none: a point-to-point link).
    pub next_hop: Option<Ipv4Addr>,
    /// What it is for.
    pub role: Role,
    /// Whether the path manager opens subflows from it (an MPTCP `subflow` endpoint).
    pub endpoint: bool,
    /// The last probe's verdict.
    pub health: Health,
    /// Since when, in seconds since the Unix epoch.
    pub since_unix_s: u64,
    /// The last probe's handshake time, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Why it is down, when it is.
    pub reason: Option<String>,
    /// What it carries of the traffic the gateway does not convert.
    #[serde(default)]
    pub carries: Vec<Traffic>,
    /// Since when it carries the default route, in seconds since the Unix epoch.
    #[serde(default)]
    pub default_since_unix_s: Option<u64>,
    /// Since when it carries UDP.
    #[serde(default)]
    pub udp_since_unix_s: Option<u64>,
    /// A metered line's bytes in its allowance's period.
    #[serde(default)]
    pub usage_bytes: Option<u64>,
    /// A metered line's allowance.
    #[serde(default)]
    pub allowance_bytes: Option<u64>,
}

impl UplinkStatus {
    pub(super) fn new(interface: &str, role: Role, endpoint: bool) -> Self {
        Self {
            interface: interface.to_owned(),
            address: None,
            next_hop: None,
            role,
            endpoint,
            health: Health::Unknown,
            since_unix_s: sys::unix_now(),
            rtt_ms: None,
            reason: None,
            carries: Vec::new(),
            default_since_unix_s: None,
            udp_since_unix_s: None,
            usage_bytes: None,
            allowance_bytes: None,
        }
    }

    /// Records a verdict; says so in the log when it changes.
    pub(super) fn set_health(&mut self, health: Health, reason: Option<String>) {
        if health != self.health {
            let address = self
                .address
                .map_or_else(|| "no address".to_owned(), |address| address.to_string());
            match (health, &reason) {
                (Health::Up, _) => info!("uplink {} ({address}) is up", self.interface),
                (Health::MptcpBlocked, _) => warn!(
                    "uplink {} ({address}) strips MPTCP: the converter answers over it, \
                     but flows that start there get no other path (a middlebox?)",
                    self.interface
                ),
                (Health::Down, Some(reason)) => {
                    warn!("uplink {} ({address}) is down: {reason}", self.interface);
                }
                // The converter's outage is logged once, for all uplinks.
                (Health::NoConverter, Some(reason)) => {
                    debug!("uplink {} ({address}) works, but {reason}", self.interface);
                }
                _ => {}
            }
            self.health = health;
            self.since_unix_s = sys::unix_now();
        }
        self.reason = reason;
    }
}

/// Writes the uplinks' status where `mptcp-user uplinks` reads it (replaced whole, so
/// a reader never sees half a file).
pub(super) fn write_status(path: &Path, status: &[UplinkStatus]) {
    if let Err(error) = sys::write_json_replacing(path, &status) {
        debug!("cannot write {}: {error}", path.display());
    }
}

/// Reads the status written by the gateway that pins its maps in `pin_dir`.
pub fn read_status(pin_dir: &Path) -> anyhow::Result<Vec<UplinkStatus>> {
    let path = status_path(pin_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no uplink status at {} (is the gateway running, with this --pin-path?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("bad uplink status in {}", path.display()))
}
