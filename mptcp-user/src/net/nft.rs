//! nftables rulesets, applied whole by nft(8): the one tool that speaks nftables' netlink
//! protocol in full, and whose scripts read as the rules they are.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Applies `script` in one transaction (`nft -f -`): all of it, or nothing.
pub fn apply(script: &str) -> anyhow::Result<()> {
    let mut nft = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (is the nftables package installed?)")?;
    nft.stdin
        .take()
        .context("nft has no standard input")?
        .write_all(script.as_bytes())
        .context("cannot write to nft")?;
    let output = nft.wait_with_output().context("nft did not finish")?;
    if !output.status.success() {
        bail!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes table `family name` if it exists (`nft destroy` needs nftables 1.0.8; a
/// `table` statement before `delete` makes one that exists either way).
pub fn delete_table(family: &str, name: &str) -> anyhow::Result<()> {
    apply(&format!(
        "table {family} {name}\ndelete table {family} {name}\n"
    ))
}
