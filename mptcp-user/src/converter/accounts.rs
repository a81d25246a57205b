//! The gateways a converter serves: each a name, its keys (several during a key
//! rotation), and limits of its own, so that one household cannot take another's room.
//! A converter for one household has one, `default`, whose key is `key-file`.
//!
//! Accounts are matched by the key that signed a request's cookie ([`Verifier`]), and
//! reloaded on SIGHUP ([`Accounts::load`]): new keys and limits apply to new flows,
//! live flows keep going.
//!
//! [`Verifier`]: crate::protocol::cookie::Verifier

use std::{
    collections::HashMap,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::forward::PortRanges;
use crate::{lock, protocol::cookie::Key};

/// The account of a converter's `key-file`.
pub const DEFAULT: &str = "default";
/// Most characters of an account's name: it is a label of the metrics.
const MAX_NAME_LEN: usize = 32;

/// A gateway as the converter's config gives it (`[[converter.gateway]]`, `--gateway`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AccountFile")]
pub struct AccountConfig {
    /// Its name, in logs and metrics.
    pub name: String,
    /// Its keys: a cookie made with any of them is its.
    pub key_files: Vec<PathBuf>,
    /// Most of its connections relayed at once (within the converter's own
    /// `max-conns`); none: only the converter's.
    pub max_conns: Option<usize>,
    /// The public ports it may claim; none: the converter's `forward-ports`.
    pub forward_ports: Option<PortRanges>,
}

/// `[[converter.gateway]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct AccountFile {
    name: String,
    key_files: Vec<PathBuf>,
    max_conns: Option<usize>,
    forward_ports: Option<String>,
}

impl TryFrom<AccountFile> for AccountConfig {
    type Error = anyhow::Error;

    fn try_from(file: AccountFile) -> anyhow::Result<Self> {
        let account = Self {
            name: file.name,
            key_files: file.key_files,
            max_conns: file.max_conns,
            forward_ports: file.forward_ports.as_deref().map(str::parse).transpose()?,
        };
        account.check()?;
        Ok(account)
    }
}

/// The flag's form.
const FORM: &str = "NAME=KEY_FILE[,key=KEY_FILE]...[,max-conns=N][,forward-ports=PORTS]...";

impl FromStr for AccountConfig {
    type Err = anyhow::Error;

    /// `NAME=KEY_FILE[,key=KEY_FILE]...[,max-conns=N][,forward-ports=PORTS]...`: more
    /// `key=` during a rotation; `forward-ports=` as often as needed (`8000-8099`).
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or_default();
        let Some((name, key_file)) = first.split_once('=') else {
            bail!("{text:?}: a gateway is {FORM}");
        };
        let mut account = Self {
            name: name.to_owned(),
            key_files: vec![PathBuf::from(key_file)],
            max_conns: None,
            forward_ports: None,
        };
        let mut port_ranges = Vec::new();
        for part in parts {
            match part.split_once('=') {
                Some(("key", path)) => account.key_files.push(PathBuf::from(path)),
                Some(("max-conns", count)) => {
                    account.max_conns = Some(
                        count
                            .parse()
                            .with_context(|| format!("{text:?}: max-conns is a number"))?,
                    );
                }
                Some(("forward-ports", range)) => port_ranges.push(range),
                _ => bail!("{text:?}: unknown gateway option {part:?} ({FORM})"),
            }
        }
        if !port_ranges.is_empty() {
            account.forward_ports = Some(
                port_ranges
                    .join(",")
                    .parse()
                    .with_context(|| format!("{text:?}"))?,
            );
        }
        account.check().with_context(|| format!("{text:?}"))?;
        Ok(account)
    }
}

impl AccountConfig {
    /// The account of a converter's `key-file`: no limit of its own.
    pub fn default_for(key_file: PathBuf) -> Self {
        Self {
            name: DEFAULT.to_owned(),
            key_files: vec![key_file],
            max_conns: None,
            forward_ports: None,
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_NAME_LEN
            && self
                .name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
        if !name_ok {
            bail!(
                "gateway name {:?}: 1 to {MAX_NAME_LEN} letters, digits, '-', '_' or '.'",
                self.name
            );
        }
        if self.key_files.is_empty() {
            bail!("gateway {}: no key file", self.name);
        }
        if self.max_conns == Some(0) {
            bail!("gateway {}: max-conns is at least 1", self.name);
        }
        Ok(())
    }
}

/// Refuses two accounts of one name, and an account named [`DEFAULT`] beside
/// `key-file`.
pub fn check_all(accounts: &[AccountConfig]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for account in accounts {
        if !seen.insert(&account.name) {
            bail!(
                "gateway {:?} is named twice (\"{DEFAULT}\" is key-file's)",
                account.name
            );
        }
    }
    Ok(())
}

/// A gateway the converter serves, as its flows see it.
#[derive(Debug)]
pub struct Account {
    /// Its name.
    pub name: String,
    limits: Mutex<Limits>,
}

#[derive(Debug)]
struct Limits {
    /// Its `max-conns` and their permits, if it has one. A reload that changes it makes
    /// new permits: the flows still holding the old ones end in their own time.
    max_conns: Option<(usize, Arc<Semaphore>)>,
    forward_ports: Option<PortRanges>,
}

impl Limits {
    fn new(max_conns: Option<usize>, forward_ports: Option<PortRanges>) -> Self {
        Self {
            max_conns: max_conns.map(|count| (count, Arc::new(Semaphore::new(count)))),
            forward_ports,
        }
    }

    fn max_conns(&self) -> Option<usize> {
        self.max_conns.as_ref().map(|&(count, _)| count)
    }
}

/// Why an account's flow is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct OverLimit(pub usize);

impl Account {
    /// An account named `name` without limits of its own.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_owned(),
            limits: Mutex::new(Limits::new(None, None)),
        })
    }

    /// A relay permit of its own, held for a flow's life (`None` when it has no limit
    /// of its own), or its limit when all are taken.
    pub fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, OverLimit> {
        let limits = lock(&self.limits);
        let Some((max_conns, permits)) = &limits.max_conns else {
            return Ok(None);
        };
        Arc::clone(permits)
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| OverLimit(*max_conns))
    }

    /// The public ports it may claim, if it has its own.
    pub fn forward_ports(&self) -> Option<PortRanges> {
        lock(&self.limits).forward_ports.clone()
    }

    fn update(&self, config: &AccountConfig) {
        let mut limits = lock(&self.limits);
        if limits.max_conns() == config.max_conns {
            limits.forward_ports.clone_from(&config.forward_ports);
        } else {
            *limits = Limits::new(config.max_conns, config.forward_ports.clone());
        }
    }
}

/// The accounts of a converter, by name.
#[derive(Default)]
pub struct Accounts(Mutex<HashMap<String, Arc<Account>>>);

impl Accounts {
    /// Takes `configs` (at the start, or a reload): reads every key file first, so
    /// that a bad one leaves the accounts as they were; then updates the accounts
    /// kept, adds the new ones and forgets the others (their live flows keep going).
    /// Returns each key with its account, for the cookie verifier.
    pub fn load(&self, configs: &[AccountConfig]) -> anyhow::Result<Vec<(Key, Arc<Account>)>> {
        let mut keys = Vec::new();
        let mut holders = HashMap::new();
        for config in configs {
            for path in &config.key_files {
                let key =
                    Key::load(path).with_context(|| format!("gateway {}'s key", config.name))?;
                if let Some(other) = holders.insert(key.id(), &config.name)
                    && other != &config.name
                {
                    bail!(
                        "gateways {other} and {} have the same key ({}): each needs its own",
                        config.name,
                        path.display()
                    );
                }
                keys.push((key, config));
            }
        }
        let mut accounts = lock(&self.0);
        accounts.retain(|name, _| configs.iter().any(|config| &config.name == name));
        for config in configs {
            if let Some(account) = accounts.get(&config.name) {
                account.update(config);
            } else {
                let account = Arc::new(Account {
                    name: config.name.clone(),
                    limits: Mutex::new(Limits::new(config.max_conns, config.forward_ports.clone())),
                });
                accounts.insert(config.name.clone(), account);
            }
        }
        Ok(keys
            .into_iter()
            .map(|(key, config)| (key, Arc::clone(&accounts[&config.name])))
            .collect())
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        lock(&self.0).len()
    }

    /// Whether there is none (a converter made for a test, with a key and no config).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_entries_say_the_same() {
        let flag: AccountConfig =
            "smith=/etc/smith.key,key=/etc/smith-new.key,max-conns=200,forward-ports=8000-8099,\
             forward-ports=25565"
                .parse()
                .unwrap();
        let file: AccountConfig = toml::from_str(
            "name = \"smith\"\nkey-files = [\"/etc/smith.key\", \"/etc/smith-new.key\"]\n\
             max-conns = 200\nforward-ports = \"8000-8099,25565\"",
        )
        .unwrap();
        assert_eq!(flag, file);
        assert!(file.forward_ports.unwrap().contains(25565));
    }

    #[test]
    fn bad_accounts_are_refused_with_the_reason() {
        for (text, why) in [
            ("smith", "a gateway is"),
            ("=/etc/key", "gateway name"),
            ("smith jones=/etc/key", "gateway name"),
            ("smith=/etc/key,max-conns=0", "at least 1"),
            ("smith=/etc/key,max-conns=many", "a number"),
            ("smith=/etc/key,forward-ports=0", "ports are"),
            ("smith=/etc/key,limit=3", "unknown gateway option"),
        ] {
            let error = format!("{:#}", text.parse::<AccountConfig>().unwrap_err());
            assert!(error.contains(why), "{text}: {error}");
        }
        let twice = ["a=/k1", "a=/k2"].map(|text| text.parse().unwrap());
        assert!(check_all(&twice).is_err());
        let default = [
            AccountConfig::default_for("/k1".into()),
            "default=/k2".parse().unwrap(),
        ];
        assert!(check_all(&default).is_err());
    }

    #[test]
    fn an_account_over_its_limit_is_refused_and_a_reload_changes_it() {
        let dir = std::env::temp_dir().join(format!("mptcp-accounts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = |name: &str| dir.join(name);
        for name in ["a", "b", "c"] {
            Key::generate(&path(name)).unwrap();
        }
        let config = |text: &str| -> AccountConfig { text.parse().unwrap() };
        let a = |extra: &str| config(&format!("a={}{extra}", path("a").display()));
        let accounts = Accounts::default();
        let keys = accounts
            .load(&[
                a(",max-conns=1"),
                config(&format!("b={}", path("b").display())),
            ])
            .unwrap();
        assert_eq!(keys.len(), 2);
        let account_a = Arc::clone(&keys[0].1);
        let held = account_a.admit().unwrap();
        assert!(held.is_some());
        assert_eq!(account_a.admit().unwrap_err(), OverLimit(1));
        assert!(keys[1].1.admit().unwrap().is_none());

        // A reload: a rotation (a second key for a), a higher limit, b gone.
        let rotated = a(&format!(",key={},max-conns=2", path("c").display()));
        let keys = accounts.load(std::slice::from_ref(&rotated)).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(
            keys.iter()
                .all(|(_, account)| Arc::ptr_eq(account, &account_a))
        );
        assert_eq!(accounts.len(), 1);
        let more = [account_a.admit().unwrap(), account_a.admit().unwrap()];
        assert!(more.iter().all(Option::is_some));
        drop(held);

        // One key for two gateways is refused, and changes nothing.
        let shared = config(&format!("d={}", path("a").display()));
        let error = accounts.load(&[rotated, shared]).unwrap_err();
        assert!(error.to_string().contains("the same key"), "{error}");
        assert_eq!(accounts.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
