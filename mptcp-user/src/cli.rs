//! Command-line interface: one subcommand per role.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

/// Default directory (on bpffs) where a running gateway pins its maps.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/mptcp-gateway";

/// Uses every internet uplink for every TCP connection: LAN flows are redirected by eBPF
/// and spliced onto Multipath TCP connections to a remote converter.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon on the multi-uplink router.
    Gateway(GatewayArgs),
    /// Run the remote converter on a well-connected host (not implemented yet).
    Remote(RemoteArgs),
    /// List the connections a running gateway tracks.
    Flows(FlowsArgs),
}

/// Flags of `mptcp-user gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Watch the TCP connections of this cgroup v2 directory and its descendants
    /// (repeatable), e.g. /sys/fs/cgroup/unified/system.slice/app.service.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Directory on bpffs where the maps are pinned for `mptcp-user flows`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

/// Flags of `mptcp-user remote`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Address and port to accept MPTCP connections from gateways on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "[::]:8443")]
    pub listen: SocketAddr,
}

/// Flags of `mptcp-user flows`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}
