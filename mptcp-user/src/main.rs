use clap::Parser as _;
use mptcp_user::{
    cli::{Cli, Command},
    gateway, inspect,
};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Gateway(args) => gateway::run(&args),
        Command::Remote(_) => anyhow::bail!("`remote` is not implemented yet"),
        Command::Flows(args) => inspect::flows(&args),
    }
}
