//! The eBPF object both daemons load: loading it with their settings, attaching its
//! programs, pinning its maps, and how each MPTCP socket and subflow is tuned
//! ([`tuning`]).
//!
//! Every program is attached through a BPF link whose file descriptor this process owns:
//! when the process exits, even by SIGKILL, the kernel detaches the programs. That is
//! what keeps a household's internet working when the daemon dies (fail-open). A
//! classic tc filter would outlive us and blackhole the marked traffic, so the LAN
//! program is only ever attached as tcx.

use std::{
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{LpmTrie, Map, MapData, SockMap, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SkLookup, SockOps,
        TcAttachType, tc::TcAttachOptions,
    },
};
use aya_log::EbpfLogger;
use ipnet::IpNet;
use log::{debug, error, warn};
use mptcp_ebpf_common::{
    Address, cgroups, flows, lan, selection,
    uplinks::{self, CongestionName},
};

use crate::{net::addr, sys};
use tuning::{LongRtt, UplinkCongestion};

pub mod tuning;

/// The eBPF object built by build.rs, embedded so that the shipped binary needs no
/// toolchain at run time. Aligned because aya parses it in place as an ELF file.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));

/// The tc program of the LAN interfaces.
const LAN_PROGRAM: &str = "intercept_lan";
/// The sk_lookup program: who reaches the transparent listener by the kernel's lookup.
const LISTENER_PROGRAM: &str = "lookup_listener";
/// The sock_ops program (hand-over of intercepted connects, subflow records, tuning).
const SOCK_OPS_PROGRAM: &str = "track_sockets";
/// The cgroup/sock_addr programs that intercept the connects of opted-in cgroups.
const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "intercept_connect4",
    "intercept_connect6",
    "restore_getpeername4",
    "restore_getpeername6",
];

/// The maps `mptcp-user flows|selection|optin|optout` work on, pinned under `--pin-path`.
pub const PINNED_MAPS: [&str; 6] = [
    selection::MAP_NAME,
    selection::PORTS_MAP_NAME,
    selection::QUIC_MAP_NAME,
    cgroups::OPTED_IN_MAP_NAME,
    flows::FLOWS_MAP_NAME,
    flows::SUBFLOWS_MAP_NAME,
];

/// What the programs are told at load time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The transparent listener's port.
    pub listen_port: u16,
    /// The fwmark of the local-delivery policy route.
    pub intercept_mark: u32,
    /// The daemon's network namespace cookie (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// Where intercepted IPv4 connects go (the listener); zeros for none.
    pub listener_v4: Address,
    /// Where intercepted IPv6 connects go; zeros for none.
    pub listener_v6: Address,
    /// Whether a subflow's uplink is its local address (gateway) or its peer's
    /// (converter).
    pub uplink_is_local: bool,
    /// What long-RTT subflows get.
    pub long_rtt: LongRtt,
    /// Subflows' packets in flight, percent of their bandwidth-delay product; 0: none.
    pub inflight_cap_percent: u32,
}

/// The loaded programs and maps. Dropping it detaches every program and removes the pins.
pub struct Programs {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Programs {
    /// Loads the embedded object into the kernel with `settings`; nothing is attached.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        sys::raise_memlock_rlimit();
        let mut ebpf = EbpfLoader::new()
            .override_global("LISTEN_PORT", &settings.listen_port, true)
            .override_global("INTERCEPT_MARK", &settings.intercept_mark, true)
            .override_global("NETNS_COOKIE", &settings.netns_cookie, true)
            .override_global("LISTENER_V4", &settings.listener_v4, true)
            .override_global("LISTENER_V6", &settings.listener_v6, true)
            .override_global(
                "UPLINK_IS_LOCAL",
                &u32::from(settings.uplink_is_local),
                true,
            )
            .override_global("LONG_RTT_US", &settings.long_rtt.threshold_us, true)
            .override_global("LONG_RTT_CONGESTION", &settings.long_rtt.congestion, true)
            .override_global("LONG_RTT_SEND_BUFFER", &settings.long_rtt.send_buffer, true)
            .override_global("INFLIGHT_CAP_PERCENT", &settings.inflight_cap_percent, true)
            .load(EBPF_OBJECT)
            .context("failed to load the eBPF object")?;
        let classifier: &mut SchedClassifier = program_mut(&mut ebpf, LAN_PROGRAM)?.try_into()?;
        classifier
            .load()
            .with_context(|| format!("the kernel rejected {LAN_PROGRAM}"))?;
        let lookup: &mut SkLookup = program_mut(&mut ebpf, LISTENER_PROGRAM)?.try_into()?;
        lookup
            .load()
            .with_context(|| format!("the kernel rejected {LISTENER_PROGRAM}"))?;
        let sock_ops: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        sock_ops
            .load()
            .with_context(|| format!("the kernel rejected {SOCK_OPS_PROGRAM}"))?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut ebpf, name)?.try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel rejected {name}"))?;
        }
        Ok(Self {
            ebpf,
            pin_dir: None,
        })
    }

    /// Takes the ring buffer the programs log into. The caller drains it with
    /// [`EbpfLogger::flush`] when its file descriptor is readable. `None` (with a
    /// warning) when the object has no log statements left after optimisation.
    pub fn take_logger(&mut self) -> Option<EbpfLogger<&'static dyn log::Log>> {
        match EbpfLogger::init(&mut self.ebpf) {
            Ok(logger) => Some(logger),
            Err(error) => {
                warn!("eBPF programs will not log: {error}");
                None
            }
        }
    }

    /// Attaches the interception program to the ingress of LAN interface `interface`, as a
    /// tcx link (kernel 6.6 or later).
    pub fn attach_lan(&mut self, interface: &str) -> anyhow::Result<()> {
        let program: &mut SchedClassifier = program_mut(&mut self.ebpf, LAN_PROGRAM)?.try_into()?;
        program
            .attach_with_options(
                interface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| {
                format!("failed to attach to {interface} ingress (tcx needs Linux 6.6 or later)")
            })?;
        debug!("{LAN_PROGRAM} attached to {interface} ingress");
        Ok(())
    }

    /// Guards the transparent listener `listener` (see mptcp-ebpf's `listener`): puts it
    /// in the sockmap and attaches the sk_lookup program to this network namespace, which
    /// hands it the SYNs reusing a time-wait four-tuple and keeps all but local
    /// processes from connecting to its port directly.
    pub fn attach_listener_lookup(&mut self, listener: &impl AsRawFd) -> anyhow::Result<()> {
        let mut sockets: SockMap<&mut MapData> =
            SockMap::try_from(self.ebpf.map_mut(lan::LISTENER_MAP_NAME).ok_or_else(|| {
                anyhow!("the eBPF object has no map {}", lan::LISTENER_MAP_NAME)
            })?)?;
        sockets
            .set(lan::LISTENER_INDEX, listener, 0)
            .context("failed to put the listener into the sockmap")?;
        let netns = File::open("/proc/self/ns/net")
            .context("failed to open this process's network namespace")?;
        let program: &mut SkLookup = program_mut(&mut self.ebpf, LISTENER_PROGRAM)?.try_into()?;
        program
            .attach(&netns)
            .context("failed to attach the sk_lookup program to the network namespace")?;
        debug!("{LISTENER_PROGRAM} attached to the network namespace");
        Ok(())
    }

    /// Attaches sock_ops to the cgroup v2 root `root`: it sees every TCP socket of the
    /// host and acts on intercepted connects and on the daemon's own subflows.
    pub fn attach_sock_ops(&mut self, root: &Path) -> anyhow::Result<()> {
        let root_dir = open_cgroup(root)?;
        // A BPF link always coexists with other programs on the cgroup; the kernel rejects
        // the BPF_F_ALLOW_MULTI flag on links (EINVAL), so the mode must be Single.
        let sock_ops: &mut SockOps = program_mut(&mut self.ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        sock_ops
            .attach(&root_dir, CgroupAttachMode::Single)
            .with_context(|| format!("failed to attach sock_ops to {}", root.display()))?;
        debug!("sock_ops attached to {}", root.display());
        Ok(())
    }

    /// Attaches the connect/getpeername programs to the cgroup v2 root `root`: they see
    /// every connect of the host and intercept the opted-in cgroups'.
    pub fn attach_connect_interception(&mut self, root: &Path) -> anyhow::Result<()> {
        let root_dir = open_cgroup(root)?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?.try_into()?;
            program
                .attach(&root_dir, CgroupAttachMode::Single)
                .with_context(|| format!("failed to attach {name} to {}", root.display()))?;
        }
        debug!("connect interception attached to {}", root.display());
        Ok(())
    }

    /// Installs the per-uplink congestion control rules for sock_ops.
    pub fn set_uplink_congestion(&mut self, rules: &[UplinkCongestion]) -> anyhow::Result<()> {
        let mut map: LpmTrie<&mut MapData, Address, CongestionName> = LpmTrie::try_from(
            self.ebpf
                .map_mut(uplinks::MAP_NAME)
                .ok_or_else(|| anyhow!("the eBPF object has no map {}", uplinks::MAP_NAME))?,
        )?;
        for rule in rules {
            map.insert(&prefix_key(&rule.uplinks), rule.map_name(), 0)
                .with_context(|| format!("failed to add --uplink-congestion {}", rule.uplinks))?;
        }
        Ok(())
    }

    /// Takes map `name` out of the object, for the caller to own (pin first).
    pub fn take_map(&mut self, name: &str) -> anyhow::Result<Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name} (or it was taken)"))
    }

    /// Pins the maps the inspection CLI uses under `dir` (created if needed, on bpffs).
    /// The pins are removed when `self` is dropped.
    pub fn pin_maps(&mut self, dir: &Path) -> anyhow::Result<()> {
        sys::mount_bpffs_if_missing()?;
        if dir != Path::new(sys::BPFFS) {
            sys::private_dir(dir)?;
        }
        self.pin_dir = Some(dir.to_path_buf());
        for name in PINNED_MAPS {
            let pin = dir.join(name);
            remove_stale_pin(&pin)?;
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))?;
            map.pin(&pin)
                .with_context(|| format!("failed to pin {}", pin.display()))?;
        }
        Ok(())
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        // Links are detached when `ebpf` drops; the pins would outlive us.
        if let Some(dir) = &self.pin_dir {
            for name in PINNED_MAPS {
                let pin = dir.join(name);
                if let Err(error) = fs::remove_file(&pin)
                    && error.kind() != io::ErrorKind::NotFound
                {
                    warn!("failed to remove {}: {error}", pin.display());
                }
            }
            // Only succeeds when empty, which is what we want: never remove others' pins.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A pin left behind by a gateway that was killed would make pinning fail with EEXIST.
fn remove_stale_pin(pin: &Path) -> anyhow::Result<()> {
    match fs::remove_file(pin) {
        Ok(()) => {
            warn!(
                "removed a stale pin {} (a previous gateway did not exit cleanly)",
                pin.display()
            );
            Ok(())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", pin.display())),
    }
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo
/// (/sys/fs/cgroup on most systems, /sys/fs/cgroup/unified in hybrid mode).
pub fn cgroup_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("failed to read /proc/self/mountinfo")?;
    // Fields: id parent major:minor root mount-point options... - fstype source options.
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split_whitespace().nth(4)?;
            (after.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context(
            "no cgroup v2 hierarchy is mounted here; the gateway needs one (note: `ip netns \
             exec` remounts /sys, hiding it and bpffs: use `nsenter --net=/run/netns/NAME`)",
        )
}

fn open_cgroup(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("failed to open cgroup {}", path.display()))
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}

/// Opens a map a running gateway pinned under `pin_dir`, with errors that say what to do.
pub fn open_pinned(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let pin = pin_dir.join(name);
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "permission denied: reading {} needs root (try sudo)",
            pin.display()
        );
    }
    if !pin.exists() {
        bail!(
            "no running gateway found: {} does not exist (is `mptcp-user gateway` running \
             with --pin-path {}?)",
            pin.display(),
            pin_dir.display()
        );
    }
    let data =
        MapData::from_pin(&pin).with_context(|| format!("failed to open {}", pin.display()))?;
    Map::from_map_data(data).with_context(|| format!("unexpected map type at {}", pin.display()))
}

/// The LPM trie key of `prefix` (IPv4 prefixes as IPv4-mapped, 96 bits longer).
#[must_use]
pub fn prefix_key(prefix: &IpNet) -> Key<Address> {
    let bits = u32::from(prefix.prefix_len()) + if prefix.addr().is_ipv4() { 96 } else { 0 };
    Key::new(bits, addr::to_map_address(prefix.network()))
}

/// The prefix of an LPM trie key (the inverse of [`prefix_key`]).
pub fn prefix_from_key(key: &Key<Address>) -> anyhow::Result<IpNet> {
    let network = addr::from_map_address(key.data());
    let bits = match network {
        std::net::IpAddr::V4(_) => key
            .prefix_len()
            .checked_sub(96)
            .context("bad IPv4 prefix in the map")?,
        std::net::IpAddr::V6(_) => key.prefix_len(),
    };
    Ok(IpNet::new(network, u8::try_from(bits)?)?)
}

/// Forwards the eBPF programs' log records to env_logger as they arrive, until the ring
/// buffer fails.
pub async fn forward_log(mut logger: EbpfLogger<&'static dyn log::Log>) {
    use std::os::fd::AsFd as _;
    let readiness = logger
        .as_fd()
        .try_clone_to_owned()
        .and_then(sys::register_readable);
    let readiness = match readiness {
        Ok(readiness) => readiness,
        Err(error) => {
            error!("cannot poll the eBPF log ring buffer: {error}");
            return;
        }
    };
    loop {
        let mut guard = match readiness.readable().await {
            Ok(guard) => guard,
            Err(error) => {
                error!("eBPF log ring buffer failed: {error}");
                return;
            }
        };
        logger.flush();
        guard.clear_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::{prefix_from_key, prefix_key};
    use crate::net::addr::parse_prefix;

    #[test]
    fn ipv4_prefixes_are_mapped_with_96_more_bits() {
        let prefix = parse_prefix("10.0.0.0/8").unwrap();
        let key = prefix_key(&prefix);
        assert_eq!(key.prefix_len(), 104);
        assert_eq!(prefix_from_key(&key).unwrap(), prefix);
        for text in ["0.0.0.0/0", "::/0", "2001:db8::/32"] {
            let prefix = parse_prefix(text).unwrap();
            assert_eq!(prefix_from_key(&prefix_key(&prefix)).unwrap(), prefix);
        }
    }
}
