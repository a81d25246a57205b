//! Port forwards: inbound connections to public ports of the converter reach LAN hosts,
//! over MPTCP connections the gateway dialed out (so carrier-grade NAT on every uplink
//! does not matter), with subflows on every uplink like any flow's.
//!
//! The gateway keeps [`forward::OFFERS_KEPT`] connections on offer at the active
//! converter, each claiming every forwarded port ([`crate::protocol::forward`]). When
//! the converter hands one an inbound connection, a new one takes its place at once,
//! and the handed one carries the flow to the LAN host ([`inbound`]). The converter's
//! answers (served, or why not) go to the log when they change and to a status file
//! that `mptcp-user flows` shows.
//!
//! - [`config`]: a forward as configured.
//! - [`inbound`]: one inbound flow, from the converter's connection to the LAN host.

pub mod config;
pub mod inbound;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    task::JoinSet,
    time::Instant,
};

use super::{Gateway, upstream};
use crate::{
    lock,
    net::socket,
    protocol::{
        codec::{ErrorCode, Response},
        cookie::{Key, Subject, create_random_file, from_hex, unix_now},
        forward::{self, Claim, GatewayId, Inbound, PortStatus},
        wire,
    },
    sys,
};
pub use config::{ForwardConfig, Source};

/// How long to wait before offering again after the converter refused every port (a
/// port another gateway holds may come free).
const REFUSED_BACKOFF: Duration = Duration::from_secs(5);
/// How long to wait after a connection failed.
const FAILED_BACKOFF: Duration = Duration::from_secs(1);
/// While the converter refuses some port (another gateway holds it), the connections
/// on offer are replaced after this long, so that the claim is made again and the port
/// is won once the other gateway is gone.
const RECLAIM_AFTER: Duration = Duration::from_secs(10);

/// The file, beside the daemon's lock under /run, where the gateway that pins its maps
/// in `pin_dir` writes its forwards' status.
pub fn status_path(pin_dir: &Path) -> PathBuf {
    sys::run_file(pin_dir, "forwards.json")
}

/// One forward's state, as `mptcp-user flows` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    /// The converter's public port.
    pub public: u16,
    /// The LAN host it reaches.
    pub to: SocketAddr,
    /// The converter last asked, if any.
    pub converter: Option<SocketAddr>,
    /// `served`, `waiting` (no answer yet) or why the converter refused it.
    pub state: String,
}

/// Reads the forwards' status written by the gateway that pins its maps in `pin_dir`;
/// none when it forwards nothing.
pub fn read_status(pin_dir: &Path) -> Vec<ForwardStatus> {
    std::fs::read_to_string(status_path(pin_dir))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// A gateway's forwards and what the converter said of them.
pub struct Forwarding {
    forwards: Vec<ForwardConfig>,
    gateway: GatewayId,
    statuses: Mutex<BTreeMap<u16, ForwardStatus>>,
    /// Whether the converter's last answer refused a port that claiming again may get.
    contested: AtomicBool,
    status_file: PathBuf,
}

impl Forwarding {
    /// `forwards`, claimed as `gateway`, their status written to `status_file`.
    pub fn new(forwards: Vec<ForwardConfig>, gateway: GatewayId, status_file: PathBuf) -> Self {
        let statuses = forwards
            .iter()
            .map(|forward| {
                let status = ForwardStatus {
                    public: forward.public,
                    to: forward.to,
                    converter: None,
                    state: "waiting".to_owned(),
                };
                (forward.public, status)
            })
            .collect();
        let forwarding = Self {
            forwards,
            gateway,
            statuses: Mutex::new(statuses),
            contested: AtomicBool::new(false),
            status_file,
        };
        if forwarding.any() {
            forwarding.write_status();
        }
        forwarding
    }

    /// Whether there is any forward.
    pub fn any(&self) -> bool {
        !self.forwards.is_empty()
    }

    /// The forward of public port `port`.
    pub fn find(&self, port: u16) -> Option<&ForwardConfig> {
        self.forwards.iter().find(|forward| forward.public == port)
    }

    /// The claim of every forwarded port, signed with `key` now.
    fn claim(&self, key: &Key) -> anyhow::Result<Claim> {
        let mut claim = Claim {
            gateway: self.gateway,
            ports: self.forwards.iter().map(|forward| forward.public).collect(),
            cookie: None,
        };
        claim.cookie = Some(key.cookie(Subject::Forward(claim.subject()), unix_now())?);
        Ok(claim)
    }

    /// Takes what `converter` said of each port; a change goes to the log.
    fn note(&self, converter: SocketAddr, said: impl Fn(u16) -> String) {
        let mut changed = false;
        for status in lock(&self.statuses).values_mut() {
            let state = said(status.public);
            if status.state == state && status.converter == Some(converter) {
                continue;
            }
            changed = true;
            if state == "served" {
                info!(
                    "port forward {} -> {}: served by the converter {converter}",
                    status.public, status.to
                );
            } else {
                warn!(
                    "port forward {} -> {}: the converter {converter} {state}",
                    status.public, status.to
                );
            }
            status.state = state;
            status.converter = Some(converter);
        }
        if changed {
            self.write_status();
        }
    }

    fn write_status(&self) {
        let statuses: Vec<ForwardStatus> = lock(&self.statuses).values().cloned().collect();
        if let Err(error) = sys::write_json_replacing(&self.status_file, &statuses) {
            debug!("cannot write {}: {error}", self.status_file.display());
        }
    }

    /// Removes the status file (at shutdown).
    pub fn remove_status(&self) {
        let _ = std::fs::remove_file(&self.status_file);
    }
}

/// The gateway's identifier, kept in `state_dir` so that a restart keeps its ports;
/// made at the first start.
pub fn gateway_id(state_dir: &Path) -> anyhow::Result<GatewayId> {
    let path = state_dir.join("gateway-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => from_hex(text.trim(), "a gateway identifier")
            .map(GatewayId)
            .with_context(|| format!("bad gateway identifier in {}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            sys::private_dir(state_dir)?;
            create_random_file(&path).map(GatewayId)
        }
        Err(error) => Err(anyhow!(error).context(format!("cannot read {}", path.display()))),
    }
}

/// The forwards of `config`; the gateway's identifier is read (or made) only when
/// there are any.
pub fn configured(config: &super::GatewayConfig) -> anyhow::Result<Forwarding> {
    let gateway = if config.forwards.is_empty() {
        GatewayId([0; 16])
    } else {
        gateway_id(&config.state_dir)?
    };
    Ok(Forwarding::new(
        config.forwards.clone(),
        gateway,
        status_path(&config.interception.pin_path),
    ))
}

/// What became of a connection offered to the converter.
enum Offered {
    /// It carries an inbound flow now: another takes its place at once.
    Handed,
    /// The converter refused every port, or the claim (or there is no key to make one).
    Refused,
    /// It failed (no answer, closed, reset), or the converter retired it.
    Failed,
}

/// The connections on offer: those of the current generation (made since the last
/// replacement) and older ones the converter has not retired yet.
struct Offers {
    tasks: JoinSet<Offered>,
    /// The generation of each task, by its id.
    generations: HashMap<tokio::task::Id, u64>,
    generation: u64,
    since: Instant,
}

impl Offers {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            generations: HashMap::new(),
            generation: 0,
            since: Instant::now(),
        }
    }

    /// Connections of the current generation still open.
    fn fresh(&self) -> usize {
        self.generations
            .values()
            .filter(|&&generation| generation == self.generation)
            .count()
    }

    fn spawn(&mut self, offering: impl Future<Output = Offered> + Send + 'static) {
        let id = self.tasks.spawn(offering).id();
        self.generations.insert(id, self.generation);
    }

    /// Starts a new generation: the older connections stay open until the converter
    /// retires them, as the new ones arrive ([`forward::OFFERS_KEPT`]).
    fn replace(&mut self) {
        self.generation += 1;
        self.since = Instant::now();
    }

    /// Closes every connection (they were offered to another converter).
    fn abort_all(&mut self) {
        self.tasks.abort_all();
        self.replace();
    }

    /// What became of the next connection of the current generation to end; `None`
    /// once there is no connection at all. Cancel-safe.
    async fn next_fresh(&mut self) -> Option<Offered> {
        loop {
            let (id, finished) = match self.tasks.join_next_with_id().await? {
                Ok((id, offered)) => (id, Some(offered)),
                Err(error) => (error.id(), None),
            };
            if self.generations.remove(&id) == Some(self.generation)
                && let Some(offered) = finished
            {
                return Some(offered);
            }
        }
    }
}

/// Keeps [`forward::OFFERS_KEPT`] connections on offer at the active converter, for
/// the daemon's life; follows a change of converter, and waits while none is reachable.
///
/// When an uplink stops or starts reaching the converter, the connections on offer are
/// replaced: an old one keeps a subflow on a line that died silently, which the
/// converter may send an inbound flow's first bytes on and wait a retransmission
/// timeout (0.7 s measured), and one made while a line was down has no subflow on it.
/// They are replaced too every [`RECLAIM_AFTER`] while the converter refuses a port that
/// may come free, so that the claim is made again.
pub async fn serve(gateway: Arc<Gateway>) {
    let mut offers = Offers::new();
    let mut current = (None, BTreeSet::new());
    let mut retry_at = Instant::now();
    loop {
        let now = (gateway.converters.active(), working_uplinks(&gateway));
        if now.0 != current.0 {
            offers.abort_all();
        } else if now != current
            || (gateway.forwarding.contested.load(Ordering::Relaxed)
                && offers.since.elapsed() >= RECLAIM_AFTER)
        {
            offers.replace();
        }
        current = now;
        if let Some(converter) = current.0
            && Instant::now() >= retry_at
        {
            for _ in offers.fresh()..forward::OFFERS_KEPT {
                offers.spawn(offer(Arc::clone(&gateway), converter));
            }
        }
        let finished = tokio::select! {
            Some(finished) = offers.next_fresh() => finished,
            () = tokio::time::sleep(Duration::from_millis(250)) => continue,
        };
        match finished {
            Offered::Handed => {}
            Offered::Refused => retry_at = Instant::now() + REFUSED_BACKOFF,
            Offered::Failed => retry_at = retry_at.max(Instant::now() + FAILED_BACKOFF),
        }
    }
}

/// The uplinks whose probes reach the converter now.
fn working_uplinks(gateway: &Gateway) -> BTreeSet<std::net::Ipv4Addr> {
    gateway
        .uplinks
        .snapshot()
        .iter()
        .filter(|uplink| uplink.health.reaches_converter())
        .filter_map(|uplink| uplink.address)
        .collect()
}

/// Offers one connection to `converter` and, when an inbound flow comes on it, hands
/// it to [`inbound::serve`].
async fn offer(gateway: Arc<Gateway>, converter: SocketAddr) -> Offered {
    match try_offer(&gateway, converter).await {
        Ok(offered) => offered,
        Err(error) => {
            debug!("a connection on offer to {converter} failed: {error:#}");
            Offered::Failed
        }
    }
}

async fn try_offer(gateway: &Arc<Gateway>, converter: SocketAddr) -> anyhow::Result<Offered> {
    let Some(key) = gateway.upstream.key() else {
        return Ok(Offered::Refused);
    };
    let forwarding = &gateway.forwarding;
    let mut stream = gateway.connect_warm(converter).await?;
    let claim = forwarding.claim(&key)?.to_message().encode()?;
    // What came after the answer is kept: the converter may hand this connection an
    // inbound flow the moment it has answered, and its Inbound TLV then arrives with
    // the answer.
    let (answer, after_answer) = tokio::time::timeout(upstream::CONVERTER_TIMEOUT, async {
        stream.write_all(&claim).await?;
        anyhow::Ok(wire::read_message(&mut stream).await?)
    })
    .await
    .map_err(|_| anyhow!("no answer within {:?}", upstream::CONVERTER_TIMEOUT))??;
    let Some(statuses) = forward::statuses(&answer) else {
        let refusal = match Response::from_message(&answer) {
            Response::Error(ErrorCode::ResourceExceeded) => return Ok(Offered::Failed),
            Response::Error(code) => format!("refused the claim: {code}"),
            Response::Connected => "answered the claim without a status".to_owned(),
        };
        forwarding.note(converter, |_| refusal.clone());
        return Ok(Offered::Refused);
    };
    forwarding.note(converter, |port| {
        statuses
            .iter()
            .find(|&&(claimed, _)| claimed == port)
            .map_or_else(
                || "did not answer for it".to_owned(),
                |(_, status)| status.describe(),
            )
    });
    forwarding.contested.store(
        statuses.iter().any(|&(_, status)| status.may_change()),
        Ordering::Relaxed,
    );
    if !statuses
        .iter()
        .any(|&(_, status)| status == PortStatus::Served)
    {
        return Ok(Offered::Refused);
    }
    // A converter that died while this waited is noticed by the keepalive.
    socket::detect_dead_peer(&stream, gateway.timeouts.dead_path)?;
    let mut reader = after_answer.as_slice().chain(&mut stream);
    let (message, mut early) = wire::read_message(&mut reader).await?;
    let (unread, _) = reader.into_inner();
    early.extend_from_slice(unread);
    let inbound = Inbound::from_message(&message)
        .ok_or_else(|| anyhow!("the converter sent no Inbound TLV on a connection on offer"))?;
    tokio::spawn(inbound::serve(Arc::clone(gateway), stream, inbound, early));
    Ok(Offered::Handed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_identifier_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("mptcp-gateway-id-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = gateway_id(&dir).unwrap();
        assert_eq!(gateway_id(&dir).unwrap(), first);
        std::fs::write(dir.join("gateway-id"), "not hex\n").unwrap();
        assert!(gateway_id(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
