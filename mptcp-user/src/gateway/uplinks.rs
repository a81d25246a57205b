//! The gateway's uplinks: the internet links whose paths MPTCP uses.
//!
//! With `[[gateway.uplink]]` entries (or `--uplink`), the gateway installs what each
//! needs, through netlink: a routing table with its default route, a rule sending
//! packets from its address to that table, an MPTCP `subflow` endpoint (`backup` when
//! asked), and path manager limits sized to the uplinks. It follows address and next-hop
//! changes and interfaces that go and come back, and removes what it installed when it
//! stops. Without entries it takes the host's MPTCP endpoints and the default route's
//! interface as they are, and installs nothing.
//!
//! Either way it probes each uplink every [`PROBE_INTERVAL`] (an MPTCP handshake with the
//! converter from the uplink's address) and tells new flows which addresses to start
//! from, healthy uplinks first: see [`UplinkTable::attempts`].

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    lock,
    net::{
        mptcp_pm::{self, FLAG_BACKUP, FLAG_SUBFLOW, Limits},
        netlink::Netlink,
        socket::{self, Attempt},
    },
    sys,
};

/// How often each uplink is probed, and its addresses and routes looked at again.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long a probe's handshake may take (one SYN retransmission included).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The shortest head start a new flow's first attempt gets before the next uplink is
/// tried too (RFC 8305's connection attempt delay).
const MIN_HEAD_START: Duration = Duration::from_millis(250);
/// The longest one.
const MAX_HEAD_START: Duration = Duration::from_secs(1);
/// Most uplinks: the path manager's limit on subflows.
const MAX_UPLINKS: u32 = mptcp_pm::MAX_LIMIT;

/// One uplink, as configured (`[[gateway.uplink]]` or `--uplink`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UplinkConfig {
    /// The interface, e.g. `dsl0`, `wwan0`, `ppp0`.
    pub interface: String,
    /// The next hop; by default the one of the interface's default route (DHCP, PPP).
    #[serde(default)]
    pub next_hop: Option<IpAddr>,
    /// Carries traffic only when no regular uplink is up.
    #[serde(default)]
    pub backup: bool,
}

impl FromStr for UplinkConfig {
    type Err = anyhow::Error;

    /// `IFACE[,next-hop=ADDR][,backup]`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.split(',');
        let interface = parts.next().unwrap_or_default();
        if interface.is_empty() {
            bail!("{text:?}: an uplink starts with its interface: IFACE[,next-hop=ADDR][,backup]");
        }
        let mut uplink = Self {
            interface: interface.to_owned(),
            next_hop: None,
            backup: false,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("next-hop", address)) => {
                    uplink.next_hop = Some(
                        address
                            .parse()
                            .with_context(|| format!("{text:?}: bad next hop {address:?}"))?,
                    );
                }
                None if part == "backup" => uplink.backup = true,
                _ => bail!("{text:?}: unknown uplink option {part:?} (next-hop=ADDR, backup)"),
            }
        }
        Ok(uplink)
    }
}

/// Refuses two uplinks on one interface.
pub fn check_unique(uplinks: &[UplinkConfig]) -> anyhow::Result<()> {
    for (index, uplink) in uplinks.iter().enumerate() {
        if uplinks[..index]
            .iter()
            .any(|other| other.interface == uplink.interface)
        {
            bail!("uplink {} is configured twice", uplink.interface);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_flags_parse() {
        let plain: UplinkConfig = "dsl0".parse().unwrap();
        assert_eq!(plain.interface, "dsl0");
        assert!(!plain.backup && plain.next_hop.is_none());
        let full: UplinkConfig = "lte0,next-hop=198.51.100.1,backup".parse().unwrap();
        assert_eq!(full.next_hop, Some("198.51.100.1".parse().unwrap()));
        assert!(full.backup);
        for bad in ["", ",backup", "dsl0,next-hop=nonsense", "dsl0,fast"] {
            assert!(bad.parse::<UplinkConfig>().is_err(), "{bad}");
        }
    }

    fn status(
        address: &str,
        health: Health,
        backup: bool,
        endpoint: bool,
        rtt: f64,
    ) -> UplinkStatus {
        UplinkStatus {
            address: Some(address.parse().unwrap()),
            health,
            rtt_ms: Some(rtt),
            ..UplinkStatus::new("x", backup, endpoint)
        }
    }

    #[test]
    fn new_flows_start_on_healthy_uplinks_the_non_endpoint_and_the_fastest_first() {
        let table = UplinkTable::default();
        table.replace(vec![
            status("10.0.0.1", Health::Down, false, false, 1.0),
            status("10.0.0.2", Health::Up, true, true, 1.0),
            status("10.0.0.3", Health::Up, false, true, 30.0),
            status("10.0.0.4", Health::Up, false, true, 600.0),
            status("10.0.0.5", Health::Up, false, false, 40.0),
            status("10.0.0.6", Health::MptcpBlocked, false, true, 1.0),
        ]);
        let attempts = table.attempts();
        let order: Vec<String> = attempts.iter().map(|a| a.source.to_string()).collect();
        assert_eq!(
            order,
            [
                "10.0.0.5", "10.0.0.3", "10.0.0.4", "10.0.0.2", "10.0.0.6", "10.0.0.1"
            ]
        );
        assert_eq!(attempts[0].head_start, Duration::from_millis(250));
        assert_eq!(attempts[2].head_start, Duration::from_secs(1));
    }

    #[test]
    fn an_interface_is_one_uplink() {
        let dsl: UplinkConfig = "dsl0".parse().unwrap();
        let lte: UplinkConfig = "lte0".parse().unwrap();
        assert!(check_unique(&[dsl.clone(), lte]).is_ok());
        let error = check_unique(&[dsl.clone(), dsl]).unwrap_err();
        assert!(error.to_string().contains("dsl0"), "{error}");
    }
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
    fn reaches_converter(uplink: &UplinkStatus) -> bool {
        matches!(uplink.health, Self::Up | Self::MptcpBlocked)
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
    /// Used only when no regular uplink is up.
    pub backup: bool,
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
}

impl UplinkStatus {
    fn new(interface: &str, backup: bool, endpoint: bool) -> Self {
        Self {
            interface: interface.to_owned(),
            address: None,
            next_hop: None,
            backup,
            endpoint,
            health: Health::Unknown,
            since_unix_s: unix_now(),
            rtt_ms: None,
            reason: None,
        }
    }

    /// Records a verdict; says so in the log when it changes.
    fn set_health(&mut self, health: Health, reason: Option<String>) {
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
            self.since_unix_s = unix_now();
        }
        self.reason = reason;
    }
}

/// The uplinks as new flows see them; the manager keeps it current.
#[derive(Debug, Default)]
pub struct UplinkTable {
    uplinks: Mutex<Vec<UplinkStatus>>,
    /// Whether the uplinks are probed (through the converter); without probes nothing
    /// would say when an outage ends, so flows never skip the converter.
    probed: AtomicBool,
    /// The converter failed a flow, or every probe, and no probe has reached it since.
    converter_down: AtomicBool,
    /// Since when no probe has reached the converter, over any uplink.
    unreachable_since: Mutex<Option<Instant>>,
    /// The converter new flows try first: the first one the probes reached.
    active: AtomicUsize,
}

impl UplinkTable {
    /// The converter new flows try first (an index into the configured list).
    pub fn active_converter(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether new flows should go direct at once: the converter is known to be away.
    pub fn converter_down(&self) -> bool {
        self.converter_down.load(Ordering::Relaxed)
    }

    /// A flow could not use the converter (and goes direct). The first one of an outage
    /// says so in the log; with probes, new flows skip the converter until one reaches
    /// it again.
    pub fn report_converter_failure(&self, reason: &anyhow::Error) {
        if !self.probed.load(Ordering::Relaxed) {
            info!("the converter cannot take a flow ({reason:#}); it goes direct");
        } else if !self.converter_down.swap(true, Ordering::Relaxed) {
            warn!(
                "the converter is unavailable ({reason:#}): new flows go direct until a \
                 probe reaches it again"
            );
        }
    }

    /// How long no probe has reached the converter over any uplink: the flows carried
    /// through it have had no path that long. `None` while one does, or without probes.
    pub fn converter_unreachable_for(&self) -> Option<Duration> {
        lock(&self.unreachable_since).map(|since| since.elapsed())
    }

    /// Makes converter `index` of `converters` the one new flows use; says so when it
    /// changes.
    fn set_active(&self, index: usize, converters: &[SocketAddr]) {
        let before = self.active.swap(index, Ordering::Relaxed);
        if before != index && converters.len() > 1 {
            info!(
                "new flows go through the converter {} (the first that answers; {} before)",
                converters[index], converters[before]
            );
        }
    }

    /// Takes the probes' verdicts: the converter is away when none reached it.
    fn note_probes(&self, uplinks: &[UplinkStatus]) {
        self.probed.store(true, Ordering::Relaxed);
        let reached = uplinks.iter().any(Health::reaches_converter);
        let probed = uplinks
            .iter()
            .any(|uplink| matches!(uplink.health, Health::Down | Health::NoConverter));
        {
            let mut since = lock(&self.unreachable_since);
            if reached {
                *since = None;
            } else if probed && since.is_none() {
                *since = Some(Instant::now());
            }
        }
        if reached && self.converter_down.swap(false, Ordering::Relaxed) {
            info!("the converter answers again: new flows go through it");
        } else if !reached && probed && !self.converter_down.swap(true, Ordering::Relaxed) {
            warn!("no uplink reaches the converter: new flows go direct until one does");
        }
    }

    /// Every uplink's status.
    pub fn snapshot(&self) -> Vec<UplinkStatus> {
        lock(&self.uplinks).clone()
    }

    /// The source addresses a new flow's first subflow tries, in order: regular uplinks
    /// that are up, then those not probed yet, then backups, then the rest (a probe can
    /// be wrong). Within each, an uplink that is no path manager endpoint comes first
    /// (only a flow that starts there also gets it: the others join from the
    /// endpoints), then the fastest. Each gets a head start of twice its round trip,
    /// within 250 ms to 1 s, before the next one is tried too.
    pub fn attempts(&self) -> Vec<Attempt> {
        let uplinks = lock(&self.uplinks);
        let mut ranked: Vec<&UplinkStatus> = uplinks
            .iter()
            .filter(|uplink| uplink.address.is_some())
            .collect();
        ranked.sort_by(|a, b| {
            (rank(a), a.endpoint).cmp(&(rank(b), b.endpoint)).then(
                a.rtt_ms
                    .unwrap_or(f64::MAX)
                    .total_cmp(&b.rtt_ms.unwrap_or(f64::MAX)),
            )
        });
        ranked
            .into_iter()
            .filter_map(|uplink| {
                Some(Attempt {
                    source: IpAddr::V4(uplink.address?),
                    head_start: uplink
                        .rtt_ms
                        .map_or(MIN_HEAD_START, |rtt| {
                            Duration::from_secs_f64(2.0 * rtt / 1e3)
                        })
                        .clamp(MIN_HEAD_START, MAX_HEAD_START),
                })
            })
            .collect()
    }

    fn replace(&self, uplinks: Vec<UplinkStatus>) {
        *lock(&self.uplinks) = uplinks;
    }
}

/// The order in which uplinks are tried; lower first.
fn rank(uplink: &UplinkStatus) -> u8 {
    match (uplink.health, uplink.backup) {
        (Health::Up, false) => 0,
        // The line works; only the converter does not answer on it.
        (Health::Unknown | Health::NoConverter, false) => 1,
        (Health::Up | Health::Unknown | Health::NoConverter, true) => 2,
        (Health::MptcpBlocked, _) => 3,
        (Health::Down, _) => 4,
    }
}

/// The uplink manager, running on a thread of its own. Dropping it stops the thread,
/// which first removes what it installed.
pub struct UplinkManager {
    table: Arc<UplinkTable>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the manager needs to know.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// The configured uplinks; empty: take the host's.
    pub uplinks: Vec<UplinkConfig>,
    /// Routing tables `first_table`, `first_table + 1`, ... are the uplinks'.
    pub first_table: u32,
    /// The converters, preferred first, where the probes go; none: no probes. The
    /// uplinks are IPv4: an IPv6 converter is not probed (a probe would not choose an
    /// uplink).
    pub converters: Vec<SocketAddr>,
    /// Where the status is written for `mptcp-user uplinks`.
    pub status_file: PathBuf,
}

impl UplinkManager {
    /// Installs the configured uplinks (or finds the host's) and starts following and
    /// probing them. Fails, with nothing left installed, when an uplink cannot be set up.
    pub fn start(config: ManagerConfig) -> anyhow::Result<Self> {
        let table = Arc::new(UplinkTable::default());
        let (stop, stopped) = watch::channel(false);
        let (started, start_result) = mpsc::channel();
        let shared = Arc::clone(&table);
        let thread = thread::Builder::new()
            .name("uplinks".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(manage(config, shared, started, stopped)),
                    Err(error) => {
                        let _ = started.send(Err(anyhow::Error::new(error)));
                    }
                }
            })
            .context("cannot start the uplink manager's thread")?;
        let manager = Self {
            table,
            stop: Some(stop),
            thread: Some(thread),
        };
        start_result
            .recv()
            .context("the uplink manager stopped before it started")??;
        Ok(manager)
    }

    /// The uplinks as new flows see them.
    pub fn table(&self) -> Arc<UplinkTable> {
        Arc::clone(&self.table)
    }
}

impl Drop for UplinkManager {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the uplink manager panicked; some routes may be left");
        }
    }
}

/// The manager's thread: set up, then follow and probe until told to stop, then remove.
async fn manage(
    config: ManagerConfig,
    table: Arc<UplinkTable>,
    started: mpsc::Sender<anyhow::Result<()>>,
    mut stopped: watch::Receiver<bool>,
) {
    let netlink = match Netlink::connect() {
        Ok(netlink) => netlink,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let mut uplinks = Uplinks::new(&config);
    if let Err(error) = uplinks.set_up(&netlink).await {
        uplinks.remove(&netlink).await;
        let _ = started.send(Err(error));
        return;
    }
    table.replace(uplinks.status.clone());
    let _ = started.send(Ok(()));
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticks.tick() => {}
        }
        if let Err(error) = uplinks.follow(&netlink).await {
            warn!("cannot follow the uplinks: {error:#}");
        }
        table.replace(uplinks.status.clone());
        // The first converter the uplinks reach is the one new flows use.
        let mut probed = false;
        for (index, &target) in config.converters.iter().enumerate() {
            if !target.is_ipv4() {
                continue;
            }
            uplinks.probe(target).await;
            probed = true;
            if uplinks.status.iter().any(Health::reaches_converter) {
                table.set_active(index, &config.converters);
                break;
            }
        }
        if probed {
            table.replace(uplinks.status.clone());
            table.note_probes(&uplinks.status);
        }
        write_status(&config.status_file, &uplinks.status);
    }
    uplinks.remove(&netlink).await;
    let _ = std::fs::remove_file(&config.status_file);
}

/// What was installed for one configured uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    index: u32,
    address: Ipv4Addr,
    next_hop: Option<Ipv4Addr>,
}

/// The uplinks and what the manager installed for them.
struct Uplinks {
    configured: Vec<UplinkConfig>,
    first_table: u32,
    installed: Vec<Option<Installed>>,
    status: Vec<UplinkStatus>,
    /// The path manager's limits before we raised them.
    previous_limits: Option<Limits>,
}

impl Uplinks {
    fn new(config: &ManagerConfig) -> Self {
        Self {
            configured: config.uplinks.clone(),
            first_table: config.first_table,
            installed: vec![None; config.uplinks.len()],
            status: config
                .uplinks
                .iter()
                .map(|uplink| UplinkStatus::new(&uplink.interface, uplink.backup, true))
                .collect(),
            previous_limits: None,
        }
    }

    /// Whether a table is one of the uplinks' (all a gateway may use, not only those of
    /// the configured uplinks: a killed run may have had more).
    fn our_tables(&self) -> impl Fn(u32) -> bool + Copy {
        let first = self.first_table;
        move |table| (first..first + MAX_UPLINKS).contains(&table)
    }

    fn table(&self, position: usize) -> u32 {
        self.first_table + u32::try_from(position).unwrap_or(MAX_UPLINKS)
    }

    /// Removes what a killed daemon left, raises the limits, installs every uplink.
    async fn set_up(&mut self, netlink: &Netlink) -> anyhow::Result<()> {
        if self.configured.is_empty() {
            return self.discover(netlink).await;
        }
        if self.configured.len() > MAX_UPLINKS as usize {
            bail!("at most {MAX_UPLINKS} uplinks");
        }
        netlink.clear_tables(self.our_tables()).await?;
        let limits = netlink.mptcp.limits().await?;
        self.previous_limits = Some(limits);
        let wanted = u32::try_from(self.configured.len()).unwrap_or(MAX_UPLINKS);
        netlink
            .mptcp
            .set_limits(Limits {
                add_addr_accepted: limits.add_addr_accepted.max(wanted).min(MAX_UPLINKS),
                subflows: limits.subflows.max(wanted).min(MAX_UPLINKS),
            })
            .await?;
        for position in 0..self.configured.len() {
            let wanted = self.wanted(netlink, position).await?;
            self.install(netlink, position, wanted).await?;
        }
        Ok(())
    }

    /// What uplink `position` needs now: its interface, address and next hop; `Err`
    /// with the reason when it cannot be used.
    async fn wanted(
        &self,
        netlink: &Netlink,
        position: usize,
    ) -> anyhow::Result<Result<Installed, String>> {
        let uplink = &self.configured[position];
        let Some(index) = netlink.link_index(&uplink.interface).await? else {
            return Ok(Err(format!("interface {} is gone", uplink.interface)));
        };
        let Some(address) = netlink.ipv4_addresses(index).await?.first().copied() else {
            return Ok(Err("no IPv4 address".to_owned()));
        };
        let next_hop = match uplink.next_hop {
            Some(IpAddr::V4(next_hop)) => Some(next_hop),
            Some(IpAddr::V6(next_hop)) => {
                return Ok(Err(format!("next hop {next_hop} is not IPv4")));
            }
            None => match netlink.default_route_via(index).await? {
                Some(next_hop) => next_hop,
                None if is_point_to_point(&uplink.interface) => None,
                None => {
                    return Ok(Err(
                        "no next hop: no default route through it (set next-hop)".to_owned(),
                    ));
                }
            },
        };
        Ok(Ok(Installed {
            index,
            address,
            next_hop,
        }))
    }

    /// Installs uplink `position` as `wanted` says (or records why it cannot be used).
    async fn install(
        &mut self,
        netlink: &Netlink,
        position: usize,
        wanted: Result<Installed, String>,
    ) -> anyhow::Result<()> {
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(reason) => {
                let status = &mut self.status[position];
                status.address = None;
                status.next_hop = None;
                status.set_health(Health::Down, Some(reason));
                return Ok(());
            }
        };
        let uplink = &self.configured[position];
        let table = self.table(position);
        netlink
            .set_default_route(table, wanted.index, wanted.next_hop)
            .await?;
        netlink
            .add_source_rule(wanted.address, table, table)
            .await?;
        // An endpoint already on this address (ours from a killed run, or made by hand)
        // would refuse ours.
        for endpoint in netlink.mptcp.endpoints().await? {
            if endpoint.address == Some(IpAddr::V4(wanted.address)) {
                netlink.mptcp.delete_endpoint(endpoint.id).await?;
            }
        }
        let flags = FLAG_SUBFLOW | if uplink.backup { FLAG_BACKUP } else { 0 };
        netlink
            .mptcp
            .add_endpoint(IpAddr::V4(wanted.address), wanted.index, flags)
            .await?;
        info!(
            "uplink {}: {} via {}, table {table}{}",
            uplink.interface,
            wanted.address,
            wanted
                .next_hop
                .map_or_else(|| "the link".to_owned(), |next_hop| next_hop.to_string()),
            if uplink.backup { ", backup" } else { "" }
        );
        self.installed[position] = Some(wanted);
        let status = &mut self.status[position];
        status.address = Some(wanted.address);
        status.next_hop = wanted.next_hop;
        if status.health == Health::Down {
            status.set_health(Health::Unknown, None);
        }
        Ok(())
    }

    /// Removes what was installed for uplink `position`.
    async fn uninstall(&mut self, netlink: &Netlink, position: usize) -> anyhow::Result<()> {
        let Some(installed) = self.installed[position].take() else {
            return Ok(());
        };
        let table = self.table(position);
        netlink.clear_tables(|cleared| cleared == table).await?;
        for endpoint in netlink.mptcp.endpoints().await? {
            if endpoint.address == Some(IpAddr::V4(installed.address)) {
                netlink.mptcp.delete_endpoint(endpoint.id).await?;
            }
        }
        Ok(())
    }

    /// Brings what is installed in line with the interfaces as they are now.
    async fn follow(&mut self, netlink: &Netlink) -> anyhow::Result<()> {
        if self.configured.is_empty() {
            return self.discover(netlink).await;
        }
        for position in 0..self.configured.len() {
            let wanted = self.wanted(netlink, position).await?;
            if wanted.as_ref().ok() == self.installed[position].as_ref() {
                continue;
            }
            if let (Ok(new), Some(old)) = (&wanted, &self.installed[position]) {
                info!(
                    "uplink {}: {} -> {}; routes and endpoint follow",
                    self.configured[position].interface, old.address, new.address
                );
            }
            self.uninstall(netlink, position).await?;
            self.install(netlink, position, wanted).await?;
        }
        Ok(())
    }

    /// Without configured uplinks: the host's MPTCP subflow endpoints and the default
    /// route's interface, as they are.
    async fn discover(&mut self, netlink: &Netlink) -> anyhow::Result<()> {
        // (interface, address, backup, endpoint)
        let mut found: Vec<(String, Ipv4Addr, bool, bool)> = Vec::new();
        for endpoint in netlink.mptcp.endpoints().await? {
            if let Some(IpAddr::V4(address)) = endpoint.address
                && endpoint.flags & FLAG_SUBFLOW != 0
            {
                let name = endpoint
                    .interface
                    .map_or_else(|| address.to_string(), interface_name);
                found.push((name, address, endpoint.flags & FLAG_BACKUP != 0, true));
            }
        }
        if let Some(index) = netlink.default_route_interface().await?
            && let Some(&address) = netlink.ipv4_addresses(index).await?.first()
            && !found.iter().any(|(_, known, ..)| *known == address)
        {
            found.insert(0, (interface_name(index), address, false, false));
        }
        let mut status = Vec::new();
        for (interface, address, backup, endpoint) in found {
            // Keep what the probes learnt of an uplink already known.
            let mut uplink = self
                .status
                .iter()
                .find(|known| known.address == Some(address))
                .cloned()
                .unwrap_or_else(|| UplinkStatus::new(&interface, backup, endpoint));
            uplink.interface = interface;
            uplink.address = Some(address);
            uplink.backup = backup;
            uplink.endpoint = endpoint;
            status.push(uplink);
        }
        if status.len() != self.status.len() {
            let names: Vec<&str> = status
                .iter()
                .map(|uplink| uplink.interface.as_str())
                .collect();
            info!("uplinks (the host's, as they are): {}", names.join(", "));
        }
        self.status = status;
        Ok(())
    }

    /// Probes every uplink that has an address, at once.
    async fn probe(&mut self, target: SocketAddr) {
        let probes = self.status.iter().map(|uplink| async move {
            match uplink.address {
                Some(address) => Some(probe(address, target).await),
                None => None,
            }
        });
        let verdicts = futures::future::join_all(probes).await;
        for (uplink, verdict) in self.status.iter_mut().zip(verdicts) {
            let Some((health, rtt, reason)) = verdict else {
                continue;
            };
            uplink.rtt_ms = rtt.map(|rtt| rtt.as_secs_f64() * 1e3);
            uplink.set_health(health, reason);
        }
    }

    /// Removes everything installed and puts the limits back.
    async fn remove(&mut self, netlink: &Netlink) {
        for position in 0..self.configured.len() {
            if let Err(error) = self.uninstall(netlink, position).await {
                warn!(
                    "cannot remove uplink {}: {error:#}",
                    self.configured[position].interface
                );
            }
        }
        // Also what an uplink whose setting up failed half-way left.
        if !self.configured.is_empty()
            && let Err(error) = netlink.clear_tables(self.our_tables()).await
        {
            warn!("cannot remove the uplinks' rules and routes: {error:#}");
        }
        if let Some(limits) = self.previous_limits.take()
            && let Err(error) = netlink.mptcp.set_limits(limits).await
        {
            warn!("cannot restore the MPTCP limits: {error:#}");
        }
        debug!("uplinks removed");
    }
}

/// One MPTCP handshake with `target` from `address`: up (and how long it took), MPTCP
/// blocked (it answered without MPTCP) or down.
async fn probe(
    address: Ipv4Addr,
    target: SocketAddr,
) -> (Health, Option<Duration>, Option<String>) {
    let attempt = [Attempt {
        source: IpAddr::V4(address),
        head_start: PROBE_TIMEOUT,
    }];
    let started = Instant::now();
    let connected = tokio::time::timeout(
        PROBE_TIMEOUT,
        socket::connect_racing(target, true, &attempt, |_| Ok(())),
    )
    .await;
    match connected {
        Ok(Ok(stream)) => {
            let rtt = started.elapsed();
            match sys::is_mptcp(&stream) {
                Ok(false) => (Health::MptcpBlocked, Some(rtt), None),
                _ => (Health::Up, Some(rtt), None),
            }
        }
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => (
            Health::NoConverter,
            None,
            Some(format!("the converter {target} refuses connections")),
        ),
        Ok(Err(error)) => (
            Health::Down,
            None,
            Some(format!(
                "cannot reach the converter {target} over it: {error}"
            )),
        ),
        Err(_) => (
            Health::Down,
            None,
            Some(format!(
                "no answer from the converter {target} within {PROBE_TIMEOUT:?}"
            )),
        ),
    }
}

/// Whether `interface` is point-to-point (PPP, a tunnel): it needs no next hop.
fn is_point_to_point(interface: &str) -> bool {
    nix::ifaddrs::getifaddrs().is_ok_and(|mut addresses| {
        addresses.any(|entry| {
            entry.interface_name == interface
                && entry
                    .flags
                    .contains(nix::net::if_::InterfaceFlags::IFF_POINTOPOINT)
        })
    })
}

fn interface_name(index: u32) -> String {
    nix::net::if_::if_indextoname(index).map_or_else(
        |_| format!("#{index}"),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Writes the uplinks' status where `mptcp-user uplinks` reads it (replaced whole, so
/// a reader never sees half a file).
fn write_status(path: &std::path::Path, status: &[UplinkStatus]) {
    let temporary = path.with_extension("tmp");
    let written = serde_json::to_vec_pretty(status)
        .map_err(std::io::Error::other)
        .and_then(|json| std::fs::write(&temporary, json))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        debug!("cannot write {}: {error}", path.display());
    }
}

/// Reads the status a running gateway wrote.
pub fn read_status(path: &std::path::Path) -> anyhow::Result<Vec<UplinkStatus>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "no uplink status at {} (is the gateway running, with this --pin-path?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("bad uplink status in {}", path.display()))
}
