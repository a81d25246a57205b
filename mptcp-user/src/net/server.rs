//! Plumbing both daemons share: the accept loop with its shutdown grace period, the
//! signals that end a daemon, and SIGHUP, which reloads what it can without a restart.

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use log::{info, warn};

use crate::{limited, log_limit::LogLimit};
use tokio::{
    net::{TcpListener, TcpStream},
    signal::unix::SignalKind,
    task::JoinSet,
};

/// How long live relays may finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Accept failures (out of open files under a flood) are logged at most this often.
static ACCEPT_FAILURES: LogLimit = LogLimit::new(1, Duration::from_secs(10));

/// The accept loop: hands each connection to `on_accept` (which
/// spawns its task into the set, or refuses it) until `shutdown` resolves, then drains
/// the live tasks.
pub async fn accept_until(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr, &mut JoinSet<()>),
) {
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: wait instead of spinning.
                    limited!(ACCEPT_FAILURES, warn, "accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set only holds live ones.
        while tasks.try_join_next().is_some() {}
        on_accept(stream, peer, &mut tasks);
    }
    drain(tasks).await;
}

/// Waits up to the grace period for `tasks`, then aborts the rest.
async fn drain(mut tasks: JoinSet<()>) {
    // Those that ended since the last accept are not live.
    while tasks.try_join_next().is_some() {}
    if tasks.is_empty() {
        return;
    }
    info!(
        "waiting up to {SHUTDOWN_GRACE:?} for {} live connections",
        tasks.len()
    );
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all_done)
        .await
        .is_err()
    {
        warn!(
            "{} connections still open after the grace period; closing them",
            tasks.len()
        );
        tasks.abort_all();
    }
}

/// What the open-file limit leaves room for: a listen queue, and the flows a daemon
/// takes beside it.
///
/// The queue is a quarter of the flows the files allow, 16 to 1024. The connections
/// waiting there are accepted later and need their files then, so a daemon takes no
/// more than `flows` while the queue's worth is still free (the gateway sheds beyond
/// it, the converter answers Resource Exceeded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Room {
    /// The listen queue.
    pub backlog: u32,
    /// Flows taken at once.
    pub flows: u64,
}

impl Room {
    /// The room `capacity` flows leave.
    pub fn beside_backlog(capacity: u64) -> Self {
        let backlog = u32::try_from((capacity / 4).clamp(16, 1024)).unwrap_or(1024);
        Self {
            backlog,
            flows: capacity.saturating_sub(u64::from(backlog)),
        }
    }
}

/// Raises the open-file limit to the hard one, logs how many flows it leaves room
/// for, and returns that room.
pub fn raise_file_limit() -> Room {
    let capacity = match crate::sys::raise_file_limit() {
        Ok(files) => {
            let flows = super::relay::flow_capacity(files);
            info!("open-file limit {files}: room for about {flows} flows");
            flows
        }
        Err(error) => {
            warn!("cannot raise the open-file limit: {error}");
            u64::MAX
        }
    };
    Room::beside_backlog(capacity)
}

/// Resolves at the first SIGINT or SIGTERM.
pub fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = tokio::signal::unix::signal(SignalKind::interrupt())
        .context("failed to listen for SIGINT")?;
    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())
        .context("failed to listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// From now on, calls `reload` on each SIGHUP and logs its answer ("SIGHUP: " and what
/// it did), or, when it fails, that `kept` stays in use and why. Listens before it
/// returns: a SIGHUP unheard would end the daemon (its default action) and every flow.
/// Needs a tokio runtime.
pub fn reload_on_hangup(
    kept: &'static str,
    mut reload: impl FnMut() -> anyhow::Result<String> + Send + 'static,
) -> anyhow::Result<()> {
    let mut hangups =
        tokio::signal::unix::signal(SignalKind::hangup()).context("failed to listen for SIGHUP")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match reload() {
                Ok(done) => info!("SIGHUP: {done}"),
                Err(error) => warn!("SIGHUP: keeping {kept}: {error:#}"),
            }
        }
    });
    Ok(())
}
