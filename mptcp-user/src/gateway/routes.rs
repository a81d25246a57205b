//! The routes that deliver intercepted LAN packets locally, for both families:
//! `ip rule add fwmark MARK lookup TABLE` and `ip route add local default dev lo table
//! TABLE`. The LAN program marks a packet only when it assigned it to one of our
//! sockets, so when the daemon is gone (and its tcx links with it) nothing is marked
//! and these routes are harmless; they are still removed on a clean exit.
//!
//! They are set with iproute2's `ip`, which every Linux router has, rather than with
//! netlink code of our own.

use std::process::Command;

use anyhow::{Context as _, bail};
use log::{debug, warn};

/// The fwmark the LAN program sets on intercepted packets, unless `--intercept-mark`
/// says otherwise ("MP" in ASCII).
pub const DEFAULT_MARK: u32 = 0x4d50;
/// The routing table of the local-delivery route, unless `--intercept-table` says
/// otherwise.
pub const DEFAULT_TABLE: u32 = 15124;

/// The installed rules and routes; dropping it removes them.
pub struct LocalDelivery {
    mark: u32,
    table: u32,
}

impl LocalDelivery {
    /// Installs the rule and the route for IPv4 and IPv6, replacing leftovers of a
    /// daemon that was killed.
    pub fn install(mark: u32, table: u32) -> anyhow::Result<Self> {
        let routes = Self { mark, table };
        routes.remove_rules();
        for family in ["-4", "-6"] {
            let everything = if family == "-4" { "0.0.0.0/0" } else { "::/0" };
            ip(&[
                family,
                "route",
                "replace",
                "local",
                everything,
                "dev",
                "lo",
                "table",
                &table.to_string(),
            ])?;
            ip(&[
                family,
                "rule",
                "add",
                "fwmark",
                &format!("{mark:#x}"),
                "lookup",
                &table.to_string(),
            ])?;
        }
        debug!("local-delivery routes installed: fwmark {mark:#x} -> table {table}");
        Ok(routes)
    }

    /// Deletes every rule for our mark and table (there may be several after crashes).
    fn remove_rules(&self) {
        for family in ["-4", "-6"] {
            // Bounded: each deletion removes one rule; a failure means none is left.
            for _ in 0..16 {
                let deleted = ip(&[
                    family,
                    "rule",
                    "del",
                    "fwmark",
                    &format!("{:#x}", self.mark),
                    "lookup",
                    &self.table.to_string(),
                ]);
                if deleted.is_err() {
                    break;
                }
            }
        }
    }
}

impl Drop for LocalDelivery {
    fn drop(&mut self) {
        self.remove_rules();
        for family in ["-4", "-6"] {
            if let Err(error) = ip(&[family, "route", "flush", "table", &self.table.to_string()]) {
                warn!("failed to remove the local-delivery route: {error:#}");
            }
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("failed to run `ip` (is iproute2 installed?)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
