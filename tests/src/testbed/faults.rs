//! Faults a test inflicts on a running testbed: an uplink that goes silent or whose
//! interface is recreated, a LAN rebuilt, as lines and routers do.

use super::{Testbed, veth};

impl Testbed {
    /// Deletes uplink `i`'s veth pair and creates it again with its addresses, as a
    /// modem that reconnects does (zero-delay uplinks; no HTB shaping afterwards).
    pub fn recreate_uplink(&self, i: usize) -> anyhow::Result<()> {
        let interface = format!("up{i}");
        self.gateway.ip(&["link", "del", &interface])?;
        veth(&self.gateway, &interface, &self.converter, &interface)?;
        self.gateway
            .ip(&["addr", "add", &format!("10.0.{i}.1/24"), "dev", &interface])?;
        self.converter
            .ip(&["addr", "add", &format!("10.0.{i}.2/24"), "dev", &interface])
    }

    /// Makes uplink `i` silent, as a dead line is: every packet on it vanishes, both
    /// ways, while the interfaces, addresses and routes stay up. Dropped at the
    /// converter's end (nftables netdev hooks), so the gateway's stack sees nothing
    /// unusual.
    pub fn silence_uplink(&self, i: usize) -> anyhow::Result<()> {
        let table = format!("silence_up{i}");
        self.converter
            .exec("nft", &["add", "table", "netdev", &table])?;
        for (chain, hook) in [("in", "ingress"), ("out", "egress")] {
            let spec =
                format!("{{ type filter hook {hook} device up{i} priority 0; policy drop; }}");
            self.converter
                .exec("nft", &["add", "chain", "netdev", &table, chain, &spec])?;
        }
        Ok(())
    }

    /// Undoes [`Self::silence_uplink`].
    pub fn restore_uplink(&self, i: usize) -> anyhow::Result<()> {
        self.converter
            .exec(
                "nft",
                &["delete", "table", "netdev", &format!("silence_up{i}")],
            )
            .map(drop)
    }

    /// Deletes the LAN's veth pair and creates it again, as a network restart that
    /// rebuilds a router's LAN bridge does.
    pub fn recreate_lan(&self) -> anyhow::Result<()> {
        self.gateway.ip(&["link", "del", "lan0"])?;
        self.wire_lan()
    }
}
