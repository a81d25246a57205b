//! DNS as a household has it: the router (the gateway host) runs a forwarding resolver
//! for the LAN, which asks a server on the internet. Both are Debian's dnsmasq, run as
//! testbed processes (they die with the testbed): the authority for [`NAME`] on the
//! server host, the forwarder on the gateway's LAN address, without a cache, so that
//! every query the client sends crosses an uplink. The client asks with dig.

use std::{path::Path, process::Command, time::Duration};

use crate::{
    netns::Netns,
    testbed::{SERVER, Testbed},
};

/// The name the authority answers for.
pub const NAME: &str = "household.test";
/// The address it gives [`NAME`].
pub const ADDRESS: &str = SERVER;
/// The LAN's resolver: the gateway's LAN address.
pub const RESOLVER: &str = "192.168.50.1";

/// dnsmasq in the foreground, reading no config file, writing no pid file, logging each
/// query to its log, with no upstream from /etc/resolv.conf and no /etc/hosts.
fn dnsmasq(netns: &Netns) -> Command {
    let mut command = netns.command("/usr/sbin/dnsmasq");
    command.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--user=root",
        "--log-facility=-",
        "--log-queries",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
    ]);
    command
}

/// Starts the authority for [`NAME`] on the server host (listening on [`SERVER`]) and
/// the LAN's forwarder on the gateway (listening on [`RESOLVER`], asking the
/// authority); logs go to `dir/dns-authority.log` and `dir/dns-forwarder.log`.
pub fn start(testbed: &mut Testbed, dir: &Path) -> anyhow::Result<()> {
    let mut authority = dnsmasq(&testbed.server);
    authority.args([
        &format!("--listen-address={SERVER}"),
        &format!("--address=/{NAME}/{ADDRESS}"),
    ]);
    testbed.start(
        "dns authority",
        &mut authority,
        &dir.join("dns-authority.log"),
    )?;
    testbed.server.wait_udp_bound(53, Duration::from_secs(10))?;

    let mut forwarder = dnsmasq(&testbed.gateway);
    forwarder.args([
        &format!("--listen-address={RESOLVER}"),
        &format!("--server={SERVER}"),
        "--cache-size=0",
    ]);
    testbed.start(
        "dns forwarder",
        &mut forwarder,
        &dir.join("dns-forwarder.log"),
    )?;
    testbed.gateway.wait_udp_bound(53, Duration::from_secs(10))
}

/// Whether the LAN host resolves [`NAME`] to [`ADDRESS`] through [`RESOLVER`], with one
/// query of dig that waits a second at most.
///
/// # Panics
/// When dig cannot be run (bind9-dnsutils is missing).
pub fn resolves(client: &Netns) -> bool {
    let output = client
        .command("dig")
        .args([
            "+time=1",
            "+tries=1",
            "+short",
            &format!("@{RESOLVER}"),
            NAME,
        ])
        .output()
        .expect("dig (bind9-dnsutils; `cargo xtask setup` installs it)");
    output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == ADDRESS
}
