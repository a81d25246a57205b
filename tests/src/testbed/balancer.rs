//! Two converters behind one address, as an operator runs them: a second converter host
//! beside the first (wired to it, its router toward the server and the gateway), and a
//! load balancer's DNAT on the first host, the uplinks' far end, that spreads new
//! connections to the balanced address over both by a hash of their source. This
//! kernel has no IPVS; nftables stands in for the balancer.

use std::path::Path;

use super::{CONVERTER, CONVERTER_PORT, Testbed, veth};
use crate::netns::Netns;

/// The address the gateways know: the balancer's.
pub const BALANCED: &str = "10.9.9.9";
/// The second converter's own address.
pub const SECOND_CONVERTER: &str = "10.7.0.2";
/// The port each converter announces on its own address (`--announce`).
pub const ANNOUNCED_PORT: u16 = 5125;

impl Testbed {
    /// Builds the second converter's host and the balancer over both converters.
    pub fn add_two_balanced_converter_hosts(&mut self) -> anyhow::Result<()> {
        self.add_second_converter_host()?;
        self.add_balancer(&[CONVERTER, SECOND_CONVERTER])
    }

    /// Starts a converter on each host, each announcing its own address at
    /// [`ANNOUNCED_PORT`], `args` added; logs in `dir`.
    pub fn start_balanced_converters(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let first = format!("{CONVERTER}:{ANNOUNCED_PORT}");
        self.start_converter(dir, &[&["--announce", first.as_str()][..], args].concat())?;
        let second = format!("{SECOND_CONVERTER}:{ANNOUNCED_PORT}");
        self.start_second_converter(dir, &[&["--announce", second.as_str()][..], args].concat())
    }

    /// Builds the second converter's host, at [`SECOND_CONVERTER`].
    pub fn add_second_converter_host(&mut self) -> anyhow::Result<()> {
        let host = Netns::new(format!("{}-r2", self.name))?;
        veth(&self.converter, "c2", &host, "c2")?;
        self.converter
            .ip(&["addr", "add", "10.7.0.1/24", "dev", "c2"])?;
        host.ip(&[
            "addr",
            "add",
            &format!("{SECOND_CONVERTER}/24"),
            "dev",
            "c2",
        ])?;
        host.ip(&["route", "add", "default", "via", "10.7.0.1"])?;
        self.second_converter = Some(host);
        Ok(())
    }

    /// Sets up the balancer, at [`BALANCED`], over `converters` (addresses).
    pub fn add_balancer(&self, converters: &[&str]) -> anyhow::Result<()> {
        let nft = |args: &str| -> anyhow::Result<()> {
            let args: Vec<&str> = args.split(' ').collect();
            self.converter.exec("nft", &args).map(drop)
        };
        nft("add table ip balancer")?;
        nft("add chain ip balancer in { type nat hook prerouting priority -100 ; }")?;
        self.balance_to(converters)
    }

    /// Sends new connections to the balanced address to `converters`, by a hash of
    /// their source address and port (the balancer's health check dropped the others).
    pub fn balance_to(&self, converters: &[&str]) -> anyhow::Result<()> {
        self.converter
            .exec("nft", &["flush", "chain", "ip", "balancer", "in"])?;
        let targets: Vec<String> = converters
            .iter()
            .enumerate()
            .map(|(i, address)| format!("{i} : {address}"))
            .collect();
        let rule = format!(
            "add rule ip balancer in ip daddr {BALANCED} tcp dport {CONVERTER_PORT} dnat to \
             jhash ip saddr . tcp sport mod {} map {{ {} }}",
            converters.len(),
            targets.join(", ")
        );
        let args: Vec<&str> = rule.split(' ').collect();
        self.converter.exec("nft", &args).map(drop)
    }
}
