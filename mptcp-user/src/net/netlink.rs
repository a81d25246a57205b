//! Routes, rules, links and addresses through rtnetlink, and the MPTCP path manager
//! through generic netlink ([`mptcp_pm`]). No `ip` commands: the daemon installs what it
//! needs itself, and finds what it installed by a protocol tag of its own.
//!
//! The methods are async, on one [`Netlink`] connection; [`blocking`] runs such work
//! where there is no runtime to await on (a `Drop`).

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_route::{
        AddressFamily, IpProtocol,
        address::{AddressAttribute, AddressScope},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        },
        rule::{RuleAction, RuleAttribute, RuleMessage},
    },
};

use super::mptcp_pm::PathManager;

/// The protocol tag of every route and rule the gateway installs (`ip route` shows
/// "proto 77"): how a new daemon finds, and removes, what a killed one left.
const PROTOCOL: u8 = 77;
const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;

/// A routing rule: `ip rule add priority PRIORITY [fwmark MARK/MASK] [ipproto udp]
/// lookup TABLE [suppress_prefixlength 0]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Where it sits among the rules; lower first.
    pub priority: u32,
    /// The table it looks up.
    pub table: u32,
    /// Only packets with this mark in the mask's bits.
    pub mark: Option<(u32, u32)>,
    /// Only UDP.
    pub udp_only: bool,
    /// The table's default routes do not count (`suppress_prefixlength 0`): only its
    /// more specific routes decide.
    pub no_default_routes: bool,
}

/// A connection to rtnetlink and to the MPTCP path manager.
pub struct Netlink {
    route: Handle,
    /// The MPTCP path manager's endpoints and limits.
    pub mptcp: PathManager,
}

/// Yields once per change of this host's addresses (an IPv4 or IPv6 address added or
/// removed), from rtnetlink's address groups; ends if the socket fails. Its task runs on
/// the current tokio runtime.
pub fn address_changes() -> anyhow::Result<impl futures::Stream<Item = ()>> {
    use futures::StreamExt as _;
    use rtnetlink::{
        constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR},
        sys::AsyncSocket as _,
    };
    let (mut connection, _, messages) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&rtnetlink::sys::SocketAddr::new(
            0,
            RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        ))
        .context("cannot listen to address changes")?;
    tokio::spawn(connection);
    Ok(messages.map(|_| ()))
}

impl Netlink {
    /// Opens the connections; their tasks run on the current tokio runtime.
    pub fn connect() -> anyhow::Result<Self> {
        let (connection, route, _) =
            rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
        tokio::spawn(connection);
        Ok(Self {
            route,
            mptcp: PathManager::connect()?,
        })
    }

    /// Interface `name`'s link message, `None` when there is none.
    async fn link(&self, name: &str) -> anyhow::Result<Option<LinkMessage>> {
        let mut links = self
            .route
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(error) if errno(&error) == Some(libc::ENODEV) => Ok(None),
            Err(error) => Err(error).with_context(|| format!("cannot look up interface {name}")),
        }
    }

    /// The index of interface `name`, `None` when there is none.
    pub async fn link_index(&self, name: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.link(name).await?.map(|link| link.header.index))
    }

    /// The index of interface `name` and whether it is up and has a carrier; `None`
    /// when there is no such interface.
    pub async fn link_state(&self, name: &str) -> anyhow::Result<Option<(u32, bool)>> {
        Ok(self.link(name).await?.map(|link| {
            let flags = link.header.flags;
            (
                link.header.index,
                flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
            )
        }))
    }

    /// The bytes interface `name` has received and sent (`None`: no such interface).
    pub async fn link_bytes(&self, name: &str) -> anyhow::Result<Option<(u64, u64)>> {
        Ok(self.link(name).await?.and_then(|link| {
            link.attributes
                .into_iter()
                .find_map(|attribute| match attribute {
                    LinkAttribute::Stats64(stats) => Some((stats.rx_bytes, stats.tx_bytes)),
                    _ => None,
                })
        }))
    }

    /// The global IPv4 addresses of interface `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> anyhow::Result<Vec<Ipv4Addr>> {
        let mut found = Vec::new();
        let mut messages = self
            .route
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(message) = messages.try_next().await? {
            if message.header.scope != AddressScope::Universe {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point links (PPP).
            let local = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(IpAddr::V4(address)) => Some(*address),
                    _ => None,
                });
            let address = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Address(IpAddr::V4(address)) => Some(*address),
                    _ => None,
                });
            if let Some(address) = local.or(address) {
                found.push(address);
            }
        }
        Ok(found)
    }

    /// The next hop of the main table's IPv4 default route through interface `index`,
    /// and whether there is such a route at all (a point-to-point link has none).
    pub async fn default_route_via(&self, index: u32) -> anyhow::Result<Option<Option<Ipv4Addr>>> {
        for route in self.routes(AddressFamily::Inet).await? {
            if table_of(&route) != u32::from(RouteHeader::RT_TABLE_MAIN)
                || route.header.destination_prefix_length != 0
                || route.header.kind != RouteType::Unicast
            {
                continue;
            }
            let mut via_index = false;
            let mut gateway = None;
            for attribute in &route.attributes {
                match attribute {
                    RouteAttribute::Oif(oif) => via_index = *oif == index,
                    RouteAttribute::Gateway(RouteAddress::Inet(address)) => {
                        gateway = Some(*address);
                    }
                    _ => {}
                }
            }
            if via_index {
                return Ok(Some(gateway));
            }
        }
        Ok(None)
    }

    /// The interface of the main table's IPv4 default route (the first one).
    pub async fn default_route_interface(&self) -> anyhow::Result<Option<u32>> {
        for route in self.routes(AddressFamily::Inet).await? {
            if table_of(&route) == u32::from(RouteHeader::RT_TABLE_MAIN)
                && route.header.destination_prefix_length == 0
                && route.header.kind == RouteType::Unicast
                && let Some(oif) = route
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        RouteAttribute::Oif(oif) => Some(*oif),
                        _ => None,
                    })
            {
                return Ok(Some(oif));
            }
        }
        Ok(None)
    }

    async fn routes(&self, family: AddressFamily) -> anyhow::Result<Vec<RouteMessage>> {
        // An all-zero header: the kernel filters nothing, we do.
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        self.route
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .context("cannot list routes")
    }

    /// `ip route replace default [via NEXT_HOP] dev INDEX table TABLE`.
    pub async fn set_default_route(
        &self,
        table: u32,
        index: u32,
        next_hop: Option<Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .table_id(table)
            .protocol(RouteProtocol::from(PROTOCOL));
        route = match next_hop {
            Some(next_hop) => route.gateway(next_hop),
            None => route.scope(RouteScope::Link),
        };
        self.route
            .route()
            .add(route.build())
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot set the default route of table {table}"))
    }

    /// `ip route replace local default dev lo table TABLE`, IPv4 and IPv6: everything
    /// the table routes is delivered to this host.
    pub async fn set_local_delivery(&self, table: u32) -> anyhow::Result<()> {
        let loopback = self
            .link_index("lo")
            .await?
            .context("this host has no loopback interface")?;
        self.set_default_routes(table, RouteType::Local, Some(loopback))
            .await
            .with_context(|| format!("cannot add the local route of table {table}"))
    }

    /// `ip route replace prohibit default table TABLE`, IPv4 and IPv6: the kernel answers
    /// each packet the table routes with ICMP "administratively prohibited" (a hard
    /// error: a connected UDP socket fails at once).
    pub async fn set_prohibited(&self, table: u32) -> anyhow::Result<()> {
        self.set_default_routes(table, RouteType::Prohibit, None)
            .await
            .with_context(|| format!("cannot add the prohibit route of table {table}"))
    }

    /// A default route of `kind` in `table` for both families, through `interface` if
    /// given (then of host scope, as a local route must be).
    async fn set_default_routes(
        &self,
        table: u32,
        kind: RouteType,
        interface: Option<u32>,
    ) -> Result<(), rtnetlink::Error> {
        let mut v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .kind(kind)
            .table_id(table)
            .protocol(RouteProtocol::from(PROTOCOL));
        let mut v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .kind(kind)
            .table_id(table)
            .protocol(RouteProtocol::from(PROTOCOL));
        if let Some(interface) = interface {
            v4 = v4.output_interface(interface).scope(RouteScope::Host);
            v6 = v6.output_interface(interface).scope(RouteScope::Host);
        }
        for route in [v4.build(), v6.build()] {
            self.route.route().add(route).replace().execute().await?;
        }
        Ok(())
    }

    /// Deletes every route of the tables `tables` accepts, both families.
    pub async fn flush_tables(&self, tables: impl Fn(u32) -> bool) -> anyhow::Result<()> {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for route in self.routes(family).await? {
                let table = table_of(&route);
                if !tables(table) {
                    continue;
                }
                match self.route.route().del(route).execute().await {
                    Err(error) if matches!(errno(&error), Some(ESRCH | ENOENT)) => {}
                    result => result.with_context(|| format!("cannot flush table {table}"))?,
                }
            }
        }
        Ok(())
    }

    /// Deletes our rules to, and every route of, the tables `tables` accepts.
    pub async fn clear_tables(&self, tables: impl Fn(u32) -> bool + Copy) -> anyhow::Result<()> {
        self.delete_rules(tables).await?;
        self.flush_tables(tables).await
    }

    /// `ip rule add from ADDRESS lookup TABLE priority PRIORITY`; an identical rule is
    /// left as it is.
    pub async fn add_source_rule(
        &self,
        address: Ipv4Addr,
        table: u32,
        priority: u32,
    ) -> anyhow::Result<()> {
        let mut rule = self
            .route
            .rule()
            .add()
            .table_id(table)
            .priority(priority)
            .action(RuleAction::ToTable)
            .v4()
            .source_prefix(address, 32);
        rule.message_mut()
            .attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
        match rule.execute().await {
            Err(error) if errno(&error) == Some(EEXIST) => Ok(()),
            result => result.with_context(|| format!("cannot add the rule from {address}")),
        }
    }

    /// Adds a rule of ours for `version`, as [`Rule`] describes it; an identical rule
    /// is left as it is.
    pub async fn add_rule(&self, rule: &Rule, version: IpVersion) -> anyhow::Result<()> {
        let mut attributes = vec![RuleAttribute::Protocol(RouteProtocol::from(PROTOCOL))];
        if let Some((mark, mask)) = rule.mark {
            attributes.push(RuleAttribute::FwMark(mark));
            attributes.push(RuleAttribute::FwMask(mask));
        }
        if rule.udp_only {
            attributes.push(RuleAttribute::IpProtocol(IpProtocol::Udp));
        }
        if rule.no_default_routes {
            attributes.push(RuleAttribute::SuppressPrefixLen(0));
        }
        let request = self
            .route
            .rule()
            .add()
            .table_id(rule.table)
            .priority(rule.priority)
            .action(RuleAction::ToTable);
        let result = match version {
            IpVersion::V4 => {
                let mut request = request.v4();
                request.message_mut().attributes.extend(attributes);
                request.execute().await
            }
            IpVersion::V6 => {
                let mut request = request.v6();
                request.message_mut().attributes.extend(attributes);
                request.execute().await
            }
        };
        match result {
            Err(error) if errno(&error) == Some(EEXIST) => Ok(()),
            result => result.with_context(|| format!("cannot add the rule {rule:?}")),
        }
    }

    /// Deletes our rules (by protocol tag) whose table `tables` accepts, both families.
    pub async fn delete_rules(&self, tables: impl Fn(u32) -> bool) -> anyhow::Result<()> {
        self.delete_rules_where(|table, _| tables(table)).await
    }

    /// Deletes our rules (by protocol tag) for which `ours(table, priority)` holds, both
    /// families.
    pub async fn delete_rules_where(&self, ours: impl Fn(u32, u32) -> bool) -> anyhow::Result<()> {
        for version in [IpVersion::V4, IpVersion::V6] {
            let rules: Vec<RuleMessage> = self
                .route
                .rule()
                .get(version)
                .execute()
                .try_collect()
                .await
                .context("cannot list rules")?;
            for rule in rules {
                if rule_protocol(&rule) != PROTOCOL
                    || !ours(rule_table(&rule), rule_priority(&rule))
                {
                    continue;
                }
                match self.route.rule().del(rule).execute().await {
                    Err(error) if errno(&error) == Some(ENOENT) => {}
                    result => result.context("cannot delete a rule")?,
                }
            }
        }
        Ok(())
    }
}

/// Runs `work` to completion on a runtime of its own, on a thread of its own: for
/// netlink work where there is no runtime to await on, such as a `Drop`. A thread or a
/// runtime it cannot start (out of open files, at the end of a flood) is an error, not
/// a panic in the middle of a cleanup.
pub fn blocking<T, F>(work: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("netlink".to_owned())
        .spawn(move || {
            // No signal driver: its global pipe's creation panics without a file left.
            tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .context("cannot start a runtime for netlink")?
                .block_on(work)
        })
        .context("cannot start a thread for netlink")?
        .join()
        .map_err(|_| anyhow::anyhow!("the netlink work panicked"))?
}

/// The errno of an rtnetlink error, if the kernel sent one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

/// A route's table: the header holds 8 bits, the attribute all 32.
fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

fn rule_priority(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Priority(priority) => Some(*priority),
            _ => None,
        })
        .unwrap_or(0)
}

fn rule_protocol(rule: &RuleMessage) -> u8 {
    rule.attributes
        .iter()
        .find_map(|attribute| match attribute {
            RuleAttribute::Protocol(protocol) => Some(u8::from(*protocol)),
            _ => None,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run in a child process of its own (the open-file limit is the process's).
    const CHILD: &str = "MPTCP_NETLINK_TEST_CHILD";

    #[test]
    fn cleanup_without_a_file_left_is_an_error_not_a_panic() {
        if std::env::var_os(CHILD).is_some() {
            // Every descriptor taken: no eventfd or epoll for the runtime.
            let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, open, open)
                .unwrap();
            let result = blocking(async { anyhow::Ok(()) });
            assert!(result.is_err(), "a runtime without files");
            return;
        }
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "net::netlink::tests::cleanup_without_a_file_left_is_an_error_not_a_panic",
            ])
            .env(CHILD, "1")
            .status()
            .unwrap();
        assert!(status.success(), "the child failed: {status}");
    }
}
