//! Setting the uplinks up through netlink (a routing table and a source rule each, an
//! MPTCP `subflow` endpoint, the path manager's limits), following their interfaces
//! and addresses as they change, and removing it all; or, without configured uplinks,
//! finding the host's own.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::bail;
use log::{debug, info, warn};

use super::{Health, ManagerConfig, Role, UplinkConfig, UplinkStatus, probe::probe, steer::Route};
use crate::net::{
    mptcp_pm::{self, FLAG_BACKUP, FLAG_SUBFLOW, Limits},
    netlink::Netlink,
};

/// Most uplinks: the path manager's limit on subflows.
pub(super) const MAX_UPLINKS: u32 = mptcp_pm::MAX_LIMIT;

/// What was installed for one configured uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Installed {
    index: u32,
    address: Ipv4Addr,
    next_hop: Option<Ipv4Addr>,
}

/// The uplinks and what the manager installed for them.
pub(super) struct Uplinks {
    configured: Vec<UplinkConfig>,
    first_table: u32,
    installed: Vec<Option<Installed>>,
    pub(super) status: Vec<UplinkStatus>,
    /// The path manager's limits before we raised them.
    previous_limits: Option<Limits>,
}

impl Uplinks {
    pub(super) fn new(config: &ManagerConfig) -> Self {
        Self {
            configured: config.uplinks.clone(),
            first_table: config.first_table,
            installed: vec![None; config.uplinks.len()],
            status: config
                .uplinks
                .iter()
                .map(|uplink| UplinkStatus::new(&uplink.interface, uplink.role, true))
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
    pub(super) async fn set_up(&mut self, netlink: &Netlink) -> anyhow::Result<()> {
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
        // No ADD_ADDR accepted: a converter behind a load balancer (its MP_CAPABLE "C"
        // flag) announces its own address, and only at 0 does the kernel open a subflow
        // from every uplink's endpoint to it; above 0 it opens one, from the default
        // route's (kernel 6.18; converter/announce.rs).
        netlink
            .mptcp
            .set_limits(Limits {
                add_addr_accepted: 0,
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
        let Some((index, up)) = netlink.link_state(&uplink.interface).await? else {
            return Ok(Err(format!("interface {} is gone", uplink.interface)));
        };
        // A link that went down took its routes with it; they are installed again
        // when it comes back.
        if !up {
            return Ok(Err(format!("interface {} is down", uplink.interface)));
        }
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
        // Metered lines carry subflows only when nothing else can, as backups do.
        let backup = uplink.role != Role::Primary;
        let flags = FLAG_SUBFLOW | if backup { FLAG_BACKUP } else { 0 };
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
            match uplink.role {
                Role::Primary => String::new(),
                role => format!(", {role}"),
            }
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
        // Its source rule (priority: the table's number) and routes; steering's rule
        // to the same table stays, for when the uplink comes back.
        netlink
            .delete_rules_where(|rule_table, priority| rule_table == table && priority == table)
            .await?;
        netlink.flush_tables(|flushed| flushed == table).await?;
        for endpoint in netlink.mptcp.endpoints().await? {
            if endpoint.address == Some(IpAddr::V4(installed.address)) {
                netlink.mptcp.delete_endpoint(endpoint.id).await?;
            }
        }
        Ok(())
    }

    /// Where each configured uplink routes, when it is installed.
    pub(super) fn routes(&self) -> Vec<Option<Route>> {
        self.installed
            .iter()
            .map(|installed| installed.map(|installed| (installed.index, installed.next_hop)))
            .collect()
    }

    /// Brings what is installed in line with the interfaces as they are now.
    pub(super) async fn follow(&mut self, netlink: &Netlink) -> anyhow::Result<()> {
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
                .unwrap_or_else(|| {
                    UplinkStatus::new(
                        &interface,
                        if backup { Role::Backup } else { Role::Primary },
                        endpoint,
                    )
                });
            uplink.interface = interface;
            uplink.address = Some(address);
            uplink.role = if backup { Role::Backup } else { Role::Primary };
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
    pub(super) async fn probe_all(&mut self, target: SocketAddr) {
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
    pub(super) async fn remove(&mut self, netlink: &Netlink) {
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
