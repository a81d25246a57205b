//! Installing the in-kernel interception and keeping it in place: the programs, the
//! selection, the opted-in cgroups and the local-delivery routes, and re-attaching to
//! LAN interfaces that come back.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use log::{info, warn};
use mptcp_ebpf_common::cgroups::OPTED_IN_MAP_NAME;
use tokio::net::TcpListener;

use super::{
    cgroups,
    flows::FlowTable,
    routes::LocalDelivery,
    selection::{Action, QuicFallback, Rule, Selection},
};
use crate::{
    bpf::{self, Programs, Settings, tuning::Tuning},
    config::defaults,
    net::addr,
    sys,
};

/// Which flows the gateway intercepts, and how, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterceptionConfig {
    /// LAN interfaces whose TCP flows are intercepted.
    pub lan: Vec<String>,
    /// cgroup v2 directories whose TCP connects are intercepted.
    pub cgroups: Vec<PathBuf>,
    /// Destination prefixes intercepted (beyond the defaults).
    pub include: Vec<IpNet>,
    /// Destination prefixes never intercepted.
    pub exclude: Vec<IpNet>,
    /// Destination ports intercepted; empty for all.
    pub ports: Vec<u16>,
    /// Whether QUIC to the selected destinations is turned away (browsers then use TCP).
    pub quic_fallback: bool,
    /// fwmark of the local-delivery policy route.
    pub mark: u32,
    /// Routing table of that route.
    pub table: u32,
    /// Where the maps are pinned for the CLI.
    pub pin_path: PathBuf,
}

impl Default for InterceptionConfig {
    fn default() -> Self {
        Self {
            lan: Vec::new(),
            cgroups: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            ports: Vec::new(),
            quic_fallback: defaults::QUIC_FALLBACK,
            mark: defaults::INTERCEPT_MARK,
            table: defaults::INTERCEPT_TABLE,
            pin_path: PathBuf::from(defaults::PIN_PATH),
        }
    }
}

/// Everything the interception installed. Dropping it detaches the programs and removes
/// the pins first (fields drop in declaration order), then the policy routes, so nothing
/// is delivered to routes that are gone.
pub struct Interception {
    programs: Programs,
    _routes: Option<LocalDelivery>,
    /// The LAN interfaces and the index the program is attached to (`None` while the
    /// interface is gone).
    lan: Vec<(String, Option<u32>)>,
    selection: Selection<MapData, MapData>,
}

impl Interception {
    /// Loads the programs and installs the interception, with `listener` the transparent
    /// listener (which must already listen: the LAN program hands it flows from the
    /// moment it is attached) and `never` addresses that must never be intercepted (the
    /// converter), `capacity` the flows the open-file limit leaves room for. Returns the
    /// flow table the accepted connections use.
    pub fn install(
        config: &InterceptionConfig,
        listener: &TcpListener,
        tuning: &Tuning,
        never: &[IpAddr],
        capacity: u64,
    ) -> anyhow::Result<(Self, FlowTable)> {
        let listen = listener
            .local_addr()
            .context("cannot read the listener's address")?;
        let (listener_v4, listener_v6) = connect_targets(listen.ip());
        let settings = Settings {
            listen_port: listen.port(),
            intercept_mark: config.mark,
            netns_cookie: sys::netns_cookie()
                .context("cannot read the network namespace cookie")?,
            listener_v4: listener_v4.map_or([0; 4], addr::to_map_address),
            listener_v6: listener_v6.map_or([0; 4], addr::to_map_address),
            uplink_is_local: true,
            long_rtt: tuning.long_rtt(),
            inflight_cap_percent: tuning.inflight_cap_percent(),
        };
        let mut programs = Programs::load(&settings)?;
        programs.pin_maps(&config.pin_path)?;

        let mut never = never.to_vec();
        never.extend(addr::local_addresses()?);
        // The gateway's own networks (LAN and uplink prefixes, public ones included)
        // go directly unless an include says otherwise.
        let rules: Vec<Rule> = addr::local_prefixes()?
            .into_iter()
            .map(|prefix| Rule::new(prefix, Action::Exclude))
            .chain(
                config
                    .include
                    .iter()
                    .map(|&p| Rule::new(p, Action::Include)),
            )
            .chain(
                config
                    .exclude
                    .iter()
                    .map(|&p| Rule::new(p, Action::Exclude)),
            )
            .collect();
        let mut selection = Selection::take(&mut programs)?;
        selection.install(&rules, &never, &config.ports)?;
        QuicFallback::take(&mut programs)?.set(config.quic_fallback)?;

        programs.set_uplink_congestion(tuning.uplink_congestion())?;
        // The cgroup programs need the cgroup v2 hierarchy, which a container or a
        // namespace entered with `ip netns exec` may hide: only --cgroup and
        // --uplink-congestion make it a must.
        match bpf::cgroup_root() {
            Ok(root) => {
                let mut opted_in: HashMap<MapData, u64, u32> =
                    HashMap::try_from(programs.take_map(OPTED_IN_MAP_NAME)?)?;
                for cgroup in &config.cgroups {
                    cgroups::opt_in(&mut opted_in, cgroup)?;
                    info!(
                        "intercepting the TCP connects of cgroup {}",
                        cgroup.display()
                    );
                }
                if tuning.tunes_subflows() {
                    info!("subflow tuning: {}", tuning.describe_subflow_rules());
                }
                programs.attach_sock_ops(&root)?;
                programs.attach_connect_interception(&root)?;
            }
            Err(error) if config.cgroups.is_empty() && tuning.uplink_congestion().is_empty() => {
                warn!(
                    "{error:#}; running without the cgroup programs: no local services \
                     intercepted, no subflow records or per-subflow tuning"
                );
            }
            Err(error) => {
                return Err(error.context("--cgroup and --uplink-congestion need cgroup v2"));
            }
        }

        programs.attach_listener_lookup(listener)?;
        let routes = if config.lan.is_empty() {
            None
        } else {
            Some(LocalDelivery::install(config.mark, config.table)?)
        };
        let mut lan = Vec::new();
        for interface in &config.lan {
            programs.attach_lan(interface)?;
            info!(
                "intercepting TCP flows arriving on {interface}{}",
                if config.quic_fallback {
                    "; QUIC to the same destinations is answered ICMP prohibited, so \
                     browsers use TCP"
                } else {
                    ""
                }
            );
            lan.push((interface.clone(), interface_index(interface)));
        }
        let flows = FlowTable::take(&mut programs, listen.port(), capacity)?;
        let interception = Self {
            programs,
            _routes: routes,
            lan,
            selection,
        };
        Ok((interception, flows))
    }

    /// Takes the ring buffer the programs log into (see [`crate::bpf::forward_log`]).
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        self.programs.take_logger()
    }

    /// Follows the LAN interfaces: a tcx link goes with its interface, so when one is
    /// deleted and created again (a bridge rebuilt by a network restart, say), the
    /// program is attached to the new one. Meanwhile its flows go directly.
    pub fn follow_lan_interfaces(&mut self) {
        for (name, attached) in &mut self.lan {
            let current = interface_index(name);
            if current == *attached {
                continue;
            }
            match current {
                None => warn!(
                    "LAN interface {name} is gone; until it is back, nothing is intercepted \
                     there"
                ),
                Some(_) => match self.programs.attach_lan(name) {
                    Ok(()) => info!("LAN interface {name} is back; intercepting it again"),
                    Err(error) => {
                        warn!("{error:#}");
                        continue;
                    }
                },
            }
            *attached = current;
        }
    }

    /// Stops intercepting new flows (the include rules go), while the flows already
    /// intercepted go on: used at shutdown, for the grace period.
    pub fn stop_new_flows(&mut self) {
        let rules = match self.selection.rules() {
            Ok(rules) => rules,
            Err(error) => {
                warn!("cannot read the selection to stop new flows: {error:#}");
                return;
            }
        };
        for rule in rules.iter().filter(|rule| rule.action == Action::Include) {
            if let Err(error) = self.selection.remove(rule.prefix) {
                warn!("{error:#}");
            }
        }
    }
}

fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// Where the connect programs send intercepted IPv4 and IPv6 connects: the listener's
/// own address, or loopback when it listens on a wildcard address.
fn connect_targets(listen: IpAddr) -> (Option<IpAddr>, Option<IpAddr>) {
    match listen {
        IpAddr::V6(v6) if v6.is_unspecified() => (
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ),
        IpAddr::V4(v4) if v4.is_unspecified() => (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), None),
        IpAddr::V4(_) => (Some(listen), None),
        IpAddr::V6(_) => (None, Some(listen)),
    }
}
