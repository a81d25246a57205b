//! Where the gateway sends each intercepted flow: through the converter (RFC 8803), or
//! with `--direct` straight to the original destination, over MPTCP either way.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use log::debug;
use socket2::Socket;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use crate::{
    lock,
    metrics::ErrorCounts,
    net::socket::{self, Attempt},
    protocol::{
        codec::{ErrorCode, Request, Response},
        cookie::{self, Key},
        wire,
    },
};

/// Opens a connection to `converter`, MPTCP (a flow's, a warm one) or plain TCP (a
/// speed test of one uplink), its first subflow racing over `attempts`, within
/// [`CONVERTER_TIMEOUT`] (else a `TimedOut` error).
pub async fn connect_converter(
    converter: SocketAddr,
    mptcp: bool,
    attempts: &[Attempt],
    configure: impl Fn(&Socket) -> std::io::Result<()>,
) -> std::io::Result<TcpStream> {
    tokio::time::timeout(
        CONVERTER_TIMEOUT,
        socket::connect_racing(converter, mptcp, attempts, configure),
    )
    .await
    .map_err(|_| std::io::ErrorKind::TimedOut)?
}

/// The converter could not take the flow, for `reason`; the client's `early` bytes
/// were read already.
fn unavailable(reason: anyhow::Error, early: &[u8]) -> OpenError {
    OpenError::ConverterUnavailable {
        reason,
        early: early.to_vec(),
    }
}

/// Where flows go, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamConfig {
    /// Through the first converter of `addresses` (HOST:PORT) that answers (the others
    /// are standbys), authenticated with the key in `key_file`.
    Converter {
        /// The converters, e.g. `vps.example.net:5124`, preferred first.
        addresses: Vec<String>,
        /// The pre-shared key's file.
        key_file: PathBuf,
    },
    /// MPTCP straight to the original destination (plain TCP if it does not speak MPTCP).
    Direct,
}

/// How long the converter may take to connect and answer before a flow goes direct.
/// A killed converter refuses at once; this bounds a filtered or silent one.
pub const CONVERTER_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds of how long a warm connection's answer may take before a fresh connection
/// takes the flow: the first uplink's head start, within these.
const WARM_PATIENCE: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(1));

/// Why a flow's upstream connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The converter cannot be reached, or refused for its own reasons (Resource
    /// Exceeded): the flow can still go direct, with the client's bytes already read.
    ConverterUnavailable {
        /// What happened.
        reason: anyhow::Error,
        /// The client's first bytes, read while connecting; not sent anywhere yet.
        early: Vec<u8>,
    },
    /// Anything else (the destination refused, a bad key): the flow ends.
    Failed(anyhow::Error),
}

impl From<std::io::Error> for OpenError {
    fn from(error: std::io::Error) -> Self {
        Self::Failed(error.into())
    }
}

/// Where flows go, resolved.
pub enum Upstream {
    /// Through one of these converters, authenticated with this key.
    Converter {
        /// The converters' addresses, preferred first.
        addresses: Vec<SocketAddr>,
        /// The pre-shared key for the cookie; SIGHUP reads it again from `key_file`.
        key: Mutex<Key>,
        /// Where the key came from.
        key_file: PathBuf,
        /// The Error TLVs they answered, for the metrics.
        errors: ErrorCounts,
    },
    /// MPTCP straight to the original destination.
    Direct,
}

impl Upstream {
    /// Resolves the converters' names and loads the key.
    pub async fn resolve(config: &UpstreamConfig) -> anyhow::Result<Self> {
        let UpstreamConfig::Converter {
            addresses,
            key_file,
        } = config
        else {
            return Ok(Self::Direct);
        };
        let mut resolved = Vec::new();
        for address in addresses {
            resolved.push(
                tokio::net::lookup_host(address)
                    .await
                    .with_context(|| format!("cannot resolve {address}"))?
                    .next()
                    .with_context(|| format!("{address} has no address"))?,
            );
        }
        Ok(Self::Converter {
            addresses: resolved,
            key: Mutex::new(Key::load(key_file)?),
            key_file: key_file.clone(),
            errors: ErrorCounts::default(),
        })
    }

    /// Reads the key file again (SIGHUP) so that a rotated key signs new flows and
    /// claims; live flows are not touched. A file that cannot be read keeps the key in
    /// use. Says what it did.
    pub fn reload_key(&self) -> anyhow::Result<String> {
        let Self::Converter { key, key_file, .. } = self else {
            return Ok("direct mode: no key to reload".to_owned());
        };
        let loaded = Key::load(key_file)?;
        let mut key = lock(key);
        if key.id() == loaded.id() {
            return Ok(format!("{} holds the key in use", key_file.display()));
        }
        *key = loaded;
        Ok(format!(
            "new flows and claims are signed with the key now in {}",
            key_file.display()
        ))
    }

    /// The counts of the converters' Error TLVs (none with `--direct`).
    pub fn errors(&self) -> ErrorCounts {
        match self {
            Self::Converter { errors, .. } => errors.clone(),
            Self::Direct => ErrorCounts::default(),
        }
    }

    /// The key that signs requests and claims now; none with `--direct`.
    pub fn key(&self) -> Option<Key> {
        match self {
            Self::Converter { key, .. } => Some(lock(key).clone()),
            Self::Direct => None,
        }
    }

    /// The converters, preferred first; none with `--direct`.
    pub fn converters(&self) -> &[SocketAddr] {
        match self {
            Self::Converter { addresses, .. } => addresses,
            Self::Direct => &[],
        }
    }

    /// Addresses the gateway must never intercept: flows to a converter would loop.
    pub fn never_intercepted(&self) -> Vec<IpAddr> {
        self.converters().iter().map(SocketAddr::ip).collect()
    }

    /// Opens the MPTCP connection for one flow to `destination` through `converter` (one
    /// of [`Self::converters`]), `already_read` the client's bytes read by an attempt
    /// before: on `warm`, a connection the pool opened before, if given; else (or when
    /// the warm one fails) on a fresh one, whose first subflow starts from the first of
    /// `attempts` (uplink addresses) that answers, `configure` setting its options before
    /// it connects. The Convert request and the client's first bytes leave in one write
    /// (one segment when they fit), so the request costs no extra round trip. Returns
    /// the connection and any destination bytes that arrived with the converter's
    /// answer.
    #[expect(clippy::too_many_arguments, reason = "one flow's whole context")]
    pub async fn open(
        &self,
        lan: &TcpStream,
        destination: SocketAddr,
        converter: SocketAddr,
        already_read: &[u8],
        attempts: &[Attempt],
        configure: impl Fn(&Socket) -> std::io::Result<()>,
        warm: Option<TcpStream>,
    ) -> Result<(TcpStream, Vec<u8>), OpenError> {
        let mut already_read = already_read.to_vec();
        let mut attempts = attempts.to_vec();
        if let Some(warm) = warm {
            // A warm connection's uplink may have died silently since it was opened: it
            // gets as long as a fresh connection's first attempt would, and if that is
            // not enough, the fresh connection tries its uplink last.
            let patience = attempts
                .first()
                .map_or(WARM_PATIENCE.0, |attempt| attempt.head_start)
                .clamp(WARM_PATIENCE.0, WARM_PATIENCE.1);
            let source = warm.local_addr().ok().map(|local| local.ip());
            match self
                .convert(warm, lan, destination, converter, &already_read, patience)
                .await
            {
                // It broke (closed, reset) or stayed silent: a fresh connection, whose
                // first subflow races over the uplinks, takes the flow.
                Err(OpenError::ConverterUnavailable { reason, early }) => {
                    debug!("a warm connection to {converter} failed ({reason:#}); a fresh one");
                    already_read = early;
                    attempts.sort_by_key(|attempt| Some(attempt.source) == source);
                }
                done => return done,
            }
        }
        let stream = match connect_converter(converter, true, &attempts, configure).await {
            Ok(stream) => stream,
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                let reason = anyhow!("{converter} did not answer within {CONVERTER_TIMEOUT:?}");
                return Err(unavailable(reason, &already_read));
            }
            Err(error) => {
                let reason = anyhow!(error).context(format!("MPTCP connect to {converter} failed"));
                return Err(unavailable(reason, &already_read));
            }
        };
        self.convert(
            stream,
            lan,
            destination,
            converter,
            &already_read,
            CONVERTER_TIMEOUT,
        )
        .await
    }

    /// Sends the Convert request for `destination`, with `already_read` and whatever the
    /// client sent since, on `stream` (connected to `converter`), and reads the answer,
    /// for at most `patience`. A stream given up on is reset, so that the converter
    /// drops whatever it started for it.
    async fn convert(
        &self,
        mut stream: TcpStream,
        lan: &TcpStream,
        destination: SocketAddr,
        converter: SocketAddr,
        already_read: &[u8],
        patience: Duration,
    ) -> Result<(TcpStream, Vec<u8>), OpenError> {
        socket::reset_on_close(&stream);
        let Self::Converter { key, errors, .. } = self else {
            return Err(OpenError::Failed(anyhow!("--direct has no converter")));
        };
        let key = lock(key).clone();
        let request = Request {
            destination,
            cookie: Some(
                key.cookie(destination, cookie::unix_now())
                    .map_err(OpenError::Failed)?,
            ),
        };
        let mut first_segment = request
            .to_message()
            .encode()
            .map_err(|error| OpenError::Failed(error.into()))?;
        let request_len = first_segment.len();
        first_segment.extend_from_slice(already_read);
        // Whatever the client sent while we connected: most clients speak first.
        let mut early = vec![0u8; 16 * 1024];
        match lan.try_read(&mut early) {
            Ok(n) => first_segment.extend_from_slice(&early[..n]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.into()),
        }
        let client_bytes = &first_segment[request_len..];
        let answered = tokio::time::timeout(patience, async {
            stream.write_all(&first_segment).await?;
            wire::read_message(&mut stream)
                .await
                .context("no valid answer from the converter")
        })
        .await;
        match answered {
            Ok(Ok((message, server_early))) => {
                let code = match Response::from_message(&message) {
                    Response::Connected => return Ok((stream, server_early)),
                    Response::Error(code) => code,
                };
                errors.count(code);
                if code == ErrorCode::ResourceExceeded {
                    return Err(unavailable(
                        anyhow!("the converter {converter} is full (Resource Exceeded)"),
                        client_bytes,
                    ));
                }
                Err(OpenError::Failed(anyhow!("the converter refused: {code}")))
            }
            Ok(Err(error)) => Err(unavailable(error, client_bytes)),
            Err(_) => Err(unavailable(
                anyhow!("{converter} did not answer the request within {patience:?}"),
                client_bytes,
            )),
        }
    }

    /// Opens an MPTCP connection straight to `destination` (plain TCP if it does not
    /// speak MPTCP): `--direct`, or a flow no converter can take.
    pub async fn open_direct(
        destination: SocketAddr,
        attempts: &[Attempt],
        configure: impl Fn(&Socket) -> std::io::Result<()>,
    ) -> anyhow::Result<TcpStream> {
        socket::connect_racing(destination, true, attempts, configure)
            .await
            .context("MPTCP connect to the destination failed")
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[tokio::test]
    async fn sighup_takes_a_rotated_key_and_keeps_the_old_one_on_a_bad_file() {
        let dir = std::env::temp_dir().join(format!("mptcp-key-reload-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (key_file, rotated) = (dir.join("gateway.key"), dir.join("rotated.key"));
        for path in [&key_file, &rotated] {
            let _ = fs::remove_file(path);
            Key::generate(path).unwrap();
        }
        let upstream = Upstream::resolve(&UpstreamConfig::Converter {
            addresses: vec!["127.0.0.1:5124".to_owned()],
            key_file: key_file.clone(),
        })
        .await
        .unwrap();
        let id = || upstream.key().unwrap().id();
        let first = id();
        assert!(
            upstream
                .reload_key()
                .unwrap()
                .contains("holds the key in use")
        );

        fs::rename(&rotated, &key_file).unwrap();
        let said = upstream.reload_key().unwrap();
        assert!(said.contains("signed with the key now in"), "{said}");
        let second = Key::load(&key_file).unwrap().id();
        assert_ne!(first, second);
        assert_eq!(id(), second);

        fs::write(&key_file, "not a key\n").unwrap();
        let error = upstream.reload_key().unwrap_err();
        assert!(format!("{error:#}").contains("bad key file"), "{error:#}");
        assert_eq!(id(), second, "a bad file keeps the key in use");
        fs::remove_dir_all(&dir).unwrap();

        let direct = Upstream::resolve(&UpstreamConfig::Direct).await.unwrap();
        assert!(direct.reload_key().unwrap().contains("no key"));
    }
}
