//! The command line (clap): one subcommand per role and per control command. [`run`]
//! turns the flags into each module's plain config and calls it; nothing below this
//! module knows about clap.

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    bpf::tuning::{self, TuningConfig, UplinkCongestion},
    convert::cookie::{self, Key},
    converter::{self, ConverterConfig},
    gateway::{
        self, GatewayConfig,
        control::{self, SelectionChange},
        interception::InterceptionConfig,
        routes,
        selection::Action,
        upstream::UpstreamConfig,
    },
    net::addr::parse_prefix,
};

/// Uses every internet uplink for every TCP connection: LAN flows are intercepted by
/// eBPF and spliced onto Multipath TCP connections to a converter.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary and the commands on a running gateway.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon on the multi-uplink router.
    Gateway(GatewayArgs),
    /// Run the converter on a well-connected host (`remote` is an alias).
    #[command(alias = "remote")]
    Converter(ConverterArgs),
    /// List the flows a running gateway relays, with their subflows per uplink.
    Flows(FlowsArgs),
    /// Show or edit a running gateway's selection (which flows it intercepts, by
    /// destination); changes apply to new flows at once (`policy` is an alias).
    #[command(alias = "policy")]
    Selection(SelectionArgs),
    /// Intercept the TCP connects of a cgroup v2 (and its descendants) through a running
    /// gateway, from their next connect on.
    Optin(CgroupArgs),
    /// Stop intercepting a cgroup's new TCP connects; its live flows go on.
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

    /// Intercept the TCP connects of the processes in this cgroup v2 directory and its
    /// descendants (repeatable), e.g. /sys/fs/cgroup/system.slice/app.service. More can
    /// be added while running with `mptcp-user optin`.
    #[arg(long = "cgroup", value_name = "PATH")]
    pub cgroups: Vec<PathBuf>,

    /// Intercept destinations in this prefix (repeatable); the longest matching prefix
    /// wins. By default everything is intercepted except private, loopback, link-local,
    /// CGNAT and multicast ranges, this host's networks and addresses, and the converter.
    #[arg(long = "include", value_name = "CIDR", value_parser = parse_prefix)]
    pub include: Vec<IpNet>,

    /// Never intercept destinations in this prefix (repeatable).
    #[arg(long = "exclude", value_name = "CIDR", value_parser = parse_prefix)]
    pub exclude: Vec<IpNet>,

    /// Intercept only flows to this destination port (repeatable); all ports when absent.
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,

    /// fwmark of the policy route that delivers intercepted LAN packets locally.
    #[arg(long, alias = "steer-mark", value_name = "MARK", default_value_t = routes::DEFAULT_MARK)]
    pub intercept_mark: u32,

    /// Routing table of that policy route.
    #[arg(long, alias = "steer-table", value_name = "TABLE", default_value_t = routes::DEFAULT_TABLE)]
    pub intercept_table: u32,

    /// Directory on bpffs where the maps are pinned for `mptcp-user flows`.
    #[arg(long, value_name = "DIR", default_value = gateway::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Transparent listener that intercepted connections are handed to; [::]:PORT also
    /// serves IPv4.
    #[arg(long, value_name = "ADDR:PORT",
          default_value_t = SocketAddr::from((Ipv6Addr::UNSPECIFIED, gateway::DEFAULT_LISTEN_PORT)))]
    pub listen: SocketAddr,

    /// The converter, e.g. vps.example.net:5124 (`--remote` is an alias).
    #[arg(
        long,
        alias = "remote",
        value_name = "HOST:PORT",
        required_unless_present = "direct"
    )]
    pub converter: Option<String>,

    /// Pre-shared key shared with the converter (see `mptcp-user keygen`).
    #[arg(long, value_name = "PATH", required_unless_present = "direct")]
    pub key_file: Option<PathBuf>,

    /// No converter: open MPTCP straight to each original destination (the kernel falls
    /// back to TCP where the server does not speak MPTCP).
    #[arg(long, conflicts_with_all = ["converter", "key_file"])]
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

impl GatewayArgs {
    /// The gateway's config from its flags.
    pub fn into_config(self) -> GatewayConfig {
        // clap makes --converter and --key-file required unless --direct, and excludes
        // both with it.
        let upstream = match (self.converter, self.key_file) {
            (Some(address), Some(key_file)) => UpstreamConfig::Converter { address, key_file },
            _ => UpstreamConfig::Direct,
        };
        GatewayConfig {
            listen: self.listen,
            upstream,
            connect_timeout: Duration::from_secs(self.connect_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            interception: InterceptionConfig {
                lan: self.lan,
                cgroups: self.cgroups,
                include: self.include,
                exclude: self.exclude,
                ports: self.ports,
                mark: self.intercept_mark,
                table: self.intercept_table,
                pin_path: self.pin_path,
            },
            tuning: self.tuning.into_config(),
        }
    }
}

/// Flags of `mptcp-user converter`.
#[derive(Debug, Args)]
pub struct ConverterArgs {
    /// Address and port to accept MPTCP connections from gateways on; [::]:PORT also
    /// serves IPv4.
    #[arg(long, value_name = "ADDR:PORT",
          default_value_t = SocketAddr::from((Ipv6Addr::UNSPECIFIED, converter::DEFAULT_PORT)))]
    pub listen: SocketAddr,

    /// Pre-shared key; requests without a valid cookie get "Not Authorized".
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,

    /// Allow destinations in this prefix although the default policy refuses them
    /// (loopback, private, link-local, CGNAT, multicast, this host); repeatable.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_prefix)]
    pub allow: Vec<IpNet>,

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
    #[arg(long, value_name = "SECS", default_value_t = cookie::DEFAULT_WINDOW.as_secs())]
    pub replay_window: u64,

    #[command(flatten)]
    pub tuning: TuningArgs,
}

impl ConverterArgs {
    /// The converter's config from its flags.
    pub fn into_config(self) -> ConverterConfig {
        ConverterConfig {
            listen: self.listen,
            key_file: self.key_file,
            allow: self.allow,
            max_conns: self.max_conns,
            request_timeout: Duration::from_secs(self.request_timeout),
            connect_timeout: Duration::from_secs(self.connect_timeout),
            idle_timeout: Duration::from_secs(self.idle_timeout),
            replay_window: Duration::from_secs(self.replay_window),
            tuning: self.tuning.into_config(),
        }
    }
}

/// Tuning flags both daemons share.
#[derive(Debug, Clone, Args)]
pub struct TuningArgs {
    /// Congestion control of the MPTCP connections (all their subflows), e.g. bbr, cubic.
    #[arg(long, value_name = "NAME", default_value = tuning::DEFAULT_CONGESTION)]
    pub congestion: String,

    /// Fixed send buffer of every MPTCP connection in MiB (the kernel doubles it for
    /// bookkeeping). 0: the kernel's autotuning; at most 1024. Long round trips are
    /// better served by --long-rtt-send-buffer, which leaves the others autotuned.
    #[arg(long, value_name = "MIB", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tuning::MAX_SEND_BUFFER_MIB)))]
    pub send_buffer: u32,

    /// Congestion control of the subflows over the uplinks in CIDR (repeatable), e.g.
    /// `203.0.113.7/32=bbr` for a lossy LTE line while the others keep --congestion.
    /// The gateway matches a subflow's local address, the converter its peer's (the
    /// uplink's public address). Set by the sock_ops program on each new subflow.
    #[arg(long = "uplink-congestion", value_name = "CIDR=NAME")]
    pub uplink_congestion: Vec<UplinkCongestion>,

    /// Subflows whose handshake takes at least this many milliseconds (a geostationary
    /// satellite uplink: 550 ms and more) get --long-rtt-congestion, unless an
    /// --uplink-congestion rule names their uplink, and --long-rtt-send-buffer.
    /// 0: no such rule.
    #[arg(long, value_name = "MS", default_value_t = tuning::DEFAULT_LONG_RTT_MS)]
    pub long_rtt: u32,

    /// Congestion control of long-RTT subflows.
    #[arg(long, value_name = "NAME", default_value = tuning::DEFAULT_LONG_RTT_CONGESTION)]
    pub long_rtt_congestion: String,

    /// Send buffer of each long-RTT subflow in MiB (doubled by the kernel, capped by
    /// net.core.wmem_max); it raises the MPTCP connection's, the sum of its subflows'.
    /// 0: autotuned.
    #[arg(long, value_name = "MIB", default_value_t = tuning::DEFAULT_LONG_RTT_SEND_BUFFER_MIB,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(tuning::MAX_SEND_BUFFER_MIB)))]
    pub long_rtt_send_buffer: u32,
}

impl TuningArgs {
    /// The tuning config from its flags.
    pub fn into_config(self) -> TuningConfig {
        TuningConfig {
            congestion: self.congestion,
            send_buffer_mib: self.send_buffer,
            uplink_congestion: self.uplink_congestion,
            long_rtt_ms: self.long_rtt,
            long_rtt_congestion: self.long_rtt_congestion,
            long_rtt_send_buffer_mib: self.long_rtt_send_buffer,
        }
    }
}

/// Flags of `mptcp-user flows`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = gateway::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,

    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `mptcp-user selection`.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = gateway::DEFAULT_PIN_PATH, global = true)]
    pub pin_path: PathBuf,

    #[command(subcommand)]
    pub command: SelectionCommand,
}

/// What `mptcp-user selection` does.
#[derive(Debug, Subcommand)]
pub enum SelectionCommand {
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
        #[arg(value_parser = parse_prefix)]
        prefix: IpNet,
    },
    /// Delete the rule for exactly this prefix.
    Del {
        /// The destination prefix of the rule.
        #[arg(value_parser = parse_prefix)]
        prefix: IpNet,
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
    #[arg(long, value_name = "DIR", default_value = gateway::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gateway(args) => gateway::run(&args.into_config()),
        Command::Converter(args) => converter::run(&args.into_config()),
        Command::Flows(args) => control::print_flows(&args.pin_path, args.json),
        Command::Selection(args) => {
            let change = match args.command {
                SelectionCommand::List { json } => {
                    return control::print_selection(&args.pin_path, json);
                }
                SelectionCommand::Add { action, prefix } => SelectionChange::Set(prefix, action),
                SelectionCommand::Del { prefix } => SelectionChange::Remove(prefix),
                SelectionCommand::AddPort { port } => SelectionChange::AddPort(port),
                SelectionCommand::DelPort { port } => SelectionChange::RemovePort(port),
            };
            control::change_selection(&args.pin_path, change)
        }
        Command::Optin(args) => control::opt_in(&args.pin_path, &args.path),
        Command::Optout(args) => control::opt_out(&args.pin_path, &args.path),
        Command::Keygen { path } => {
            Key::generate(&path)?;
            println!("wrote a new key to {}", path.display());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mptcp-user").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn old_names_still_parse_as_aliases() {
        let Command::Gateway(args) = parse(&[
            "gateway",
            "--remote",
            "vps:5124",
            "--key-file",
            "k",
            "--steer-mark",
            "7",
        ])
        .command
        else {
            panic!("not the gateway");
        };
        let config = args.into_config();
        assert_eq!(config.interception.mark, 7);
        assert_eq!(
            config.upstream,
            UpstreamConfig::Converter {
                address: "vps:5124".to_owned(),
                key_file: PathBuf::from("k"),
            }
        );
        assert!(matches!(
            parse(&["remote", "--key-file", "k"]).command,
            Command::Converter(_)
        ));
        assert!(matches!(
            parse(&["policy", "list"]).command,
            Command::Selection(_)
        ));
    }

    #[test]
    fn flag_defaults_are_the_configs_defaults() {
        let Command::Gateway(args) = parse(&["gateway", "--direct"]).command else {
            panic!("not the gateway");
        };
        let config = args.into_config();
        assert_eq!(config.upstream, UpstreamConfig::Direct);
        assert_eq!(config.interception, InterceptionConfig::default());
        assert_eq!(config.tuning, TuningConfig::default());
    }

    #[test]
    fn prefixes_on_the_command_line_lose_their_host_bits() {
        let Command::Selection(args) =
            parse(&["selection", "add", "exclude", "10.1.2.3/8"]).command
        else {
            panic!("not selection");
        };
        let SelectionCommand::Add { action, prefix } = args.command else {
            panic!("not add");
        };
        assert_eq!(action, Action::Exclude);
        assert_eq!(prefix.to_string(), "10.0.0.0/8");
    }
}
