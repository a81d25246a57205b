//! The commands that read and edit a running gateway's pinned maps: `flows`, `policy`,
//! `optin`, `optout`. They talk to the kernel, not to the daemon, so they work whatever
//! the daemon is doing.

use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::SocketAddr,
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{HashMap, LpmTrie, MapData};
use mptcp_ebpf_common::{
    Endpoint,
    flows::{self, Flow, INTERCEPTED_CGROUP, Subflow},
    policy as policy_maps, redirect,
};
use serde::Serialize;

use crate::{
    cgroups,
    cli::{CgroupArgs, FlowsArgs, PolicyArgs, PolicyCommand},
    ebpf::open_pinned,
    selection::{self, Policy},
    sys,
};

/// One relayed flow, as `mptcp-user flows` shows it.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    /// The LAN client or local process.
    pub client: String,
    /// Where it wanted to go.
    pub destination: String,
    /// `lan` or `cgroup`.
    pub intercepted: &'static str,
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

/// `mptcp-user flows`: prints the flows and their subflows.
pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    let rows = read_flows(&args.pin_path)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<42} {:<42} {:<7} {:>8} {:>12} {:>12}",
        "CLIENT", "DESTINATION", "VIA", "AGE s", "UP bytes", "DOWN bytes"
    )?;
    for row in &rows {
        writeln!(
            out,
            "{:<42} {:<42} {:<7} {:>8.1} {:>12} {:>12}",
            row.client, row.destination, row.intercepted, row.age_s, row.bytes_up, row.bytes_down
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
    let subflows: HashMap<MapData, u64, Subflow> =
        HashMap::try_from(open_pinned(pin_dir, flows::SUBFLOWS_MAP_NAME)?)?;
    let mut by_flow: BTreeMap<u64, Vec<Subflow>> = BTreeMap::new();
    for entry in &subflows {
        let (_, subflow) = entry.context("failed to read the subflows map")?;
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
            intercepted: if flow.intercepted == INTERCEPTED_CGROUP {
                "cgroup"
            } else {
                "lan"
            },
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

fn endpoint_text(endpoint: Endpoint) -> String {
    SocketAddr::new(
        selection::from_address(endpoint.address),
        u16::try_from(endpoint.port).unwrap_or(0),
    )
    .to_string()
}

/// The policy a gateway pinned under `pin_dir`.
fn pinned_policy(pin_dir: &Path) -> anyhow::Result<Policy<MapData, MapData>> {
    Ok(Policy::new(
        LpmTrie::try_from(open_pinned(pin_dir, policy_maps::MAP_NAME)?)?,
        HashMap::try_from(open_pinned(pin_dir, policy_maps::PORTS_MAP_NAME)?)?,
    ))
}

/// `mptcp-user policy ...`.
pub fn policy(args: &PolicyArgs) -> anyhow::Result<()> {
    let mut policy = pinned_policy(&args.pin_path)?;
    match &args.command {
        PolicyCommand::List { json } => {
            let rules = policy.rules()?;
            let ports = policy.ports()?;
            let mut out = io::stdout().lock();
            if *json {
                let listing = serde_json::json!({ "rules": rules, "ports": ports });
                serde_json::to_writer_pretty(&mut out, &listing)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{:<44} ACTION", "PREFIX")?;
                for rule in rules {
                    let action = serde_json::to_value(rule.action)?;
                    writeln!(
                        out,
                        "{:<44} {}",
                        rule.prefix.to_string(),
                        action.as_str().unwrap_or("?")
                    )?;
                }
                if ports.is_empty() {
                    writeln!(out, "ports: all")?;
                } else {
                    let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
                    writeln!(out, "ports: only {}", ports.join(", "))?;
                }
            }
        }
        PolicyCommand::Add { action, prefix } => {
            policy.set(*prefix, *action)?;
            println!(
                "{prefix}: {}",
                serde_json::to_value(action)?.as_str().unwrap_or("?")
            );
        }
        PolicyCommand::Del { prefix } => {
            policy.remove(*prefix)?;
            println!("{prefix}: rule deleted");
        }
        PolicyCommand::AddPort { port } => {
            policy.add_port(*port)?;
            println!("port {port} added");
        }
        PolicyCommand::DelPort { port } => {
            policy.remove_port(*port)?;
            println!("port {port} deleted");
        }
    }
    Ok(())
}

fn pinned_opted_in(pin_dir: &Path) -> anyhow::Result<HashMap<MapData, u64, u32>> {
    Ok(HashMap::try_from(open_pinned(
        pin_dir,
        redirect::OPTED_IN_MAP_NAME,
    )?)?)
}

/// `mptcp-user optin PATH`.
pub fn opt_in(args: &CgroupArgs) -> anyhow::Result<()> {
    cgroups::opt_in(&mut pinned_opted_in(&args.pin_path)?, &args.path)?;
    println!("{}: TCP connects are now redirected", args.path.display());
    Ok(())
}

/// `mptcp-user optout PATH`.
pub fn opt_out(args: &CgroupArgs) -> anyhow::Result<()> {
    cgroups::opt_out(&mut pinned_opted_in(&args.pin_path)?, &args.path)?;
    println!("{}: new TCP connects go directly", args.path.display());
    Ok(())
}
