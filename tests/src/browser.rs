//! A real browser for the tests: Debian's Chromium, headless, driven over WebDriver by
//! its chromedriver, both inside a namespace (the LAN host's). The WebDriver calls are
//! JSON over HTTP/1.1 on loopback, written here in a few lines.

use std::{
    io::{Read as _, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::netns::{self, Netns, Process};

/// chromedriver's port, on the namespace's loopback.
const DRIVER_PORT: u16 = 9515;

/// A headless Chromium session; ended, with its driver, on drop.
pub struct Browser {
    netns: String,
    session: String,
    /// Dropped last: killing the driver.
    _driver: Process,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium in `netns`, their files (profile,
    /// caches) under `dir`.
    pub fn start(netns: &Netns, dir: &Path) -> anyhow::Result<Self> {
        let mut command = netns.command("chromedriver");
        command
            .arg(format!("--port={DRIVER_PORT}"))
            .env("HOME", dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let driver = Process::spawn("chromedriver", &mut command)?;
        netns.wait_listening(DRIVER_PORT, Duration::from_secs(10))?;
        let profile = dir.join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // Root needs --no-sandbox; a window the page's picture fits.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=820,780",
                         format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let answer = call(netns.name(), "POST", "/session", Some(&capabilities))?;
        let session = answer["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {answer}"))?
            .to_owned();
        Ok(Self {
            netns: netns.name().to_owned(),
            session,
            _driver: driver,
        })
    }

    /// Opens `url` and waits until it has loaded.
    pub fn open(&self, url: &str) -> anyhow::Result<()> {
        self.session_call("POST", "url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The value of the JavaScript `script` (a function body: `return ...`) in the page.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.session_call(
            "POST",
            "execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// The page's console messages of level SEVERE (errors) since the last call.
    pub fn console_errors(&self) -> anyhow::Result<Vec<String>> {
        let entries = self.session_call("POST", "se/log", Some(&json!({ "type": "browser" })))?;
        Ok(entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect())
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let encoded = self.session_call("GET", "screenshot", None)?;
        let png = base64_decode(encoded.as_str().context("no screenshot")?)?;
        std::fs::write(path, png).with_context(|| format!("cannot write {}", path.display()))
    }

    /// A WebDriver command of this session: its `value`.
    fn session_call(
        &self,
        method: &str,
        command: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let path = format!("/session/{}/{command}", self.session);
        call(&self.netns, method, &path, body)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let path = format!("/session/{}", self.session);
        let _ = call(&self.netns, "DELETE", &path, None);
    }
}

/// One WebDriver request to the driver in namespace `netns`; its answer's `value`, or
/// the error it carries.
fn call(netns: &str, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{DRIVER_PORT}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let name = netns.to_owned();
    let answer = std::thread::spawn(move || -> anyhow::Result<Vec<u8>> {
        netns::enter(&name)?;
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", DRIVER_PORT))?;
        stream.set_read_timeout(Some(Duration::from_mins(1)))?;
        stream.write_all(request.as_bytes())?;
        read_answer(&mut stream)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the WebDriver call panicked"))??;
    let json = String::from_utf8_lossy(&answer);
    let answer: Value = serde_json::from_str(&json)
        .with_context(|| format!("chromedriver's answer to {method} {path}: {json}"))?;
    let value = answer["value"].clone();
    if let Some(error) = value.get("error") {
        bail!("{method} {path}: {error}: {}", value["message"]);
    }
    Ok(value)
}

/// The body of an HTTP answer on `stream`, by its Content-Length: chromedriver keeps
/// the connection open after answering, whatever the request asked.
fn read_answer(stream: &mut std::net::TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = answer.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse().ok())
                .with_context(|| format!("no Content-Length in {head}"))?;
            let body = end + 4;
            while answer.len() < body + length {
                let read = stream.read(&mut chunk)?;
                anyhow::ensure!(read > 0, "chromedriver closed mid-answer");
                answer.extend_from_slice(&chunk[..read]);
            }
            return Ok(answer[body..body + length].to_vec());
        }
        let read = stream.read(&mut chunk)?;
        anyhow::ensure!(read > 0, "chromedriver closed before answering");
        answer.extend_from_slice(&chunk[..read]);
    }
}

/// Decodes standard base64 (a WebDriver screenshot).
fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let sextet = |byte: u8| -> anyhow::Result<u32> {
        Ok(match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {byte:#x}"),
        }
        .into())
    };
    let digits: Vec<u8> = text.bytes().filter(|&byte| byte != b'=').collect();
    let mut bytes = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for &digit in chunk {
            bits = bits << 6 | sextet(digit)?;
        }
        bits <<= 6 * (4 - chunk.len());
        let whole = bits.to_be_bytes();
        bytes.extend_from_slice(&whole[1..chunk.len()]);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(base64_decode("T@==").is_err());
    }
}
