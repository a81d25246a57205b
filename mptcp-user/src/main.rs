use clap::Parser as _;
use mptcp_user::{
    auth,
    cli::{Cli, Command},
    gateway, inspect, remote,
};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Gateway(args) => gateway::run(&args),
        Command::Remote(args) => remote::run(&args),
        Command::Flows(args) => inspect::flows(&args),
        Command::Policy(args) => inspect::policy(&args),
        Command::Optin(args) => inspect::opt_in(&args),
        Command::Optout(args) => inspect::opt_out(&args),
        Command::Keygen { path } => {
            auth::Key::generate(&path)?;
            println!("wrote a new key to {}", path.display());
            Ok(())
        }
    }
}
