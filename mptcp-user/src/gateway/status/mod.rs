//! The household's status page (`--status ADDR:PORT`): a read-only page at `/` for any
//! browser on the LAN, and the data it shows as JSON at `/api/status`.
//!
//! A sampler reads, every second, what `mptcp-user uplinks --json` and `flows --json`
//! read (the gateway's uplink table, its pinned maps) plus each uplink interface's byte
//! counters, and keeps the last minutes of each uplink's rate; a request gets the latest
//! sample. The page (`page.html`, in the binary) is self-contained: no script, font or
//! style from elsewhere, since the LAN may have no internet when a line is down. It
//! holds no secret (no key, no cookie), and answers only requests naming an IP address
//! as their Host, so that a web page elsewhere cannot read it through a DNS name of
//! its own pointed at the LAN (DNS rebinding); without CORS headers a browser keeps
//! other sites' pages from reading the JSON anyway.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{debug, info, warn};
use serde::Serialize;

use super::{
    Gateway,
    control::{self, FlowRow, UplinkRow},
};
use crate::{
    lock,
    net::{http, netlink::Netlink},
};

/// How often the sampler reads the counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples of each uplink's rate kept for the graph: five minutes.
const HISTORY: usize = 300;
/// Flows listed, the fastest first.
const MAX_FLOWS: usize = 50;
/// The page.
const PAGE: &str = include_str!("page.html");

/// Where the status page may listen.
pub fn check_address(address: SocketAddr, on_all_interfaces: bool) -> anyhow::Result<()> {
    if address.ip().is_unspecified() {
        if !on_all_interfaces {
            anyhow::bail!(
                "--status {address} would serve the status page on every interface, the \
                 uplinks' too: give the LAN address (or add --status-on-all-interfaces true)"
            );
        }
        warn!("the status page listens on every interface ({address}), the uplinks' too");
    }
    Ok(())
}

/// Starts the sampler and serves the page on `address` (checked with
/// [`check_address`]).
pub fn start(address: SocketAddr, gateway: Arc<Gateway>, pin_dir: PathBuf) -> anyhow::Result<()> {
    let listener = http::listen(address, "the status page")?;
    info!("status page on http://{address}/");
    let page = Arc::new(StatusPage {
        latest: Mutex::new(b"{}".to_vec()),
    });
    let sampler = Sampler {
        gateway,
        pin_dir,
        netlink: Netlink::connect()?,
        history: HashMap::new(),
        flows: HashMap::new(),
        last: None,
    };
    tokio::spawn(sampler.run(Arc::clone(&page)));
    tokio::spawn(http::serve(listener, page));
    Ok(())
}

/// The endpoint: the page, the latest sample as JSON.
struct StatusPage {
    /// The latest sample, as JSON.
    latest: Mutex<Vec<u8>>,
}

impl http::Handler for StatusPage {
    async fn respond(&self, request: &http::Request) -> http::Response {
        if !host_is_an_address(request.host.as_deref()) {
            return http::Response::text("421 Misdirected Request", "ask by IP address\n");
        }
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/") => http::Response::ok("text/html; charset=utf-8", PAGE),
            ("GET", "/api/status") => {
                http::Response::ok("application/json", lock(&self.latest).clone())
            }
            _ => http::Response::text("404 Not Found", "the status page is at /\n"),
        }
    }
}

/// Whether a Host header names an IP address (with or without a port).
fn host_is_an_address(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    host.parse::<SocketAddr>().is_ok()
        || host.parse::<IpAddr>().is_ok()
        || host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|inner| inner.parse::<IpAddr>().is_ok())
}

/// One second's look at the gateway, as `/api/status` gives it.
#[derive(Debug, Serialize)]
struct Sample {
    /// When, in seconds since the Unix epoch.
    time_unix_s: u64,
    /// Seconds between samples.
    interval_s: u64,
    uplinks: Vec<UplinkView>,
    converters: Vec<ConverterView>,
    /// Flows the gateway carries now.
    flows_total: usize,
    /// The fastest of them.
    flows: Vec<FlowView>,
}

/// An uplink, its rates and their history (oldest first, bits a second).
#[derive(Debug, Serialize)]
struct UplinkView {
    #[serde(flatten)]
    row: UplinkRow,
    rate_down_bps: f64,
    rate_up_bps: f64,
    history_down_bps: Vec<f64>,
    history_up_bps: Vec<f64>,
}

/// A converter, and whether new flows go to it.
#[derive(Debug, Serialize)]
struct ConverterView {
    address: String,
    active: bool,
}

/// A flow and its rates (bits a second).
#[derive(Debug, Serialize)]
struct FlowView {
    #[serde(flatten)]
    row: FlowRow,
    rate_down_bps: f64,
    rate_up_bps: f64,
}

/// Reads the gateway every second and keeps what rates need.
struct Sampler {
    gateway: Arc<Gateway>,
    pin_dir: PathBuf,
    netlink: Netlink,
    /// Per interface: its counters at the last sample, and its rates since.
    history: HashMap<String, Counted>,
    /// Per flow (client, destination, direction): its bytes at the last sample.
    flows: HashMap<(String, String, &'static str), (u64, u64)>,
    /// When the last sample was taken.
    last: Option<Instant>,
}

/// An interface's counters at the last sample and its rates (down, up) since.
#[derive(Default)]
struct Counted {
    bytes: Option<(u64, u64)>,
    rates: VecDeque<(f64, f64)>,
}

impl Sampler {
    async fn run(mut self, page: Arc<StatusPage>) {
        let mut ticks = tokio::time::interval(SAMPLE_EVERY);
        loop {
            ticks.tick().await;
            let sample = self.sample().await;
            match serde_json::to_vec(&sample) {
                Ok(json) => *lock(&page.latest) = json,
                Err(error) => debug!("status: {error}"),
            }
        }
    }

    async fn sample(&mut self) -> Sample {
        let now = Instant::now();
        let seconds = self
            .last
            .map_or(SAMPLE_EVERY, |last| now - last)
            .as_secs_f64()
            .max(0.001);
        self.last = Some(now);
        let statuses = self.gateway.uplinks.snapshot();
        let rows = control::uplink_rows(&self.pin_dir, statuses).unwrap_or_else(|error| {
            debug!("status: cannot read the uplinks: {error:#}");
            Vec::new()
        });
        let mut uplinks = Vec::new();
        for row in rows {
            let bytes = self
                .netlink
                .link_bytes(&row.status.interface)
                .await
                .unwrap_or_default();
            let counted = self
                .history
                .entry(row.status.interface.clone())
                .or_default();
            let rates = match (counted.bytes, bytes) {
                (Some((rx0, tx0)), Some((rx, tx))) => (
                    bits_per_second(rx0, rx, seconds),
                    bits_per_second(tx0, tx, seconds),
                ),
                _ => (0.0, 0.0),
            };
            counted.bytes = bytes;
            if counted.rates.len() == HISTORY {
                counted.rates.pop_front();
            }
            counted.rates.push_back(rates);
            uplinks.push(UplinkView {
                row,
                rate_down_bps: rates.0,
                rate_up_bps: rates.1,
                history_down_bps: counted.rates.iter().map(|rate| rate.0).collect(),
                history_up_bps: counted.rates.iter().map(|rate| rate.1).collect(),
            });
        }
        let flows = control::read_flows(&self.pin_dir).unwrap_or_else(|error| {
            debug!("status: cannot read the flows: {error:#}");
            Vec::new()
        });
        let flows_total = flows.len();
        let mut seen = HashMap::new();
        let mut views: Vec<FlowView> = flows
            .into_iter()
            .map(|row| {
                let key = (row.client.clone(), row.destination.clone(), row.direction);
                let (down, up) = self.flows.get(&key).map_or((0.0, 0.0), |&(down0, up0)| {
                    (
                        bits_per_second(down0, row.bytes_down, seconds),
                        bits_per_second(up0, row.bytes_up, seconds),
                    )
                });
                seen.insert(key, (row.bytes_down, row.bytes_up));
                FlowView {
                    row,
                    rate_down_bps: down,
                    rate_up_bps: up,
                }
            })
            .collect();
        // Flows that ended are forgotten.
        self.flows = seen;
        views.sort_by(|a, b| {
            (b.rate_down_bps + b.rate_up_bps).total_cmp(&(a.rate_down_bps + a.rate_up_bps))
        });
        views.truncate(MAX_FLOWS);
        let active = self.gateway.converters.active();
        let converters = self
            .gateway
            .converters
            .addresses()
            .iter()
            .map(|&address| ConverterView {
                address: address.to_string(),
                active: active == Some(address),
            })
            .collect();
        Sample {
            time_unix_s: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            interval_s: SAMPLE_EVERY.as_secs(),
            uplinks,
            converters,
            flows_total,
            flows: views,
        }
    }
}

/// The rate of a counter that went from `before` to `now` in `seconds`, in bits a
/// second (0 when it went back: a counter reset, a flow's new subflows).
#[expect(clippy::cast_precision_loss, reason = "rates need no exactness")]
fn bits_per_second(before: u64, now: u64, seconds: f64) -> f64 {
    now.saturating_sub(before) as f64 * 8.0 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hosts_that_are_addresses_are_answered() {
        for host in [
            "192.168.1.1",
            "192.168.1.1:8080",
            "[fd00::1]:8080",
            "[fd00::1]",
        ] {
            assert!(host_is_an_address(Some(host)), "{host}");
        }
        for host in [
            None,
            Some("router.example"),
            Some("evil.example:8080"),
            Some(""),
        ] {
            assert!(!host_is_an_address(host), "{host:?}");
        }
    }

    #[test]
    fn every_interface_is_refused_unless_asked() {
        let everywhere: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(check_address(everywhere, false).is_err());
        assert!(check_address(everywhere, true).is_ok());
        assert!(check_address("[::]:8080".parse().unwrap(), false).is_err());
        assert!(check_address("192.168.1.1:8080".parse().unwrap(), false).is_ok());
    }

    #[test]
    fn rates_are_bits_a_second_and_never_negative() {
        assert!((bits_per_second(1000, 2000, 1.0) - 8000.0).abs() < 1e-9);
        assert!((bits_per_second(1000, 2000, 2.0) - 4000.0).abs() < 1e-9);
        assert!(bits_per_second(2000, 1000, 1.0).abs() < 1e-9);
    }

    #[tokio::test]
    async fn the_page_is_served_self_contained_and_names_by_address_only() {
        use http::Handler as _;
        let page = StatusPage {
            latest: Mutex::new(b"{\"uplinks\":[]}".to_vec()),
        };
        let get = |path: &str, host: &str| http::Request {
            method: "GET".to_owned(),
            path: path.to_owned(),
            host: Some(host.to_owned()),
        };
        let html = page.respond(&get("/", "192.168.1.1:8080")).await;
        assert_eq!(html.status, "200 OK");
        let text = String::from_utf8(html.body).unwrap();
        // Nothing fetched from elsewhere: no external script, style, font or image.
        for fetching in ["src=", "href=\"http", "@import", "url(", "fetch(\"http"] {
            assert!(!text.contains(fetching), "{fetching}");
        }
        assert!(text.contains("/api/status"));
        let json = page.respond(&get("/api/status", "192.168.1.1:8080")).await;
        assert_eq!(json.content_type, "application/json");
        assert_eq!(json.body, b"{\"uplinks\":[]}");
        let rebound = page.respond(&get("/api/status", "evil.example:8080")).await;
        assert!(rebound.status.starts_with("421"));
    }
}
