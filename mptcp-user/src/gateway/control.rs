//! The commands that read and edit a running gateway's pinned maps: `flows`,
//! `selection`, `optin`, `optout`, and `uplinks`, which adds the daemon's status file.
//! They talk to the kernel, not to the daemon, so they work whatever the daemon is
//! doing.

use std::{
    collections::{BTreeMap, HashSet},
    io::{self, Write as _},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use ipnet::IpNet;
use mptcp_ebpf_common::{
    Endpoint, cgroups as cgroup_maps,
    flows::{self, FLOW_DIRECT, Flow, INTERCEPTED_CGROUP, INTERCEPTED_INBOUND, Subflow, WARM_FLOW},
};
use serde::Serialize;

use super::{
    cgroups, forwards,
    selection::{Action, QuicFallback, Selection},
    uplinks::{self, Traffic, UplinkStatus},
};
use crate::{bpf::open_pinned, net::addr, sys};

/// A change to a running gateway's selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectionChange {
    /// Add or change the rule for a prefix.
    Set(IpNet, Action),
    /// Delete the rule for exactly this prefix.
    Remove(IpNet),
    /// Add a port to the list of intercepted ports.
    AddPort(u16),
    /// Take a port off that list.
    RemovePort(u16),
    /// Turn QUIC away (`true`) or leave it alone.
    Quic(bool),
}

/// One relayed flow, as `mptcp-user flows` shows it.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    /// The LAN client or local process.
    pub client: String,
    /// Where it wanted to go.
    pub destination: String,
    /// `lan` or `cgroup` (outbound flows), or `in` (a port forward's).
    pub intercepted: &'static str,
    /// `out`, from the LAN, or `in`, through a port forward.
    pub direction: &'static str,
    /// Carried straight to the destination (the converter being unavailable).
    pub direct: bool,
    /// Seconds since the gateway accepted it.
    pub age_s: f64,
    /// Bytes the destination's side has acknowledged, summed over the subflows.
    pub bytes_up: u64,
    /// Bytes received from the destination's side, summed over the subflows.
    pub bytes_down: u64,
    /// The MPTCP subflows, one per uplink in use.
    pub subflows: Vec<SubflowRow>,
}

/// One MPTCP subflow of a flow.
#[derive(Debug, Serialize)]
pub struct SubflowRow {
    /// Local endpoint; its address names the uplink.
    pub local: String,
    /// Remote endpoint.
    pub remote: String,
    /// Smoothed RTT in milliseconds.
    pub rtt_ms: f64,
    /// Bytes sent and acknowledged.
    pub bytes_up: u64,
    /// Bytes received.
    pub bytes_down: u64,
    /// Segments retransmitted.
    pub retransmits: u32,
    /// Congestion window in segments.
    pub cwnd: u32,
}

/// Column titles of the `flows` table.
pub const FLOWS_HEADER: [&str; 6] = [
    "CLIENT",
    "DESTINATION",
    "VIA",
    "AGE s",
    "UP bytes",
    "DOWN bytes",
];

/// `mptcp-user flows`: prints the flows and their subflows, as a table (after a line
/// with the uplinks' state) or JSON.
pub fn print_flows(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let rows = read_flows(pin_dir)?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    // The uplinks' state in one line, as the status of the flows below.
    if let Ok(statuses) = uplinks::read_status(pin_dir) {
        let states: Vec<String> = statuses
            .iter()
            .map(|status| format!("{} {}", status.interface, status.health))
            .collect();
        writeln!(out, "uplinks: {}", states.join(", "))?;
    }
    let forwards: Vec<String> = forwards::read_status(pin_dir)
        .iter()
        .map(|forward| {
            let at = forward
                .converter
                .map_or_else(String::new, |converter| format!(" at {converter}"));
            format!(
                "{} -> {}: {}{at}",
                forward.public, forward.to, forward.state
            )
        })
        .collect();
    if !forwards.is_empty() {
        writeln!(out, "forwards: {}", forwards.join("; "))?;
    }
    let [client, destination, via, age, up, down] = FLOWS_HEADER;
    writeln!(
        out,
        "{client:<42} {destination:<42} {via:<7} {age:>8} {up:>12} {down:>12}"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:<42} {:<42} {:<7} {:>8.1} {:>12} {:>12}{}",
            row.client,
            row.destination,
            row.intercepted,
            row.age_s,
            row.bytes_up,
            row.bytes_down,
            if row.direct {
                "  direct: the converter is unavailable"
            } else {
                ""
            }
        )?;
        for subflow in &row.subflows {
            writeln!(
                out,
                "  subflow {:<32} -> {:<32} rtt {:>7.1} ms  up {:>12}  down {:>12}  retrans {}",
                subflow.local,
                subflow.remote,
                subflow.rtt_ms,
                subflow.bytes_up,
                subflow.bytes_down,
                subflow.retransmits
            )?;
        }
    }
    Ok(())
}

/// Reads the flows and subflows a gateway pinned under `pin_dir`, oldest flow first.
pub fn read_flows(pin_dir: &Path) -> anyhow::Result<Vec<FlowRow>> {
    let flows: HashMap<MapData, u64, Flow> =
        HashMap::try_from(open_pinned(pin_dir, flows::FLOWS_MAP_NAME)?)?;
    let mut by_flow: BTreeMap<u64, Vec<Subflow>> = BTreeMap::new();
    for subflow in read_subflows(pin_dir)? {
        by_flow.entry(subflow.flow).or_default().push(subflow);
    }
    let now = sys::monotonic_ns();
    let mut rows = Vec::new();
    for entry in &flows {
        let (key, flow) = entry.context("failed to read the flows map")?;
        let mut subflows = by_flow.remove(&key).unwrap_or_default();
        subflows.sort_by_key(|subflow| subflow.local.address);
        #[expect(clippy::cast_precision_loss, reason = "ages and RTTs are displayed")]
        rows.push(FlowRow {
            client: endpoint_text(flow.client),
            destination: endpoint_text(flow.destination),
            intercepted: match flow.intercepted {
                INTERCEPTED_CGROUP => "cgroup",
                INTERCEPTED_INBOUND => "in",
                _ => "lan",
            },
            direction: if flow.intercepted == INTERCEPTED_INBOUND {
                "in"
            } else {
                "out"
            },
            direct: flow.flags & FLOW_DIRECT != 0,
            age_s: now.saturating_sub(flow.started_ns) as f64 / 1e9,
            bytes_up: subflows.iter().map(|subflow| subflow.bytes_acked).sum(),
            bytes_down: subflows.iter().map(|subflow| subflow.bytes_received).sum(),
            subflows: subflows
                .iter()
                .map(|subflow| SubflowRow {
                    local: endpoint_text(subflow.local),
                    remote: endpoint_text(subflow.remote),
                    rtt_ms: f64::from(subflow.srtt_us) / 1000.0,
                    bytes_up: subflow.bytes_acked,
                    bytes_down: subflow.bytes_received,
                    retransmits: subflow.total_retrans,
                    cwnd: subflow.snd_cwnd,
                })
                .collect(),
        });
    }
    rows.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    Ok(rows)
}

/// Every subflow a running gateway records.
fn read_subflows(pin_dir: &Path) -> anyhow::Result<Vec<Subflow>> {
    let subflows: HashMap<MapData, u64, Subflow> =
        HashMap::try_from(open_pinned(pin_dir, flows::SUBFLOWS_MAP_NAME)?)?;
    subflows
        .iter()
        .map(|entry| Ok(entry.context("failed to read the subflows map")?.1))
        .collect()
}

/// The keys of the flows the gateway carries direct.
fn direct_flow_keys(pin_dir: &Path) -> anyhow::Result<HashSet<u64>> {
    let flows: HashMap<MapData, u64, Flow> =
        HashMap::try_from(open_pinned(pin_dir, flows::FLOWS_MAP_NAME)?)?;
    let mut direct = HashSet::new();
    for entry in &flows {
        let (key, flow) = entry.context("failed to read the flows map")?;
        if flow.flags & FLOW_DIRECT != 0 {
            direct.insert(key);
        }
    }
    Ok(direct)
}

/// One uplink, as `mptcp-user uplinks` shows it.
#[derive(Debug, Serialize)]
pub struct UplinkRow {
    /// What the daemon knows of it.
    #[serde(flatten)]
    pub status: UplinkStatus,
    /// Live subflows of relayed flows over it.
    pub subflows: usize,
    /// Flows among them the gateway carries direct (the converter being unavailable).
    pub direct_flows: usize,
    /// Bytes those subflows sent and had acknowledged.
    pub bytes_up: u64,
    /// Bytes they received.
    pub bytes_down: u64,
}

/// The uplinks of a gateway whose maps are pinned under `pin_dir`, as its status file
/// says.
pub fn read_uplinks(pin_dir: &Path) -> anyhow::Result<Vec<UplinkRow>> {
    uplink_rows(pin_dir, uplinks::read_status(pin_dir)?)
}

/// `statuses`, each with the subflows over it that the maps pinned under `pin_dir`
/// hold.
pub fn uplink_rows(pin_dir: &Path, statuses: Vec<UplinkStatus>) -> anyhow::Result<Vec<UplinkRow>> {
    let subflows = read_subflows(pin_dir)?;
    let direct = direct_flow_keys(pin_dir)?;
    Ok(statuses
        .into_iter()
        .map(|status| {
            let over: Vec<&Subflow> = subflows
                .iter()
                .filter(|subflow| subflow.flow != WARM_FLOW)
                .filter(|subflow| {
                    status.address.is_some_and(|address| {
                        addr::from_map_address(subflow.local.address)
                            == std::net::IpAddr::V4(address)
                    })
                })
                .collect();
            let direct_flows: HashSet<u64> = over
                .iter()
                .map(|subflow| subflow.flow)
                .filter(|flow| direct.contains(flow))
                .collect();
            UplinkRow {
                subflows: over.len(),
                direct_flows: direct_flows.len(),
                bytes_up: over.iter().map(|subflow| subflow.bytes_acked).sum(),
                bytes_down: over.iter().map(|subflow| subflow.bytes_received).sum(),
                status,
            }
        })
        .collect())
}

/// `mptcp-user uplinks`: each uplink's state, round trip and traffic.
pub fn print_uplinks(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let rows = read_uplinks(pin_dir)?;
    let mut out = io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<16} {:<16} {:<8} {:<14} {:>8} {:>9} {:>8} {:>6} {:>14} {:>14}  CARRIES",
        "UPLINK",
        "ADDRESS",
        "NEXT HOP",
        "ROLE",
        "STATE",
        "FOR s",
        "RTT ms",
        "SUBFLOWS",
        "DIRECT",
        "UP bytes",
        "DOWN bytes",
    )?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    let mut carried = Vec::new();
    for row in &rows {
        let status = &row.status;
        let text = |address: Option<std::net::Ipv4Addr>| {
            address.map_or_else(|| "-".to_owned(), |address| address.to_string())
        };
        let traffic_names: Vec<&str> = status
            .carries
            .iter()
            .map(|traffic| traffic.name())
            .collect();
        writeln!(
            out,
            "{:<12} {:<16} {:<16} {:<8} {:<14} {:>8} {:>9} {:>8} {:>6} {:>14} {:>14}  {}",
            status.interface,
            text(status.address),
            text(status.next_hop),
            status.role,
            status.health,
            now.saturating_sub(status.since_unix_s),
            status
                .rtt_ms
                .map_or_else(|| "-".to_owned(), |rtt| format!("{rtt:.1}")),
            row.subflows,
            row.direct_flows,
            row.bytes_up,
            row.bytes_down,
            if traffic_names.is_empty() {
                "-".to_owned()
            } else {
                traffic_names.join(",")
            }
        )?;
        if let Some(used) = status.usage_bytes {
            match status.allowance_bytes {
                Some(allowance) => writeln!(
                    out,
                    "  used {} of its allowance of {}{}",
                    megabytes(used),
                    megabytes(allowance),
                    if used >= allowance { ": spent" } else { "" }
                )?,
                None => writeln!(out, "  used {} this month", megabytes(used))?,
            }
        }
        if let Some(reason) = &status.reason {
            writeln!(out, "  {reason}")?;
        }
        for (traffic, since) in [
            (Traffic::Default, status.default_since_unix_s),
            (Traffic::Udp, status.udp_since_unix_s),
        ] {
            if let Some(since) = since {
                carried.push(format!(
                    "{} by {} for {} s",
                    traffic.route(),
                    status.interface,
                    now.saturating_sub(since)
                ));
            }
        }
    }
    if !carried.is_empty() {
        writeln!(out, "not converted: {}", carried.join("; "))?;
    }
    Ok(())
}

/// Bytes in megabytes, as operators bill them.
fn megabytes(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let megabytes = bytes as f64 / 1e6;
    format!("{megabytes:.1} MB")
}

fn endpoint_text(endpoint: Endpoint) -> String {
    addr::from_endpoint(endpoint).map_or_else(|| "?".to_owned(), |address| address.to_string())
}

/// `mptcp-user selection list`: prints the prefix rules and the port list.
pub fn print_selection(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let selection = Selection::pinned(pin_dir)?;
    let rules = selection.rules()?;
    let ports = selection.ports()?;
    let quic_fallback = QuicFallback::pinned(pin_dir)?.is_on()?;
    let mut out = io::stdout().lock();
    if json {
        let listing = serde_json::json!({
            "rules": rules,
            "ports": ports,
            "quic_fallback": quic_fallback,
        });
        serde_json::to_writer_pretty(&mut out, &listing)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<44} ACTION", "PREFIX")?;
    for rule in rules {
        writeln!(
            out,
            "{:<44} {}",
            rule.prefix.to_string(),
            rule.action.as_str()
        )?;
    }
    if ports.is_empty() {
        writeln!(out, "ports: all")?;
    } else {
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        writeln!(out, "ports: only {}", ports.join(", "))?;
    }
    if quic_fallback {
        writeln!(out, "quic: turned away (ICMP prohibited), browsers use TCP")?;
    } else {
        writeln!(out, "quic: left alone")?;
    }
    Ok(())
}

/// `mptcp-user selection add|del|add-port|del-port`: applies to new flows at once.
pub fn change_selection(pin_dir: &Path, change: SelectionChange) -> anyhow::Result<()> {
    let mut selection = Selection::pinned(pin_dir)?;
    match change {
        SelectionChange::Set(prefix, action) => {
            selection.set(prefix, action)?;
            println!("{prefix}: {}", action.as_str());
        }
        SelectionChange::Remove(prefix) => {
            selection.remove(prefix)?;
            println!("{prefix}: rule deleted");
        }
        SelectionChange::AddPort(port) => {
            selection.add_port(port)?;
            println!("port {port} added");
        }
        SelectionChange::RemovePort(port) => {
            selection.remove_port(port)?;
            println!("port {port} deleted");
        }
        SelectionChange::Quic(on) => {
            QuicFallback::pinned(pin_dir)?.set(on)?;
            println!(
                "quic: {}",
                if on {
                    "turned away, browsers use TCP"
                } else {
                    "left alone"
                }
            );
        }
    }
    Ok(())
}

fn pinned_opted_in(pin_dir: &Path) -> anyhow::Result<HashMap<MapData, u64, u32>> {
    Ok(HashMap::try_from(open_pinned(
        pin_dir,
        cgroup_maps::OPTED_IN_MAP_NAME,
    )?)?)
}

/// `mptcp-user optin PATH`.
pub fn opt_in(pin_dir: &Path, cgroup: &Path) -> anyhow::Result<()> {
    cgroups::opt_in(&mut pinned_opted_in(pin_dir)?, cgroup)?;
    println!("{}: TCP connects are now intercepted", cgroup.display());
    Ok(())
}

/// `mptcp-user optout PATH`.
pub fn opt_out(pin_dir: &Path, cgroup: &Path) -> anyhow::Result<()> {
    cgroups::opt_out(&mut pinned_opted_in(pin_dir)?, cgroup)?;
    println!("{}: new TCP connects go directly", cgroup.display());
    Ok(())
}
