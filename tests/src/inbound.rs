//! Inbound connections through a port forward: a web server on the LAN host, fetched
//! from the server host (the outside) at a public port of the converter.

use std::{
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    netns::Netns,
    testbed::{CONVERTER_TOWARD_SERVER, Testbed},
};

/// The LAN web server's port on the LAN host (192.168.50.2).
pub const LAN_WEB_PORT: u16 = 8080;
/// The LAN web server, as a forward's `to` names it.
pub const LAN_WEB: &str = "192.168.50.2:8080";
/// The converter's public port forwarded to it.
pub const PUBLIC_PORT: u16 = 8443;
/// What the converter's operator allows in the tests and benchmarks.
pub const FORWARD_PORTS: &str = "8000-8999";

/// The URL of `file` through the forward, as the outside sees it.
pub fn public_url(file: &str) -> String {
    format!("http://{CONVERTER_TOWARD_SERVER}:{PUBLIC_PORT}/{file}")
}

/// Serves the files of `served` on the LAN host with python's stock http.server (IPv4,
/// port [`LAN_WEB_PORT`]), logging each request with the client's address to the
/// returned file.
pub fn start_lan_web_server(
    testbed: &mut Testbed,
    dir: &Path,
    served: &Path,
) -> anyhow::Result<PathBuf> {
    let log = dir.join("lan-web.log");
    let mut web_server = testbed.client.command("python3");
    web_server
        .args(["-m", "http.server", "--bind", "192.168.50.2", "--directory"])
        .arg(served)
        .arg(LAN_WEB_PORT.to_string());
    testbed.start("lan web server", &mut web_server, &log)?;
    testbed
        .client
        .wait_listening(LAN_WEB_PORT, Duration::from_secs(10))?;
    Ok(log)
}

/// Waits (at most `timeout`) until the gateway of `testbed` says the forward of `port`
/// is in a state that starts with `state` (`served`, `refused: ...`).
pub fn wait_forward(
    testbed: &Testbed,
    port: u16,
    state: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let pins = PathBuf::from(testbed.pin_path());
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let statuses = mptcp_user::gateway::forwards::read_status(&pins);
        if statuses
            .iter()
            .any(|status| status.public == port && status.state.starts_with(state))
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("forward {port} not {state} after {timeout:?}: {statuses:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a fetch took.
#[derive(Clone, Copy, Debug)]
pub struct Fetched {
    /// Bytes of the body.
    pub bytes: u64,
    /// Seconds from the start to the end.
    pub seconds: f64,
    /// Seconds from the start to the first byte of the answer.
    pub first_byte: f64,
}

impl Fetched {
    /// The body's rate over the whole fetch, Mbit/s.
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// Starts curl in `from`, fetching `url` into `output` within `max_time`; see
/// [`finish_fetch`].
pub fn start_fetch(
    from: &Netns,
    url: &str,
    output: &Path,
    max_time: Duration,
) -> anyhow::Result<Child> {
    from.command("curl")
        .args(["--fail", "--silent", "--show-error", "--max-time"])
        .arg(max_time.as_secs().to_string())
        .arg("--output")
        .arg(output)
        .args([
            "--write-out",
            "%{size_download} %{time_total} %{time_starttransfer}",
            url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting curl")
}

/// Waits for the fetch `child` and reads what it took.
pub fn finish_fetch(child: Child) -> anyhow::Result<Fetched> {
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "curl failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("curl wrote {text:?}"))?;
    let [bytes, seconds, first_byte] = fields[..] else {
        bail!("curl wrote {text:?}");
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a byte count"
    )]
    Ok(Fetched {
        bytes: bytes as u64,
        seconds,
        first_byte,
    })
}

/// Fetches `url` from `from` into `output`.
pub fn fetch(
    from: &Netns,
    url: &str,
    output: &Path,
    max_time: Duration,
) -> anyhow::Result<Fetched> {
    finish_fetch(start_fetch(from, url, output, max_time)?)
}
