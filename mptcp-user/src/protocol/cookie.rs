//! Authentication of Convert requests: the Cookie TLV carries an HMAC-SHA256 over the
//! request, keyed by a pre-shared key, with a timestamp and a random nonce so that a
//! captured request cannot be replayed.
//!
//! Cookie layout (64 bytes, 16 words): key id (8 bytes, [`Key::id`]), timestamp (u64,
//! Unix seconds, big-endian), nonce (16 bytes), MAC (32 bytes). The MAC covers a domain
//! label, what the request asks ([`Subject`]: the destination, or the ports a gateway
//! claims), the timestamp and the nonce. The key id tells a converter that serves many
//! gateways which key to check, without trying them all.

use std::{
    collections::HashMap, fs, io::Write as _, net::SocketAddr, os::unix::fs::OpenOptionsExt as _,
    path::Path, time::Duration,
};

use anyhow::{Context as _, bail};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use thiserror::Error;

use crate::net::addr::mapped;

/// Bytes of a pre-shared key.
pub const KEY_LEN: usize = 32;
/// Bytes of a key's id.
pub const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Bytes of the Cookie TLV's opaque value.
pub const COOKIE_LEN: usize = KEY_ID_LEN + 8 + NONCE_LEN + MAC_LEN;
/// What a key's id is the MAC of: the id says which key, and nothing of it.
const KEY_ID_DOMAIN: &[u8] = b"mptcp-gateway key id v1\0";
/// Separates our MACs from any other use of the same key.
const DOMAIN: &[u8] = b"mptcp-gateway convert v1\0";
/// Separates a claim's MAC from a Convert request's: neither can stand for the other.
const FORWARD_DOMAIN: &[u8] = b"mptcp-gateway forward v1\0";

/// What a cookie vouches for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A Convert request to this destination.
    Connect(SocketAddr),
    /// A claim of public ports ([`crate::protocol::forward::Claim::subject`]).
    Forward(Vec<u8>),
}

impl From<SocketAddr> for Subject {
    fn from(destination: SocketAddr) -> Self {
        Self::Connect(destination)
    }
}

/// The cookie's clock: seconds since the Unix epoch.
pub use crate::sys::unix_now;

/// Waits for the next whole second and returns the one that just ended: the start
/// second of a converter, which refuses every cookie from it or before (see
/// [`Verifier::new`]). Waiting before listening means no gateway's cookie from that
/// second can be honest.
pub fn start_second() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::thread::sleep(std::time::Duration::from_nanos(u64::from(
        1_000_000_000 - now.subsec_nanos(),
    )));
    now.as_secs()
}

/// A pre-shared key, as read from a key file.
#[derive(Clone)]
pub struct Key([u8; KEY_LEN]);

/// Which key made a cookie: a MAC of a fixed label under the key, so it reveals nothing
/// of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a key file: one line of 64 hexadecimal characters, in a file only its
    /// owner may read, owned by root or by this process's user. Mode and owner are those
    /// of the file opened (not of whatever the path names a moment later).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use std::{io::Read as _, os::unix::fs::MetadataExt as _};
        let mut file = fs::File::open(path)
            .with_context(|| format!("failed to read key file {}", path.display()))?;
        let metadata = file
            .metadata()
            .with_context(|| format!("failed to read key file {}", path.display()))?;
        check_key_file(
            path,
            metadata.mode(),
            metadata.uid(),
            nix::unistd::geteuid().as_raw(),
        )?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .with_context(|| format!("failed to read key file {}", path.display()))?;
        Self::parse(text.trim()).with_context(|| format!("bad key file {}", path.display()))
    }

    /// Parses 64 hexadecimal characters.
    pub fn parse(hex: &str) -> anyhow::Result<Self> {
        from_hex(hex, "a key").map(Self)
    }

    /// Writes a fresh random key to `path` with mode 0600; refuses to overwrite a file.
    pub fn generate(path: &Path) -> anyhow::Result<()> {
        create_random_file::<KEY_LEN>(path).map(drop)
    }

    /// A random key in memory, for checks that must cost what a real one costs.
    fn random() -> anyhow::Result<Self> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).context("the kernel gave no random bytes")?;
        Ok(Self(bytes))
    }

    /// The key's id, which its cookies carry.
    pub fn id(&self) -> KeyId {
        let tag = self
            .hmac()
            .chain_update(KEY_ID_DOMAIN)
            .finalize()
            .into_bytes();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag[..KEY_ID_LEN]);
        KeyId(id)
    }

    fn hmac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }

    fn mac(&self, subject: &Subject, timestamp: u64, nonce: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.hmac();
        match subject {
            Subject::Connect(destination) => {
                mac.update(DOMAIN);
                mac.update(&destination.port().to_be_bytes());
                mac.update(&mapped(destination.ip()).octets());
            }
            Subject::Forward(claimed) => {
                mac.update(FORWARD_DOMAIN);
                mac.update(claimed);
            }
        }
        mac.update(&timestamp.to_be_bytes());
        mac.update(nonce);
        mac
    }

    /// The Cookie TLV value for a request for `subject` (a destination), at Unix time
    /// `now`.
    pub fn cookie(&self, subject: impl Into<Subject>, now: u64) -> anyhow::Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).context("the kernel gave no random bytes")?;
        let tag = self
            .mac(&subject.into(), now, &nonce)
            .finalize()
            .into_bytes();
        let mut cookie = Vec::with_capacity(COOKIE_LEN);
        cookie.extend_from_slice(&self.id().0);
        cookie.extend_from_slice(&now.to_be_bytes());
        cookie.extend_from_slice(&nonce);
        cookie.extend_from_slice(&tag);
        Ok(cookie)
    }
}

/// `N` random bytes, written to a new file at `path` (mode 0600) as one line of
/// hexadecimal; fails if the file exists (`AlreadyExists` in the error's chain).
pub fn create_random_file<const N: usize>(path: &Path) -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).context("the kernel gave no random bytes")?;
    let hex = bytes.iter().fold(String::new(), |mut hex, byte| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{byte:02x}");
        hex
    });
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    writeln!(file, "{hex}").with_context(|| format!("failed to write {}", path.display()))?;
    Ok(bytes)
}

/// Exactly `N` bytes from `2 * N` hexadecimal characters; errors name `what`.
pub fn from_hex<const N: usize>(hex: &str, what: &str) -> anyhow::Result<[u8; N]> {
    if hex.len() != N * 2 {
        bail!(
            "{what} is {} hexadecimal characters, found {}",
            N * 2,
            hex.len()
        );
    }
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).with_context(|| format!("{what} is hexadecimal"))?;
        *byte = u8::from_str_radix(pair, 16).with_context(|| format!("{what} is hexadecimal"))?;
    }
    Ok(bytes)
}

/// Refuses a key file others may read or write (`mode`), or that someone other than root
/// or us (`owner`, `us`) owns: they could read it, or swap in a key of their own.
fn check_key_file(path: &Path, mode: u32, owner: u32, us: u32) -> anyhow::Result<()> {
    if mode & 0o077 != 0 {
        bail!(
            "key file {} is open to group or others (mode {:o}): anyone who reads it \
             can use the converter; run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    if owner != 0 && owner != us {
        bail!(
            "key file {} belongs to user {owner}, neither root nor this process's user \
             ({us}): its owner could change the key; run `chown root {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Why a cookie was refused. All map to the Error TLV "Not Authorized" (or "Missing
/// Cookie"); the variants are for the converter's log.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The request carried no Cookie TLV.
    #[error("no cookie")]
    Missing,
    /// The cookie is not [`COOKIE_LEN`] bytes (56: an older gateway's, without a key
    /// id).
    #[error("cookie of {0} bytes, expected {COOKIE_LEN}")]
    BadLength(usize),
    /// The MAC does not match, or no key has the cookie's id: wrong key, or a tampered
    /// request. One error for both, checked at the same cost.
    #[error("bad MAC (wrong key?)")]
    BadMac,
    /// The timestamp is outside the window around the converter's clock.
    #[error("timestamp {age_secs} s away from our clock, window is {window_secs} s")]
    Stale {
        /// Distance between the cookie's time and ours.
        age_secs: u64,
        /// The allowed distance.
        window_secs: u64,
    },
    /// This nonce was seen within the window.
    #[error("replayed nonce")]
    Replayed,
    /// The cookie was made before this converter started, or in the second it started:
    /// the nonces it remembers do not go back that far, so it could be a replay across
    /// a restart (or the gateway's clock is behind).
    #[error("cookie from {timestamp}, not after the second this converter started ({started})")]
    BeforeStart {
        /// The cookie's Unix time.
        timestamp: u64,
        /// The second the converter started.
        started: u64,
    },
}

/// Checks cookies against a set of keys, each standing for `T` (who holds it), and
/// remembers recent nonces to refuse replays.
pub struct Verifier<T> {
    keys: Vec<(Key, T)>,
    /// Where each key id's key is in `keys`.
    index: HashMap<KeyId, usize>,
    /// Checked against when there is no key at all.
    decoy: Key,
    window: Duration,
    /// The second the converter started ([`start_second`]): cookies from it or before
    /// are refused, since the nonces seen before the start are forgotten, and whole
    /// seconds cannot tell a cookie made just before the start from one just after.
    started: u64,
    /// Nonce -> Unix time after which it may be forgotten. Only requests with a valid
    /// MAC get here, so its size is bounded by the honest request rate.
    seen: HashMap<[u8; NONCE_LEN], u64>,
    last_prune: u64,
}

impl<T: Clone> Verifier<T> {
    /// A verifier of cookies made with `keys`, accepting timestamps within `window` of
    /// its clock and after `started` (Unix seconds; the second the process started,
    /// which [`start_second`] waits out).
    pub fn new(
        keys: impl IntoIterator<Item = (Key, T)>,
        window: Duration,
        started: u64,
    ) -> anyhow::Result<Self> {
        let mut verifier = Self {
            keys: Vec::new(),
            index: HashMap::new(),
            decoy: Key::random()?,
            window,
            started,
            seen: HashMap::new(),
            last_prune: 0,
        };
        verifier.set_keys(keys);
        Ok(verifier)
    }

    /// Checks cookies with `keys` from now on (a reload); the nonces seen stay.
    pub fn set_keys(&mut self, keys: impl IntoIterator<Item = (Key, T)>) {
        self.keys = keys.into_iter().collect();
        self.index = self
            .keys
            .iter()
            .enumerate()
            .map(|(at, (key, _))| (key.id(), at))
            .collect();
    }

    /// The key to check a cookie with `id` against, and whose it is. An unknown id
    /// gets another gateway's key (which its MAC cannot match), picked by the id: the
    /// same lookup, the same kind of memory and the same MAC as a known id's, so that
    /// the time of a refusal does not tell which ids exist (`bench keys` measures it).
    fn key_for(&self, id: KeyId) -> (&Key, Option<&T>) {
        if let Some(&at) = self.index.get(&id) {
            let (key, who) = &self.keys[at];
            return (key, Some(who));
        }
        let stand_in = usize::try_from(u64::from_be_bytes(id.0)).unwrap_or_default();
        match self.keys.get(stand_in % self.keys.len().max(1)) {
            Some((key, _)) => (key, None),
            None => (&self.decoy, None),
        }
    }

    /// Accepts a cookie for `subject` (a destination) once: a known key id, a valid
    /// MAC, a fresh timestamp, an unseen nonce. Returns who holds the key.
    pub fn verify(
        &mut self,
        subject: impl Into<Subject>,
        cookie: Option<&[u8]>,
        now: u64,
    ) -> Result<T, AuthError> {
        let cookie = cookie.ok_or(AuthError::Missing)?;
        let cookie: &[u8; COOKIE_LEN] = cookie
            .try_into()
            .map_err(|_| AuthError::BadLength(cookie.len()))?;
        let (id, rest) = cookie.split_at(KEY_ID_LEN);
        let (timestamp, rest) = rest.split_at(8);
        let (nonce, tag) = rest.split_at(NONCE_LEN);
        let timestamp = u64::from_be_bytes(timestamp.try_into().expect("8 bytes"));
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("NONCE_LEN bytes");
        let id = KeyId(id.try_into().expect("KEY_ID_LEN bytes"));
        let (key, who) = self.key_for(id);
        let checked = key
            .mac(&subject.into(), timestamp, &nonce)
            .verify_slice(tag);
        let who = match (checked, who) {
            (Ok(()), Some(who)) => who.clone(),
            _ => return Err(AuthError::BadMac),
        };
        let window = self.window.as_secs();
        let age = now.abs_diff(timestamp);
        if age > window {
            return Err(AuthError::Stale {
                age_secs: age,
                window_secs: window,
            });
        }
        if timestamp <= self.started {
            return Err(AuthError::BeforeStart {
                timestamp,
                started: self.started,
            });
        }
        self.prune(now);
        // A nonce must be remembered until its timestamp leaves the window.
        if self
            .seen
            .insert(nonce, timestamp.saturating_add(window))
            .is_some()
        {
            return Err(AuthError::Replayed);
        }
        Ok(who)
    }

    fn prune(&mut self, now: u64) {
        if now > self.last_prune {
            self.seen.retain(|_, &mut expiry| expiry >= now);
            self.last_prune = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddr},
        os::unix::fs::PermissionsExt as _,
    };

    use super::*;

    /// The replay window of these tests.
    const WINDOW: Duration = Duration::from_mins(1);

    const NOW: u64 = 1_700_000_000;

    fn destination() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(203, 0, 113, 10), 443))
    }

    fn verifier(key: &Key) -> Verifier<()> {
        Verifier::new([(key.clone(), ())], WINDOW, NOW - 100).unwrap()
    }

    #[test]
    fn valid_cookie_is_accepted_once() {
        let key = Key::from_bytes([7; KEY_LEN]);
        let cookie = key.cookie(destination(), NOW).unwrap();
        let mut verifier = verifier(&key);
        assert_eq!(
            verifier.verify(destination(), Some(&cookie), NOW + 5),
            Ok(())
        );
        assert_eq!(
            verifier.verify(destination(), Some(&cookie), NOW + 6),
            Err(AuthError::Replayed)
        );
    }

    #[test]
    fn wrong_key_or_destination_is_refused() {
        let cookie = Key::from_bytes([7; KEY_LEN])
            .cookie(destination(), NOW)
            .unwrap();
        let mut other = verifier(&Key::from_bytes([8; KEY_LEN]));
        assert_eq!(
            other.verify(destination(), Some(&cookie), NOW),
            Err(AuthError::BadMac)
        );
        let mut same = verifier(&Key::from_bytes([7; KEY_LEN]));
        let elsewhere = SocketAddr::from((Ipv4Addr::new(203, 0, 113, 11), 443));
        assert_eq!(
            same.verify(elsewhere, Some(&cookie), NOW),
            Err(AuthError::BadMac)
        );
        // A claim's cookie is no request's, nor a claim's for other ports, and back.
        let claim = |ports: &[u8]| Subject::Forward(ports.to_vec());
        let claimed = Key::from_bytes([7; KEY_LEN])
            .cookie(claim(&[0x20, 0xfb]), NOW)
            .unwrap();
        assert_eq!(
            same.verify(claim(&[0x20, 0xfc]), Some(&claimed), NOW),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            same.verify(claim(&[]), Some(&cookie), NOW),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            same.verify(claim(&[0x20, 0xfb]), Some(&claimed), NOW),
            Ok(())
        );
    }

    #[test]
    fn the_key_id_picks_the_gateway_and_an_unknown_one_is_a_bad_mac() {
        let (smith, jones, stranger) = (
            Key::from_bytes([1; KEY_LEN]),
            Key::from_bytes([2; KEY_LEN]),
            Key::from_bytes([3; KEY_LEN]),
        );
        assert_ne!(smith.id(), jones.id());
        let mut verifier = Verifier::new(
            [(smith.clone(), "smith"), (jones.clone(), "jones")],
            WINDOW,
            NOW - 100,
        )
        .unwrap();
        let cookie = |key: &Key, second| key.cookie(destination(), second).unwrap();
        let from_jones = cookie(&jones, NOW);
        assert_eq!(&from_jones[..KEY_ID_LEN], jones.id().0);
        assert_eq!(
            verifier.verify(destination(), Some(&from_jones), NOW),
            Ok("jones")
        );
        assert_eq!(
            verifier.verify(destination(), Some(&cookie(&smith, NOW)), NOW),
            Ok("smith")
        );
        assert_eq!(
            verifier.verify(destination(), Some(&cookie(&stranger, NOW)), NOW),
            Err(AuthError::BadMac)
        );
        // Jones's id on a cookie that smith's key made: the MAC fails.
        let mut forged = cookie(&smith, NOW + 1);
        forged[..KEY_ID_LEN].copy_from_slice(&jones.id().0);
        assert_eq!(
            verifier.verify(destination(), Some(&forged), NOW + 1),
            Err(AuthError::BadMac)
        );
        // A rotation: smith's new key beside the old, then the old removed.
        verifier.set_keys([(smith.clone(), "smith"), (stranger.clone(), "smith")]);
        assert_eq!(
            verifier.verify(destination(), Some(&cookie(&stranger, NOW + 2)), NOW + 2),
            Ok("smith")
        );
        verifier.set_keys([(stranger.clone(), "smith")]);
        assert_eq!(
            verifier.verify(destination(), Some(&cookie(&smith, NOW + 3)), NOW + 3),
            Err(AuthError::BadMac)
        );
        // An older gateway's cookie (no key id) is refused for its length.
        assert_eq!(
            verifier.verify(destination(), Some(&from_jones[KEY_ID_LEN..]), NOW),
            Err(AuthError::BadLength(COOKIE_LEN - KEY_ID_LEN))
        );
    }

    #[test]
    fn stale_missing_and_short_cookies_are_refused() {
        let key = Key::from_bytes([7; KEY_LEN]);
        let cookie = key.cookie(destination(), NOW).unwrap();
        let mut verifier = verifier(&key);
        assert!(matches!(
            verifier.verify(destination(), Some(&cookie), NOW + 61),
            Err(AuthError::Stale { age_secs: 61, .. })
        ));
        assert_eq!(
            verifier.verify(destination(), None, NOW),
            Err(AuthError::Missing)
        );
        assert_eq!(
            verifier.verify(destination(), Some(&cookie[..10]), NOW),
            Err(AuthError::BadLength(10))
        );
    }

    #[test]
    fn cookies_from_before_the_start_are_refused() {
        let key = Key::from_bytes([7; KEY_LEN]);
        let before_restart = key.cookie(destination(), NOW - 1).unwrap();
        // Seen by the converter's previous run, replayed to the new one.
        let mut restarted = Verifier::new([(key.clone(), ())], WINDOW, NOW).unwrap();
        assert_eq!(
            restarted.verify(destination(), Some(&before_restart), NOW + 1),
            Err(AuthError::BeforeStart {
                timestamp: NOW - 1,
                started: NOW
            })
        );
        // Made in the start's second: before or after the restart, nobody can tell.
        let same_second = key.cookie(destination(), NOW).unwrap();
        assert_eq!(
            restarted.verify(destination(), Some(&same_second), NOW + 1),
            Err(AuthError::BeforeStart {
                timestamp: NOW,
                started: NOW
            })
        );
        let fresh = key.cookie(destination(), NOW + 1).unwrap();
        assert_eq!(
            restarted.verify(destination(), Some(&fresh), NOW + 1),
            Ok(())
        );
    }

    #[test]
    fn the_start_second_is_waited_out() {
        let started = start_second();
        assert_eq!(unix_now(), started + 1);
    }

    #[test]
    fn nonces_are_forgotten_after_the_window() {
        let key = Key::from_bytes([7; KEY_LEN]);
        let mut verifier = verifier(&key);
        for second in 0..100 {
            let cookie = key.cookie(destination(), NOW + second).unwrap();
            verifier
                .verify(destination(), Some(&cookie), NOW + second)
                .unwrap();
        }
        assert!(
            verifier.seen.len() <= 62,
            "{} nonces kept",
            verifier.seen.len()
        );
    }

    #[test]
    fn key_files_of_others_are_refused() {
        let path = Path::new("/etc/key");
        assert!(check_key_file(path, 0o100_600, 0, 0).is_ok());
        assert!(check_key_file(path, 0o100_600, 1000, 1000).is_ok());
        assert!(check_key_file(path, 0o100_640, 0, 0).is_err());
        let error = check_key_file(path, 0o100_600, 1000, 0).unwrap_err();
        assert!(
            error.to_string().contains("belongs to user 1000"),
            "{error}"
        );
    }

    #[test]
    fn key_files_parse_and_generate() {
        assert!(Key::parse("abc").is_err());
        assert!(Key::parse(&"zz".repeat(32)).is_err());
        assert!(Key::parse(&"0f".repeat(32)).is_ok());
        let dir = std::env::temp_dir().join(format!("mptcp-key-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key");
        let _ = fs::remove_file(&path);
        Key::generate(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(Key::load(&path).is_ok());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let error = Key::load(&path).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
        assert!(Key::generate(&path).is_err(), "must not overwrite a key");
        fs::remove_dir_all(&dir).unwrap();
    }
}
