//! The routes the LAN program's marks lead to, for both families, installed through
//! netlink:
//! - local delivery of intercepted packets: a rule `fwmark MARK lookup TABLE` and the
//!   route `local default dev lo table TABLE`;
//! - QUIC turned away: a rule `fwmark MARK+1 lookup TABLE-1` and the route `prohibit
//!   default table TABLE-1`, so the kernel answers such a packet with ICMP
//!   "administratively prohibited" and the browser falls back to TCP at once.
//!
//! Each rule's priority is its table's number: ahead of the uplinks' rules and the
//! steering of unconverted traffic (the tables after these), so that an intercepted
//! packet is delivered here before they could route it out.
//!
//! The LAN program marks a packet only when it assigned it to one of our sockets or
//! turns QUIC away, so when the daemon is gone (and its tcx links with it) nothing is
//! marked and these routes are harmless; they are still removed on a clean exit.

use log::{debug, warn};
use mptcp_ebpf_common::selection::quic_mark;

use rtnetlink::IpVersion;

use crate::net::netlink::{self, Netlink, Rule};

/// The table of the prohibit route that turns QUIC away, next to `table`'s (the uplinks
/// take the ones after it).
pub const fn quic_table(table: u32) -> u32 {
    table - 1
}

/// The installed rules and routes; dropping it removes them.
pub struct LocalDelivery {
    mark: u32,
    table: u32,
}

impl LocalDelivery {
    /// Installs the rules and the routes for IPv4 and IPv6, replacing leftovers of a
    /// daemon that was killed.
    pub fn install(mark: u32, table: u32) -> anyhow::Result<Self> {
        let delivery = Self { mark, table };
        let ours = move |rule_table| rule_table == table || rule_table == quic_table(table);
        netlink::blocking(async move {
            let netlink = Netlink::connect()?;
            netlink.delete_rules(ours).await?;
            netlink.set_local_delivery(table).await?;
            netlink.set_prohibited(quic_table(table)).await?;
            // Each rule's priority is its table's number.
            for (mark, table) in [(mark, table), (quic_mark(mark), quic_table(table))] {
                let rule = Rule {
                    priority: table,
                    table,
                    mark: Some((mark, u32::MAX)),
                    udp_only: false,
                    no_default_routes: false,
                };
                for version in [IpVersion::V4, IpVersion::V6] {
                    netlink.add_rule(&rule, version).await?;
                }
            }
            anyhow::Ok(())
        })?;
        debug!(
            "local-delivery routes installed: fwmark {mark:#x} -> table {table}, fwmark \
             {:#x} -> table {} (prohibit)",
            quic_mark(mark),
            quic_table(table)
        );
        Ok(delivery)
    }
}

impl Drop for LocalDelivery {
    fn drop(&mut self) {
        let table = self.table;
        let removed = netlink::blocking(async move {
            let netlink = Netlink::connect()?;
            netlink
                .clear_tables(|cleared| cleared == table || cleared == quic_table(table))
                .await
        });
        if let Err(error) = removed {
            warn!(
                "failed to remove the local-delivery rules (fwmark {:#x}) or routes: {error:#}",
                self.mark
            );
        }
    }
}
