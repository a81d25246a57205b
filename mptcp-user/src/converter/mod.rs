//! The converter, on a well-connected host: accepts MPTCP connections from gateways
//! (plain TCP clients fall back transparently), authenticates each Convert request,
//! checks its destination against the [`destination_policy`], connects by TCP, answers,
//! and relays.

pub mod accounts;
pub mod admission;
pub mod announce;
pub mod destination_policy;
pub mod forward;
pub mod speedtest;

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use ipnet::IpNet;
use log::{debug, info, warn};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::{
    bpf::{
        self, Programs, Settings,
        tuning::{Tuning, TuningConfig},
    },
    limited, lock,
    log_limit::LogLimit,
    metrics::{self, ConverterMetrics},
    net::{
        addr, netlink,
        relay::{self, PipePool, Timeouts},
        server, socket,
    },
    protocol::{
        codec::{self, DecodeError, ErrorCode, Message, Request, RequestError, Response, Tlv},
        cookie::{self, AuthError, Key, Subject, Verifier},
        forward::Claim,
        wire,
    },
    sys,
};
use accounts::{Account, AccountConfig, Accounts, OverLimit};
use admission::{Pending, PendingSlot};
use destination_policy::DestinationPolicy;
pub use destination_policy::{DenyRule, PolicyConfig};
use forward::{Forwards, PortRanges};
use speedtest::{Busy, SpeedTests};

/// Logged once the converter accepts connections; scripts wait for it.
pub const READY: &str = "converter listening";

/// Everything `mptcp-user converter` is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConverterConfig {
    /// Where gateways connect (MPTCP).
    pub listen: SocketAddr,
    /// The address announced to the gateways for their other subflows, if any.
    pub announce: Option<SocketAddr>,
    /// The gateways it serves: `key-file`'s, and `[[converter.gateway]]`.
    pub accounts: Vec<AccountConfig>,
    /// What the destination policy allows and refuses beyond its defaults.
    pub policy: PolicyConfig,
    /// Client networks that may convert without a cookie.
    pub allow_clients: Vec<IpNet>,
    /// Whether requests in the SYN (TCP Fast Open) are accepted.
    pub fast_open: bool,
    /// The rate cap of speed tests in Mbit/s; 0: none are served.
    pub speedtest_mbit: u64,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Most authenticated connections relayed at once.
    pub max_conns: usize,
    /// Most connections held before they authenticate, in all and from one source.
    pub max_pending: (usize, usize),
    /// How long a client may take to send its request.
    pub request_timeout: Duration,
    /// How long connecting to a destination may take.
    pub connect_timeout: Duration,
    /// When relays give up: idle, or a dead path.
    pub timeouts: Timeouts,
    /// How far a cookie's timestamp may be from this host's clock.
    pub replay_window: Duration,
    /// Congestion control and buffers of the MPTCP connections and subflows.
    pub tuning: TuningConfig,
    /// The public ports gateways may have inbound connections forwarded from.
    pub forward_ports: PortRanges,
}

/// What each connection's task needs.
pub struct Converter {
    /// Checks cookies, and tells whose they are; a mutex because it remembers nonces.
    pub verifier: Mutex<Verifier<Arc<Account>>>,
    /// The gateways it serves, with their limits.
    pub accounts: Accounts,
    /// Which destinations are allowed.
    pub policy: DestinationPolicy,
    /// Client networks that may convert without a cookie (RFC 8803 clients that have
    /// none); the destination policy still applies.
    pub allow_clients: Vec<IpNet>,
    /// How long a client may take to send its request.
    pub request_timeout: Duration,
    /// How long connecting to a destination may take.
    pub connect_timeout: Duration,
    /// When relays give up: idle, or a dead path.
    pub timeouts: Timeouts,
    /// Bounds the number of authenticated connections relayed at once.
    pub connections: Arc<Semaphore>,
    /// The budget of connections that have not authenticated yet.
    pub pending: Arc<Pending>,
    /// Congestion control and buffer of the accepted MPTCP connections.
    pub tuning: Tuning,
    /// Pipes for the relays.
    pub pipes: PipePool,
    /// The speed tests served to gateways.
    pub speed_tests: SpeedTests,
    /// What the metrics count.
    pub metrics: ConverterMetrics,
    /// The public ports gateways serve.
    pub forwards: Forwards,
}

impl Converter {
    /// A converter with `config`, serving `accounts`, checking cookies with `keys`
    /// (each with its gateway's account, as [`Accounts::load`] gives them) made after
    /// second `started`; `own` are this host's addresses.
    pub fn new(
        config: &ConverterConfig,
        (accounts, keys): (Accounts, Vec<(Key, Arc<Account>)>),
        started: u64,
        own: Vec<IpAddr>,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            verifier: Mutex::new(Verifier::new(keys, config.replay_window, started)?),
            accounts,
            policy: DestinationPolicy::new(config.policy.clone(), own),
            allow_clients: config.allow_clients.clone(),
            request_timeout: config.request_timeout,
            connect_timeout: config.connect_timeout,
            timeouts: config.timeouts,
            connections: Arc::new(Semaphore::new(config.max_conns)),
            pending: Pending::new(config.max_pending.0, config.max_pending.1),
            tuning,
            pipes: PipePool::for_tuning(&config.tuning),
            speed_tests: SpeedTests::new(config.speedtest_mbit),
            metrics: ConverterMetrics::default(),
            forwards: Forwards::new(config.forward_ports.clone(), config.listen.ip()),
        })
    }

    /// A converter serving one gateway, `default`, whose key is `key` (unit tests, the
    /// fuzz target: no key file).
    pub fn with_key(
        config: &ConverterConfig,
        key: Key,
        started: u64,
        own: Vec<IpAddr>,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        let keys = vec![(key, Account::new(accounts::DEFAULT))];
        Self::new(config, (Accounts::default(), keys), started, own, tuning)
    }

    /// Serves the gateways of `configs` from now on (SIGHUP): their keys and limits
    /// apply to new flows and claims. On error (a key file that cannot be read), keeps
    /// those in use. Returns how many gateways it serves.
    pub fn reload_accounts(&self, configs: &[AccountConfig]) -> anyhow::Result<usize> {
        let keys = self.accounts.load(configs)?;
        lock(&self.verifier).set_keys(keys);
        Ok(self.accounts.len())
    }
}

/// The log lines of requests refused before they authenticated: what anyone can cause.
static STRANGERS: LogLimit = LogLimit::new(10, Duration::from_secs(10));

/// `mptcp-user converter`: runs until SIGINT or SIGTERM; on SIGHUP, takes the gateways
/// `reread` gives (the config read again) for new flows.
pub fn run(
    config: &ConverterConfig,
    reread: impl Fn() -> anyhow::Result<ConverterConfig> + Send + 'static,
) -> anyhow::Result<()> {
    let accounts = Accounts::default();
    let keys = accounts.load(&config.accounts)?;
    let tuning = Tuning::new(&config.tuning)?;
    let room = server::raise_file_limit();
    // Beyond what the files allow, flows get Resource Exceeded (the gateway then goes
    // direct) instead of failing for want of a file.
    let flows = usize::try_from(room.flows).unwrap_or(usize::MAX);
    let capped;
    let config = if config.max_conns > flows {
        warn!(
            "--max-conns {} is more than the open-file limit leaves room for: relaying \
             {flows} at most (raise the hard limit, LimitNOFILE= in a systemd unit)",
            config.max_conns
        );
        capped = ConverterConfig {
            max_conns: flows.max(1),
            ..config.clone()
        };
        &capped
    } else {
        config
    };
    // Held for the daemon's life.
    let _subflow_programs = load_subflow_tuning(&tuning)?;
    let listen = config.listen.ip();
    let own_addresses = move || -> anyhow::Result<Vec<IpAddr>> {
        let mut own = addr::local_addresses()?;
        own.push(listen);
        Ok(own)
    };
    // Before listening: cookies of the start's second are refused, so none is honest.
    let started = cookie::start_second();
    let converter = Arc::new(Converter::new(
        config,
        (accounts, keys),
        started,
        own_addresses()?,
        tuning,
    )?);
    let runtime = tokio::runtime::Runtime::new().context("failed to start the tokio runtime")?;
    runtime.block_on(async {
        let listener = socket::listen(config.listen, true, false, room.backlog)
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        // On the listener, not on each accepted connection: there it would also reach
        // the subflows sock_ops already gave their uplink's algorithm.
        converter
            .tuning
            .apply_congestion(&socket2::SockRef::from(&listener))
            .context("failed to set the congestion control")?;
        if config.fast_open {
            accept_fast_open(&listener)?;
        }
        // Addresses the host gains later (a DHCP lease, an IPv6 temporary address) are
        // refused as destinations as soon as the kernel announces them.
        let mut changes = netlink::address_changes()?;
        let following = Arc::clone(&converter);
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                match own_addresses() {
                    Ok(own) => following.policy.set_own(own),
                    Err(error) => warn!("cannot list this host's addresses: {error:#}"),
                }
            }
            warn!("address changes no longer followed: the netlink socket ended");
        });
        if let Some(address) = config.metrics {
            let scraped = Arc::clone(&converter);
            tokio::spawn(metrics::serve(metrics::listen(address)?, scraped));
        }
        if converter.forwards.enabled() {
            info!(
                "gateways may claim the public ports {}",
                config.forward_ports
            );
        }
        tokio::spawn(forward::release_absent_gateways(Arc::clone(&converter)));
        // Keys and limits only: other options need a restart.
        let reloading = Arc::clone(&converter);
        server::reload_on_hangup("the keys and limits in use", move || {
            let count = reloading.reload_accounts(&reread()?.accounts)?;
            Ok(format!("the keys and limits of {count} gateways reloaded"))
        })?;
        info!(
            "serving {} gateway{}",
            converter.accounts.len(),
            if converter.accounts.len() == 1 {
                ""
            } else {
                "s"
            }
        );
        let signal = server::shutdown_signal()?;
        // Before READY: the first gateway connection already announces it.
        let announced = match config.announce {
            Some(address) => Some(announce::set_up(address).await?),
            None => None,
        };
        info!("{READY} on {} (MPTCP)", config.listen);
        let closing = Arc::clone(&converter);
        let shutdown = async move {
            signal.await;
            closing.forwards.close_all();
        };
        serve(listener, converter, shutdown).await;
        if let Some(announced) = announced {
            announced.restore().await;
        }
        Ok(())
    })
}

/// Lets the listener take Convert requests in SYNs, and says when the kernel will not.
fn accept_fast_open(listener: &TcpListener) -> anyhow::Result<()> {
    // Connections whose SYN carried data but whose handshake is not complete yet; the
    // kernel falls back to a normal handshake beyond it (a flood of SYNs with data).
    const QUEUE: libc::c_int = 256;
    sys::set_fast_open(listener, QUEUE).context("failed to enable TCP Fast Open")?;
    match sys::fast_open_server_enabled() {
        Ok(true) => {}
        Ok(false) => warn!(
            "requests in the SYN (TCP Fast Open) are not accepted: net.ipv4.tcp_fastopen \
             lacks the server bit (sysctl -w net.ipv4.tcp_fastopen=3; --fast-open false \
             silences this)"
        ),
        Err(error) => warn!("cannot tell whether TCP Fast Open is on: {error}"),
    }
    Ok(())
}

/// Loads the sock_ops program that tunes each subflow: `--uplink-congestion` rules
/// (matched against the gateway's address, the subflow's peer) and the long-RTT
/// settings. `None` when there is nothing to tune, or when only the long-RTT default
/// asks and the host cannot load eBPF: the converter then runs without it.
fn load_subflow_tuning(tuning: &Tuning) -> anyhow::Result<Option<Programs>> {
    if !tuning.tunes_subflows() {
        return Ok(None);
    }
    match attach_subflow_tuning(tuning) {
        Ok(programs) => {
            info!("subflow tuning: {}", tuning.describe_subflow_rules());
            Ok(Some(programs))
        }
        Err(error) if tuning.uplink_congestion().is_empty() => {
            warn!(
                "long-RTT subflows keep --congestion and an autotuned buffer: {error:#} \
                 (--long-rtt 0 silences this)"
            );
            Ok(None)
        }
        Err(error) => Err(error.context("--uplink-congestion needs the sock_ops program")),
    }
}

/// Loads the programs with the converter's settings and attaches sock_ops to the
/// cgroup v2 root.
fn attach_subflow_tuning(tuning: &Tuning) -> anyhow::Result<Programs> {
    let mut programs = Programs::load(&Settings {
        netns_cookie: sys::netns_cookie().context("cannot read the network namespace cookie")?,
        uplink_is_local: false,
        long_rtt: tuning.long_rtt(),
        inflight_cap_percent: tuning.inflight_cap_percent(),
        ..Settings::default()
    })?;
    programs.set_uplink_congestion(tuning.uplink_congestion())?;
    programs.attach_sock_ops(&bpf::cgroup_root()?)?;
    Ok(programs)
}

/// Accepts connections until `shutdown` resolves, then gives live relays a grace period.
pub async fn serve(
    listener: TcpListener,
    converter: Arc<Converter>,
    shutdown: impl Future<Output = ()>,
) {
    server::accept_until(listener, shutdown, |stream, peer, tasks| {
        // Refused without a word: the budget's log line counts them.
        if let Some(slot) = converter.pending.admit(peer.ip()) {
            tasks.spawn(handle(stream, peer, Arc::clone(&converter), slot));
        }
    })
    .await;
}

async fn handle(
    mut client: TcpStream,
    peer: SocketAddr,
    converter: Arc<Converter>,
    slot: PendingSlot,
) {
    if let Err(error) = converter
        .tuning
        .apply_send_queue(&socket2::SockRef::from(&client))
    {
        warn!("{peer}: cannot tune the MPTCP connection: {error}");
    }
    let read = tokio::select! {
        read = read_request(&mut client, peer.ip(), &converter) => read,
        () = slot.evicted() => {
            debug!("{peer}: evicted before authenticating, by newer connections");
            return;
        }
    };
    let ReadRequest {
        request,
        early_data,
        asks_info,
        account,
    } = match read {
        Ok(Asked::Convert(found)) => found,
        Ok(Asked::Forward(claim, account)) => {
            drop(slot);
            forward::serve_claim(client, peer, claim, account, converter).await;
            return;
        }
        Err(rejection) => {
            // A refused connection keeps its place in the budget until it is gone: the
            // answer may take seconds, and a stranger must not hold more than its share.
            tokio::select! {
                () = reject(&mut client, peer, &converter, rejection) => {}
                () = slot.evicted() => {
                    debug!("{peer}: evicted while refused, by newer connections");
                }
            }
            return;
        }
    };
    drop(slot);
    if speedtest::asked(request.destination) {
        speed_test(client, peer, &converter, &early_data).await;
        return;
    }
    let gateway = account_name(account.as_deref());
    // Only an authenticated request takes relay permits.
    let _permits = match converter.permits(account.as_deref()) {
        Ok(permits) => permits,
        Err(why) => {
            warn!("{peer} ({gateway}): refused (Resource Exceeded): {why}");
            let code = ErrorCode::ResourceExceeded;
            refuse(&mut client, &converter, code, code.usual_value()).await;
            return;
        }
    };
    // Its gateway's warm connections count on this flow's share of the budget.
    let _relaying = converter.pending.relaying(peer.ip());
    let destination = request.destination;
    let mut server = match connect(destination, converter.connect_timeout).await {
        Ok(server) => server,
        Err((code, value, reason)) => {
            info!("{peer} ({gateway}) -> {destination}: {code}: {reason}");
            refuse(&mut client, &converter, code, value).await;
            return;
        }
    };
    debug!("{peer} ({gateway}) -> {destination}: connected");
    let connected = async {
        let mut tlvs = supported_extensions(asks_info).tlvs;
        tlvs.push(Tlv::ExtendedTcpHeader(syn_ack_options(&server)));
        let bytes = Message::new(tlvs).encode().map_err(std::io::Error::other)?;
        until_answers_leave_at_once(&client).await;
        client.write_all(&bytes).await?;
        server.write_all(&early_data).await
    };
    if let Err(error) = connected.await {
        warn!("{peer} ({gateway}) -> {destination}: {error}");
        return;
    }
    let (counters, _live) = converter.metrics.relay_started(gateway);
    counters.up.moved(early_data.len(), false);
    match relay::relay(
        &mut client,
        &mut server,
        &converter.pipes,
        converter.timeouts,
        &counters,
    )
    .await
    {
        Ok(moved) => debug!(
            "{peer} ({gateway}) -> {destination}: done, {} bytes up, {} down",
            moved.forward + early_data.len() as u64,
            moved.backward
        ),
        Err(error) => info!("{peer} ({gateway}) -> {destination}: {error}"),
    }
}

/// A gateway's name in logs and metrics; `allow-client` for flows of `--allow-client`
/// networks, which have none.
pub fn account_name(account: Option<&Account>) -> &str {
    account.map_or("allow-client", |account| account.name.as_str())
}

/// The relay permits a flow or a connection on offer holds: one of the converter's
/// `max-conns`, and one of its gateway's own if it has a limit.
pub struct Permits {
    _converter: OwnedSemaphorePermit,
    _gateway: Option<OwnedSemaphorePermit>,
}

impl Converter {
    /// Relay permits for a connection of `account`'s, or why there is none (for the
    /// log; the client gets Resource Exceeded).
    pub fn permits(&self, account: Option<&Account>) -> Result<Permits, String> {
        let converter = Arc::clone(&self.connections)
            .try_acquire_owned()
            .map_err(|_| "already relaying --max-conns flows".to_owned())?;
        let gateway = match account {
            None => None,
            Some(account) => account.admit().map_err(|OverLimit(limit)| {
                self.metrics.refused_over_limit(&account.name);
                format!(
                    "gateway {} already relays its max-conns ({limit})",
                    account.name
                )
            })?,
        };
        Ok(Permits {
            _converter: converter,
            _gateway: gateway,
        })
    }
}

/// Answers a connection whose request was not relayed (a stranger can cause every line
/// here, so they are rate-limited).
async fn reject(client: &mut TcpStream, peer: SocketAddr, converter: &Converter, why: Rejection) {
    match why {
        Rejection::Silent => {
            debug!("{peer}: closed before sending a byte (a gateway's uplink probe?)");
        }
        Rejection::Reset(reason) => {
            limited!(STRANGERS, warn, "{peer}: reset: {reason}");
            socket::reset_on_close(client);
        }
        Rejection::Info => {
            debug!("{peer}: asked for the supported TCP extensions");
            answer(client, supported_extensions(true)).await;
        }
        Rejection::Refused(code, value, reason) => {
            limited!(STRANGERS, warn, "{peer}: refused ({code}): {reason}");
            refuse(client, converter, code, value).await;
        }
    }
}

impl metrics::Render for Converter {
    async fn render(&self) -> String {
        self.metrics.text()
    }
}

/// Serves an authenticated gateway's speed test, unless one runs already.
async fn speed_test(mut client: TcpStream, peer: SocketAddr, converter: &Converter, early: &[u8]) {
    let test = match converter.speed_tests.try_start() {
        Ok(test) => test,
        Err(busy) => {
            let why = match busy {
                Busy::Running => "another one runs".to_owned(),
                Busy::Spent => format!(
                    "{} s of tests were served in the last {} min",
                    speedtest::BUDGET.as_secs(),
                    speedtest::BUDGET_WINDOW.as_secs() / 60
                ),
            };
            info!("{peer}: speed test refused (Resource Exceeded): {why}");
            let code = ErrorCode::ResourceExceeded;
            refuse(&mut client, converter, code, code.usual_value()).await;
            return;
        }
    };
    converter.metrics.speed_tests.inc();
    let Ok(connected) = Response::Connected.to_message().encode() else {
        return;
    };
    until_answers_leave_at_once(&client).await;
    let served = async {
        client.write_all(&connected).await?;
        test.serve(&mut client, early).await
    };
    match served.await {
        Ok(done) => info!("{peer}: {done}"),
        Err(error) => {
            // What is still queued for a gateway that is gone goes with a reset.
            socket::reset_on_close(&client);
            info!("{peer}: speed test ended: {error:#}");
        }
    }
}

/// Waits until what is written to `client` leaves at once. An MPTCP client that sent
/// its request in the SYN (TCP Fast Open) sends its key only with the handshake's third
/// ACK, and on kernel 6.18 an answer written before that waits for the client's next
/// packet (tests/tests/kernel.rs), which may never come. The ACK follows the request
/// by one round trip, while the converter connects to the destination; after a few
/// seconds without it, the answer is written anyway.
async fn until_answers_leave_at_once(client: &TcpStream) {
    const PATIENCE: Duration = Duration::from_secs(3);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !sys::mptcp_can_send(client) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Why a connection is not relayed.
#[derive(Debug)]
pub enum Rejection {
    /// It closed before sending a byte, as the gateways' uplink probes do: nothing to
    /// answer, nothing worth a warning.
    Silent,
    /// Not a Convert message (a wrong magic number), or one RFC 8803 answers with a
    /// reset (a Total Length of zero, section 6.1): the connection is reset.
    Reset(String),
    /// Only an Info TLV: answered with the Supported TCP Extensions TLV, then closed.
    Info,
    /// Refused with this Error TLV (code and value, section 6.2.8); the reason is for
    /// the log.
    Refused(ErrorCode, Vec<u8>, String),
}

impl From<(ErrorCode, String)> for Rejection {
    /// Refused with the code's usual value.
    fn from((code, reason): (ErrorCode, String)) -> Self {
        Self::Refused(code, code.usual_value(), reason)
    }
}

/// The value of a Malformed Message or Unsupported Message error: a zero byte, then
/// the message received (section 6.2.8, figure 23), cut to what a message can carry.
fn echo(received: &[u8]) -> Vec<u8> {
    // A message is at most 1020 bytes: 4 of header, 3 of the Error TLV's own.
    let room = codec::MAX_MESSAGE_LEN - codec::HEADER_LEN - 4;
    let mut value = vec![0];
    value.extend_from_slice(&received[..received.len().min(room)]);
    value
}

/// What an authenticated client asked, as [`read_request`] read it.
#[derive(Debug)]
pub enum Asked {
    /// A Convert request.
    Convert(ReadRequest),
    /// A gateway's claim of public ports (our extension, [`forward`]), and whose it is.
    Forward(Claim, Arc<Account>),
}

/// A request that passed [`read_request`].
#[derive(Debug)]
pub struct ReadRequest {
    /// The request, authenticated, its destination allowed.
    pub request: Request,
    /// The client's bytes that followed it, for the destination.
    pub early_data: Vec<u8>,
    /// Whether it also asked which TCP extensions the converter supports (an Info TLV
    /// beside the Connect TLV).
    pub asks_info: bool,
    /// The gateway whose key signed it; none for an `--allow-client` network's.
    pub account: Option<Arc<Account>>,
}

/// Reads, decodes, authenticates and checks the request on `client` (a connection, or
/// any byte source: the fuzz target feeds it slices).
pub async fn read_request<R: AsyncRead + Unpin>(
    client: &mut R,
    peer: IpAddr,
    converter: &Converter,
) -> Result<Asked, Rejection> {
    let read = tokio::time::timeout(converter.request_timeout, wire::read_message(client)).await;
    let (message, early_data) = match read {
        Err(_) => {
            return Err((
                ErrorCode::MalformedMessage,
                format!("no request within {:?}", converter.request_timeout),
            )
                .into());
        }
        Ok(Err(wire::WireError::Closed(0))) => return Err(Rejection::Silent),
        Ok(Err(wire::WireError::Decode {
            error: error @ (DecodeError::BadMagic(_) | DecodeError::BadTotalLength(0)),
            ..
        })) => return Err(Rejection::Reset(error.to_string())),
        Ok(Err(wire::WireError::Decode { error, received })) => {
            let code = error.error_code();
            let value = match code {
                ErrorCode::MalformedMessage | ErrorCode::UnsupportedMessage => echo(&received),
                _ => code.usual_value(),
            };
            return Err(Rejection::Refused(code, value, error.to_string()));
        }
        Ok(Err(error)) => return Err((ErrorCode::MalformedMessage, error.to_string()).into()),
        Ok(Ok(read)) => read,
    };
    if let Some(claim) = Claim::from_message(&message) {
        return read_claim(claim, &message, converter)
            .map(|(claim, account)| Asked::Forward(claim, account));
    }
    let request = Request::from_message(&message).map_err(|error| {
        let code = error.error_code();
        match error {
            RequestError::InfoOnly => Rejection::Info,
            RequestError::UnsupportedTcpOptions(ref kinds) => {
                Rejection::Refused(code, kinds.clone(), error.to_string())
            }
            _ => {
                let received = message.encode().unwrap_or_default();
                Rejection::Refused(code, echo(&received), error.to_string())
            }
        }
    })?;
    let trusted = request.cookie.is_none()
        && converter
            .allow_clients
            .iter()
            .any(|network| network.contains(&addr::canonical(peer)));
    let account = if trusted {
        None
    } else {
        Some(authenticate(&request, converter)?)
    };
    if speedtest::asked(request.destination) {
        // The converter's own line, for its gateways only, when the operator allows.
        if trusted || !converter.speed_tests.enabled() {
            return Err((
                ErrorCode::NotAuthorized,
                "a speed test needs a gateway's cookie and --speedtest-rate above 0".to_owned(),
            )
                .into());
        }
        return Ok(Asked::Convert(ReadRequest {
            request,
            early_data,
            asks_info: false,
            account,
        }));
    }
    converter
        .policy
        .check(request.destination)
        .map_err(|refusal| {
            (
                ErrorCode::NotAuthorized,
                format!("destination refused: {refusal}"),
            )
        })?;
    Ok(Asked::Convert(ReadRequest {
        asks_info: Request::asks_info(&message),
        request,
        early_data,
        account,
    }))
}

/// Checks a gateway's claim of public ports: well formed, with a valid cookie (always:
/// `--allow-client` networks convert without one, but never claim a port). Returns it
/// with the gateway whose key signed it.
fn read_claim(
    claim: Result<Claim, RequestError>,
    message: &Message,
    converter: &Converter,
) -> Result<(Claim, Arc<Account>), Rejection> {
    let claim = claim.map_err(|error| {
        let received = message.encode().unwrap_or_default();
        Rejection::Refused(error.error_code(), echo(&received), error.to_string())
    })?;
    let account = verify_cookie(
        Subject::Forward(claim.subject()),
        claim.cookie.as_deref(),
        converter,
    )?;
    Ok((claim, account))
}

/// Checks the request's cookie; returns the gateway whose key signed it.
fn authenticate(request: &Request, converter: &Converter) -> Result<Arc<Account>, Rejection> {
    verify_cookie(
        Subject::Connect(request.destination),
        request.cookie.as_deref(),
        converter,
    )
}

/// Checks a cookie for `subject`: Missing Cookie without one, else Not Authorized
/// unless it is valid. Returns the gateway whose key signed it.
fn verify_cookie(
    subject: Subject,
    cookie: Option<&[u8]>,
    converter: &Converter,
) -> Result<Arc<Account>, Rejection> {
    lock(&converter.verifier)
        .verify(subject, cookie, cookie::unix_now())
        .map_err(|error| {
            let code = if error == AuthError::Missing {
                ErrorCode::MissingCookie
            } else {
                ErrorCode::NotAuthorized
            };
            (code, format!("authentication failed: {error}")).into()
        })
}

/// The Supported TCP Extensions TLV (section 6.2.4), as a message, if `asked`.
fn supported_extensions(asked: bool) -> Message {
    let tlvs = if asked {
        vec![Tlv::SupportedTcpExtensions(
            codec::SUPPORTED_TCP_EXTENSIONS.to_vec(),
        )]
    } else {
        Vec::new()
    };
    Message::new(tlvs)
}

/// What the Extended TCP Header TLV carries (section 6.2.6): the options of the
/// destination's SYN+ACK, as far as the socket API tells them (TCP_INFO): the MSS in
/// use, SACK-permitted and the window scale, when negotiated. The timestamps option's
/// values and any option the kernel does not report are not available.
fn syn_ack_options(server: &TcpStream) -> Vec<u8> {
    const TCPI_OPT_SACK: u8 = 2;
    const TCPI_OPT_WSCALE: u8 = 4;
    let Ok(info) = sys::tcp_info(server) else {
        return Vec::new();
    };
    let mut options = Vec::new();
    if let Ok(mss) = u16::try_from(info.tcpi_snd_mss) {
        options.extend_from_slice(&[2, 4]);
        options.extend_from_slice(&mss.to_be_bytes());
    }
    if info.tcpi_options & TCPI_OPT_SACK != 0 {
        options.extend_from_slice(&[4, 2]);
    }
    if info.tcpi_options & TCPI_OPT_WSCALE != 0 {
        // The peer's shift: the low four bits (tcpi_snd_wscale).
        options.extend_from_slice(&[3, 3, info.tcpi_snd_rcv_wscale & 0x0f]);
    }
    options
}

/// Connects by plain TCP, mapping failures to the RFC's error codes and values
/// (section 6.2.8): a refusal or reset is Connection Reset; an ICMP error is
/// Destination Unreachable with the ICMP code it implies (0 network, 1 host, 13
/// administratively prohibited); a timeout, or a local failure such as
/// EADDRNOTAVAIL (no source address), is Network Failure.
async fn connect(
    destination: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, (ErrorCode, Vec<u8>, String)> {
    match tokio::time::timeout(timeout, socket::connect(destination, false, |_| Ok(()))).await {
        Err(_) => Err((
            ErrorCode::NetworkFailure,
            ErrorCode::NetworkFailure.usual_value(),
            format!("no answer within {timeout:?}"),
        )),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => {
            let unreachable = |icmp_code: u8| (ErrorCode::DestinationUnreachable, vec![icmp_code]);
            let (code, value) = match error.raw_os_error() {
                Some(libc::ECONNREFUSED | libc::ECONNRESET) => {
                    (ErrorCode::ConnectionReset, Vec::new())
                }
                Some(libc::ENETUNREACH) => unreachable(0),
                Some(libc::EHOSTUNREACH) => unreachable(1),
                Some(libc::EACCES | libc::EPERM) => unreachable(13),
                _ => (
                    ErrorCode::NetworkFailure,
                    ErrorCode::NetworkFailure.usual_value(),
                ),
            };
            Err((code, value, error.to_string()))
        }
    }
}

/// Answers an Error TLV with `code` and `value`, counted in the metrics, then closes.
async fn refuse(client: &mut TcpStream, converter: &Converter, code: ErrorCode, value: Vec<u8>) {
    converter.metrics.errors.count(code);
    answer(client, Message::new(vec![Tlv::Error { code, value }])).await;
}

/// Sends a response, then closes our write side so the client reads it and EOF.
///
/// Closing a socket with unread input makes the kernel send a reset, which can destroy
/// the answer before the client reads it; so we discard the client's input until it
/// closes too (it does once it has read the error), for at most two seconds.
async fn answer(client: &mut TcpStream, response: Message) {
    until_answers_leave_at_once(client).await;
    if let Ok(bytes) = response.encode() {
        let _ = client.write_all(&bytes).await;
    }
    let _ = client.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while let Ok(1..) = client.read(&mut sink).await {}
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

#[cfg(test)]
mod tests;
