//! The gateway daemon: accepts intercepted LAN connections on a transparent listener,
//! opens an MPTCP connection for each (to the remote converter, or straight to the
//! original destination with `--direct`), and relays.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use log::{debug, info, warn};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
};

use crate::{
    auth::{self, Key},
    cli::GatewayArgs,
    interception::Interception,
    protocol::{Request, Response},
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
    /// The in-kernel redirect: original destinations and the flow list.
    pub interception: Interception,
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
        let never: Vec<_> = match &upstream {
            Upstream::Remote { address, .. } => vec![address.ip()],
            Upstream::Direct => Vec::new(),
        };
        let interception = Interception::install(args, &tuning, &never)?;
        // Tests and scripts wait for this line.
        info!("gateway ready");
        let gateway = Arc::new(Gateway {
            upstream,
            listen: args.listen,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            idle_timeout: Duration::from_secs(args.idle_timeout),
            tuning,
            pipes: PipePool::new(256),
            interception,
        });
        let follower = tokio::spawn(follow_lan_interfaces(Arc::clone(&gateway)));
        let signal = server::shutdown_signal()?;
        let shutdown = async {
            signal.await;
            follower.abort();
            info!("shutting down: no new flows; live ones get a grace period");
            gateway.interception.stop_new_flows();
        };
        serve(listener, Arc::clone(&gateway), shutdown).await;
        info!("detaching programs, removing routes and pins");
        drop(gateway);
        Ok(())
    })
}

/// Every two seconds, re-attaches the LAN program to `--lan` interfaces that were
/// deleted and created again.
async fn follow_lan_interfaces(gateway: Arc<Gateway>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(2));
    loop {
        ticks.tick().await;
        gateway.interception.follow_lan_interfaces();
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
    let Some((destination, intercepted)) = gateway.interception.original_destination(local, peer)
    else {
        warn!("{peer} -> {local}: connection to the listener itself, not intercepted; closing");
        return;
    };
    let flow_key = match sys::socket_cookie(&lan) {
        Ok(cookie) => cookie,
        Err(error) => {
            warn!("{peer} -> {destination}: no socket cookie: {error}");
            return;
        }
    };
    let _listed = gateway
        .interception
        .register(flow_key, peer, destination, intercepted);
    let opened = tokio::time::timeout(
        gateway.connect_timeout,
        open_upstream(&lan, destination, flow_key, &gateway),
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
    flow_key: u64,
    gateway: &Gateway,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let configure = |socket: &socket2::Socket| {
        gateway.tuning.apply(socket)?;
        gateway.interception.label(socket, flow_key)
    };
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
