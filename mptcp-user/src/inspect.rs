//! Inspection commands: read the maps a running gateway pinned.

use std::{
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, MapData};
use mptcp_ebpf_common::connections::{self, Connection, DIRECTION_ACTIVE};
use serde::Serialize;

use crate::cli::FlowsArgs;

/// One row of `mptcp-user flows`.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    /// Kernel socket cookie of the connection.
    pub cookie: u64,
    /// `active` (opened here) or `passive` (accepted here).
    pub direction: &'static str,
    /// Local address and port.
    pub local: String,
    /// Remote address and port.
    pub remote: String,
}

/// `mptcp-user flows`: prints the connections the gateway tracks.
pub fn flows(args: &FlowsArgs) -> anyhow::Result<()> {
    let rows = read_flows(&args.pin_path)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{:<20} {:<8} {:<46} {:<46}",
            "COOKIE", "DIR", "LOCAL", "REMOTE"
        )?;
        for row in &rows {
            writeln!(
                out,
                "{:<20} {:<8} {:<46} {:<46}",
                row.cookie, row.direction, row.local, row.remote
            )?;
        }
    }
    Ok(())
}

/// Reads the pinned connections map under `pin_dir`, sorted by cookie (oldest first).
pub fn read_flows(pin_dir: &Path) -> anyhow::Result<Vec<FlowRow>> {
    let pin = pin_dir.join(connections::MAP_NAME);
    if !pin.exists() {
        if !nix::unistd::geteuid().is_root() {
            bail!("cannot read {}: run as root", pin.display());
        }
        bail!(
            "no running gateway found: {} does not exist (is `mptcp-user gateway` running \
             with --pin-path {}?)",
            pin.display(),
            pin_dir.display()
        );
    }
    let data = MapData::from_pin(&pin).with_context(|| {
        format!(
            "failed to open {} (reading pinned maps needs root)",
            pin.display()
        )
    })?;
    let map: HashMap<MapData, u64, Connection> =
        HashMap::try_from(aya::maps::Map::LruHashMap(data))
            .context("unexpected type of the pinned connections map")?;
    let mut rows = Vec::new();
    for entry in &map {
        let (cookie, connection) = entry.context("failed to read the connections map")?;
        rows.push(FlowRow {
            cookie,
            direction: if connection.direction == DIRECTION_ACTIVE {
                "active"
            } else {
                "passive"
            },
            local: format_endpoint(&connection, connection.local_addr, connection.local_port),
            remote: format_endpoint(&connection, connection.remote_addr, connection.remote_port),
        });
    }
    rows.sort_by_key(|row| row.cookie);
    Ok(rows)
}

/// Converts an address as sock_ops stores it (network-order words) to an [`IpAddr`].
#[must_use]
pub fn ip_from_words(family: u32, words: [u32; 4]) -> IpAddr {
    if family == libc::AF_INET as u32 {
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "the kernel keeps 16-bit ports in u32 fields"
)]
fn format_endpoint(connection: &Connection, words: [u32; 4], port: u32) -> String {
    std::net::SocketAddr::new(ip_from_words(connection.family, words), port as u16).to_string()
}

#[cfg(test)]
mod tests {
    use super::ip_from_words;

    #[test]
    fn ipv4_words_are_network_order() {
        // 127.0.0.1 as the kernel stores it: bytes 7f 00 00 01 in memory.
        let word = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(ip_from_words(2, [word, 0, 0, 0]).to_string(), "127.0.0.1");
    }

    #[test]
    fn ipv6_words_are_network_order() {
        let words = [
            u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
            0,
            0,
            u32::from_ne_bytes([0, 0, 0, 1]),
        ];
        assert_eq!(ip_from_words(10, words).to_string(), "2001:db8::1");
    }
}
