//! `--announce ADDR:PORT`: a converter behind a load balancer that spreads connections
//! (not subflows) over several converters. A gateway's first subflow reaches this one
//! through the balancer's address; its other subflows must reach this same converter,
//! so they go to its own address instead:
//!
//! - `net.mptcp.allow_join_initial_addr_port = 0` (this network namespace): the
//!   connections' MP_CAPABLE carries the "C" flag, so gateways open no subflow to the
//!   balancer's address;
//! - a `signal` endpoint at ADDR:PORT: every connection announces it (ADD_ADDR), and a
//!   gateway opens a subflow from each of its other uplinks to it. The port must differ
//!   from the one the balancer forwards to: the kernel does not announce the address
//!   the first subflow arrived on, which behind a DNAT balancer is this host's own
//!   (measured on kernel 6.18), and it listens on ADDR:PORT for the joins itself.
//!
//! Both are set at the start and put back as they were at exit ([`Announced::restore`]).

use std::net::SocketAddr;

use anyhow::Context as _;
use log::{info, warn};

use crate::net::{
    mptcp_pm::{Limits, MAX_LIMIT, PathManager},
    sock_diag,
};

/// The sysctl that decides the "C" flag, in this network namespace.
const JOIN_INITIAL: &str = "/proc/sys/net/mptcp/allow_join_initial_addr_port";

/// What `--announce` changed, to put back.
pub struct Announced {
    pm: PathManager,
    endpoint: u8,
    join_initial: String,
    limits: Limits,
}

/// Sets up the announce of `address` (see the module's docs).
pub async fn set_up(address: SocketAddr) -> anyhow::Result<Announced> {
    let pm = PathManager::connect()?;
    let join_initial = std::fs::read_to_string(JOIN_INITIAL)
        .with_context(|| format!("cannot read {JOIN_INITIAL}"))?;
    let limits = pm.limits().await?;
    std::fs::write(JOIN_INITIAL, "0").with_context(|| format!("cannot write {JOIN_INITIAL}"))?;
    // Every gateway's uplinks may join: the most the kernel takes.
    let raised = Limits {
        subflows: MAX_LIMIT,
        ..limits
    };
    // A previous run's joins there, closed within the last minute, would keep the
    // kernel from listening on the address (net/sock_diag.rs).
    match sock_diag::end_time_wait(address) {
        Ok(0) => {}
        Ok(ended) => info!("ended {ended} TIME_WAIT connections of a previous run on {address}"),
        Err(error) => warn!("{error:#}: the kernel may not listen on {address} for a minute"),
    }
    let endpoint = async {
        pm.set_limits(raised).await?;
        pm.add_signal_endpoint(address).await
    }
    .await;
    let announced = Announced {
        pm,
        endpoint: endpoint.as_ref().copied().unwrap_or_default(),
        join_initial,
        limits,
    };
    if let Err(error) = endpoint {
        announced.restore().await;
        return Err(error);
    }
    info!(
        "announcing {address} to the gateways: their other subflows join there, not at \
         the address their first one came to"
    );
    Ok(announced)
}

impl Announced {
    /// Puts back what [`set_up`] changed (at exit).
    pub async fn restore(self) {
        if self.endpoint != 0
            && let Err(error) = self.pm.delete_endpoint(self.endpoint).await
        {
            warn!("{error:#}");
        }
        if let Err(error) = self.pm.set_limits(self.limits).await {
            warn!("cannot restore the MPTCP limits: {error:#}");
        }
        if let Err(error) = std::fs::write(JOIN_INITIAL, self.join_initial.trim()) {
            warn!("cannot restore {JOIN_INITIAL}: {error}");
        }
    }
}
