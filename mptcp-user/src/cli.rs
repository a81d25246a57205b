//! The command line (clap): one subcommand per role and per control command. [`run`]
//! turns the options (see [`crate::config`]) into each module's plain config and calls
//! it; nothing below this module and `config` knows about clap.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use ipnet::IpNet;

use crate::{
    config::{
        self, ConverterOptions, GatewayOptions,
        defaults::{self, Table},
    },
    converter,
    gateway::{
        self,
        control::{self, SelectionChange},
        selection::Action,
        speedtest::{self, SpeedtestConfig},
        upstream::UpstreamConfig,
    },
    net::addr::parse_prefix,
    protocol::cookie::Key,
};

/// The version and the commit it was built from, as `--version` says them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("MPTCP_USER_COMMIT"),
    ")"
);

/// The command line as users see it: [`Cli`], each daemon option's help ending with its
/// default from [`defaults`] (the one table of them).
pub fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("gateway", |command| with_defaults(command, Table::Gateway))
        .mut_subcommand("converter", |command| {
            with_defaults(command, Table::Converter)
        })
}

/// Parses the process's arguments (exits with clap's message when they are wrong).
pub fn parse() -> Cli {
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|error| error.exit())
}

/// `command`'s options of `role`, their help ending with `[default: VALUE]`.
fn with_defaults(command: clap::Command, role: Table) -> clap::Command {
    command.mut_args(|arg| {
        let Some(shown) = arg.get_long().and_then(|long| defaults::find(role, long)) else {
            return arg;
        };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.help(format!("{help} [default: {}]", shown.text()))
    })
}

/// Uses every internet uplink for every TCP connection: LAN flows are intercepted by
/// eBPF and spliced onto Multipath TCP connections to a converter.
#[derive(Debug, Parser)]
#[command(name = "mptcp-user", version = VERSION, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The roles of the binary and the commands on a running gateway.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon on the multi-uplink router.
    Gateway(GatewayOptions),
    /// Run the converter on a well-connected host (`remote` is an alias).
    #[command(alias = "remote")]
    Converter(ConverterOptions),
    /// Check a config file, or print the reference of every option.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// List the flows a running gateway relays, with their subflows per uplink.
    Flows(FlowsArgs),
    /// Show a running gateway's uplinks: address, next hop, state and since when, round
    /// trip to the converter, live subflows and bytes.
    Uplinks(FlowsArgs),
    /// Show or edit a running gateway's selection (which flows it intercepts, by
    /// destination); changes apply to new flows at once (`policy` is an alias).
    #[command(alias = "policy")]
    Selection(SelectionArgs),
    /// Intercept the TCP connects of a cgroup v2 (and its descendants) through a running
    /// gateway, from their next connect on.
    Optin(CgroupArgs),
    /// Stop intercepting a cgroup's new TCP connects; its live flows go on.
    Optout(CgroupArgs),
    /// Measure each uplink alone, then all of them through the converter, down and up
    /// (the converter serves the test to its gateways; a running gateway names the
    /// uplinks).
    Speedtest(SpeedtestArgs),
    /// Write a fresh pre-shared key (64 hex characters, mode 0600) for --key-file.
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        path: PathBuf,
    },
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `mptcp-user completions bash > /etc/bash_completion.d/mptcp-user`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command) into DIR; packaging runs it.
    #[command(hide = true)]
    Manpages {
        /// Where to write them.
        dir: PathBuf,
    },
}

/// What `mptcp-user config` does.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse the file, fill in the defaults and check every value, and that the
    /// interfaces it names exist on this host; exits non-zero with the line at fault.
    Check {
        /// The TOML file, with a [gateway] or [converter] table (or both).
        path: PathBuf,
    },
    /// Print the reference of every command, option and metric (Markdown, as
    /// docs/configuration.md).
    Reference,
}

/// Flags of `mptcp-user flows` and `uplinks`.
#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH)]
    pub pin_path: PathBuf,

    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `on` or `off` (also `true`/`false`).
fn parse_switch(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?}: say on or off")),
    }
}

/// Flags of `mptcp-user selection`.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH, global = true)]
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
    /// Turn QUIC of the intercepted destinations away (`on`: browsers fall back to
    /// TCP, which is aggregated) or leave it alone (`off`).
    Quic {
        /// `on` or `off`.
        #[arg(value_parser = parse_switch, action = clap::ArgAction::Set)]
        on: bool,
    },
}

/// Flags of `mptcp-user speedtest`.
#[derive(Debug, Args)]
pub struct SpeedtestArgs {
    /// The gateway's config file: the converter and the key come from its [gateway]
    /// table; the flags below win.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The converter to test against (the first of the gateway's).
    #[arg(long, value_name = "HOST:PORT")]
    pub converter: Option<String>,

    /// The pre-shared key's file.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH)]
    pub pin_path: PathBuf,

    /// Seconds each test runs, each way, per path (1 to 20).
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=20))]
    pub seconds: u64,

    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl SpeedtestArgs {
    /// The test's config: the converter and key from the flags, else the config file.
    fn into_config(self) -> anyhow::Result<SpeedtestConfig> {
        let options = GatewayOptions {
            config: self.config,
            converter: self.converter.into_iter().collect(),
            key_file: self.key_file,
            ..GatewayOptions::default()
        }
        .with_file()?;
        let (false, Some(key_file)) = (options.converter.is_empty(), options.key_file) else {
            anyhow::bail!(
                "say which converter and key to test with: --config (the gateway's file), \
                 or --converter and --key-file"
            );
        };
        Ok(SpeedtestConfig {
            upstream: UpstreamConfig::Converter {
                addresses: options.converter,
                key_file,
            },
            pin_path: self.pin_path,
            seconds: self.seconds,
            json: self.json,
        })
    }
}

/// Flags of `mptcp-user optin` and `optout`.
#[derive(Debug, Args)]
pub struct CgroupArgs {
    /// The cgroup v2 directory, e.g. /sys/fs/cgroup/system.slice/app.service.
    pub path: PathBuf,

    /// Directory on bpffs where the running gateway pinned its maps.
    #[arg(long, value_name = "DIR", default_value = defaults::PIN_PATH)]
    pub pin_path: PathBuf,
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Gateway(options) => gateway::run(&options.with_file()?.into_config()?),
        Command::Converter(options) => {
            let read = move || options.clone().with_file()?.into_config();
            converter::run(&read()?, read)
        }
        Command::Config {
            command: ConfigCommand::Check { path },
        } => {
            println!("{}", config::check(&path)?);
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Reference,
        } => {
            print!("{}", config::reference::markdown(&Cli::command()));
            Ok(())
        }
        Command::Flows(args) => control::print_flows(&args.pin_path, args.json),
        Command::Uplinks(args) => control::print_uplinks(&args.pin_path, args.json),
        Command::Selection(args) => {
            let change = match args.command {
                SelectionCommand::List { json } => {
                    return control::print_selection(&args.pin_path, json);
                }
                SelectionCommand::Add { action, prefix } => SelectionChange::Set(prefix, action),
                SelectionCommand::Del { prefix } => SelectionChange::Remove(prefix),
                SelectionCommand::AddPort { port } => SelectionChange::AddPort(port),
                SelectionCommand::DelPort { port } => SelectionChange::RemovePort(port),
                SelectionCommand::Quic { on } => SelectionChange::Quic(on),
            };
            control::change_selection(&args.pin_path, change)
        }
        Command::Speedtest(args) => speedtest::run(&args.into_config()?),
        Command::Optin(args) => control::opt_in(&args.pin_path, &args.path),
        Command::Optout(args) => control::opt_out(&args.pin_path, &args.path),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "mptcp-user", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => write_man_pages(command(), &dir),
        Command::Keygen { path } => {
            Key::generate(&path)?;
            println!("wrote a new key to {}", path.display());
            Ok(())
        }
    }
}

/// Writes `command`'s man page into `dir`, then one per subcommand (`mptcp-user-flows.1`
/// and so on), hidden ones left out.
fn write_man_pages(command: clap::Command, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(command, dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::{interception::InterceptionConfig, upstream::UpstreamConfig};

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("mptcp-user").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn old_names_still_parse_as_aliases() {
        let Command::Gateway(options) = parse(&[
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
        let config = options.into_config().unwrap();
        assert_eq!(config.interception.mark, 7);
        assert_eq!(
            config.upstream,
            UpstreamConfig::Converter {
                addresses: vec!["vps:5124".to_owned()],
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
        let Command::Gateway(options) = parse(&["gateway", "--direct"]).command else {
            panic!("not the gateway");
        };
        let config = options.into_config().unwrap();
        assert_eq!(config.upstream, UpstreamConfig::Direct);
        assert_eq!(config.interception, InterceptionConfig::default());
        assert_eq!(config.tuning, crate::bpf::tuning::TuningConfig::default());
    }

    #[test]
    fn a_gateway_without_converter_or_direct_is_refused() {
        let Command::Gateway(options) = parse(&["gateway"]).command else {
            panic!("not the gateway");
        };
        assert!(options.into_config().is_err());
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
