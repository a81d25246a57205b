//! Loading the gateway's eBPF programs and attaching them.
//!
//! Every program is attached through a BPF link whose file descriptor this process owns:
//! when the process exits, even by SIGKILL, the kernel detaches the programs. That is
//! what keeps a household's internet working when the daemon dies (fail-open). A
//! classic tc filter would outlive us and blackhole the marked traffic, so the LAN
//! program is only ever attached as tcx.

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, Map, MapData, SkStorage},
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, SockOps, TcAttachType,
        tc::TcAttachOptions,
    },
};
use aya_log::EbpfLogger;
use log::{debug, warn};

use crate::{
    selection::{self, Policy},
    tuning::{LongRtt, UplinkCongestion},
};
use mptcp_ebpf_common::{
    Address, Endpoint,
    flows::{self, Flow},
    policy, redirect,
    uplinks::{self, CongestionName},
};

/// The eBPF object built by build.rs, embedded so that the shipped binary needs no
/// toolchain at run time. Aligned because aya parses it in place as an ELF file.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));

/// The tc program of the LAN interfaces.
const LAN_PROGRAM: &str = "steer_lan";
/// The sock_ops program (redirect hand-over, subflow records).
const SOCK_OPS_PROGRAM: &str = "track_sockets";
/// The cgroup/sock_addr programs of the local-service redirect.
const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    "redirect_connect4",
    "redirect_connect6",
    "restore_getpeername4",
    "restore_getpeername6",
];

/// The maps `mptcp-user flows|policy|optin|optout` work on, pinned under `--pin-path`.
pub const PINNED_MAPS: [&str; 5] = [
    policy::MAP_NAME,
    policy::PORTS_MAP_NAME,
    redirect::OPTED_IN_MAP_NAME,
    flows::FLOWS_MAP_NAME,
    flows::SUBFLOWS_MAP_NAME,
];

/// The maps the gateway updates as flows come and go.
pub struct FlowMaps {
    /// Live flows, by LAN-side socket cookie.
    pub flows: HashMap<MapData, u64, Flow>,
    /// Flow labels of upstream MPTCP sockets, by socket fd.
    pub labels: SkStorage<MapData, u64>,
    /// Original destinations of redirected local connects, by client endpoint.
    pub original_destinations: HashMap<MapData, Endpoint, Endpoint>,
}

/// What the programs are told at load time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The transparent listener's port.
    pub listen_port: u16,
    /// The fwmark of the local-delivery policy route.
    pub steer_mark: u32,
    /// The daemon's network namespace cookie (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    /// Where redirected IPv4 connects go; zeros for none.
    pub redirect_v4: Address,
    /// Where redirected IPv6 connects go; zeros for none.
    pub redirect_v6: Address,
    /// Whether a subflow's uplink is its local address (gateway) or its peer's
    /// (converter).
    pub uplink_is_local: bool,
    /// What long-RTT subflows get.
    pub long_rtt: LongRtt,
}

/// The loaded programs and maps. Dropping it detaches every program and removes the pins.
pub struct Programs {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Programs {
    /// Loads the embedded object into the kernel with `settings`; nothing is attached.
    pub fn load(settings: &Settings) -> anyhow::Result<Self> {
        crate::sys::raise_memlock_rlimit();
        let mut ebpf = EbpfLoader::new()
            .override_global("LISTEN_PORT", &settings.listen_port, true)
            .override_global("STEER_MARK", &settings.steer_mark, true)
            .override_global("NETNS_COOKIE", &settings.netns_cookie, true)
            .override_global("REDIRECT_V4", &settings.redirect_v4, true)
            .override_global("REDIRECT_V6", &settings.redirect_v6, true)
            .override_global(
                "UPLINK_IS_LOCAL",
                &u32::from(settings.uplink_is_local),
                true,
            )
            .override_global("LONG_RTT_US", &settings.long_rtt.threshold_us, true)
            .override_global("LONG_RTT_CONGESTION", &settings.long_rtt.congestion, true)
            .override_global("LONG_RTT_SEND_BUFFER", &settings.long_rtt.send_buffer, true)
            .load(EBPF_OBJECT)
            .context("failed to load the eBPF object")?;
        let classifier: &mut SchedClassifier = program_mut(&mut ebpf, LAN_PROGRAM)?.try_into()?;
        classifier
            .load()
            .with_context(|| format!("the kernel rejected {LAN_PROGRAM}"))?;
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

    /// Attaches the steering program to the ingress of LAN interface `interface`, as a
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

    /// Attaches sock_ops to the cgroup v2 root `root`: it sees every TCP socket of the
    /// host and acts on redirected connects and on the daemon's own subflows.
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
    /// every connect of the host and redirect the opted-in cgroups'.
    pub fn attach_connect_redirect(&mut self, root: &Path) -> anyhow::Result<()> {
        let root_dir = open_cgroup(root)?;
        for name in SOCK_ADDR_PROGRAMS {
            let program: &mut CgroupSockAddr = program_mut(&mut self.ebpf, name)?.try_into()?;
            program
                .attach(&root_dir, CgroupAttachMode::Single)
                .with_context(|| format!("failed to attach {name} to {}", root.display()))?;
        }
        debug!("connect redirect attached to {}", root.display());
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
            map.insert(&selection::prefix_key(&rule.uplinks), rule.map_name(), 0)
                .with_context(|| format!("failed to add --uplink-congestion {}", rule.uplinks))?;
        }
        Ok(())
    }

    /// Takes the selection policy's maps out of the object (pin first).
    pub fn take_policy(&mut self) -> anyhow::Result<Policy<MapData, MapData>> {
        Ok(Policy::new(
            LpmTrie::try_from(self.take_map(policy::MAP_NAME)?)?,
            HashMap::try_from(self.take_map(policy::PORTS_MAP_NAME)?)?,
        ))
    }

    /// Takes the opted-in cgroups map out of the object (pin first).
    pub fn take_opted_in(&mut self) -> anyhow::Result<HashMap<MapData, u64, u32>> {
        Ok(HashMap::try_from(
            self.take_map(redirect::OPTED_IN_MAP_NAME)?,
        )?)
    }

    /// Takes the maps the daemon updates for each flow out of the object (pin first).
    pub fn take_flow_maps(&mut self) -> anyhow::Result<FlowMaps> {
        Ok(FlowMaps {
            flows: HashMap::try_from(self.take_map(flows::FLOWS_MAP_NAME)?)?,
            labels: SkStorage::try_from(self.take_map(flows::FLOW_LABELS_MAP_NAME)?)?,
            original_destinations: HashMap::try_from(
                self.take_map(redirect::ORIGINAL_DST_MAP_NAME)?,
            )?,
        })
    }

    fn take_map(&mut self, name: &str) -> anyhow::Result<Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name} (or it was taken)"))
    }

    /// Pins the maps the inspection CLI uses under `dir` (created if needed, on bpffs).
    /// The pins are removed when `self` is dropped.
    pub fn pin_maps(&mut self, dir: &Path) -> anyhow::Result<()> {
        crate::sys::mount_bpffs_if_missing()?;
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
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
