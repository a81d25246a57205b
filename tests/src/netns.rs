//! Throwaway network namespaces and the processes started in them.

use std::{
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A network namespace, deleted on drop after killing every process inside it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// `ip netns add <name>`, with loopback up.
    pub fn new(name: String) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// A command that runs `program` inside the namespace but in the host's mount
    /// namespace (`ip netns exec` remounts /sys): our daemons and CLIs need the host's
    /// bpffs, where the pins are, and its cgroup v2 hierarchy.
    pub fn host_mounts_command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        command
    }

    /// A command that starts the daemon `program` the way a service manager does:
    /// [`Self::host_mounts_command`], with a soft limit of 1024 open files (systemd's
    /// default) under the hard one `hard_files` (a unit's LimitNOFILE=), the machine's
    /// when `None`.
    pub fn daemon_command(&self, program: &std::path::Path, hard_files: Option<u64>) -> Command {
        let hard = hard_files.unwrap_or_else(|| {
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(_, hard)| hard)
        });
        let mut command = self.host_mounts_command("prlimit");
        command
            .arg(format!("--nofile={}:{hard}", hard.min(1024)))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `ip -n <ns> ARGS`, failing with its stderr.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `program ARGS` inside the namespace, failing with its stderr.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let output = run_output(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Forgets the TCP metrics cached per destination, the TCP Fast Open cookies among
    /// them (plain TCP and MPTCP share them).
    pub fn flush_tcp_metrics(&self) -> anyhow::Result<()> {
        self.ip(&["tcp_metrics", "flush", "all"])
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Waits until a TCP socket listens on `port` inside the namespace.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_socket("-Hltn", "TCP", port, timeout)
    }

    /// Waits until a UDP socket is bound to `port` inside the namespace (a UDP server
    /// is ready).
    pub fn wait_udp_bound(&self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_socket("-Hlun", "UDP", port, timeout)
    }

    /// Waits until `ss FLAGS sport = :PORT` lists a socket.
    fn wait_for_socket(
        &self,
        flags: &str,
        protocol: &str,
        port: u16,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let listening = self.exec("ss", &[flags, &format!("sport = :{port}")])?;
            if !listening.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "nothing listens on {protocol} port {port} in {} after {timeout:?}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A counter of the namespace's /proc/net/netstat, e.g. ("MPTcpExt",
    /// "MPTCPRetrans"); 0 when this kernel does not count it.
    pub fn netstat_counter(&self, group: &str, name: &str) -> anyhow::Result<u64> {
        let text = self.exec("cat", &["/proc/net/netstat"])?;
        let prefix = format!("{group}:");
        // Each group is two lines: the names, then the values.
        let mut lines = text.lines().filter(|line| line.starts_with(&prefix));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Ok(0);
        };
        let value = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(counter, _)| *counter == name)
            .map_or(Ok(0), |(_, value)| value.parse())?;
        Ok(value)
    }

    /// Bytes an interface of the namespace has received and sent.
    pub fn interface_bytes(&self, interface: &str) -> anyhow::Result<(u64, u64)> {
        let read = |counter: &str| -> anyhow::Result<u64> {
            let path = format!("/sys/class/net/{interface}/statistics/{counter}");
            Ok(self.exec("cat", &[&path])?.trim().parse()?)
        };
        Ok((read("rx_bytes")?, read("tx_bytes")?))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(output) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Moves the calling thread (only it) into network namespace `name`.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let namespace = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("no network namespace {name}"))?;
    nix::sched::setns(
        std::os::fd::AsFd::as_fd(&namespace),
        nix::sched::CloneFlags::CLONE_NEWNET,
    )
    .with_context(|| format!("entering network namespace {name}"))
}

/// Runs `work` on a thread inside `netns` and returns what it returned.
///
/// # Panics
/// When the namespace cannot be entered, or `work` panics.
pub fn run_in<T: Send + 'static>(netns: &Netns, work: impl FnOnce() -> T + Send + 'static) -> T {
    let name = netns.name().to_owned();
    std::thread::spawn(move || {
        enter(&name).unwrap();
        work()
    })
    .join()
    .unwrap()
}

/// A background process, killed (and reaped) on drop.
pub struct Process {
    child: Child,
    label: String,
}

impl Process {
    /// Starts `command` in the background.
    pub fn spawn(label: &str, command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {label}: {command:?}"))?;
        Ok(Self {
            child,
            label: label.to_owned(),
        })
    }

    /// The process id (`ip netns exec` execs the program in place, so it is the
    /// program's own).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Fails if the process already exited (e.g. it refused its arguments).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.label);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command; fails with its stderr unless it exits 0.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    run_output(command).map(drop)
}

fn run_output(command: &mut Command) -> anyhow::Result<Output> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to start {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}
