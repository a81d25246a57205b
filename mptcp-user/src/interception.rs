//! The daemon's side of the in-kernel redirect: it loads and attaches the programs,
//! installs the selection policy and the LAN policy routes, and, while it runs, resolves
//! the original destination of each accepted connection and registers the flow for the
//! inspection CLI.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Mutex,
};

use anyhow::Context as _;
use aya::maps::MapData;
use aya_log::EbpfLogger;
use log::{info, warn};
use mptcp_ebpf_common::{
    Endpoint,
    flows::{Flow, INTERCEPTED_CGROUP, INTERCEPTED_LAN},
};

use crate::{
    cgroups,
    cli::GatewayArgs,
    ebpf::{FlowMaps, Programs, Settings},
    protocol::canonical_ip,
    selection::{self, Action, Policy, Rule},
    steering::PolicyRoutes,
    sys,
    tuning::Tuning,
};

/// How a connection reached the transparent listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Intercepted {
    /// From a LAN interface (tc program); the accepted socket's local address is the
    /// original destination.
    Lan,
    /// From an opted-in local cgroup (connect programs); the original destination is in
    /// `ORIGINAL_DST`.
    Cgroup,
}

/// Everything the redirect installed. Dropping it detaches the programs and removes the
/// pins first (fields drop in declaration order), then the policy routes, so nothing is
/// steered to routes that are gone.
pub struct Interception {
    programs: Mutex<Programs>,
    _routes: Option<PolicyRoutes>,
    /// The `--lan` interfaces and the index the program is attached to (`None` while
    /// the interface is gone).
    lan: Mutex<Vec<(String, Option<u32>)>>,
    policy: Mutex<Policy<MapData, MapData>>,
    maps: Mutex<FlowMaps>,
    listen: SocketAddr,
}

impl Interception {
    /// Loads the programs and installs the redirect for `args`. `never` are addresses
    /// that must never be intercepted (the converter). The listener must already listen:
    /// the LAN program steers to it from the moment it is attached.
    pub fn install(args: &GatewayArgs, tuning: &Tuning, never: &[IpAddr]) -> anyhow::Result<Self> {
        let (redirect_v4, redirect_v6) = redirect_targets(args.listen.ip());
        let settings = Settings {
            listen_port: args.listen.port(),
            steer_mark: args.steer_mark,
            netns_cookie: sys::netns_cookie()
                .context("cannot read the network namespace cookie")?,
            redirect_v4: redirect_v4.map_or([0; 4], selection::to_address),
            redirect_v6: redirect_v6.map_or([0; 4], selection::to_address),
            uplink_is_local: true,
            long_rtt: tuning.long_rtt(),
        };
        let mut programs = Programs::load(&settings)?;
        if let Some(logger) = programs.take_logger() {
            tokio::spawn(drain_ebpf_log(logger));
        }
        programs.pin_maps(&args.pin_path)?;

        let mut never = never.to_vec();
        never.extend(crate::policy::local_addresses()?);
        // The gateway's own networks (LAN and uplink prefixes, public ones included)
        // go directly unless --include says otherwise.
        let rules: Vec<Rule> = crate::policy::local_prefixes()?
            .into_iter()
            .map(|prefix| Rule {
                prefix,
                action: Action::Exclude,
            })
            .chain(args.include.iter().map(|&prefix| Rule {
                prefix,
                action: Action::Include,
            }))
            .chain(args.exclude.iter().map(|&prefix| Rule {
                prefix,
                action: Action::Exclude,
            }))
            .collect();
        let mut policy = programs.take_policy()?;
        policy.install(&rules, &never, &args.ports)?;

        let mut opted_in = programs.take_opted_in()?;
        for cgroup in &args.cgroups {
            cgroups::opt_in(&mut opted_in, cgroup)?;
            info!(
                "redirecting the TCP connects of cgroup {}",
                cgroup.display()
            );
        }
        programs.set_uplink_congestion(tuning.uplink_congestion())?;
        if tuning.tunes_subflows() {
            info!("subflow tuning: {}", tuning.describe_subflow_rules());
        }
        let root = cgroups::root()?;
        programs.attach_sock_ops(&root)?;
        programs.attach_connect_redirect(&root)?;

        let routes = if args.lan.is_empty() {
            None
        } else {
            Some(PolicyRoutes::install(args.steer_mark, args.steer_table)?)
        };
        let mut lan = Vec::new();
        for interface in &args.lan {
            programs.attach_lan(interface)?;
            info!("intercepting TCP flows arriving on {interface}");
            lan.push((interface.clone(), interface_index(interface)));
        }
        let maps = programs.take_flow_maps()?;
        Ok(Self {
            programs: Mutex::new(programs),
            _routes: routes,
            lan: Mutex::new(lan),
            policy: Mutex::new(policy),
            maps: Mutex::new(maps),
            listen: args.listen,
        })
    }

    /// Follows the `--lan` interfaces: a tcx link goes with its interface, so when one
    /// is deleted and created again (a bridge rebuilt by a network restart, say), the
    /// program is attached to the new one. Meanwhile its flows go directly.
    pub fn follow_lan_interfaces(&self) {
        let mut lan = lock(&self.lan);
        for (name, attached) in lan.iter_mut() {
            let current = interface_index(name);
            if current == *attached {
                continue;
            }
            match current {
                None => warn!("LAN interface {name} is gone; until it is back, nothing is steered"),
                Some(_) => match lock(&self.programs).attach_lan(name) {
                    Ok(()) => info!("LAN interface {name} is back; intercepting it again"),
                    Err(error) => {
                        warn!("{error:#}");
                        continue;
                    }
                },
            }
            *attached = current;
        }
    }

    /// Stops intercepting new flows (the include rules go), while the flows already
    /// intercepted go on: used at shutdown, for the grace period.
    pub fn stop_new_flows(&self) {
        let mut policy = lock(&self.policy);
        let rules = match policy.rules() {
            Ok(rules) => rules,
            Err(error) => {
                warn!("cannot read the policy to stop new flows: {error:#}");
                return;
            }
        };
        for rule in rules.iter().filter(|rule| rule.action == Action::Include) {
            if let Err(error) = policy.remove(rule.prefix) {
                warn!("{error:#}");
            }
        }
    }

    /// Where the accepted connection from `peer` to `local` wanted to go, and how it got
    /// here; `None` for a connection made to the listener itself (never relayed: that
    /// would loop).
    pub fn original_destination(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, Intercepted)> {
        let local = SocketAddr::new(canonical_ip(local.ip()), local.port());
        let to_listener = local.port() == self.listen.port()
            && (self.listen.ip().is_unspecified() || local.ip() == canonical_ip(self.listen.ip()));
        if !to_listener {
            return Some((local, Intercepted::Lan));
        }
        let client = endpoint(peer);
        let mut maps = lock(&self.maps);
        let original = maps.original_destinations.get(&client, 0).ok()?;
        // Consumed: the entry's only reader is this accept.
        let _ = maps.original_destinations.remove(&client);
        let destination = SocketAddr::new(
            selection::from_address(original.address),
            u16::try_from(original.port).ok()?,
        );
        Some((destination, Intercepted::Cgroup))
    }

    /// Lists the flow under `key` (the LAN-side socket cookie) for `mptcp-user flows`,
    /// until the returned guard drops.
    pub fn register(
        &self,
        key: u64,
        client: SocketAddr,
        destination: SocketAddr,
        intercepted: Intercepted,
    ) -> Registration<'_> {
        let flow = Flow {
            started_ns: sys::monotonic_ns(),
            client: endpoint(client),
            destination: endpoint(destination),
            intercepted: match intercepted {
                Intercepted::Lan => INTERCEPTED_LAN,
                Intercepted::Cgroup => INTERCEPTED_CGROUP,
            },
            reserved: 0,
        };
        if let Err(error) = lock(&self.maps).flows.insert(key, flow, 0) {
            // Only the listing suffers; the flow itself goes on.
            warn!("cannot list flow {client} -> {destination}: {error}");
        }
        Registration {
            interception: self,
            key,
        }
    }

    /// Labels an upstream MPTCP socket with its flow's key, so that sock_ops files its
    /// subflows under the flow. Call before connecting.
    pub fn label(&self, socket: &socket2::Socket, key: u64) -> io::Result<()> {
        lock(&self.maps)
            .labels
            .insert(socket, key, 0)
            .map_err(io::Error::other)
    }
}

/// A flow listed in `FLOWS`; dropping it takes the flow off the list.
pub struct Registration<'a> {
    interception: &'a Interception,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let _ = lock(&self.interception.maps).flows.remove(&self.key);
    }
}

fn interface_index(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// A poisoned lock only means another relay panicked mid-update; the maps are still
/// consistent (each update is one syscall), so keep going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn endpoint(address: SocketAddr) -> Endpoint {
    Endpoint {
        address: selection::to_address(address.ip()),
        port: u32::from(address.port()),
    }
}

/// Where the connect programs send redirected IPv4 and IPv6 connects: the listener's
/// own address, or loopback when it listens on a wildcard address.
fn redirect_targets(listen: IpAddr) -> (Option<IpAddr>, Option<IpAddr>) {
    match listen {
        IpAddr::V6(v6) if v6.is_unspecified() => (
            Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ),
        IpAddr::V4(v4) if v4.is_unspecified() => (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), None),
        IpAddr::V4(_) => (Some(listen), None),
        IpAddr::V6(_) => (None, Some(listen)),
    }
}

/// Forwards the eBPF programs' log records to env_logger as they arrive.
async fn drain_ebpf_log(logger: EbpfLogger<&'static dyn log::Log>) {
    let mut logger = match sys::register_readable(logger) {
        Ok(logger) => logger,
        Err(error) => {
            log::error!("cannot poll the eBPF log ring buffer: {error}");
            return;
        }
    };
    loop {
        let mut guard = match logger.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                log::error!("eBPF log ring buffer failed: {error}");
                return;
            }
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
