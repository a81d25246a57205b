//! Reading the daemons' Prometheus metrics (`--metrics`) from inside their namespaces.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;

use crate::netns::{self, Netns};

/// Where a testbed's gateway serves its metrics (`--metrics`), inside its namespace.
pub const GATEWAY_METRICS: &str = "127.0.0.1:9124";
/// Where a testbed's converter serves its metrics, inside its namespace.
pub const CONVERTER_METRICS: &str = "127.0.0.1:9125";

/// The answer to `GET /metrics` at `address` inside `netns`, status line included.
pub fn scrape(netns: &Netns, address: &'static str) -> anyhow::Result<String> {
    netns::run_in(netns, move || -> anyhow::Result<String> {
        let mut stream = std::net::TcpStream::connect(address)
            .with_context(|| format!("no metrics at {address}"))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        anyhow::ensure!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        Ok(answer)
    })
}

/// The bytes a daemon's relays moved in `direction` (`up` or `down`), spliced and
/// copied together, from its metrics `text`; `prefix` is `mptcp_gateway` or
/// `mptcp_converter`.
pub fn relayed_bytes(text: &str, prefix: &str, direction: &str) -> u64 {
    ["splice", "copy"]
        .iter()
        .map(|path| {
            sample(
                text,
                &format!(
                    r#"{prefix}_relayed_bytes_total{{path="{path}",direction="{direction}"}}"#
                ),
            )
        })
        .sum()
}

/// The whole-number value of the sample `name` (with its labels, as written) in
/// `text`; 0 if absent.
pub fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}
