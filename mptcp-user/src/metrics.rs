//! Prometheus metrics of both daemons, served as text on `--metrics ADDR`
//! (`GET /metrics`). Counters are kept by the code that counts (cheap atomic adds);
//! what the kernel or the daemon's tables already know (uplink states, subflows,
//! interface bytes, warm connections) is read at each scrape instead.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use log::{info, warn};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Metric, Registry},
};
use tokio::net::TcpListener;

use crate::{
    gateway::{
        flows::{Carried, Intercepted},
        uplinks::{Health, Traffic},
    },
    net::{
        http,
        relay::{DirectionCounters, RelayCounters},
    },
    protocol::codec::ErrorCode,
};

/// Labels of a flow count: how the flow was taken and how it is carried.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FlowLabels {
    /// `lan` (tc program) or `cgroup` (an opted-in local service).
    taken: &'static str,
    /// `converter`, `direct` (direct mode) or `fallback` (no converter could take it).
    carried: &'static str,
}

/// Labels of an error count: the RFC 8803 code and its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    code: String,
    error: String,
}

/// Labels of relayed bytes: `splice` or `copy`, `up` (towards the destination) or
/// `down`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RelayLabels {
    path: &'static str,
    direction: &'static str,
}

/// Labels of per-direction values: `up` (towards the destination) or `down`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

/// Labels of a converter's per-gateway values: the gateway's name in its config.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayLabels {
    gateway: String,
}

/// Labels of a converter's per-gateway, per-direction values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GatewayDirectionLabels {
    gateway: String,
    direction: &'static str,
}

/// Labels of per-uplink values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkLabels {
    uplink: String,
}

/// Labels of per-uplink, per-direction values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkDirectionLabels {
    uplink: String,
    direction: &'static str,
}

/// Labels of what an uplink carries of the unconverted traffic: 1 or 0.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkTrafficLabels {
    uplink: String,
    traffic: &'static str,
}

/// Labels of an uplink's state gauge: 1 for its state now, 0 for the others.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UplinkStateLabels {
    uplink: String,
    state: &'static str,
}

/// Error TLVs counted by code: those a gateway received, or a converter sent.
#[derive(Clone, Debug, Default)]
pub struct ErrorCounts(Family<ErrorLabels, Counter>);

impl ErrorCounts {
    /// Counts one error with `code`.
    pub fn count(&self, code: ErrorCode) {
        self.0
            .get_or_create(&ErrorLabels {
                code: code.to_u8().to_string(),
                // "Not Authorized (32)" without its number, which `code` has.
                error: code
                    .to_string()
                    .split(" (")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            })
            .inc();
    }
}

/// A new metric, registered in `registry` under `name`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Registers the relays' counters (`relayed_bytes`, `relay_reads`, `relay_waits`), and
/// returns them.
fn relay_counters(registry: &mut Registry) -> RelayCounters {
    let bytes: Family<RelayLabels, Counter> = registered(
        registry,
        "relayed_bytes",
        "Bytes relayed, by how (splice, or a userspace copy: the bytes that came with \
         the converter's handshake, or where the kernel cannot splice) and which way \
         (up: towards the destination)",
    );
    let reads: Family<DirectionLabels, Counter> = registered(
        registry,
        "relay_reads",
        "Reads (splice or read calls) that brought relayed bytes, by direction",
    );
    let waits: Family<DirectionLabels, Counter> = registered(
        registry,
        "relay_waits",
        "Times a relay found a socket not ready (EAGAIN) and waited: its wake-ups, by \
         direction",
    );
    // Each lookup's guard must be gone before the next one locks the family: a
    // closure per counter, not one struct expression holding them all.
    let bytes = |path, direction| {
        bytes
            .get_or_create(&RelayLabels { path, direction })
            .clone()
    };
    let per_direction = |family: &Family<DirectionLabels, Counter>, direction| {
        family.get_or_create(&DirectionLabels { direction }).clone()
    };
    let direction = |direction| DirectionCounters {
        spliced: bytes("splice", direction),
        copied: bytes("copy", direction),
        reads: per_direction(&reads, direction),
        waits: per_direction(&waits, direction),
        owner: None,
    };
    RelayCounters {
        up: direction("up"),
        down: direction("down"),
    }
}

/// What a scrape reads from the gateway's tables and the kernel.
#[derive(Debug)]
pub struct UplinkSample {
    /// The interface.
    pub interface: String,
    /// Its health now.
    pub state: Health,
    /// The last probe's handshake time.
    pub rtt: Option<Duration>,
    /// Live subflows over it.
    pub subflows: u64,
    /// What its interface has received and sent, all traffic included.
    pub interface_bytes: Option<(u64, u64)>,
    /// What it carries of the traffic the gateway does not convert.
    pub carries: Vec<Traffic>,
    /// A metered line's bytes in its allowance's period, and its allowance.
    pub usage: (Option<u64>, Option<u64>),
}

/// A live flow or relay in the metrics: its gauge goes down when this is dropped.
pub struct Live(Gauge);

impl Live {
    /// Counts one more on `gauge` until dropped.
    fn on(gauge: Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    flows_total: Family<FlowLabels, Counter>,
    flows_live: Family<FlowLabels, Gauge>,
    /// What the relays moved, and how.
    pub relayed: RelayCounters,
    /// Error TLVs the converter answered.
    pub converter_errors: ErrorCounts,
    warm_connections: Gauge,
    uplink_state: Family<UplinkStateLabels, Gauge>,
    uplink_rtt: Family<UplinkLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    uplink_subflows: Family<UplinkLabels, Gauge>,
    uplink_bytes: Family<UplinkDirectionLabels, Counter>,
    uplink_carries: Family<UplinkTrafficLabels, Gauge>,
    uplink_usage: Family<UplinkLabels, Gauge>,
    uplink_allowance: Family<UplinkLabels, Gauge>,
}

impl GatewayMetrics {
    /// The gateway's metrics, with the counts of the converters' Error TLVs that the
    /// upstream keeps.
    pub fn new(converter_errors: ErrorCounts) -> Self {
        let mut registry = Registry::with_prefix("mptcp_gateway");
        let flows_total = registered(
            &mut registry,
            "flows",
            "Flows relayed, by how they were taken (lan, cgroup, in: a port forward) and carried (converter, direct, fallback)",
        );
        let flows_live = registered(
            &mut registry,
            "live_flows",
            "Flows relayed now, by how they were taken and carried",
        );
        let relayed = relay_counters(&mut registry);
        registry.register(
            "converter_errors",
            "Error TLVs the converter answered, by RFC 8803 code",
            converter_errors.0.clone(),
        );
        Self {
            flows_total,
            flows_live,
            relayed,
            converter_errors,
            warm_connections: registered(
                &mut registry,
                "warm_connections",
                "Warm connections to the converter waiting for a flow",
            ),
            uplink_state: registered(
                &mut registry,
                "uplink_state",
                "1 for each uplink's state now, 0 for the others",
            ),
            uplink_rtt: registered(
                &mut registry,
                "uplink_rtt_seconds",
                "The last probe's handshake time to the converter over each uplink",
            ),
            uplink_subflows: registered(
                &mut registry,
                "uplink_subflows",
                "Live MPTCP subflows over each uplink",
            ),
            uplink_bytes: registered(
                &mut registry,
                "uplink_bytes",
                "Bytes each uplink's interface received (down) and sent (up), all its traffic",
            ),
            uplink_carries: registered(
                &mut registry,
                "uplink_carries",
                "1 when the uplink carries this traffic that is not converted (default: all \
                 but UDP; udp), else 0",
            ),
            uplink_usage: registered(
                &mut registry,
                "uplink_usage_bytes",
                "A metered uplink's bytes in its allowance's period",
            ),
            uplink_allowance: registered(
                &mut registry,
                "uplink_allowance_bytes",
                "A metered uplink's allowance per period",
            ),
            registry,
        }
    }

    /// The metrics as text, as they are (call [`Self::sample`] first).
    pub fn text(&self) -> String {
        encode(&self.registry)
    }

    /// Counts a flow taken `intercepted` and `carried`, live until the returned value
    /// is dropped.
    pub fn flow_started(&self, intercepted: Intercepted, carried: Carried) -> Live {
        let labels = FlowLabels {
            taken: intercepted.name(),
            carried: carried.name(),
        };
        self.flows_total.get_or_create(&labels).inc();
        Live::on(self.flows_live.get_or_create(&labels).clone())
    }

    /// Sets what the gateway's tables and the kernel say now.
    pub fn sample(&self, warm_connections: usize, uplinks: &[UplinkSample]) {
        self.warm_connections
            .set(i64::try_from(warm_connections).unwrap_or(i64::MAX));
        for uplink in uplinks {
            for state in Health::ALL {
                let labels = UplinkStateLabels {
                    uplink: uplink.interface.clone(),
                    state: state.name(),
                };
                self.uplink_state
                    .get_or_create(&labels)
                    .set(i64::from(state == uplink.state));
            }
            let labels = UplinkLabels {
                uplink: uplink.interface.clone(),
            };
            if let Some(rtt) = uplink.rtt {
                self.uplink_rtt
                    .get_or_create(&labels)
                    .set(rtt.as_secs_f64());
            }
            self.uplink_subflows
                .get_or_create(&labels)
                .set(i64::try_from(uplink.subflows).unwrap_or(i64::MAX));
            for traffic in Traffic::ALL {
                self.uplink_carries
                    .get_or_create(&UplinkTrafficLabels {
                        uplink: uplink.interface.clone(),
                        traffic: traffic.name(),
                    })
                    .set(i64::from(uplink.carries.contains(&traffic)));
            }
            let (usage, allowance) = uplink.usage;
            for (family, value) in [
                (&self.uplink_usage, usage),
                (&self.uplink_allowance, allowance),
            ] {
                if let Some(value) = value {
                    family
                        .get_or_create(&labels)
                        .set(i64::try_from(value).unwrap_or(i64::MAX));
                }
            }
            if let Some((received, sent)) = uplink.interface_bytes {
                for (direction, now) in [("down", received), ("up", sent)] {
                    let counter = self.uplink_bytes.get_or_create(&UplinkDirectionLabels {
                        uplink: uplink.interface.clone(),
                        direction,
                    });
                    // The interface's own counter, followed; one that went back (the
                    // interface was recreated) starts over.
                    let before = counter.get();
                    counter.inc_by(now.checked_sub(before).unwrap_or(now));
                }
            }
        }
    }
}

/// The converter's metrics.
pub struct ConverterMetrics {
    registry: Registry,
    relays_total: Counter,
    relays_live: Gauge,
    /// What the relays moved, and how.
    pub relayed: RelayCounters,
    /// Error TLVs answered.
    pub errors: ErrorCounts,
    /// Speed tests served.
    pub speed_tests: Counter,
    /// Inbound connections on public ports handed to a gateway.
    pub inbound: Counter,
    gateway_relays: Family<GatewayLabels, Counter>,
    gateway_live_relays: Family<GatewayLabels, Gauge>,
    gateway_bytes: Family<GatewayDirectionLabels, Counter>,
    gateway_refusals: Family<GatewayLabels, Counter>,
}

impl Default for ConverterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mptcp_converter");
        Self {
            relays_total: registered(
                &mut registry,
                "relays",
                "Connections relayed to their destination",
            ),
            relays_live: registered(&mut registry, "live_relays", "Connections relayed now"),
            relayed: relay_counters(&mut registry),
            errors: ErrorCounts(registered(
                &mut registry,
                "errors",
                "Error TLVs answered, by RFC 8803 code",
            )),
            speed_tests: registered(
                &mut registry,
                "speed_tests",
                "Speed tests served to gateways",
            ),
            inbound: registered(
                &mut registry,
                "inbound_flows",
                "Inbound connections on forwarded public ports handed to a gateway",
            ),
            gateway_relays: registered(
                &mut registry,
                "gateway_relays",
                "Connections relayed, by gateway (its name in the config; allow-client: \
                 networks that convert without a cookie)",
            ),
            gateway_live_relays: registered(
                &mut registry,
                "gateway_live_relays",
                "Connections relayed now, by gateway",
            ),
            gateway_bytes: registered(
                &mut registry,
                "gateway_relayed_bytes",
                "Bytes relayed, by gateway and direction (up: towards the destination)",
            ),
            gateway_refusals: registered(
                &mut registry,
                "gateway_max_conns_refusals",
                "Connections refused (Resource Exceeded) because their gateway relayed its \
                 own max-conns already",
            ),
            registry,
        }
    }
}

impl ConverterMetrics {
    /// Counts a relay of `gateway`'s, live until the returned values are dropped, and
    /// returns the counters it moves its bytes on: the converter's, which count them
    /// for the gateway too.
    pub fn relay_started(&self, gateway: &str) -> (RelayCounters, [Live; 2]) {
        self.relays_total.inc();
        let labels = GatewayLabels {
            gateway: gateway.to_owned(),
        };
        self.gateway_relays.get_or_create(&labels).inc();
        let live = self.gateway_live_relays.get_or_create(&labels).clone();
        let live = [Live::on(self.relays_live.clone()), Live::on(live)];
        let owner = |direction| {
            let labels = GatewayDirectionLabels {
                gateway: gateway.to_owned(),
                direction,
            };
            Some(self.gateway_bytes.get_or_create(&labels).clone())
        };
        let mut counters = self.relayed.clone();
        counters.up.owner = owner("up");
        counters.down.owner = owner("down");
        (counters, live)
    }

    /// Counts a connection of `gateway`'s refused at its own max-conns.
    pub fn refused_over_limit(&self, gateway: &str) {
        self.gateway_refusals
            .get_or_create(&GatewayLabels {
                gateway: gateway.to_owned(),
            })
            .inc();
    }

    /// The metrics as text.
    pub fn text(&self) -> String {
        encode(&self.registry)
    }
}

/// Either daemon's metrics, as text.
pub trait Render: Send + Sync {
    /// The Prometheus text exposition of the metrics now.
    fn render(&self) -> impl Future<Output = String> + Send;
}

/// Encodes `registry` in the Prometheus text format.
fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, registry) {
        warn!("cannot encode the metrics: {error}");
    }
    text
}

/// Listens on `address` for scrapers.
pub fn listen(address: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = http::listen(address, "metrics")?;
    info!("metrics on http://{address}/metrics");
    Ok(listener)
}

/// Answers scrapes on `listener` with what `render` gives, forever.
pub async fn serve<R: Render + 'static>(listener: TcpListener, render: Arc<R>) {
    http::serve(listener, Arc::new(Endpoint(render))).await;
}

/// The metrics endpoint: the text at `/metrics`, 404 elsewhere.
struct Endpoint<R>(Arc<R>);

impl<R: Render> http::Handler for Endpoint<R> {
    async fn respond(&self, request: &http::Request) -> http::Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/metrics") => http::Response::ok(
                "text/plain; version=0.0.4; charset=utf-8",
                self.0.render().await,
            ),
            _ => http::Response::text("404 Not Found", "metrics are at /metrics\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_text_counts_flows_errors_and_uplinks() {
        let metrics = GatewayMetrics::new(ErrorCounts::default());
        let flow = metrics.flow_started(Intercepted::Lan, Carried::Converter);
        metrics.flow_started(Intercepted::Cgroup, Carried::Fallback);
        metrics.flow_started(Intercepted::Lan, Carried::Direct);
        let _inbound = metrics.flow_started(Intercepted::Inbound, Carried::Converter);
        metrics.converter_errors.count(ErrorCode::NotAuthorized);
        metrics.relayed.up.spliced.inc_by(1234);
        metrics.sample(
            3,
            &[UplinkSample {
                interface: "dsl0".to_owned(),
                state: Health::Up,
                rtt: Some(Duration::from_millis(15)),
                subflows: 2,
                interface_bytes: Some((1000, 500)),
                carries: vec![Traffic::Udp],
                usage: (Some(700), Some(1000)),
            }],
        );
        let text = metrics.text();
        for line in [
            r#"mptcp_gateway_flows_total{taken="lan",carried="converter"} 1"#,
            r#"mptcp_gateway_live_flows{taken="lan",carried="converter"} 1"#,
            r#"mptcp_gateway_live_flows{taken="cgroup",carried="fallback"} 0"#,
            // Direct mode's flows are not counted as the converter's.
            r#"mptcp_gateway_flows_total{taken="lan",carried="direct"} 1"#,
            // A port forward's.
            r#"mptcp_gateway_live_flows{taken="in",carried="converter"} 1"#,
            r#"mptcp_gateway_converter_errors_total{code="32",error="Not Authorized"} 1"#,
            r#"mptcp_gateway_relayed_bytes_total{path="splice",direction="up"} 1234"#,
            "mptcp_gateway_warm_connections 3",
            r#"mptcp_gateway_uplink_state{uplink="dsl0",state="up"} 1"#,
            r#"mptcp_gateway_uplink_state{uplink="dsl0",state="down"} 0"#,
            r#"mptcp_gateway_uplink_subflows{uplink="dsl0"} 2"#,
            r#"mptcp_gateway_uplink_bytes_total{uplink="dsl0",direction="down"} 1000"#,
            r#"mptcp_gateway_uplink_carries{uplink="dsl0",traffic="udp"} 1"#,
            r#"mptcp_gateway_uplink_carries{uplink="dsl0",traffic="default"} 0"#,
            r#"mptcp_gateway_uplink_usage_bytes{uplink="dsl0"} 700"#,
            r#"mptcp_gateway_uplink_allowance_bytes{uplink="dsl0"} 1000"#,
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        drop(flow);
        // The interface counter is followed, not added up.
        metrics.sample(
            0,
            &[UplinkSample {
                interface: "dsl0".to_owned(),
                state: Health::Down,
                rtt: None,
                subflows: 0,
                interface_bytes: Some((1500, 500)),
                carries: Vec::new(),
                usage: (None, None),
            }],
        );
        let text = metrics.text();
        assert!(
            text.contains(
                r#"mptcp_gateway_uplink_bytes_total{uplink="dsl0",direction="down"} 1500"#
            )
        );
        assert!(text.contains(r#"mptcp_gateway_live_flows{taken="lan",carried="converter"} 0"#));
        assert!(text.contains(r#"mptcp_gateway_uplink_state{uplink="dsl0",state="down"} 1"#));
    }

    struct Fixed;

    impl Render for Fixed {
        async fn render(&self) -> String {
            "answer 42\n".to_owned()
        }
    }

    #[tokio::test]
    async fn scrapes_get_the_text_and_other_paths_a_404() {
        use http::Handler as _;
        let endpoint = Endpoint(Arc::new(Fixed));
        let get = |path: &str| http::Request {
            method: "GET".to_owned(),
            path: path.to_owned(),
            host: None,
        };
        let metrics = endpoint.respond(&get("/metrics")).await;
        assert_eq!(metrics.status, "200 OK");
        assert_eq!(metrics.body, b"answer 42\n");
        assert!(endpoint.respond(&get("/")).await.status.starts_with("404"));
    }
}
