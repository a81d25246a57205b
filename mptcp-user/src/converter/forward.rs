//! Port forwards: public ports of the converter whose inbound connections go to a
//! household behind any NAT, over MPTCP connections its gateway opened beforehand.
//!
//! A gateway claims ports on connections it offers ([`serve_claim`]); the converter
//! listens on a port only while a gateway with a valid cookie serves it, and only if
//! its `forward-ports` include it. The first gateway to claim a port keeps it while it
//! has a connection on offer, and for [`GRACE`] after its last one went (a reconnect);
//! then the port closes, and a stranger's connection to it is refused by the kernel. An
//! inbound connection takes the oldest offered connection of the port's gateway (the
//! one most likely to have its subflows up), waiting [`HANDOFF_PATIENCE`] at most while
//! the gateway replaces the ones taken. A gateway's newest [`OFFERS_KEPT`] connections
//! stay on offer: the converter closes older idle ones, so that a gateway replaces its
//! connections without closing one that an inbound connection may be taking.

use std::{
    collections::{HashMap, VecDeque},
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::bail;
use log::{debug, info, warn};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
    task::AbortHandle,
    time::Instant,
};

use super::{Converter, accounts::Account, admission::PendingSlot};
use crate::{
    limited, lock,
    log_limit::LogLimit,
    net::{relay, server, socket},
    protocol::{
        codec::ErrorCode,
        forward::{self, Claim, GatewayId, Inbound, OFFERS_KEPT, PortStatus},
    },
};

/// How long a gateway keeps its ports once it has no connection on offer: a gateway
/// that reconnects (a converter restart, an uplink change) finds them still its own.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long an inbound connection waits for a connection of its gateway when every
/// offered one is taken; then it is reset.
pub const HANDOFF_PATIENCE: Duration = Duration::from_secs(3);
/// The listen queue of a public port.
const BACKLOG: u32 = 128;

/// Inbound connections refused for want of a gateway connection: what strangers cause.
static NO_GATEWAY: LogLimit = LogLimit::new(10, Duration::from_secs(10));

/// The public ports a converter may forward (`forward-ports`, e.g. `8000-9000,25565`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRanges(Vec<RangeInclusive<u16>>);

impl PortRanges {
    /// Whether `port` is among them.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|range| range.contains(&port))
    }

    /// Whether no port is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for PortRanges {
    type Err = anyhow::Error;

    /// Ports and ranges separated by commas: `8000-9000,25565`; empty: none.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut ranges = Vec::new();
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            let port = |text: &str| -> anyhow::Result<u16> {
                match text.trim().parse::<u16>() {
                    Ok(0) | Err(_) => bail!("{part:?}: ports are 1 to 65535"),
                    Ok(port) => Ok(port),
                }
            };
            let range = match part.split_once('-') {
                Some((first, last)) => port(first)?..=port(last)?,
                None => port(part)?..=port(part)?,
            };
            if range.is_empty() {
                bail!("{part:?}: the first port is after the last");
            }
            ranges.push(range);
        }
        Ok(Self(ranges))
    }
}

impl std::fmt::Display for PortRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|range| {
                if range.start() == range.end() {
                    range.start().to_string()
                } else {
                    format!("{}-{}", range.start(), range.end())
                }
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// An inbound connection, handed to one of its gateway's offered connections.
pub struct Handoff {
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    /// The client's first bytes, to go with the Inbound TLV.
    early: Vec<u8>,
    /// Its share of the budget of unauthenticated connections, until handed over.
    _slot: PendingSlot,
}

/// What became of an inbound connection [`Forwards::hand`] was given.
enum Handed {
    /// A gateway's connection carries it.
    Done,
    /// Every connection of its gateway is taken: given back.
    NoneFree(Handoff),
    /// Its port is no longer served: given back.
    PortClosed(Handoff),
}

/// The forwards of a converter: which gateway serves which public port, and the
/// connections each gateway has on offer.
pub struct Forwards {
    allowed: PortRanges,
    /// The address public ports listen on: the converter's own listening address.
    listen_ip: IpAddr,
    state: Mutex<State>,
    /// Wakes inbound connections waiting for an offered connection.
    offered: Notify,
}

#[derive(Default)]
struct State {
    ports: HashMap<u16, PublicPort>,
    gateways: HashMap<GatewayId, Offers>,
}

/// A public port being served.
struct PublicPort {
    owner: GatewayId,
    /// The task accepting on it; aborting it closes the port.
    accepting: AbortHandle,
}

/// A gateway's connections on offer.
#[derive(Default)]
struct Offers {
    idle: VecDeque<oneshot::Sender<Handoff>>,
    /// Since when it has had none.
    empty_since: Option<Instant>,
}

impl Offers {
    /// Forgets the connections that ended; says whether the gateway still has one, or
    /// lost its last less than [`GRACE`] ago.
    fn present(&mut self, now: Instant) -> bool {
        self.idle.retain(|offer| !offer.is_closed());
        if !self.idle.is_empty() {
            self.empty_since = None;
            return true;
        }
        now.duration_since(*self.empty_since.get_or_insert(now)) < GRACE
    }
}

impl Forwards {
    /// The forwards of a converter listening on `listen_ip` that allows `allowed`.
    pub fn new(allowed: PortRanges, listen_ip: IpAddr) -> Self {
        Self {
            allowed,
            listen_ip,
            state: Mutex::new(State::default()),
            offered: Notify::new(),
        }
    }

    /// Whether the operator allows any port forward.
    pub fn enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// Gives `gateway` each of `ports` it may have: allowed (by `allowed`, its
    /// account's own ports, or else the converter's), not another present gateway's,
    /// and one the converter can listen on. Returns each port's status.
    fn claim(
        &self,
        converter: &Arc<Converter>,
        gateway: GatewayId,
        ports: &[u16],
        allowed: Option<&PortRanges>,
    ) -> Vec<(u16, PortStatus)> {
        let allowed = allowed.unwrap_or(&self.allowed);
        let now = Instant::now();
        let mut state = lock(&self.state);
        // Known from now on: the ports it gets stay its own for the grace period even
        // if its connection on offer never comes.
        state.gateways.entry(gateway).or_default().present(now);
        let mut statuses = Vec::new();
        for &port in ports {
            let status = if allowed.contains(port) {
                self.claim_port(&mut state, converter, gateway, port, now)
            } else {
                PortStatus::NotAllowed
            };
            statuses.push((port, status));
        }
        statuses
    }

    fn claim_port(
        &self,
        state: &mut State,
        converter: &Arc<Converter>,
        gateway: GatewayId,
        port: u16,
        now: Instant,
    ) -> PortStatus {
        if let Some(served) = state.ports.get(&port) {
            if served.owner == gateway {
                return PortStatus::Served;
            }
            let owner = served.owner;
            if state
                .gateways
                .get_mut(&owner)
                .is_some_and(|offers| offers.present(now))
            {
                return PortStatus::Taken;
            }
            release(state, port);
        }
        let address = SocketAddr::new(self.listen_ip, port);
        match socket::listen(address, false, false, BACKLOG) {
            Ok(listener) => {
                let accepting = tokio::spawn(accept_inbound(listener, port, Arc::clone(converter)));
                state.ports.insert(
                    port,
                    PublicPort {
                        owner: gateway,
                        accepting: accepting.abort_handle(),
                    },
                );
                info!("public port {port} forwarded to gateway {gateway}");
                PortStatus::Served
            }
            Err(error) => {
                warn!(
                    "gateway {gateway} claims port {port}, but it cannot be listened on: {error}"
                );
                PortStatus::Unavailable
            }
        }
    }

    /// Puts a connection of `gateway` on offer. Beyond [`OFFERS_KEPT`], its oldest idle
    /// one is retired: dropping its sender ends its task, which closes it.
    fn offer(&self, gateway: GatewayId, offer: oneshot::Sender<Handoff>) {
        let mut state = lock(&self.state);
        let offers = state.gateways.entry(gateway).or_default();
        offers.present(Instant::now());
        offers.idle.push_back(offer);
        offers.empty_since = None;
        while offers.idle.len() > OFFERS_KEPT {
            offers.idle.pop_front();
        }
        drop(state);
        self.offered.notify_waiters();
    }

    /// Hands `handoff` to an offered connection of the gateway serving its port.
    fn hand(&self, mut handoff: Handoff) -> Handed {
        let mut state = lock(&self.state);
        let Some(owner) = state.ports.get(&handoff.port).map(|served| served.owner) else {
            return Handed::PortClosed(handoff);
        };
        let Some(offers) = state.gateways.get_mut(&owner) else {
            return Handed::NoneFree(handoff);
        };
        while let Some(offer) = offers.idle.pop_front() {
            match offer.send(handoff) {
                Ok(()) => return Handed::Done,
                // That connection ended meanwhile: the next one.
                Err(back) => handoff = back,
            }
        }
        Handed::NoneFree(handoff)
    }

    /// Closes the ports of gateways that have had no connection on offer for [`GRACE`]
    /// (gone, or dead: their connections' keepalive ended them).
    fn release_absent(&self) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let State { ports, gateways } = &mut *state;
        gateways.retain(|_, offers| offers.present(now));
        let orphaned: Vec<u16> = ports
            .iter()
            .filter(|(_, served)| !gateways.contains_key(&served.owner))
            .map(|(&port, _)| port)
            .collect();
        for port in orphaned {
            release(&mut state, port);
        }
    }

    /// Closes every public port and withdraws every offer (at shutdown): the offered
    /// connections end at once instead of waiting out the grace period of live relays.
    pub fn close_all(&self) {
        let mut state = lock(&self.state);
        for served in state.ports.values() {
            served.accepting.abort();
        }
        state.ports.clear();
        state.gateways.clear();
    }
}

/// Stops serving `port`: its listener closes.
fn release(state: &mut State, port: u16) {
    if let Some(served) = state.ports.remove(&port) {
        served.accepting.abort();
        info!(
            "public port {port} closed: gateway {} is gone",
            served.owner
        );
    }
}

/// Every second, closes the ports of gateways that are gone. Runs for the converter's
/// life.
pub async fn release_absent_gateways(converter: Arc<Converter>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        converter.forwards.release_absent();
    }
}

/// Serves an authenticated gateway's `claim` on `gateway` (its connection): answers
/// each port's status and, if it got any, keeps the connection on offer until an
/// inbound connection comes for it (then relays it), the gateway closes it, or a newer
/// one of the gateway's retires it.
pub async fn serve_claim(
    mut gateway: TcpStream,
    peer: SocketAddr,
    claim: Claim,
    account: Arc<Account>,
    converter: Arc<Converter>,
) {
    // A connection on offer holds relay permits, as the flow it will carry does.
    let _permits = match converter.permits(Some(&account)) {
        Ok(permits) => permits,
        Err(why) => {
            warn!(
                "{peer} ({}): claim refused (Resource Exceeded): {why}",
                account.name
            );
            let code = ErrorCode::ResourceExceeded;
            super::refuse(&mut gateway, &converter, code, code.usual_value()).await;
            return;
        }
    };
    let statuses = converter.forwards.claim(
        &converter,
        claim.gateway,
        &claim.ports,
        account.forward_ports().as_ref(),
    );
    let Ok(answer) = forward::status_message(&statuses).encode() else {
        return;
    };
    if let Err(error) = gateway.write_all(&answer).await {
        debug!("{peer}: {error}");
        return;
    }
    if !statuses
        .iter()
        .any(|&(_, status)| status == PortStatus::Served)
    {
        info!(
            "{peer} ({}): gateway {} got none of the ports it claims ({})",
            account.name,
            claim.gateway,
            describe(&statuses)
        );
        let _ = gateway.shutdown().await;
        return;
    }
    let (offer, mut handed) = oneshot::channel();
    converter.forwards.offer(claim.gateway, offer);
    // A gateway that died while its connection waited is noticed by the keepalive.
    let _ = socket::detect_dead_peer(&gateway, converter.timeouts.dead_path);
    tokio::select! {
        handed = &mut handed => match handed {
            Ok(handoff) => relay_inbound(gateway, peer, handoff, &account.name, &converter).await,
            Err(_) => debug!("{peer}: retired, the gateway offers newer connections"),
        },
        () = until_closed(&gateway) => {
            debug!("{peer}: the gateway closed a connection on offer");
            // An inbound connection handed to it meanwhile goes to another one.
            handed.close();
            if let Ok(handoff) = handed.try_recv() {
                tokio::spawn(hand_over(handoff, converter));
            }
        }
    }
}

/// Resolves once the gateway closes (or resets, or writes on) a connection on offer:
/// it sends nothing before an inbound connection. An MPTCP socket also reports itself
/// readable with nothing to read (seen during a download on other connections): that
/// wake-up is not a close.
async fn until_closed(gateway: &TcpStream) {
    loop {
        if gateway.readable().await.is_err() {
            return;
        }
        match gateway.try_read(&mut [0u8; 1]) {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            _ => return,
        }
    }
}

/// `port status, ...` for a log line.
fn describe(statuses: &[(u16, PortStatus)]) -> String {
    statuses
        .iter()
        .map(|(port, status)| format!("{port} {}", status.describe()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Accepts inbound connections on a public port, for as long as it is served (the
/// task is aborted when it no longer is).
async fn accept_inbound(listener: TcpListener, port: u16, converter: Arc<Converter>) {
    server::accept_until(listener, std::future::pending(), |client, peer, tasks| {
        // The budget of connections not yet relayed applies to strangers here too.
        if let Some(slot) = converter.pending.admit(peer.ip()) {
            tasks.spawn(admit_inbound(
                client,
                peer,
                port,
                slot,
                Arc::clone(&converter),
            ));
        }
    })
    .await;
}

/// Reads an inbound connection's first bytes, then hands it to its gateway. A client
/// that resets meanwhile takes none of the gateway's connections.
async fn admit_inbound(
    client: TcpStream,
    peer: SocketAddr,
    port: u16,
    slot: PendingSlot,
    converter: Arc<Converter>,
) {
    let early = match client_first_bytes(&client).await {
        Ok(early) => early,
        Err(error) => {
            debug!("{peer} -> public port {port}: {error}");
            return;
        }
    };
    let handoff = Handoff {
        client,
        peer,
        port,
        early,
        _slot: slot,
    };
    hand_over(handoff, converter).await;
}

/// Hands an inbound connection to its gateway, waiting a little for a free
/// connection; resets it when none comes.
async fn hand_over(mut handoff: Handoff, converter: Arc<Converter>) {
    let deadline = Instant::now() + HANDOFF_PATIENCE;
    loop {
        // Created before looking, so that an offer made meanwhile still wakes it.
        let offered = converter.forwards.offered.notified();
        handoff = match converter.forwards.hand(handoff) {
            Handed::Done => return,
            Handed::NoneFree(back) => back,
            Handed::PortClosed(back) => {
                debug!("{}: public port {} closed meanwhile", back.peer, back.port);
                socket::reset_on_close(&back.client);
                return;
            }
        };
        if tokio::time::timeout_at(deadline, offered).await.is_err() {
            limited!(
                NO_GATEWAY,
                warn,
                "{} -> public port {}: reset, its gateway had no free connection for {:?}",
                handoff.peer,
                handoff.port,
                HANDOFF_PATIENCE
            );
            socket::reset_on_close(&handoff.client);
            return;
        }
    }
}

/// How long an inbound connection's first bytes are waited for, to leave with the Inbound
/// TLV. A client that speaks first (HTTP, TLS) sends them right after its handshake's
/// last ACK, which is when the connection was accepted; one that waits for the server
/// (SSH, SMTP) costs this much.
const FIRST_BYTES_PATIENCE: Duration = Duration::from_millis(5);

/// The bytes `client` has sent, waiting [`FIRST_BYTES_PATIENCE`] for the first ones.
///
/// Sent apart from the Inbound TLV, they would take another subflow: while the TLV is
/// unacknowledged on the fastest subflow, the kernel's scheduler picks an idle slower
/// one (measured on DSL + LTE: the client's first bytes reached the LAN host 35 ms after
/// the TLV, over the LTE line).
async fn client_first_bytes(client: &TcpStream) -> std::io::Result<Vec<u8>> {
    let _ = tokio::time::timeout(FIRST_BYTES_PATIENCE, client.readable()).await;
    let mut early = vec![0u8; 16 * 1024];
    match client.try_read(&mut early) {
        Ok(read) => early.truncate(read),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => early.clear(),
        Err(error) => return Err(error),
    }
    Ok(early)
}

/// Relays an inbound connection on its gateway's connection: the Inbound TLV first,
/// so that the gateway knows the port and the client, then both ways.
async fn relay_inbound(
    mut gateway: TcpStream,
    gateway_peer: SocketAddr,
    handoff: Handoff,
    account: &str,
    converter: &Converter,
) {
    let Handoff {
        mut client,
        peer,
        port,
        early,
        _slot: slot,
    } = handoff;
    // Handed over: no longer among the connections waiting to be served.
    drop(slot);
    let announced = async {
        let mut first_segment = Inbound { port, client: peer }
            .to_message()
            .encode()
            .map_err(std::io::Error::other)?;
        first_segment.extend_from_slice(&early);
        gateway.write_all(&first_segment).await
    };
    if let Err(error) = announced.await {
        info!("{peer} -> public port {port}: the gateway {gateway_peer} is gone: {error}");
        socket::reset_on_close(&client);
        return;
    }
    converter.metrics.inbound.inc();
    debug!("{peer} -> public port {port}: handed to gateway {account} at {gateway_peer}");
    let (counters, _live) = converter.metrics.relay_started(account);
    // Down: towards the gateway, as a Convert flow's destination's bytes go.
    counters.down.moved(early.len(), false);
    match relay::relay(
        &mut gateway,
        &mut client,
        &converter.pipes,
        converter.timeouts,
        &counters,
    )
    .await
    {
        Ok(moved) => debug!(
            "{peer} -> public port {port}: done, {} bytes in, {} out",
            moved.backward, moved.forward
        ),
        Err(error) => info!("{peer} -> public port {port}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_check_and_print() {
        let ranges: PortRanges = "8000-9000, 25565".parse().unwrap();
        assert!(ranges.contains(8000) && ranges.contains(9000) && ranges.contains(25565));
        assert!(!ranges.contains(7999) && !ranges.contains(9001) && !ranges.contains(22));
        assert_eq!(ranges.to_string(), "8000-9000,25565");
        assert!("".parse::<PortRanges>().unwrap().is_empty());
        for bad in ["0", "9000-8000", "80-", "http", "70000"] {
            assert!(bad.parse::<PortRanges>().is_err(), "{bad:?} parsed");
        }
    }
}
