//! The other carriers the benchmarks compare the gateway with, started on a testbed:
//! shadowsocks (OpenMPTCProuter's default) and the smallest relay chain (`tcp-relay`)
//! behind an nftables tproxy rule, and the SOCKS chain people used before (redsocks and
//! dante). None is part of the product; the tproxy rule also lets a benchmark
//! intercept the LAN for our gateway without its eBPF programs
//! ([`crate::testbed::Interception::Nftables`]).

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use crate::testbed::{CONVERTER, CONVERTER_TOWARD_SERVER, GATEWAY_PORT, Testbed};

/// fwmark and table of the tproxy policy route.
const TPROXY_MARK: &str = "1";
const TPROXY_TABLE: &str = "100";

/// Intercepts every TCP flow arriving on the gateway's LAN interface to its transparent
/// listener, with an nftables tproxy rule and a local-delivery policy route.
pub fn intercept_with_tproxy(testbed: &Testbed) -> anyhow::Result<()> {
    let rules = format!(
        "table inet mptcp_testbed {{
            chain prerouting {{
                type filter hook prerouting priority mangle; policy accept;
                iifname \"lan0\" meta l4proto tcp ip daddr != 192.168.50.1 \
                    tproxy ip to :{GATEWAY_PORT} meta mark set {TPROXY_MARK} accept
                iifname \"lan0\" meta l4proto tcp ip6 daddr != fd00:50::1 \
                    tproxy ip6 to :{GATEWAY_PORT} meta mark set {TPROXY_MARK} accept
            }}
        }}"
    );
    let mut nft = testbed.gateway.command("nft");
    nft.args(["-f", "-"]).stdin(std::process::Stdio::piped());
    let mut child = nft.spawn().context("starting nft")?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("nft stdin")?,
        rules.as_bytes(),
    )?;
    anyhow::ensure!(child.wait()?.success(), "nft rejected the tproxy rules");
    for (family, everything) in [("-4", "0.0.0.0/0"), ("-6", "::/0")] {
        testbed.gateway.ip(&[
            family,
            "rule",
            "add",
            "fwmark",
            TPROXY_MARK,
            "lookup",
            TPROXY_TABLE,
        ])?;
        testbed.gateway.ip(&[
            family,
            "route",
            "replace",
            "local",
            everything,
            "dev",
            "lo",
            "table",
            TPROXY_TABLE,
        ])?;
    }
    Ok(())
}

/// Removes what [`intercept_with_tproxy`] installed.
pub fn remove_tproxy(testbed: &Testbed) -> anyhow::Result<()> {
    testbed
        .gateway
        .exec("nft", &["delete", "table", "inet", "mptcp_testbed"])?;
    for family in ["-4", "-6"] {
        testbed.gateway.ip(&[
            family,
            "rule",
            "del",
            "fwmark",
            TPROXY_MARK,
            "lookup",
            TPROXY_TABLE,
        ])?;
    }
    Ok(())
}

/// Starts the tool people use today for this job, OpenMPTCProuter-style: shadowsocks
/// (`ss-redir` on the gateway, `ss-server` on the converter host), both forced onto
/// MPTCP by mptcpize, AES-128-GCM, the LAN steered to ss-redir by the tproxy rule.
/// Their TCP uses `congestion`. Logs go to `dir`.
pub fn start_shadowsocks(
    testbed: &mut Testbed,
    dir: &Path,
    congestion: &str,
) -> anyhow::Result<()> {
    const SS_PORT: &str = "8388";
    let common = ["-k", "testbed-password", "-m", "aes-128-gcm", "--no-delay"];
    for netns in [&testbed.gateway, &testbed.converter] {
        netns
            .sysctl("net.ipv4.tcp_congestion_control", congestion)
            .with_context(|| format!("{congestion} cannot be this host's default"))?;
    }
    let mut server = testbed.converter.command("mptcpize");
    server
        .args(["run", "ss-server", "-s", "0.0.0.0", "-p", SS_PORT])
        .args(common);
    testbed.start("ss-server", &mut server, &dir.join("ss-server.log"))?;
    let mut redir = testbed.gateway.command("mptcpize");
    redir
        .args(["run", "ss-redir", "-s", CONVERTER, "-p", SS_PORT, "-T"])
        .args(["-b", "0.0.0.0", "-l", &GATEWAY_PORT.to_string()])
        .args(common);
    testbed.start("ss-redir", &mut redir, &dir.join("ss-redir.log"))?;
    testbed
        .converter
        .wait_listening(8388, Duration::from_secs(10))?;
    testbed
        .gateway
        .wait_listening(GATEWAY_PORT, Duration::from_secs(10))?;
    intercept_with_tproxy(testbed)
}

/// Stops what [`start_shadowsocks`] started and removes its tproxy rule.
pub fn stop_shadowsocks(testbed: &mut Testbed) -> anyhow::Result<()> {
    testbed.forget("ss-redir");
    testbed.forget("ss-server");
    remove_tproxy(testbed)
}

/// Starts the SOCKS chain people used before (and the seed's): redsocks on the
/// gateway, the LAN's TCP steered to it by an nftables redirect, relaying to dante
/// on the converter host over SOCKS5; both forced onto MPTCP by mptcpize, no
/// encryption. Configs and logs go to `dir`.
pub fn start_socks_chain(testbed: &mut Testbed, dir: &Path) -> anyhow::Result<()> {
    const SOCKS_PORT: u16 = 1080;
    let dante = dir.join("danted.conf");
    std::fs::write(
        &dante,
        format!(
            "logoutput: stderr\n\
             internal: 0.0.0.0 port = {SOCKS_PORT}\n\
             external: {CONVERTER_TOWARD_SERVER}\n\
             clientmethod: none\n\
             socksmethod: none\n\
             user.privileged: root\n\
             user.unprivileged: nobody\n\
             client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n\
             socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}\n"
        ),
    )?;
    let mut server = testbed.converter.command("mptcpize");
    server
        .args(["run", "danted", "-f"])
        .arg(&dante)
        .arg("-p")
        .arg(dir.join("danted.pid"));
    testbed.start("danted", &mut server, &dir.join("danted.log"))?;
    let redsocks = dir.join("redsocks.conf");
    std::fs::write(
        &redsocks,
        format!(
            "base {{ log_info = off; log = stderr; daemon = off; redirector = iptables; }}\n\
             redsocks {{ local_ip = 0.0.0.0; local_port = {GATEWAY_PORT}; \
             ip = {CONVERTER}; port = {SOCKS_PORT}; type = socks5; }}\n"
        ),
    )?;
    let mut client = testbed.gateway.command("mptcpize");
    client.args(["run", "redsocks", "-c"]).arg(&redsocks);
    testbed.start("redsocks", &mut client, &dir.join("redsocks.log"))?;
    testbed
        .converter
        .wait_listening(SOCKS_PORT, Duration::from_secs(10))?;
    testbed
        .gateway
        .wait_listening(GATEWAY_PORT, Duration::from_secs(10))?;
    testbed.gateway.exec(
        "nft",
        &[&format!(
            "add table ip mptcp_socks; \
             add chain ip mptcp_socks prerouting {{ type nat hook prerouting priority dstnat; }}; \
             add rule ip mptcp_socks prerouting iifname lan0 meta l4proto tcp \
             redirect to :{GATEWAY_PORT}"
        )],
    )?;
    Ok(())
}

/// Starts the smallest terminating relay chain (`tcp-relay`, built next to this
/// binary): one blocking copier on each host, plain TCP between them, the LAN steered
/// to the near one by the tproxy rule. Logs go to `dir`.
pub fn start_tcp_relay_chain(testbed: &mut Testbed, dir: &Path) -> anyhow::Result<()> {
    const FAR_PORT: u16 = 1081;
    let program = std::env::current_exe()?.with_file_name("tcp-relay");
    let program = program.to_str().context("the relay's path is not UTF-8")?;
    let mut far = testbed.converter.command(program);
    far.args(["far", &format!("0.0.0.0:{FAR_PORT}")]);
    testbed.start("tcp-relay far", &mut far, &dir.join("tcp-relay-far.log"))?;
    let mut near = testbed.gateway.command(program);
    near.args([
        "near",
        &format!("0.0.0.0:{GATEWAY_PORT}"),
        &format!("{CONVERTER}:{FAR_PORT}"),
    ]);
    testbed.start("tcp-relay near", &mut near, &dir.join("tcp-relay-near.log"))?;
    testbed
        .converter
        .wait_listening(FAR_PORT, Duration::from_secs(10))?;
    testbed
        .gateway
        .wait_listening(GATEWAY_PORT, Duration::from_secs(10))?;
    intercept_with_tproxy(testbed)
}

/// Stops what [`start_tcp_relay_chain`] started and removes its tproxy rule.
pub fn stop_tcp_relay_chain(testbed: &mut Testbed) -> anyhow::Result<()> {
    testbed.forget("tcp-relay near");
    testbed.forget("tcp-relay far");
    remove_tproxy(testbed)
}

/// Stops what [`start_socks_chain`] started and removes its redirect.
pub fn stop_socks_chain(testbed: &mut Testbed) -> anyhow::Result<()> {
    testbed.forget("redsocks");
    testbed.forget("danted");
    testbed
        .gateway
        .exec("nft", &["delete", "table", "ip", "mptcp_socks"])
        .map(drop)
}
