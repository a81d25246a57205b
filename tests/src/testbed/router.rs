//! The testbed as a real household router: each uplink is a line from an ISP that
//! hands out one address and a default route, and the far side knows nothing of the
//! LAN behind it.
//!
//! [`Testbed::router`] starts from [`Testbed::with_bare_uplinks`] (the gateway's uplinks
//! have their addresses only) and then:
//! - gives the gateway's main table one default route per uplink, as a DHCP client on
//!   each line would: `default via 10.0.I.2 dev upI metric 10*I`, so that without the
//!   gateway daemon everything leaves by uplink 1, and by uplink 2 only once uplink 1's
//!   interface is down;
//! - masquerades everything leaving by an uplink, in an nftables table of its own
//!   ([`NAT_TABLE`]), as a router's NAT does;
//! - removes the converter host's route to the LAN (192.168.50.0/24): the internet side
//!   reaches the gateway only through each uplink's own address, so the address the
//!   server sees (10.0.I.1) says which uplink a flow left by, and a flow whose uplink
//!   goes silent gets no answer until it leaves by another.

use super::{Testbed, Uplink};

/// The gateway's nftables table (family `ip`) that masquerades what leaves by an uplink.
pub const NAT_TABLE: &str = "household_nat";

/// The LAN's prefix, which the far side of the uplinks is not told about.
const LAN: &str = "192.168.50.0/24";

impl Testbed {
    /// The testbed wired as a household router (see the module doc): one DHCP-style
    /// default route per uplink in the gateway's main table, masquerade on every
    /// uplink, and no route to the LAN beyond the gateway.
    pub fn router(label: &str, uplinks: &[Uplink]) -> anyhow::Result<Self> {
        let testbed = Self::with_bare_uplinks(label, uplinks)?;
        testbed.route_like_a_router()?;
        Ok(testbed)
    }

    fn route_like_a_router(&self) -> anyhow::Result<()> {
        // The default route with_bare_uplinks put over uplink 1 goes: each uplink brings
        // its own, ranked by metric.
        self.gateway.ip(&["route", "del", "default"])?;
        self.converter.ip(&["route", "del", LAN])?;
        let nft = |args: &[&str]| self.gateway.exec("nft", args).map(drop);
        nft(&["add", "table", "ip", NAT_TABLE])?;
        nft(&[
            "add",
            "chain",
            "ip",
            NAT_TABLE,
            "postrouting",
            "{ type nat hook postrouting priority srcnat; policy accept; }",
        ])?;
        for i in 1..=self.uplinks.len() {
            let interface = format!("up{i}");
            self.gateway.ip(&[
                "route",
                "add",
                "default",
                "via",
                &format!("10.0.{i}.2"),
                "dev",
                &interface,
                "metric",
                &(10 * i).to_string(),
            ])?;
            nft(&[
                "add",
                "rule",
                "ip",
                NAT_TABLE,
                "postrouting",
                "oifname",
                &interface,
                "masquerade",
            ])?;
        }
        Ok(())
    }
}
