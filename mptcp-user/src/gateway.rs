//! The gateway daemon: accepts intercepted LAN connections on a transparent listener,
//! opens an MPTCP connection for each (to the remote converter, or straight to the
//! original destination with `--direct`), and relays.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use aya_log::EbpfLogger;
use log::{debug, error, info, warn};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use crate::{
    auth::{self, Key},
    cli::GatewayArgs,
    ebpf::Programs,
    protocol::{self, Request, Response},
    relay::{self, PipePool},
    server,
    sys::{self, InstanceLock},
    tuning::Tuning,
    wire,
};

/// Where the gateway sends intercepted connections.
pub enum Upstream {
    /// Through the remote converter at this address, authenticated with this key.
    Remote {
        /// The converter's address.
        address: SocketAddr,
        /// The pre-shared key for the cookie.
        key: Key,
    },
    /// MPTCP straight to the original destination (plain TCP if it does not speak MPTCP).
    Direct,
}

/// Settings of a running gateway.
pub struct Gateway {
    /// Where connections go.
    pub upstream: Upstream,
    /// The transparent listener's own address, never a destination (that would loop).
    pub listen: SocketAddr,
    /// How long opening the upstream connection may take, response included.
    pub connect_timeout: Duration,
    /// Relays with no traffic for this long are reset.
    pub idle_timeout: Duration,
    /// Congestion control and buffer of the MPTCP connections.
    pub tuning: Tuning,
    /// Pipes for the relays.
    pub pipes: PipePool,
}

/// `mptcp-user gateway`: runs until SIGINT or SIGTERM.
pub fn run(args: &GatewayArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let _lock = InstanceLock::acquire(&args.pin_path)?;
        let tuning = Tuning::new(&args.tuning)?;
        // clap makes --remote and --key-file required unless --direct, and excludes both
        // with it.
        let upstream = match &args.remote {
            None => Upstream::Direct,
            Some(remote) => {
                let key_file = args
                    .key_file
                    .as_ref()
                    .context("--remote needs --key-file (see `mptcp-user keygen`)")?;
                let address = tokio::net::lookup_host(remote)
                    .await
                    .with_context(|| format!("cannot resolve {remote}"))?
                    .next()
                    .with_context(|| format!("{remote} has no address"))?;
                Upstream::Remote {
                    address,
                    key: Key::load(key_file)?,
                }
            }
        };
        let mut programs = Programs::load()?;
        if let Some(logger) = programs.take_logger() {
            tokio::spawn(drain_ebpf_log(logger));
        }
        for cgroup in &args.cgroups {
            programs.attach_sock_ops(cgroup)?;
            info!("watching TCP connections of cgroup {}", cgroup.display());
        }
        programs.pin_maps(&args.pin_path)?;
        let listener = sys::listen(args.listen, false, true)
            .with_context(|| format!("failed to listen on {} (transparent)", args.listen))?;
        match &upstream {
            Upstream::Remote { address, .. } => info!(
                "gateway listening on {} (transparent), converting via {address}",
                args.listen
            ),
            Upstream::Direct => info!(
                "gateway listening on {} (transparent), MPTCP direct to destinations",
                args.listen
            ),
        }
        let gateway = Arc::new(Gateway {
            upstream,
            listen: args.listen,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            tuning,
            pipes: PipePool::new(256),
        });
        serve(listener, gateway, server::shutdown_signal()?).await;
        info!("shutting down: detaching programs and removing pins");
        drop(programs);
        Ok(())
    })
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
    // With IP_TRANSPARENT, the accepted socket's local address is where the client
    // wanted to go.
    let destination = match lan.local_addr() {
        Ok(local) => SocketAddr::new(protocol::canonical_ip(local.ip()), local.port()),
        Err(error) => {
            warn!("{peer}: no original destination: {error}");
            return;
        }
    };
    if destination == gateway.listen
        || (destination.port() == gateway.listen.port() && gateway.listen.ip().is_unspecified())
    {
        warn!(
            "{peer} -> {destination}: connection to the listener itself, not intercepted; closing"
        );
        return;
    }
    let opened = tokio::time::timeout(
        gateway.connect_timeout,
        open_upstream(&lan, destination, &gateway),
    )
    .await;
    let (mut upstream, server_early) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(error)) => {
            info!("{peer} -> {destination}: {error:#}");
            sys::reset_on_close(&lan);
            return;
        }
        Err(_) => {
            info!(
                "{peer} -> {destination}: no upstream connection within {:?}",
                gateway.connect_timeout
            );
            sys::reset_on_close(&lan);
            return;
        }
    };
    if let Err(error) = lan.write_all(&server_early).await {
        debug!("{peer} -> {destination}: {error}");
        return;
    }
    match relay::relay(
        &mut lan,
        &mut upstream,
        &gateway.pipes,
        gateway.idle_timeout,
    )
    .await
    {
        Ok(moved) => debug!(
            "{peer} -> {destination}: done, {} bytes up, {} down",
            moved.forward,
            moved.backward + server_early.len() as u64
        ),
        Err(error) => info!("{peer} -> {destination}: {error}"),
    }
}

/// Opens the MPTCP connection for one flow; through the converter, the Convert request
/// and the client's first bytes leave in one write (one segment when they fit), so the
/// request costs no extra round trip. Returns the connection and any destination bytes
/// that arrived with the converter's answer.
async fn open_upstream(
    lan: &TcpStream,
    destination: SocketAddr,
    gateway: &Gateway,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let configure = |socket: &socket2::Socket| gateway.tuning.apply(socket);
    let (remote, key) = match &gateway.upstream {
        Upstream::Direct => {
            let stream = sys::connect(destination, true, configure)
                .await
                .context("MPTCP connect to the destination failed")?;
            return Ok((stream, Vec::new()));
        }
        Upstream::Remote { address, key } => (*address, key),
    };
    let mut stream = sys::connect(remote, true, configure)
        .await
        .with_context(|| format!("MPTCP connect to the converter {remote} failed"))?;
    let request = Request {
        destination,
        cookie: Some(key.cookie(destination, auth::unix_now())?),
    };
    let mut first_segment = request.to_message().encode()?;
    // Whatever the client sent while we connected: most clients speak first.
    let mut early = vec![0u8; 16 * 1024];
    match lan.try_read(&mut early) {
        Ok(n) => first_segment.extend_from_slice(&early[..n]),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(error) => return Err(error).context("reading the client's first bytes"),
    }
    stream.write_all(&first_segment).await?;
    let (message, server_early) = wire::read_message(&mut stream)
        .await
        .context("no valid answer from the converter")?;
    match Response::from_message(&message) {
        Response::Connected => Ok((stream, server_early)),
        Response::Error(code) => bail!("the converter refused: {code}"),
    }
}

/// Forwards the eBPF programs' log records to env_logger as they arrive.
async fn drain_ebpf_log(logger: EbpfLogger<&'static dyn log::Log>) {
    let mut logger = match sys::register_readable(logger) {
        Ok(logger) => logger,
        Err(error) => {
            error!("cannot poll the eBPF log ring buffer: {error}");
            return;
        }
    };
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                error!("eBPF log ring buffer failed: {error}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
