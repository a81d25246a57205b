//! Steering what the gateway does not convert (DNS, UDP, TCP it does not intercept, the
//! host's own traffic) by the uplinks' health, as a multi-WAN router does, instead of
//! leaving it to the main table's default route.
//!
//! What it installs, after the uplinks' source rules and before the main table:
//!
//! ```text
//! 15133  lookup main suppress_prefixlength 0    the LAN and other specific routes
//! 15134  fwmark 0x100000/0xf00000 lookup 15125  a flow stays on the uplink it left by
//!        ... one per uplink
//! 15135  ipproto udp lookup 15134              UDP: the chosen uplink (fastest)
//! 15136  lookup 15133                          the rest: the chosen uplink (by order)
//! ```
//!
//! (numbers for the default `intercept-table`), and an nftables table `inet
//! mptcp_gateway` that marks each connection with the uplink it first left by, and
//! each of its packets with that mark, so that a flow keeps its uplink (and its NAT)
//! while the uplink lives. When an uplink goes down, the connections marked with it are
//! deleted from conntrack: their next packet is routed and NATed anew, out of a live
//! uplink. [`super::choice`] decides which uplink each table routes through.
//!
//! Nothing depends on the main table, which a DHCP client may rewrite at any time; and
//! when the daemon is killed, what it leaves routes through the uplinks it chose, whose
//! routes go with their links, after which the main table decides again. A new start
//! replaces it.

use std::{collections::VecDeque, fmt::Write as _, net::Ipv4Addr, time::SystemTime};

use anyhow::Context as _;
use log::{info, warn};
use rtnetlink::IpVersion;
use tokio::time::Instant;

use super::{
    Health, UplinkConfig, UplinkStatus,
    choice::{Choice, Line, Reason, Switch, Traffic},
    config::Role,
    usage::Usage,
};
use crate::net::{
    conntrack, mptcp_pm,
    netlink::{Netlink, Rule},
    nft,
};

/// The bits of the packet and connection marks that name an uplink: uplink `i`
/// (0-based) is `(i + 1) << 20`.
pub const MARK_MASK: u32 = 0x00f0_0000;

/// How many uplinks the mark bits can name.
const MAX_MARKS: usize = (MARK_MASK >> MARK_MASK.trailing_zeros()) as usize;

/// The nftables table of the marks.
const NFT_TABLE: &str = "mptcp_gateway";

/// The mark of the uplink at `position`.
fn mark(position: usize) -> u32 {
    (u32::try_from(position).unwrap_or(0) + 1) << MARK_MASK.trailing_zeros()
}

/// The tables and rule priorities steering uses, after the uplinks' own.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    first_table: u32,
}

impl Layout {
    pub(super) fn new(first_table: u32) -> Self {
        Self { first_table }
    }

    /// The table of uplink `position` (its default route).
    fn uplink_table(self, position: usize) -> u32 {
        self.first_table + u32::try_from(position).unwrap_or(0)
    }

    /// The table whose default route carries `traffic`.
    fn table(self, traffic: Traffic) -> u32 {
        let after_uplinks = self.first_table + mptcp_pm::MAX_LIMIT;
        match traffic {
            Traffic::Default => after_uplinks,
            Traffic::Udp => after_uplinks + 1,
        }
    }

    /// The rules, in the order the kernel goes through them.
    fn rules(self, uplinks: usize) -> Vec<Rule> {
        let first = self.first_table + mptcp_pm::MAX_LIMIT;
        let rule = |priority, table| Rule {
            priority,
            table,
            mark: None,
            udp_only: false,
            no_default_routes: false,
        };
        let mut rules = vec![Rule {
            no_default_routes: true,
            ..rule(first, u32::from(libc::RT_TABLE_MAIN))
        }];
        for position in 0..uplinks {
            rules.push(Rule {
                mark: Some((mark(position), MARK_MASK)),
                ..rule(first + 1, self.uplink_table(position))
            });
        }
        rules.push(Rule {
            udp_only: true,
            ..rule(first + 2, self.table(Traffic::Udp))
        });
        rules.push(rule(first + 3, self.table(Traffic::Default)));
        rules
    }

    /// Whether a rule of ours at `priority` is steering's.
    fn is_steering_priority(self, priority: u32) -> bool {
        let first = self.first_table + mptcp_pm::MAX_LIMIT;
        (first..=first + 3).contains(&priority)
    }

    /// Whether `table` is one of steering's.
    fn is_steering_table(self, table: u32) -> bool {
        Traffic::ALL
            .iter()
            .any(|&traffic| self.table(traffic) == table)
    }
}

/// The nftables ruleset that remembers, per connection, the uplink it left by.
fn ruleset(interfaces: &[String]) -> String {
    let keep = !MARK_MASK;
    let mut remember = String::new();
    let mut recall = String::new();
    for (position, interface) in interfaces.iter().enumerate() {
        let mark = mark(position);
        let _ = writeln!(
            remember,
            "    ct mark & {MARK_MASK:#x} == 0 oifname \"{interface}\" \
             ct mark set ct mark & {keep:#x} | {mark:#x}"
        );
        // Only packets nothing else marked: an intercepted or QUIC-refused packet keeps
        // the exact mark its rule looks for.
        let _ = writeln!(
            recall,
            "    ct mark & {MARK_MASK:#x} == {mark:#x} meta mark 0 meta mark set {mark:#x}"
        );
    }
    format!(
        "table inet {NFT_TABLE} {{\n\
         \x20 chain remember {{\n\
         \x20   type filter hook postrouting priority mangle; policy accept;\n\
         {remember}\
         \x20 }}\n\
         \x20 chain recall {{\n\
         \x20   type filter hook prerouting priority mangle; policy accept;\n\
         {recall}\
         \x20 }}\n\
         \x20 chain recall_local {{\n\
         \x20   type route hook output priority mangle; policy accept;\n\
         {recall}\
         \x20 }}\n\
         }}\n"
    )
}

/// Removes the rules, routes and marks of steering, ours or a killed daemon's: every
/// step is tried, the first error is returned.
pub(super) async fn clear(netlink: &Netlink, layout: Layout) -> anyhow::Result<()> {
    let rules = netlink
        .delete_rules_where(|_, priority| layout.is_steering_priority(priority))
        .await;
    let routes = netlink
        .flush_tables(|table| layout.is_steering_table(table))
        .await;
    let marks = nft::delete_table("inet", NFT_TABLE);
    rules.and(routes).and(marks)
}

/// Where an uplink routes: its interface and next hop.
pub(super) type Route = (u32, Option<Ipv4Addr>);

/// Steering as installed, with the choice and the metered lines' usage.
pub(super) struct Steering {
    layout: Layout,
    uplinks: Vec<UplinkConfig>,
    choice: Choice,
    /// Since when each traffic has its uplink, in seconds since the Unix epoch.
    since: [Option<u64>; 2],
    /// Whether each uplink was usable at the last round (all are taken to be before the
    /// first, so that flows a killed run left on a dead one are forgotten).
    usable: Vec<bool>,
    /// Whether the flows of each spent metered uplink were moved off it.
    left_spent: Vec<bool>,
    /// Each uplink's last probe round trips, ms.
    rtts: Vec<VecDeque<f64>>,
    usage: Usage,
}

impl Steering {
    /// Removes what a killed daemon left, then installs the marks and the rules; the
    /// routes come with the first [`Self::update`].
    pub(super) async fn install(
        netlink: &Netlink,
        layout: Layout,
        uplinks: &[UplinkConfig],
        usage: Usage,
    ) -> anyhow::Result<Self> {
        let steering = Self {
            layout,
            uplinks: uplinks.to_vec(),
            choice: Choice::default(),
            since: [None; 2],
            usable: vec![true; uplinks.len()],
            left_spent: vec![false; uplinks.len()],
            rtts: vec![VecDeque::new(); uplinks.len()],
            usage,
        };
        clear(netlink, layout).await?;
        // Flows a killed run marked for uplinks that are no more.
        for position in uplinks.len()..MAX_MARKS {
            if let Err(error) = conntrack::delete_marked(mark(position), MARK_MASK) {
                warn!("cannot forget the flows of a former uplink: {error:#}");
                break;
            }
        }
        if let Err(error) = steering.add(netlink).await {
            // Nothing half-installed stays.
            if let Err(left) = clear(netlink, layout).await {
                warn!("cannot remove the routes of unconverted traffic: {left:#}");
            }
            return Err(error);
        }
        Ok(steering)
    }

    /// Installs the marks and the rules.
    async fn add(&self, netlink: &Netlink) -> anyhow::Result<()> {
        let interfaces: Vec<String> = self
            .uplinks
            .iter()
            .map(|uplink| uplink.interface.clone())
            .collect();
        nft::apply(&ruleset(&interfaces)).context(
            "cannot mark the flows that are not converted (steer-unconverted = false does \
             without, leaving them to the main routing table)",
        )?;
        for rule in self.layout.rules(self.uplinks.len()) {
            netlink.add_rule(&rule, IpVersion::V4).await?;
        }
        Ok(())
    }

    /// Removes what [`Self::install`] installed, and writes the usage down.
    pub(super) async fn remove(&mut self, netlink: &Netlink) {
        if let Err(error) = clear(netlink, self.layout).await {
            warn!("cannot remove the routes of unconverted traffic: {error:#}");
        }
        self.usage.save(true);
    }

    /// After a probe round: counts the metered lines' bytes, makes the choice and
    /// routes by it, forgets the flows of uplinks that went down, and writes it all
    /// into `status`. `routes[i]` is where uplink `i` routes, if it is installed.
    pub(super) async fn update(
        &mut self,
        netlink: &Netlink,
        status: &mut [UplinkStatus],
        routes: &[Option<Route>],
    ) {
        let lines = self.lines(netlink, status, routes).await;
        let mut forget = Vec::new();
        // With every line down (or the probes' converter gone) there is nowhere else
        // to go: flows stay as they are.
        let elsewhere = lines.iter().any(|line| line.usable);
        for (position, line) in lines.iter().enumerate() {
            if self.usable[position] && !line.usable && elsewhere {
                forget.push((position, "it is down"));
            }
            // Flows on a line whose allowance ran out leave it, once another can take
            // them.
            let others = lines
                .iter()
                .enumerate()
                .any(|(other, line)| other != position && line.usable && !line.spent);
            if line.spent && others && !self.left_spent[position] {
                forget.push((position, "its allowance is spent"));
                self.left_spent[position] = true;
            }
            if !line.spent {
                self.left_spent[position] = false;
            }
            self.usable[position] = line.usable;
        }
        for switch in self.choice.update(&lines, Instant::now()) {
            self.log(switch, &lines);
            self.since[switch.traffic as usize] = Some(crate::sys::unix_now());
        }
        forget.dedup_by_key(|(position, _)| *position);
        self.route_choices(netlink, routes).await;
        // Only now: a flow forgotten before its table routed elsewhere would be
        // remembered on the same uplink again by its next packet.
        for (position, why) in forget {
            self.forget_flows(position, why);
        }
        for (position, uplink) in status.iter_mut().enumerate() {
            uplink.carries = Traffic::ALL
                .into_iter()
                .filter(|&traffic| self.choice.chosen(traffic) == Some(position))
                .collect();
            uplink.default_since_unix_s = self.since_if_carries(position, Traffic::Default);
            uplink.udp_since_unix_s = self.since_if_carries(position, Traffic::Udp);
        }
        self.usage.save(false);
    }

    /// Routes each traffic's table through its chosen uplink: every round, since the
    /// kernel drops the route when the uplink's link or address goes, even when the
    /// choice stays.
    async fn route_choices(&self, netlink: &Netlink, routes: &[Option<Route>]) {
        for traffic in Traffic::ALL {
            let Some((index, next_hop)) = self
                .choice
                .chosen(traffic)
                .and_then(|position| routes.get(position).copied().flatten())
            else {
                continue;
            };
            if let Err(error) = netlink
                .set_default_route(self.layout.table(traffic), index, next_hop)
                .await
            {
                warn!("cannot route the {}: {error:#}", traffic.route());
            }
        }
    }

    fn since_if_carries(&self, position: usize, traffic: Traffic) -> Option<u64> {
        (self.choice.chosen(traffic) == Some(position))
            .then_some(self.since[traffic as usize])
            .flatten()
    }

    /// Each uplink as the choice sees it, the metered lines' usage counted on the way.
    async fn lines(
        &mut self,
        netlink: &Netlink,
        status: &mut [UplinkStatus],
        routes: &[Option<Route>],
    ) -> Vec<Line> {
        let mut lines = Vec::with_capacity(self.uplinks.len());
        for (position, uplink) in self.uplinks.iter().enumerate() {
            let mut spent = false;
            if uplink.role == Role::Metered {
                match netlink.link_bytes(&uplink.interface).await {
                    Ok(Some((bytes_in, bytes_out))) => self.usage.add(
                        &uplink.interface,
                        bytes_in + bytes_out,
                        uplink
                            .allowance
                            .map(|allowance| allowance.period)
                            .unwrap_or_default(),
                        SystemTime::now(),
                    ),
                    Ok(None) => {}
                    Err(error) => warn!("cannot count {}'s bytes: {error:#}", uplink.interface),
                }
                let used = self.usage.bytes(&uplink.interface);
                let allowance = uplink.allowance.map(|allowance| allowance.bytes);
                spent =
                    matches!((used, allowance), (Some(used), Some(allowance)) if used >= allowance);
                status[position].usage_bytes = used;
                status[position].allowance_bytes = allowance;
            }
            lines.push(Line {
                usable: routes.get(position).copied().flatten().is_some()
                    && status[position].health != Health::Down,
                role: uplink.role,
                spent,
                rtt_ms: median_rtt(&mut self.rtts[position], status[position].rtt_ms),
            });
        }
        lines
    }

    /// Deletes the conntrack entries of the flows that left by uplink `position`, so
    /// that their next packet leaves by a live uplink, NATed anew.
    fn forget_flows(&self, position: usize, why: &str) {
        let interface = &self.uplinks[position].interface;
        match conntrack::delete_marked(mark(position), MARK_MASK) {
            Ok(()) => info!(
                "uplink {interface}: {why}; its flows that were not converted move to \
                 another uplink"
            ),
            Err(error) => warn!("uplink {interface}: {why}, but {error:#}"),
        }
    }

    /// Logs a switch, once, with its reason.
    fn log(&self, switch: Switch, lines: &[Line]) {
        let name = |position: usize| self.uplinks[position].interface.as_str();
        let route = switch.traffic.route();
        let to = name(switch.to);
        let Some(from) = switch.from.map(name) else {
            info!("{route}: {to} (first choice)");
            return;
        };
        let why = match switch.reason {
            Reason::Start => "first choice".to_owned(),
            Reason::Down if lines.iter().all(|line| !line.usable) => {
                format!("{from} is down, and so is every other uplink")
            }
            Reason::Down => format!("{from} is down"),
            Reason::Spent => format!("{from}'s allowance is spent"),
            Reason::Back => format!(
                "{to} has worked for {} s",
                super::choice::HOLD_DOWN.as_secs()
            ),
        };
        info!("{route}: {from} -> {to}: {why}");
    }
}

/// How many probe round trips UDP's choice looks at.
const RTT_SAMPLES: usize = 5;

/// Adds the round trip `latest` to `samples` and returns their median: one handshake
/// slowed by a lost SYN must not move UDP to another line and back.
fn median_rtt(samples: &mut VecDeque<f64>, latest: Option<f64>) -> Option<f64> {
    if let Some(latest) = latest {
        if samples.len() == RTT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(latest);
    }
    let mut sorted: Vec<f64> = samples.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_come_after_the_uplinks_and_before_main() {
        let layout = Layout::new(15125);
        let rules = layout.rules(2);
        assert!(
            rules
                .iter()
                .all(|rule| rule.priority > 15125 + 7 && rule.priority < 32766)
        );
        assert!(
            rules
                .windows(2)
                .all(|pair| pair[0].priority <= pair[1].priority)
        );
        // The LAN's routes first, then sticky flows, UDP, the rest.
        assert!(rules[0].no_default_routes && rules[0].table == 254);
        assert_eq!(rules[1].mark, Some((0x10_0000, MARK_MASK)));
        assert_eq!(rules[2].mark, Some((0x20_0000, MARK_MASK)));
        assert_eq!(rules[1].table, 15125);
        assert!(rules[3].udp_only && rules[3].table == layout.table(Traffic::Udp));
        assert_eq!(rules[4].table, layout.table(Traffic::Default));
        for rule in &rules {
            assert!(layout.is_steering_priority(rule.priority));
        }
        assert!(!layout.is_steering_priority(15125));
        assert!(!layout.is_steering_table(15125 + 7));
    }

    #[test]
    fn one_slow_handshake_does_not_move_the_median() {
        let mut samples = VecDeque::new();
        assert_eq!(median_rtt(&mut samples, None), None);
        for rtt in [30.0, 31.0, 1030.0] {
            median_rtt(&mut samples, Some(rtt));
        }
        assert_eq!(median_rtt(&mut samples, Some(29.0)), Some(31.0));
        // A line that became slow for good is slow after a few rounds.
        for _ in 0..RTT_SAMPLES {
            median_rtt(&mut samples, Some(600.0));
        }
        assert_eq!(median_rtt(&mut samples, None), Some(600.0));
    }

    #[test]
    fn the_marks_name_each_uplink_within_the_mask() {
        for position in 0..mptcp_pm::MAX_LIMIT as usize {
            assert_eq!(mark(position) & !MARK_MASK, 0);
            assert_ne!(mark(position), 0);
        }
        let script = ruleset(&["up1".to_owned(), "up2".to_owned()]);
        assert!(script.contains("oifname \"up2\" ct mark set ct mark & 0xff0fffff | 0x200000"));
        assert_eq!(script.matches("meta mark set").count(), 4, "{script}");
    }
}
