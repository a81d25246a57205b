//! Per-flow bookkeeping while the gateway runs: where each accepted connection wanted to
//! go, and the flow list that `mptcp-user flows` reads. Each map has a lock of its own;
//! every update is one system call.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use aya::maps::{Array, HashMap, MapData, SkStorage};
use log::{info, warn};
use mptcp_ebpf_common::{
    Endpoint,
    cgroups::{self, OriginalDst},
    flows::{self, FLOW_DIRECT, Flow, INTERCEPTED_CGROUP, INTERCEPTED_INBOUND, INTERCEPTED_LAN},
    selection::{SHEDDING, SHEDDING_MAP_NAME},
};

use crate::{
    bpf::Programs,
    lock,
    net::{addr, socket},
    sys,
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
    /// Inbound, from the converter, through a port forward.
    Inbound,
}

impl Intercepted {
    /// The name the metrics and `mptcp-user flows` give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lan => "lan",
            Self::Cgroup => "cgroup",
            Self::Inbound => "in",
        }
    }
}

/// The maps the gateway updates as flows come and go.
pub struct FlowTable {
    /// The transparent listener's port.
    listen_port: u16,
    /// Live flows, by LAN-side socket cookie.
    flows: Mutex<HashMap<MapData, u64, Flow>>,
    /// Flow keys of upstream MPTCP sockets, by socket.
    labels: Mutex<SkStorage<MapData, u64>>,
    /// Original destinations of intercepted local connects, by client endpoint.
    original_destinations: Mutex<HashMap<MapData, Endpoint, OriginalDst>>,
    /// Live flows against what the open-file limit allows.
    load: Load,
}

/// Live flows against the open-file limit. When they reach it, the programs take no new
/// flow (it goes direct, forwarded by the kernel) until a tenth of them have ended:
/// a full gateway must not leave connections unaccepted in its listen queue.
struct Load {
    live: AtomicU64,
    capacity: u64,
    shedding: AtomicBool,
    /// `SHEDDING`: what the programs read.
    map: Mutex<Array<MapData, u32>>,
}

impl Load {
    fn set_shedding(&self, shedding: bool) {
        let value = if shedding { SHEDDING } else { 0 };
        if let Err(error) = lock(&self.map).set(0, value, 0) {
            warn!("cannot tell the programs whether to take new flows: {error}");
        }
    }
}

impl FlowTable {
    /// Takes the maps out of the loaded programs (pin them first); `capacity` is how
    /// many flows the open-file limit leaves room for.
    pub fn take(programs: &mut Programs, listen_port: u16, capacity: u64) -> anyhow::Result<Self> {
        Ok(Self {
            load: Load {
                live: AtomicU64::new(0),
                capacity,
                shedding: AtomicBool::new(false),
                map: Mutex::new(Array::try_from(programs.take_map(SHEDDING_MAP_NAME)?)?),
            },
            listen_port,
            flows: Mutex::new(HashMap::try_from(
                programs.take_map(flows::FLOWS_MAP_NAME)?,
            )?),
            labels: Mutex::new(SkStorage::try_from(
                programs.take_map(flows::FLOW_LABELS_MAP_NAME)?,
            )?),
            original_destinations: Mutex::new(HashMap::try_from(
                programs.take_map(cgroups::ORIGINAL_DST_MAP_NAME)?,
            )?),
        })
    }

    /// Where the accepted connection from `peer` to `local` wanted to go, and how it got
    /// here; `None` for a connection made to the listener itself (never relayed: that
    /// would loop).
    ///
    /// A local connect the connect programs intercepted left its original destination
    /// under its client endpoint; any other connection came from the LAN, and its local
    /// address is its destination, whatever port that is.
    pub fn original_destination(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Option<(SocketAddr, Intercepted)> {
        if let Some(destination) = self.take_connect_destination(peer) {
            return Some((destination, Intercepted::Cgroup));
        }
        let local = SocketAddr::new(addr::canonical(local.ip()), local.port());
        if local.port() == self.listen_port && socket::is_host_address(local.ip()) {
            return None;
        }
        Some((local, Intercepted::Lan))
    }

    /// Reads and deletes the original destination the connect programs recorded for the
    /// connection from `client`; the accept is its only reader.
    fn take_connect_destination(&self, client: SocketAddr) -> Option<SocketAddr> {
        let client = addr::to_endpoint(client);
        let mut map = lock(&self.original_destinations);
        let original = map.get(&client, 0).ok()?;
        let _ = map.remove(&client);
        // An entry the LRU map reused for another client while it was read.
        addr::from_endpoint(original.destination_for(&client)?)
    }

    /// Lists the flow under `key` (the LAN-side socket cookie) for `mptcp-user flows`,
    /// until the returned guard drops; marked direct when no converter could take it.
    pub fn register(
        &self,
        key: u64,
        client: SocketAddr,
        destination: SocketAddr,
        intercepted: Intercepted,
        carried: Carried,
    ) -> Registration<'_> {
        let flow = Flow {
            started_ns: sys::monotonic_ns(),
            client: addr::to_endpoint(client),
            destination: addr::to_endpoint(destination),
            intercepted: match intercepted {
                Intercepted::Lan => INTERCEPTED_LAN,
                Intercepted::Cgroup => INTERCEPTED_CGROUP,
                Intercepted::Inbound => INTERCEPTED_INBOUND,
            },
            flags: if carried == Carried::Fallback {
                FLOW_DIRECT
            } else {
                0
            },
        };
        if let Err(error) = lock(&self.flows).insert(key, flow, 0) {
            // Only the listing suffers; the flow itself goes on.
            warn!("cannot list flow {client} -> {destination}: {error}");
        }
        Registration { table: self, key }
    }

    /// Labels an upstream MPTCP socket with its flow's key, so that sock_ops files its
    /// subflows under the flow. Call before connecting.
    pub fn label(&self, socket: &impl std::os::fd::AsRawFd, key: u64) -> io::Result<()> {
        lock(&self.labels)
            .insert(socket, key, 0)
            .map_err(io::Error::other)
    }

    /// Counts a new flow until the returned guard drops; the one that fills the gateway
    /// makes the programs take no more.
    pub fn admit(&self) -> Admitted<'_> {
        let load = &self.load;
        let live = load.live.fetch_add(1, Ordering::Relaxed) + 1;
        if live >= load.capacity && !load.shedding.swap(true, Ordering::Relaxed) {
            warn!(
                "{live} flows, as many as the open-file limit leaves room for: new flows go \
                 direct until some end (raise the hard limit, LimitNOFILE=, for more)"
            );
            load.set_shedding(true);
        }
        Admitted { load }
    }
}

/// How a flow is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carried {
    /// Through a converter (RFC 8803).
    Converter,
    /// MPTCP straight to the destination: the gateway runs in direct mode.
    Direct,
    /// MPTCP straight to the destination because no converter could take the flow.
    Fallback,
}

impl Carried {
    /// The name the metrics give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Converter => "converter",
            Self::Direct => "direct",
            Self::Fallback => "fallback",
        }
    }
}

/// A flow counted in the gateway's load; dropping it lets the gateway take new flows
/// again once enough have ended.
pub struct Admitted<'a> {
    load: &'a Load,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let load = self.load;
        let live = load.live.fetch_sub(1, Ordering::Relaxed) - 1;
        if live <= load.capacity / 10 * 9 && load.shedding.swap(false, Ordering::Relaxed) {
            info!("{live} flows: the gateway takes new flows again");
            load.set_shedding(false);
        }
    }
}

/// A flow listed in `FLOWS`; dropping it takes the flow off the list.
pub struct Registration<'a> {
    table: &'a FlowTable,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let _ = lock(&self.table.flows).remove(&self.key);
    }
}
