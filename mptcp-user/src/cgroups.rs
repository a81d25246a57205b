//! cgroup v2 for the local-service redirect: finding the hierarchy's root (where the
//! programs are attached), and opting cgroups in and out by their id.

use std::{
    borrow::BorrowMut,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, MapData};
use mptcp_ebpf_common::redirect::OPTED_IN;
use nix::sys::statfs::{CGROUP2_SUPER_MAGIC, statfs};

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo
/// (/sys/fs/cgroup on most systems, /sys/fs/cgroup/unified in hybrid mode).
pub fn root() -> anyhow::Result<PathBuf> {
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

/// Redirects the TCP connects of processes in `path` and below it, from their next one.
pub fn opt_in<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, u64, u32>,
    path: &Path,
) -> anyhow::Result<()> {
    let id = id(path)?;
    map.insert(id, OPTED_IN, 0)
        .with_context(|| format!("failed to opt in {}", path.display()))
}

/// Stops redirecting new connects of `path`; live flows go on.
pub fn opt_out<T: BorrowMut<MapData>>(
    map: &mut HashMap<T, u64, u32>,
    path: &Path,
) -> anyhow::Result<()> {
    let id = id(path)?;
    map.remove(&id)
        .with_context(|| format!("{} is not opted in", path.display()))
}
