//! The gateway: intercepts LAN flows (and the connects of opted-in local services) in the
//! kernel, accepts them on a transparent listener, opens an MPTCP connection for each
//! (through the converter, or straight to the original destination with `--direct`),
//! and relays.
//!
//! - [`interception`]: installs the programs, selection, cgroups and routes, and follows
//!   the LAN interfaces.
//! - [`flows`]: per-flow bookkeeping: original destinations and the flow list.
//! - [`selection`]: which flows are intercepted, in the BPF maps.
//! - [`routes`]: the local-delivery routes of intercepted LAN packets.
//! - [`cgroups`]: the cgroup v2 root and opting cgroups in and out.
//! - [`upstream`]: the connection each flow is carried on.
//! - [`uplinks`]: the internet links the MPTCP subflows use.
//! - [`control`]: the commands that read and edit a running gateway.
//! - [`speedtest`]: `mptcp-user speedtest`, each uplink and all of them measured.

pub mod cgroups;
pub mod control;
pub mod flows;
pub mod interception;
pub mod pool;
pub mod routes;
pub mod selection;
pub mod speedtest;
pub mod uplinks;
pub mod upstream;

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use log::{debug, info, warn};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use crate::{
    bpf::{
        self,
        tuning::{Tuning, TuningConfig},
    },
    metrics::{self, GatewayMetrics, UplinkSample},
    net::{
        netlink::Netlink,
        relay::{self, PipePool, Timeouts},
        server, socket,
    },
    sys::{self, InstanceLock},
};
use flows::FlowTable;
use interception::{Interception, InterceptionConfig};
use mptcp_ebpf_common::flows::WARM_FLOW;
use pool::{Pool, Target};
use uplinks::{ManagerConfig, UplinkConfig, UplinkManager, UplinkTable};
use upstream::{OpenError, Upstream, UpstreamConfig};

/// Default directory (on bpffs) where a running gateway pins its maps.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/mptcp-gateway";
/// Default port of the transparent listener, on every address (`[::]`).
pub const DEFAULT_LISTEN_PORT: u16 = 15124;
/// Logged once everything is installed and flows are intercepted; scripts wait for it.
pub const READY: &str = "gateway ready";

/// Everything `mptcp-user gateway` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The transparent listener intercepted connections are handed to.
    pub listen: SocketAddr,
    /// Where flows go.
    pub upstream: UpstreamConfig,
    /// How long opening the upstream connection may take, the converter's answer
    /// included.
    pub connect_timeout: Duration,
    /// When relays give up: idle, or a dead path.
    pub timeouts: Timeouts,
    /// Which flows are intercepted, and how.
    pub interception: InterceptionConfig,
    /// The uplinks; none: the host's own MPTCP endpoints and routes, as they are.
    pub uplinks: Vec<UplinkConfig>,
    /// Congestion control and buffers of the MPTCP connections and subflows.
    pub tuning: TuningConfig,
    /// Most warm connections to the converter (0: none).
    pub pool_size: usize,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl GatewayConfig {
    /// Fails, naming it, when a LAN or uplink interface does not exist on this host.
    pub fn check_interfaces(&self) -> anyhow::Result<()> {
        let lan = self.interception.lan.iter().map(|name| (name, "LAN"));
        let uplinks = self
            .uplinks
            .iter()
            .map(|uplink| (&uplink.interface, "uplink"));
        for (name, role) in lan.chain(uplinks) {
            if nix::net::if_::if_nametoindex(name.as_str()).is_err() {
                bail!("{role} interface {name} does not exist");
            }
        }
        Ok(())
    }
}

/// What each connection's task needs.
pub struct Gateway {
    /// Where connections go.
    pub upstream: Upstream,
    /// How long opening the upstream connection may take, response included.
    pub connect_timeout: Duration,
    /// When relays give up: idle, or a dead path.
    pub timeouts: Timeouts,
    /// Congestion control and buffer of the MPTCP connections.
    pub tuning: Tuning,
    /// Pipes for the relays.
    pub pipes: PipePool,
    /// Original destinations and the flow list.
    pub flows: FlowTable,
    /// The uplinks new flows start from.
    pub uplinks: Arc<UplinkTable>,
    /// Warm connections to the converter.
    pub pool: Arc<Pool>,
    /// What the metrics count.
    pub metrics: GatewayMetrics,
}

impl Gateway {
    /// Where new flows go now, for the pool.
    fn pool_target(&self) -> Target {
        let converters = self.upstream.converters();
        Target {
            converter: (!converters.is_empty() && !self.uplinks.converter_down())
                .then(|| converters[self.uplinks.active_converter() % converters.len()]),
            source: self
                .uplinks
                .attempts()
                .first()
                .map(|attempt| attempt.source),
        }
    }

    /// Opens a warm connection to `converter` as a flow's would be opened, for the pool.
    async fn connect_warm(&self, converter: SocketAddr) -> std::io::Result<TcpStream> {
        let attempts = self.uplinks.attempts();
        // Labelled "warm" now, so that sock_ops records its subflows as they come up,
        // and the flow that takes it later shows them.
        let configure = |socket: &socket2::Socket| {
            self.tuning.apply(socket)?;
            self.flows.label(socket, WARM_FLOW)
        };
        upstream::connect_converter(converter, true, &attempts, configure).await
    }
}

/// `mptcp-user gateway`: runs until SIGINT or SIGTERM.
pub fn run(config: &GatewayConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let _lock = InstanceLock::acquire(&config.interception.pin_path)?;
        config.check_interfaces()?;
        let capacity = server::raise_file_limit();
        let tuning = Tuning::new(&config.tuning)?;
        let upstream = Upstream::resolve(&config.upstream).await?;
        let uplink_manager = UplinkManager::start(ManagerConfig {
            uplinks: config.uplinks.clone(),
            first_table: config.interception.table + 1,
            converters: upstream.converters().to_vec(),
            status_file: sys::run_file(&config.interception.pin_path, "uplinks.json"),
        })?;
        let listener = socket::listen(config.listen, false, true)
            .with_context(|| format!("failed to listen on {} (transparent)", config.listen))?;
        match &upstream {
            Upstream::Converter { addresses, .. } => {
                let converters: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                info!(
                    "gateway listening on {} (transparent), converting via {}",
                    config.listen,
                    converters.join(", then ")
                );
            }
            Upstream::Direct => info!(
                "gateway listening on {} (transparent), MPTCP direct to destinations",
                config.listen
            ),
        }
        let (mut interception, flows) = Interception::install(
            &config.interception,
            config.listen,
            &tuning,
            &upstream.never_intercepted(),
            capacity,
        )?;
        if let Some(logger) = interception.take_logger() {
            tokio::spawn(bpf::forward_log(logger));
        }
        info!("{READY}");
        let upstream_errors = upstream.errors();
        let gateway = Arc::new(Gateway {
            upstream,
            connect_timeout: config.connect_timeout,
            timeouts: config.timeouts,
            tuning,
            pipes: PipePool::for_tuning(&config.tuning),
            flows,
            uplinks: uplink_manager.table(),
            pool: Pool::new(config.pool_size),
            metrics: GatewayMetrics::new(upstream_errors),
        });
        if let Some(address) = config.metrics {
            let scrape = Scrape {
                gateway: Arc::clone(&gateway),
                pin_dir: config.interception.pin_path.clone(),
                netlink: Netlink::connect()?,
            };
            tokio::spawn(metrics::serve(metrics::listen(address)?, Arc::new(scrape)));
        }
        let filler = tokio::spawn(Arc::clone(&gateway.pool).fill(
            {
                let gateway = Arc::clone(&gateway);
                move || gateway.pool_target()
            },
            {
                let gateway = Arc::clone(&gateway);
                move |converter| {
                    let gateway = Arc::clone(&gateway);
                    async move { gateway.connect_warm(converter).await }
                }
            },
        ));
        let signal = server::shutdown_signal()?;
        let shutdown = async {
            follow_lan_interfaces_until(&mut interception, signal).await;
            info!("shutting down: no new flows; live ones get a grace period");
            interception.stop_new_flows();
        };
        serve(listener, Arc::clone(&gateway), shutdown).await;
        filler.abort();
        info!("detaching programs, removing routes and pins");
        drop(interception);
        drop(uplink_manager);
        Ok(())
    })
}

/// Every two seconds until `stop`, re-attaches the LAN program to interfaces that were
/// deleted and created again.
async fn follow_lan_interfaces_until(
    interception: &mut Interception,
    stop: impl Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => interception.follow_lan_interfaces(),
        }
    }
}

/// What a metrics scrape reads: the gateway's tables, its pinned maps and the kernel's
/// interface counters.
struct Scrape {
    gateway: Arc<Gateway>,
    pin_dir: PathBuf,
    netlink: Netlink,
}

impl metrics::Render for Scrape {
    async fn render(&self) -> String {
        let rows = match control::read_uplinks(&self.pin_dir) {
            Ok(rows) => rows,
            Err(error) => {
                debug!("metrics: cannot read the uplinks: {error:#}");
                Vec::new()
            }
        };
        let mut samples = Vec::new();
        for row in rows {
            let interface_bytes = self
                .netlink
                .link_bytes(&row.status.interface)
                .await
                .unwrap_or_default();
            samples.push(UplinkSample {
                state: row.status.health,
                rtt: row
                    .status
                    .rtt_ms
                    .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                subflows: u64::try_from(row.subflows).unwrap_or(u64::MAX),
                interface_bytes,
                interface: row.status.interface,
            });
        }
        let metrics = &self.gateway.metrics;
        metrics.sample(self.gateway.pool.idle(), &samples);
        metrics.text()
    }
}

/// Accepts intercepted connections until `shutdown` resolves, then gives live relays a
/// grace period.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    server::accept_until(listener, shutdown, |stream, peer, tasks| {
        tasks.spawn(handle(stream, peer, Arc::clone(&gateway)));
    })
    .await;
}

async fn handle(mut lan: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>) {
    let local = match lan.local_addr() {
        Ok(local) => local,
        Err(error) => {
            warn!("{peer}: no local address: {error}");
            return;
        }
    };
    let _admitted = gateway.flows.admit();
    let Some((destination, intercepted)) = gateway.flows.original_destination(local, peer) else {
        warn!("{peer} -> {local}: connection to the listener itself, not intercepted; closing");
        return;
    };
    let flow_key = match socket::cookie(&lan) {
        Ok(cookie) => cookie,
        Err(error) => {
            warn!("{peer} -> {destination}: no socket cookie: {error}");
            return;
        }
    };
    let opened = tokio::time::timeout(
        gateway.connect_timeout,
        open_upstream(&lan, destination, flow_key, &gateway),
    )
    .await;
    let (mut upstream, server_early, direct) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            info!("{peer} -> {destination}: {error:#}");
            socket::reset_on_close(&lan);
            return;
        }
        Err(_) => {
            info!(
                "{peer} -> {destination}: no upstream connection within {:?}",
                gateway.connect_timeout
            );
            socket::reset_on_close(&lan);
            return;
        }
    };
    let _counted = gateway.metrics.flow_started(intercepted, direct);
    let _listed = gateway
        .flows
        .register(flow_key, peer, destination, intercepted, direct);
    if let Err(error) = lan.write_all(&server_early).await {
        debug!("{peer} -> {destination}: {error}");
        return;
    }
    gateway
        .metrics
        .relayed
        .down
        .copied
        .inc_by(server_early.len() as u64);
    let relayed = tokio::select! {
        relayed = relay::relay(
            &mut lan, &mut upstream, &gateway.pipes, gateway.timeouts, &gateway.metrics.relayed,
        ) => {
            Some(relayed)
        }
        () = converter_lost(&gateway, direct) => None,
    };
    match relayed {
        Some(Ok(moved)) => debug!(
            "{peer} -> {destination}: done, {} bytes up, {} down",
            moved.forward,
            moved.backward + server_early.len() as u64
        ),
        Some(Err(error)) => info!("{peer} -> {destination}: {error}"),
        None => {
            info!(
                "{peer} -> {destination}: no uplink has reached the converter for {:?}; \
                 resetting the flow",
                gateway.timeouts.dead_path
            );
            socket::reset_on_close(&lan);
            socket::reset_on_close(&upstream);
        }
    }
}

/// Resolves when no uplink has reached the converter for the dead-path timeout: a flow
/// carried through it has had no path for that long. Never for a direct flow.
///
/// The kernel does not end an MPTCP connection whose every subflow died (keepalive only
/// ends the subflows), so the uplinks' probes tell instead.
async fn converter_lost(gateway: &Gateway, direct: bool) {
    if direct || !matches!(gateway.upstream, Upstream::Converter { .. }) {
        return std::future::pending().await;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        if gateway
            .uplinks
            .converter_unreachable_for()
            .is_some_and(|unreachable| unreachable >= gateway.timeouts.dead_path)
        {
            return;
        }
    }
}

/// Opens the flow's upstream connection: through the converter, or straight to the
/// destination when the converter is known to be away or cannot take the flow, so that
/// an outage costs the household aggregation, not its connections. Returns the
/// connection, the destination's bytes that came with the converter's answer, and
/// whether the flow goes direct.
async fn open_upstream(
    lan: &TcpStream,
    destination: SocketAddr,
    flow_key: u64,
    gateway: &Gateway,
) -> anyhow::Result<(TcpStream, Vec<u8>, bool)> {
    let configure = |socket: &socket2::Socket| {
        gateway.tuning.apply(socket)?;
        gateway.flows.label(socket, flow_key)
    };
    let attempts = gateway.uplinks.attempts();
    let converters = gateway.upstream.converters();
    if converters.is_empty() {
        // --direct
        let stream = Upstream::open_direct(destination, &attempts, configure).await?;
        return Ok((stream, Vec::new(), false));
    }
    let mut early = Vec::new();
    if !gateway.uplinks.converter_down() {
        // The active converter first, then the others in their order.
        let first = gateway.uplinks.active_converter();
        let mut last_failure = None;
        for attempt in 0..converters.len() {
            let converter = converters[(first + attempt) % converters.len()];
            let warm = if attempt == 0 {
                let source = attempts.first().map(|attempt| attempt.source);
                gateway.pool.take(converter, source)
            } else {
                None
            };
            if let Some(warm) = &warm {
                gateway.flows.label(warm, flow_key)?;
            }
            match gateway
                .upstream
                .open(
                    lan,
                    destination,
                    converter,
                    &early,
                    &attempts,
                    configure,
                    warm,
                )
                .await
            {
                Ok((stream, server_early)) => return Ok((stream, server_early, false)),
                Err(OpenError::Failed(error)) => return Err(error),
                Err(OpenError::ConverterUnavailable {
                    reason,
                    early: read,
                }) => {
                    last_failure = Some(reason);
                    early = read;
                }
            }
        }
        if let Some(reason) = last_failure {
            gateway.uplinks.report_converter_failure(&reason);
        }
    }
    let mut stream = Upstream::open_direct(destination, &attempts, configure).await?;
    stream
        .write_all(&early)
        .await
        .context("sending the client's first bytes")?;
    Ok((stream, Vec::new(), true))
}
