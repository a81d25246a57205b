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
//! - [`converters`]: which converter new flows go through, and whether any is reachable.
//! - [`pool`]: warm connections to the converter, opened before flows need them.
//! - [`forwards`]: port forwards, inbound connections from the converter to LAN hosts.
//! - [`uplinks`]: the internet links the MPTCP subflows use.
//! - [`control`]: the commands that read and edit a running gateway.
//! - [`speedtest`]: `mptcp-user speedtest`, each uplink and all of them measured.

pub mod cgroups;
pub mod control;
pub mod converters;
pub mod flows;
pub mod forwards;
pub mod interception;
pub mod pool;
pub mod routes;
pub mod selection;
pub mod speedtest;
pub mod status;
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
    limited,
    log_limit::LogLimit,
    metrics::{self, GatewayMetrics, UplinkSample},
    net::{
        netlink::Netlink,
        relay::{self, PipePool, Timeouts},
        server, socket,
    },
    sys::{self, InstanceLock},
};
use converters::Converters;
use flows::{Carried, FlowTable};
use forwards::{ForwardConfig, Forwarding};
use interception::{Interception, InterceptionConfig};
use mptcp_ebpf_common::flows::WARM_FLOW;
use pool::{Pool, Target};
use uplinks::{ManagerConfig, UplinkConfig, UplinkManager, UplinkTable};
use upstream::{OpenError, Upstream, UpstreamConfig};

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
    /// Whether what is not converted follows the uplinks' health.
    pub steer_unconverted: bool,
    /// Where what must survive a restart is kept.
    pub state_dir: PathBuf,
    /// Congestion control and buffers of the MPTCP connections and subflows.
    pub tuning: TuningConfig,
    /// Most warm connections to the converter (0: none).
    pub pool_size: usize,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where the status page is served, if anywhere.
    pub status: Option<SocketAddr>,
    /// Public ports of the converter whose connections reach LAN hosts.
    pub forwards: Vec<ForwardConfig>,
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
    /// The converter new flows go through.
    pub converters: Arc<Converters>,
    /// Warm connections to the converter.
    pub pool: Arc<Pool>,
    /// What the metrics count.
    pub metrics: GatewayMetrics,
    /// The port forwards and what the converter said of them.
    pub forwarding: Forwarding,
}

impl Gateway {
    /// Where new flows go now, for the pool.
    fn pool_target(&self) -> Target {
        Target {
            converter: self.converters.active(),
            source: self
                .uplinks
                .attempts()
                .first()
                .map(|attempt| attempt.source),
        }
    }

    /// Starts the tasks that open connections to the converter before flows need them:
    /// the pool's warm ones, and the ones on offer for the port forwards, if any.
    fn open_connections_ahead(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let target = Arc::clone(self);
        let connect = Arc::clone(self);
        let mut tasks = vec![tokio::spawn(Arc::clone(&self.pool).fill(
            move || target.pool_target(),
            move |converter| {
                let gateway = Arc::clone(&connect);
                async move { gateway.connect_warm(converter).await }
            },
        ))];
        if self.forwarding.any() {
            tasks.push(tokio::spawn(forwards::serve(Arc::clone(self))));
        }
        tasks
    }

    /// Opens a warm connection to `converter` as a flow's would be opened, for the pool
    /// and the port forwards' connections on offer.
    pub(crate) async fn connect_warm(&self, converter: SocketAddr) -> std::io::Result<TcpStream> {
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

/// `mptcp-user gateway`: runs until SIGINT or SIGTERM; on SIGHUP, reads its key file
/// again.
pub fn run(config: &GatewayConfig) -> anyhow::Result<()> {
    let missing = sys::missing_capabilities(&sys::GATEWAY_CAPABILITIES)?;
    if !missing.is_empty() {
        bail!(
            "{} (missing: {})",
            sys::NEEDS_PRIVILEGES,
            missing.join(", ")
        );
    }
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let _lock = InstanceLock::acquire(&config.interception.pin_path)?;
        config.check_interfaces()?;
        let room = server::raise_file_limit();
        let tuning = Tuning::new(&config.tuning)?;
        let upstream = Upstream::resolve(&config.upstream).await?;
        let converters = Arc::new(Converters::new(upstream.converters().to_vec()));
        let uplink_manager = UplinkManager::start(ManagerConfig {
            uplinks: config.uplinks.clone(),
            first_table: config.interception.table + 1,
            converters: Arc::clone(&converters),
            status_file: uplinks::status_path(&config.interception.pin_path),
            steer: config.steer_unconverted,
            state_dir: config.state_dir.clone(),
        })?;
        let listener = socket::listen(config.listen, false, true, room.backlog)
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
            &listener,
            &tuning,
            &upstream.never_intercepted(),
            room.flows,
        )?;
        if let Some(logger) = interception.take_logger() {
            tokio::spawn(bpf::forward_log(logger));
        }
        let forwarding = forwards::configured(config)?;
        let upstream_errors = upstream.errors();
        let gateway = Arc::new(Gateway {
            upstream,
            connect_timeout: config.connect_timeout,
            timeouts: config.timeouts,
            tuning,
            pipes: PipePool::for_tuning(&config.tuning),
            flows,
            uplinks: uplink_manager.table(),
            converters,
            pool: Pool::new(config.pool_size),
            metrics: GatewayMetrics::new(upstream_errors),
            forwarding,
        });
        // The key only: other options need a restart.
        let reloading = Arc::clone(&gateway);
        server::reload_on_hangup("the key in use", move || reloading.upstream.reload_key())?;
        info!("{READY}");
        if let Some(address) = config.metrics {
            let scrape = Scrape {
                gateway: Arc::clone(&gateway),
                pin_dir: config.interception.pin_path.clone(),
                netlink: Netlink::connect()?,
            };
            tokio::spawn(metrics::serve(metrics::listen(address)?, Arc::new(scrape)));
        }
        if let Some(address) = config.status {
            let pin_dir = config.interception.pin_path.clone();
            status::start(address, Arc::clone(&gateway), pin_dir)?;
        }
        let connections_ahead = gateway.open_connections_ahead();
        let signal = server::shutdown_signal()?;
        let shutdown = async {
            follow_lan_interfaces_until(&mut interception, signal).await;
            info!("shutting down: no new flows; live ones get a grace period");
            interception.stop_new_flows();
            // No more warm connections, nor offers of inbound ones.
            for task in &connections_ahead {
                task.abort();
            }
        };
        serve(listener, Arc::clone(&gateway), shutdown).await;
        gateway.forwarding.remove_status();
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
        let statuses = self.gateway.uplinks.snapshot();
        let rows = match control::uplink_rows(&self.pin_dir, statuses) {
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
                carries: row.status.carries.clone(),
                usage: (row.status.usage_bytes, row.status.allowance_bytes),
                interface: row.status.interface,
            });
        }
        let metrics = &self.gateway.metrics;
        metrics.sample(self.gateway.pool.idle(), &samples);
        metrics.text()
    }
}

/// Log lines of connections made to the listener itself (only local processes can: the
/// sk_lookup program drops the others).
static NOT_INTERCEPTED: LogLimit = LogLimit::new(10, Duration::from_secs(10));

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
        limited!(
            NOT_INTERCEPTED,
            warn,
            "{peer} -> {local}: connection to the listener itself, not intercepted; closing"
        );
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
    let Opened {
        stream: mut upstream,
        server_early,
        carried,
    } = match opened {
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
    let _counted = gateway.metrics.flow_started(intercepted, carried);
    let _listed = gateway
        .flows
        .register(flow_key, peer, destination, intercepted, carried);
    if let Err(error) = lan.write_all(&server_early).await {
        debug!("{peer} -> {destination}: {error}");
        return;
    }
    relay_flow(
        &mut lan,
        &mut upstream,
        carried,
        &gateway,
        (peer, destination),
        server_early.len(),
    )
    .await;
}

/// Relays a flow between its LAN connection and its MPTCP connection until both
/// sides are done, or until no uplink has reached the converter that carries it for
/// the dead-path timeout (then both are reset). `ends` name the flow in the log;
/// `early_down` bytes reached the LAN before (counted here).
async fn relay_flow(
    lan: &mut TcpStream,
    upstream: &mut TcpStream,
    carried: Carried,
    gateway: &Gateway,
    (peer, destination): (SocketAddr, SocketAddr),
    early_down: usize,
) {
    gateway
        .metrics
        .relayed
        .down
        .copied
        .inc_by(early_down as u64);
    // Only a flow carried through a converter depends on the uplinks reaching it.
    let converter_lost = async {
        match carried {
            Carried::Converter => gateway.converters.lost(gateway.timeouts.dead_path).await,
            Carried::Direct | Carried::Fallback => std::future::pending().await,
        }
    };
    let relayed = tokio::select! {
        relayed = relay::relay(
            lan, upstream, &gateway.pipes, gateway.timeouts, &gateway.metrics.relayed,
        ) => {
            Some(relayed)
        }
        () = converter_lost => None,
    };
    match relayed {
        Some(Ok(moved)) => debug!(
            "{peer} -> {destination}: done, {} bytes up, {} down",
            moved.forward,
            moved.backward + early_down as u64
        ),
        Some(Err(error)) => info!("{peer} -> {destination}: {error}"),
        None => {
            info!(
                "{peer} -> {destination}: no uplink has reached the converter for {:?}; \
                 resetting the flow",
                gateway.timeouts.dead_path
            );
            socket::reset_on_close(lan);
            socket::reset_on_close(upstream);
        }
    }
}

/// A flow's upstream connection, as [`open_upstream`] opened it.
struct Opened {
    /// The MPTCP connection (to a converter, or to the destination).
    stream: TcpStream,
    /// The destination's bytes that came with the converter's answer.
    server_early: Vec<u8>,
    /// How the flow is carried.
    carried: Carried,
}

/// Opens the flow's upstream connection: through the converter, or straight to the
/// destination when the converter is known to be away or cannot take the flow, so that
/// an outage costs the household aggregation, not its connections.
async fn open_upstream(
    lan: &TcpStream,
    destination: SocketAddr,
    flow_key: u64,
    gateway: &Gateway,
) -> anyhow::Result<Opened> {
    let configure = |socket: &socket2::Socket| {
        gateway.tuning.apply(socket)?;
        gateway.flows.label(socket, flow_key)
    };
    let attempts = gateway.uplinks.attempts();
    if gateway.converters.addresses().is_empty() {
        let stream = Upstream::open_direct(destination, &attempts, configure).await?;
        return Ok(Opened {
            stream,
            server_early: Vec::new(),
            carried: Carried::Direct,
        });
    }
    let mut early = Vec::new();
    let mut last_failure = None;
    // The active converter first (with a warm connection if one is ready), then the
    // others in their order; none while they are known to be away.
    for (attempt, converter) in gateway.converters.in_order().into_iter().enumerate() {
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
            Ok((stream, server_early)) => {
                return Ok(Opened {
                    stream,
                    server_early,
                    carried: Carried::Converter,
                });
            }
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
        gateway.converters.report_failure(&reason);
    }
    let mut stream = Upstream::open_direct(destination, &attempts, configure).await?;
    stream
        .write_all(&early)
        .await
        .context("sending the client's first bytes")?;
    Ok(Opened {
        stream,
        server_early: Vec::new(),
        carried: Carried::Fallback,
    })
}
