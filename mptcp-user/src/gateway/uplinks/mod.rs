//! The gateway's uplinks: the internet links whose paths MPTCP uses.
//!
//! With `[[gateway.uplink]]` entries (or `--uplink`), the gateway installs what each
//! needs, through netlink: a routing table with its default route, a rule sending
//! packets from its address to that table, an MPTCP `subflow` endpoint (`backup` when
//! asked), and path manager limits sized to the uplinks. It follows address and next-hop
//! changes and interfaces that go and come back, and removes what it installed when it
//! stops. Without entries it takes the host's MPTCP endpoints and the default route's
//! interface as they are, and installs nothing.
//!
//! Either way it probes each uplink every [`PROBE_INTERVAL`] (an MPTCP handshake with the
//! converter from the uplink's address), tells new flows which addresses to start
//! from, healthy uplinks first ([`UplinkTable::attempts`]), and tells the gateway's
//! [`Converters`] which converter the uplinks reach.
//!
//! With configured uplinks it also steers what the gateway does not convert (DNS, UDP,
//! TCP it does not intercept, the host's own traffic) to the best working uplink, and
//! moves it when that uplink dies ([`steer`], [`choice`]).
//!
//! - [`config`]: an uplink as configured.
//! - [`status`]: each uplink's health, and the status file the commands read.
//! - [`ranking`]: where new flows start.
//! - [`setup`]: routes, rules and MPTCP endpoints through netlink.
//! - [`probe`]: the handshake that tells an uplink's health.
//! - [`choice`]: which uplink carries what is not converted.
//! - [`steer`]: the rules, routes, marks and conntrack deletions that carry it there.
//! - [`usage`]: what the metered uplinks have carried.

mod choice;
mod config;
mod probe;
mod ranking;
mod setup;
mod status;
mod steer;
mod usage;

use std::{
    path::PathBuf,
    sync::{Arc, mpsc},
    thread,
};

use anyhow::Context as _;
use log::warn;
use tokio::sync::watch;

pub use choice::Traffic;
pub use config::{Allowance, Period, Role, UplinkConfig, check_unique};
pub use probe::PROBE_INTERVAL;
pub use ranking::UplinkTable;
use setup::Uplinks;
use status::write_status;
pub use status::{Health, UplinkStatus, read_status, status_path};
pub use steer::MARK_MASK;
use steer::{Layout, Steering};
use usage::Usage;

use super::converters::Converters;
use crate::net::netlink::Netlink;

/// The uplink manager, running on a thread of its own. Dropping it stops the thread,
/// which first removes what it installed.
pub struct UplinkManager {
    table: Arc<UplinkTable>,
    stop: Option<watch::Sender<bool>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the manager needs to know.
#[derive(Debug)]
pub struct ManagerConfig {
    /// The configured uplinks; empty: take the host's.
    pub uplinks: Vec<UplinkConfig>,
    /// Routing tables `first_table`, `first_table + 1`, ... are the uplinks'.
    pub first_table: u32,
    /// The converters, preferred first, where the probes go (none: no probes), and
    /// whose choice the probes make. The uplinks are IPv4: an IPv6 converter is not
    /// probed (a probe would not choose an uplink).
    pub converters: Arc<Converters>,
    /// Where the status is written for `mptcp-user uplinks` ([`status_path`]).
    pub status_file: PathBuf,
    /// Whether to steer what is not converted by the uplinks' health (with configured
    /// uplinks only).
    pub steer: bool,
    /// Where the metered uplinks' usage is kept.
    pub state_dir: PathBuf,
}

impl UplinkManager {
    /// Installs the configured uplinks (or finds the host's) and starts following and
    /// probing them. Fails, with nothing left installed, when an uplink cannot be set up.
    pub fn start(config: ManagerConfig) -> anyhow::Result<Self> {
        let table = Arc::new(UplinkTable::default());
        let (stop, stopped) = watch::channel(false);
        let (started, start_result) = mpsc::channel();
        let shared = Arc::clone(&table);
        let thread = thread::Builder::new()
            .name("uplinks".to_owned())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match runtime {
                    Ok(runtime) => runtime.block_on(manage(config, shared, started, stopped)),
                    Err(error) => {
                        let _ = started.send(Err(anyhow::Error::new(error)));
                    }
                }
            })
            .context("cannot start the uplink manager's thread")?;
        let manager = Self {
            table,
            stop: Some(stop),
            thread: Some(thread),
        };
        start_result
            .recv()
            .context("the uplink manager stopped before it started")??;
        Ok(manager)
    }

    /// The uplinks as new flows see them.
    pub fn table(&self) -> Arc<UplinkTable> {
        Arc::clone(&self.table)
    }
}

impl Drop for UplinkManager {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the uplink manager panicked; some routes may be left");
        }
    }
}

/// The manager's thread: set up, then follow and probe until told to stop, then remove.
async fn manage(
    config: ManagerConfig,
    table: Arc<UplinkTable>,
    started: mpsc::Sender<anyhow::Result<()>>,
    mut stopped: watch::Receiver<bool>,
) {
    let netlink = match Netlink::connect() {
        Ok(netlink) => netlink,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    let mut uplinks = Uplinks::new(&config);
    let mut steering = None;
    let layout = Layout::new(config.first_table);
    let set_up = async {
        // What a killed run left, whether this one steers or not.
        steer::clear(&netlink, layout).await?;
        uplinks.set_up(&netlink).await?;
        if config.steer && !config.uplinks.is_empty() {
            let usage = Usage::load(&config.state_dir, &config.uplinks);
            steering = Some(Steering::install(&netlink, layout, &config.uplinks, usage).await?);
        }
        anyhow::Ok(())
    };
    // Steering removes what it half-installed itself.
    if let Err(error) = set_up.await {
        uplinks.remove(&netlink).await;
        let _ = started.send(Err(error));
        return;
    }
    table.replace(uplinks.status.clone());
    let _ = started.send(Ok(()));
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = ticks.tick() => {}
        }
        if let Err(error) = uplinks.follow(&netlink).await {
            warn!("cannot follow the uplinks: {error:#}");
        }
        table.replace(uplinks.status.clone());
        // The first converter the uplinks reach is the one new flows use.
        let converters = &config.converters;
        let mut probed = false;
        for (index, &target) in converters.addresses().iter().enumerate() {
            if !target.is_ipv4() {
                continue;
            }
            uplinks.probe_all(target).await;
            probed = true;
            if reached(&uplinks.status) {
                converters.set_active(index);
                break;
            }
        }
        if probed {
            table.replace(uplinks.status.clone());
            let failed = uplinks.status.iter().any(|uplink| uplink.health.failed());
            converters.note_probes(reached(&uplinks.status), failed);
        }
        if let Some(steering) = &mut steering {
            let routes = uplinks.routes();
            steering
                .update(&netlink, &mut uplinks.status, &routes)
                .await;
        }
        write_status(&config.status_file, &uplinks.status);
    }
    if let Some(steering) = &mut steering {
        steering.remove(&netlink).await;
    }
    uplinks.remove(&netlink).await;
    let _ = std::fs::remove_file(&config.status_file);
}

/// Whether some uplink's probe reached the converter.
fn reached(uplinks: &[UplinkStatus]) -> bool {
    uplinks
        .iter()
        .any(|uplink| uplink.health.reaches_converter())
}
