//! Command-line interface: one subcommand per role.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{
    policy::Cidr,
    selection::Action,
    steering::{DEFAULT_MARK, DEFAULT_TABLE},
    tuning::TuningArgs,
};

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
    /// Run the remote converter on a well-connected host.
    Remote(RemoteArgs),
    /// List the flows a running gateway relays, with their subflows per uplink.
    Flows(FlowsArgs),
    /// Show or edit a running gateway's selection policy (which destinations it
    /// intercepts); changes apply to new flows at once.
    Policy(PolicyArgs),
    /// Redirect the TCP connects of a cgroup v2 (and its descendants) through a running
    /// gateway, from their next connect on.
    Optin(CgroupArgs),
    /// Stop redirecting a cgroup's new TCP connects; its live flows go on.
    Optout(CgroupArgs),
    /// Write a fresh pre-shared key (64 hex characters, mode 0600) for --key-file.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        path: PathBuf,
    },
}

/// Flags of `mptcp-user gateway`.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Intercept the TCP flows arriving on this LAN interface (repeatable). Without it,
    /// only opted-in cgroups are intercepted.
    #[arg(long = "lan", value_name = "IFACE")]
    pub lan: Vec<String>,

    /// Redirect the TCP connects of the processes in this cgroup v2 directory and its
    /// descendants (repeatable), e.g. /sys/fs/cgroup/system.slice/app.service. More can
    /// be added while running with `mptcp-user optin`.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Intercept destinations in this prefix (repeatable); the longest matching prefix
    /// wins. By default everything is intercepted except private, loopback, link-local,
    /// CGNAT and multicast ranges, this host's networks and addresses, and the converter.
    #[arg(long = "include", value_name = "CIDR")]
    pub include: Vec<Cidr>,

    /// Never intercept destinations in this prefix (repeatable).
    #[arg(long = "exclude", value_name = "CIDR")]
    pub exclude: Vec<Cidr>,

    /// Intercept only flows to this destination port (repeatable); all ports when absent.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// fwmark of the policy route that delivers steered LAN packets locally.
    #[arg(long, value_name = "MARK", default_value_t = DEFAULT_MARK)]
    pub steer_mark: u32,

    /// Routing table of that policy route.
    #[arg(long, value_name = "TABLE", default_value_t = DEFAULT_TABLE)]
    pub steer_table: u32,

    /// Directory on bpffs where the maps are pinned for `mptcp-user flows`.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Transparent listener that intercepted LAN connections are steered to (by the eBPF
    /// redirect or an nftables/iptables TPROXY rule); [::]:PORT also serves IPv4.
    #[arg(long, value_name = "ADDR:PORT", default_value = "[::]:15124")]
    pub listen: SocketAddr,

    /// The remote converter, e.g. vps.example.net:5124.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "direct")]
    pub remote: Option<String>,

    /// Pre-shared key shared with the remote converter (see `mptcp-user keygen`).
    #[arg(long, value_name = "PATH", required_unless_present = "direct")]
    pub key_file: Option<PathBuf>,

    /// No converter: open MPTCP straight to each original destination (the kernel falls
    /// back to TCP where the server does not speak MPTCP).
    #[arg(long, conflicts_with_all = ["remote", "key_file"])]
    pub direct: bool,

    /// Seconds to open the upstream connection (and get the converter's answer).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,

    /// Seconds without a byte either way after which a connection is reset.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub idle_timeout: u64,

    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Flags of `mptcp-user remote`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Address and port to accept MPTCP connections from gateways on; [::]:PORT also
    /// serves IPv4.
    #[arg(long, value_name = "ADDR:PORT", default_value = "[::]:5124")]
    pub listen: SocketAddr,

    /// Pre-shared key; requests without a valid cookie get "Not Authorized".
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,

    /// Allow destinations in this prefix although the default policy refuses them
    /// (loopback, private, link-local, CGNAT, multicast, this host); repeatable.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Cidr>,

    /// Most connections served at once; beyond it, "Resource Exceeded".
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_conns: usize,

    /// Seconds a client has to send its Convert request.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub request_timeout: u64,

    /// Seconds to connect to a destination before answering "Network Failure".
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub connect_timeout: u64,

    /// Seconds without a byte either way after which a connection is reset.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub idle_timeout: u64,

    /// Seconds a cookie's timestamp may differ from this host's clock.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub replay_window: u64,

    #[command(flatten)]
    pub tuning: TuningArgs,
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

/// Flags of `mptcp-user policy`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH, global = true)]
    pub pin_path: PathBuf,

    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// What `mptcp-user policy` does.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Print the prefix rules and the port list.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add (or change) a prefix rule: `include 198.51.100.0/24`, `exclude 2001:db8::/32`.
    Add {
        /// `include` or `exclude`.
        action: Action,
        /// The destination prefix; a bare address means one host.
        prefix: Cidr,
    },
    /// Delete the rule for exactly this prefix.
    Del {
        /// The destination prefix of the rule.
        prefix: Cidr,
    },
    /// Intercept only flows to the listed ports, this one included.
    AddPort {
        /// The destination port.
        port: u16,
    },
    /// Take a port off the list; an empty list means every port.
    DelPort {
        /// The destination port.
        port: u16,
    },
}

/// Flags of `mptcp-user optin` and `optout`.
#[derive(Debug, Args)]
pub struct CgroupArgs {
    /// The cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/app.service.
    pub path: PathBuf,

    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}
