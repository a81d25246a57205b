//! Loading the gateway's eBPF programs and attaching them.
//!
//! Every program is attached through a BPF link whose file descriptor this process owns:
//! when the process exits, even by SIGKILL, the kernel detaches the programs. That is
//! what keeps a household's internet working when the daemon dies (fail-open).

use std::{
    fs::{self, File},
    io,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData},
    programs::{CgroupAttachMode, SockOps},
};
use aya_log::EbpfLogger;
use log::{debug, warn};
use mptcp_ebpf_common::connections::{self, Connection};

/// The eBPF object built by build.rs, embedded so that the shipped binary needs no
/// toolchain at run time. Aligned because aya parses it in place as an ELF file.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));

/// Name of the sock_ops program in the object.
const SOCK_OPS_PROGRAM: &str = "record_connections";

/// The loaded programs and maps. Dropping it detaches every program and removes the pins.
pub struct Programs {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
}

impl Programs {
    /// Loads the embedded object into the kernel; nothing is attached yet.
    pub fn load() -> anyhow::Result<Self> {
        crate::sys::raise_memlock_rlimit();
        let mut ebpf = Ebpf::load(EBPF_OBJECT).context("failed to load the eBPF object")?;
        let program: &mut SockOps = program_mut(&mut ebpf, SOCK_OPS_PROGRAM)?
            .try_into()
            .with_context(|| format!("{SOCK_OPS_PROGRAM} is not a sock_ops program"))?;
        program
            .load()
            .with_context(|| format!("the kernel rejected {SOCK_OPS_PROGRAM}"))?;
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

    /// Attaches the sock_ops program to a cgroup v2 directory: it then sees the TCP
    /// connections of that cgroup and of its descendants.
    pub fn attach_sock_ops(&mut self, cgroup: &Path) -> anyhow::Result<()> {
        let cgroup_dir = File::open(cgroup)
            .with_context(|| format!("failed to open cgroup {}", cgroup.display()))?;
        let program: &mut SockOps = program_mut(&mut self.ebpf, SOCK_OPS_PROGRAM)?.try_into()?;
        // A BPF link always coexists with other programs on the cgroup; the kernel rejects
        // the BPF_F_ALLOW_MULTI flag on links (EINVAL), so the mode must be Single.
        program
            .attach(&cgroup_dir, CgroupAttachMode::Single)
            .with_context(|| format!("failed to attach sock_ops to {}", cgroup.display()))?;
        debug!("sock_ops attached to {}", cgroup.display());
        Ok(())
    }

    /// The connections map, as the programs keep it.
    pub fn connections(&self) -> anyhow::Result<HashMap<&MapData, u64, Connection>> {
        let map = self
            .ebpf
            .map(connections::MAP_NAME)
            .ok_or_else(|| anyhow!("the eBPF object has no map {}", connections::MAP_NAME))?;
        HashMap::try_from(map).context("unexpected type of the connections map")
    }

    /// Pins the maps the inspection CLI reads under `dir` (created if needed, on bpffs).
    /// The pins are removed when `self` is dropped.
    pub fn pin_maps(&mut self, dir: &Path) -> anyhow::Result<()> {
        crate::sys::mount_bpffs_if_missing()?;
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
        self.pin_dir = Some(dir.to_path_buf());
        let pin = dir.join(connections::MAP_NAME);
        remove_stale_pin(&pin)?;
        let map: &Map = self
            .ebpf
            .map(connections::MAP_NAME)
            .ok_or_else(|| anyhow!("the eBPF object has no map {}", connections::MAP_NAME))?;
        map.pin(&pin)
            .with_context(|| format!("failed to pin {}", pin.display()))?;
        Ok(())
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        // Links are detached when `ebpf` drops; the pins would outlive us.
        if let Some(dir) = &self.pin_dir {
            let pin = dir.join(connections::MAP_NAME);
            if let Err(error) = fs::remove_file(&pin)
                && error.kind() != io::ErrorKind::NotFound
            {
                warn!("failed to remove {}: {error}", pin.display());
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

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))
}
