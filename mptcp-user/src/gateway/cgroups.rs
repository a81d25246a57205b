//! cgroup v2 for intercepting local services: opting cgroups in and out by their id.

use std::{borrow::BorrowMut, fs, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, MapData};
use mptcp_ebpf_common::cgroups::OPTED_IN;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// The id of the cgroup v2 directory `path`: its inode number, which is what
/// `bpf_get_current_ancestor_cgroup_id` returns.
pub fn id(path: &Path) -> anyhow::Result<u64> {
    let fs = statfs(path).with_context(|| format!("cannot open cgroup {}", path.display()))?;
    if fs.filesystem_type() != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory", path.display());
    }
    Ok(fs::metadata(path)
        .with_context(|| format!("cannot open cgroup {}", path.display()))?
        .ino())
}

/// Intercepts the TCP connects of processes in `path` and below it, from their next one.
pub fn opt_in<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, u64, u32>,
    path: &Path,
) -> anyhow::Result<()> {
    let id = id(path)?;
    map.insert(id, OPTED_IN, 0)
        .with_context(|| format!("failed to opt in {}", path.display()))
}

/// Stops intercepting new connects of `path`; live flows go on.
pub fn opt_out<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, u64, u32>,
    path: &Path,
) -> anyhow::Result<()> {
    let id = id(path)?;
    map.remove(&id)
        .with_context(|| format!("{} is not opted in", path.display()))
}
