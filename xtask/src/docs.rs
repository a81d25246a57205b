//! `cargo xtask docs`: writes docs/configuration.md from the code (`mptcp-user config
//! reference`); a unit test of mptcp-user fails while the committed file is stale.

use anyhow::Context as _;

use crate::{build, cmd};

/// Builds the binary and writes its reference into docs/configuration.md.
pub fn run() -> anyhow::Result<()> {
    let binary = build::run(&build::Options { release: false })?;
    let output = cmd::output(std::process::Command::new(&binary).args(["config", "reference"]))
        .with_context(|| format!("{} config reference failed", binary.display()))?;
    let path = cmd::workspace_root().join("docs/configuration.md");
    std::fs::write(&path, output).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
