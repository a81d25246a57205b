//! The processes a testbed runs: our daemons, started as a service manager would, and
//! the servers a test needs; each owned by the testbed and killed before its
//! namespaces go. Each daemon logs to `<dir>/<label>.log`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{sys::signal::Signal, unistd::Pid};

use super::{CONVERTER, CONVERTER_PORT, GATEWAY_PORT, Interception, Testbed};
use crate::netns::{Netns, Process};

impl Testbed {
    /// Starts the daemons from now on with only `capabilities` (names as in a systemd
    /// unit: `CAP_BPF`, ...), as a unit's CapabilityBoundingSet does: root keeps its
    /// identity but loses every other capability.
    pub fn limit_daemon_capabilities(&mut self, capabilities: &[&str]) {
        self.daemon_capabilities = Some(capabilities.iter().map(|&name| name.to_owned()).collect());
    }

    /// Starts the daemons from now on under a hard limit of `files` open files, as a
    /// unit's LimitNOFILE= does (a small router's may set 1024).
    pub fn limit_daemon_files(&mut self, files: u64) {
        self.daemon_files = Some(files);
    }

    /// The command that starts a daemon in `netns`: as a service manager would, with
    /// the capabilities [`Self::limit_daemon_capabilities`] and the open files
    /// [`Self::limit_daemon_files`] left, if they were called.
    fn daemon_command(&self, netns: &Netns) -> Command {
        let binary = crate::mptcp_user_bin();
        let Some(capabilities) = &self.daemon_capabilities else {
            return netns.daemon_command(&binary, self.daemon_files);
        };
        let kept: Vec<String> = capabilities
            .iter()
            .map(|name| format!("+{}", name.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let bounding = format!("-all,{}", kept.join(","));
        let mut command = netns.daemon_command(Path::new("setpriv"), self.daemon_files);
        command
            .arg(format!("--bounding-set={bounding}"))
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(binary);
        command
    }

    /// Starts a process in `netns`, owned by the testbed, with its stderr in `log`.
    pub fn start(&mut self, label: &str, command: &mut Command, log: &Path) -> anyhow::Result<()> {
        let log = std::fs::File::create(log)?;
        command.stdout(log.try_clone()?).stderr(log);
        self.processes.push(Process::spawn(label, command)?);
        Ok(())
    }

    /// The process id of the started process labelled `label` ("gateway", "converter").
    pub fn pid(&self, label: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|process| process.label() == label)
            .map(Process::pid)
    }

    /// Forgets the processes labelled `label` (killing any still running): for a
    /// daemon the test killed itself, before starting another.
    pub fn forget(&mut self, label: &str) {
        self.processes.retain(|process| process.label() != label);
    }

    /// Sends the started process labelled `label` `signal` (SIGTERM: a service
    /// manager's graceful stop; SIGKILL: a crash), waits (10 s at most) until it has
    /// exited, and forgets it: the next one may be started under the same label.
    pub fn stop(&mut self, label: &str, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(label)
            .with_context(|| format!("no process labelled {label}"))?;
        nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !crate::exited(pid) {
            if Instant::now() > deadline {
                bail!("{label} ({pid}) still runs 10 s after {signal}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.forget(label);
        Ok(())
    }

    /// Checks that every started process still runs.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::check_running)
    }

    /// Writes a fresh key, starts the converter on the converter host (`converter_args` added
    /// to its command line) and the gateway intercepting lan0 with its eBPF programs
    /// (`gateway_args` added, e.g. another --key-file), and waits until both listen.
    /// Logs go to `dir`.
    pub fn start_gateway_and_converter(
        &mut self,
        dir: &Path,
        gateway_args: &[&str],
        converter_args: &[&str],
    ) -> anyhow::Result<()> {
        self.start_daemons(dir, Interception::Ebpf, gateway_args, converter_args)
    }

    /// Starts the converter with the key `dir/key` (written first if there is none),
    /// `args` added, logging to `dir/converter.log`; returns once it listens.
    pub fn start_converter(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        self.start_converter_on(false, dir, args)
    }

    /// [`Self::start_converter`] on the second converter's host (`converter2`, logging
    /// to `dir/converter2.log`), which [`Self::add_second_converter_host`] built.
    pub fn start_second_converter(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        self.start_converter_on(true, dir, args)
    }

    /// The first converter's host, or the `second`'s.
    fn converter_host(&self, second: bool) -> anyhow::Result<&Netns> {
        if second {
            self.second_converter
                .as_ref()
                .context("no second converter host")
        } else {
            Ok(&self.converter)
        }
    }

    /// Starts a converter on the first converter's host, or the `second`'s.
    fn start_converter_on(
        &mut self,
        second: bool,
        dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<()> {
        let binary = crate::mptcp_user_bin();
        let key = dir.join("key");
        if !key.exists() {
            crate::netns::run(Command::new(&binary).arg("keygen").arg(&key))?;
        }
        let label = if second { "converter2" } else { "converter" };
        let mut converter = self.daemon_command(self.converter_host(second)?);
        converter
            .args([
                "converter",
                "--listen",
                &format!("0.0.0.0:{CONVERTER_PORT}"),
            ])
            .arg("--key-file")
            .arg(&key)
            .args(args);
        self.start(label, &mut converter, &log_path(dir, label))?;
        self.converter_host(second)?
            .wait_listening(CONVERTER_PORT, Duration::from_secs(10))
            .with_context(|| {
                format!(
                    "{label} did not start; it says:\n{}",
                    daemon_log(dir, label)
                )
            })
    }

    /// Starts the gateway with `args` alone (a `--config` file, say), logging to
    /// `dir/gateway.log`; returns once it is ready.
    pub fn start_gateway(&mut self, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
        let mut gateway = self.daemon_command(&self.gateway);
        gateway.arg("gateway").args(args).env("RUST_LOG", "info");
        self.start("gateway", &mut gateway, &log_path(dir, "gateway"))?;
        wait_for_line(
            &log_path(dir, "gateway"),
            mptcp_user::gateway::READY,
            Duration::from_secs(10),
        )?;
        self.check_running()
    }

    /// [`Self::start_gateway_and_converter`], with the LAN intercepted by `interception`.
    pub fn start_daemons(
        &mut self,
        dir: &Path,
        interception: Interception,
        gateway_args: &[&str],
        converter_args: &[&str],
    ) -> anyhow::Result<()> {
        self.start_converter(dir, converter_args)?;
        self.start_gateway_intercepting(dir, interception, gateway_args)
    }

    /// The gateway half of [`Self::start_daemons`], for a converter already running
    /// with the key `dir/key`: to start a gateway again with other arguments, say. A
    /// `--converter` or `--key-file` among `gateway_args` replaces the testbed's.
    pub fn start_gateway_intercepting(
        &mut self,
        dir: &Path,
        interception: Interception,
        gateway_args: &[&str],
    ) -> anyhow::Result<()> {
        let listen = format!("[::]:{GATEWAY_PORT}");
        let converter = format!("{CONVERTER}:{CONVERTER_PORT}");
        let pin_path = self.pin_path();
        let key = dir.join("key").to_string_lossy().into_owned();
        let mut args = vec!["--listen", listen.as_str(), "--pin-path", &pin_path];
        if !gateway_args.contains(&"--converter") {
            args.extend(["--converter", &converter]);
        }
        if interception == Interception::Ebpf {
            args.extend(["--lan", "lan0"]);
        }
        if !gateway_args.contains(&"--key-file") {
            args.extend(["--key-file", &key]);
        }
        args.extend(gateway_args);
        self.start_gateway(dir, &args)?;
        if interception == Interception::Nftables {
            crate::carriers::intercept_with_tproxy(self)?;
        }
        self.check_running()
    }

    /// Runs the python3 `script` (with `args`) on the server host, logging to
    /// `dir/server-<port>.log`, and returns once it listens on `port`.
    pub fn start_python_server(
        &mut self,
        dir: &Path,
        script: &str,
        args: &[&str],
        port: u16,
    ) -> anyhow::Result<()> {
        let mut server = self.server.command("python3");
        server.args(["-c", script]).args(args);
        let log = dir.join(format!("server-{port}.log"));
        self.start("python server", &mut server, &log)?;
        self.server.wait_listening(port, Duration::from_secs(10))
    }

    /// Starts the gateway (LAN lan0, the testbed's converter, the key `dir/key`)
    /// through `launcher` (`ip netns exec prlimit ...`, say) instead of as a service
    /// manager would, and returns once it is ready; it logs to `dir/gateway.log`.
    pub fn start_gateway_through(
        &mut self,
        dir: &Path,
        mut launcher: Command,
    ) -> anyhow::Result<()> {
        launcher
            .arg(crate::mptcp_user_bin())
            .args(["gateway", "--lan", "lan0", "--converter"])
            .arg(format!("{CONVERTER}:{CONVERTER_PORT}"))
            .arg("--key-file")
            .arg(dir.join("key"))
            .args(["--pin-path", &self.pin_path()])
            .env("RUST_LOG", "info");
        let log = log_path(dir, "gateway");
        self.start("gateway", &mut launcher, &log)?;
        wait_for_line(&log, mptcp_user::gateway::READY, Duration::from_secs(10))
    }

    /// Serves the files of `dir` over HTTP on port 80 of the server, IPv4 and IPv6
    /// (python3's stock http.server classes: a real third-party server).
    pub fn start_http_server(&mut self, dir: &Path, log: &Path) -> anyhow::Result<()> {
        let mut server = self.server.command("python3");
        server.args(["-c", HTTP_SERVER]).arg(dir);
        self.start("http server", &mut server, log)?;
        self.server.wait_listening(80, Duration::from_secs(10))
    }
}

/// python's `http.server` on port 80, IPv4 and IPv6, serving the directory given, with
/// a listen backlog of a real web server's size: `python -m http.server` listens with
/// 5, and a burst of 32 connections then waits for SYN retransmissions, directly or
/// not, which is the server's limit and not the path's.
const HTTP_SERVER: &str = r"
import functools, http.server, socket, sys
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    request_queue_size = 1024
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
Server(('::', 80), handler).serve_forever()
";

/// Where the daemon `label` ("gateway", "converter", ...) started with logs in `dir`
/// writes them: `dir/<label>.log`.
pub fn log_path(dir: &Path, label: &str) -> PathBuf {
    dir.join(format!("{label}.log"))
}

/// What the daemon `label` ("gateway", "converter", ...) started with logs in `dir`
/// has logged so far; nothing if it was never started.
pub fn daemon_log(dir: &Path, label: &str) -> String {
    std::fs::read_to_string(log_path(dir, label)).unwrap_or_default()
}

/// Waits until the log file at `path` has a line containing `text`.
pub fn wait_for_line(path: &Path, text: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{} has no line {text:?} after {timeout:?}; it says:\n{log}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
