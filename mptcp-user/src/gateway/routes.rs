//! The routes that deliver intercepted LAN packets locally, for both families: a rule
//! `fwmark MARK lookup TABLE` and the route `local default dev lo table TABLE`. The LAN
//! program marks a packet only when it assigned it to one of our sockets, so when the
//! daemon is gone (and its tcx links with it) nothing is marked and these routes are
//! harmless; they are still removed on a clean exit. Installed through netlink.

use log::{debug, warn};

use crate::net::netlink::{self, Netlink};

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
        let delivery = Self { mark, table };
        netlink::blocking(async move {
            let netlink = Netlink::connect()?;
            netlink
                .delete_rules(|rule_table| rule_table == table)
                .await?;
            netlink.set_local_delivery(table).await?;
            netlink.add_mark_rules(mark, table).await
        })?;
        debug!("local-delivery routes installed: fwmark {mark:#x} -> table {table}");
        Ok(delivery)
    }
}

impl Drop for LocalDelivery {
    fn drop(&mut self) {
        let table = self.table;
        let removed = netlink::blocking(async move {
            let netlink = Netlink::connect()?;
            netlink.clear_tables(|cleared| cleared == table).await
        });
        if let Err(error) = removed {
            warn!(
                "failed to remove the local-delivery rule (fwmark {:#x}) or route: {error:#}",
                self.mark
            );
        }
    }
}
