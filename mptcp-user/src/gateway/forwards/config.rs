//! A port forward as the config file (`[[gateway.forward]]`) or `--forward` gives it.

use std::{net::SocketAddr, str::FromStr};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    net::addr::{self, parse_prefix},
    protocol::forward::MAX_PORTS,
};

/// One port forward: connections to `public` on the converter reach `to` in the LAN.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "ForwardEntry")]
pub struct ForwardConfig {
    /// The converter's public port.
    pub public: u16,
    /// The LAN host and port the connections reach.
    pub to: SocketAddr,
    /// Who may connect; everyone when empty.
    pub allow: Vec<IpNet>,
    /// Whose address the LAN host sees.
    pub source: Source,
}

/// The source address of the connection the gateway opens to the LAN host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The outside client's, as a router's own port forward gives it (a transparent
    /// socket; the replies come back through the gateway, the LAN host's router).
    #[default]
    Client,
    /// The gateway's own LAN address: for a LAN host whose replies would not come back
    /// through the gateway.
    Gateway,
}

impl ForwardConfig {
    /// Whether a client at `ip` may connect.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = addr::canonical(ip);
        self.allow.is_empty() || self.allow.iter().any(|network| network.contains(&ip))
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.public == 0 {
            bail!("forward to {}: the public port is 1 to 65535", self.to);
        }
        if self.to.port() == 0 || self.to.ip().is_unspecified() {
            bail!(
                "forward {}: `to` is a LAN host's ADDR:PORT, not {}",
                self.public,
                self.to
            );
        }
        Ok(())
    }
}

/// `[[gateway.forward]]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ForwardEntry {
    public: u16,
    to: SocketAddr,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    source: Source,
}

impl TryFrom<ForwardEntry> for ForwardConfig {
    type Error = anyhow::Error;

    fn try_from(entry: ForwardEntry) -> anyhow::Result<Self> {
        let forward = Self {
            public: entry.public,
            to: entry.to,
            allow: entry
                .allow
                .iter()
                .map(|text| parse_prefix(text))
                .collect::<anyhow::Result<_>>()
                .with_context(|| format!("forward {}: bad allow", entry.public))?,
            source: entry.source,
        };
        forward.check()?;
        Ok(forward)
    }
}

impl FromStr for ForwardConfig {
    type Err = anyhow::Error;

    /// `PUBLIC=ADDR:PORT[,allow=CIDR]...[,source=client|gateway]`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        const FORM: &str = "PUBLIC=ADDR:PORT[,allow=CIDR]...[,source=client|gateway]";
        let mut parts = text.split(',');
        let (public, to) = parts
            .next()
            .and_then(|first| first.split_once('='))
            .with_context(|| format!("{text:?}: a forward is {FORM}"))?;
        let mut forward = Self {
            public: public
                .parse()
                .with_context(|| format!("{text:?}: bad public port {public:?}"))?,
            to: to
                .parse()
                .with_context(|| format!("{text:?}: bad LAN address {to:?} (ADDR:PORT)"))?,
            allow: Vec::new(),
            source: Source::Client,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("allow", prefix)) => forward
                    .allow
                    .push(parse_prefix(prefix).with_context(|| format!("{text:?}"))?),
                Some(("source", "client")) => forward.source = Source::Client,
                Some(("source", "gateway")) => forward.source = Source::Gateway,
                _ => bail!("{text:?}: unknown forward option {part:?} ({FORM})"),
            }
        }
        forward.check().with_context(|| format!("{text:?}"))?;
        Ok(forward)
    }
}

/// Refuses two forwards of one public port, and more than a claim may carry.
pub fn check_all(forwards: &[ForwardConfig]) -> anyhow::Result<()> {
    if forwards.len() > MAX_PORTS {
        bail!(
            "{} port forwards: a gateway may have {MAX_PORTS} at most",
            forwards.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for forward in forwards {
        if !seen.insert(forward.public) {
            bail!("public port {} is forwarded twice", forward.public);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_file_entries_say_the_same() {
        let flag: ForwardConfig = "8443=192.168.1.10:443,allow=203.0.113.0/24,source=gateway"
            .parse()
            .unwrap();
        let file: ForwardConfig = toml::from_str(
            "public = 8443\nto = \"192.168.1.10:443\"\nallow = [\"203.0.113.0/24\"]\n\
             source = \"gateway\"",
        )
        .unwrap();
        assert_eq!(flag, file);
        assert!(flag.admits("203.0.113.77".parse().unwrap()));
        assert!(!flag.admits("198.51.100.1".parse().unwrap()));
        let open: ForwardConfig = "25565=[fd00::10]:25565".parse().unwrap();
        assert_eq!(open.source, Source::Client);
        assert!(open.admits("198.51.100.1".parse().unwrap()));
    }

    #[test]
    fn bad_forwards_are_refused_with_the_reason() {
        for (text, why) in [
            ("8443", "a forward is"),
            ("0=192.168.1.10:443", "public port"),
            ("8443=192.168.1.10", "bad LAN address"),
            ("8443=192.168.1.10:0", "LAN host"),
            ("8443=192.168.1.10:443,source=nat", "unknown forward option"),
            ("8443=192.168.1.10:443,allow=banana", "8443"),
        ] {
            let error = format!("{:#}", text.parse::<ForwardConfig>().unwrap_err());
            assert!(error.contains(why), "{text}: {error}");
        }
        let twice = ["80=192.168.1.2:80", "80=192.168.1.3:80"].map(|t| t.parse().unwrap());
        assert!(check_all(&twice).is_err());
        let many: Vec<ForwardConfig> = (1..=65)
            .map(|port| format!("{port}=192.168.1.2:80").parse().unwrap())
            .collect();
        assert!(check_all(&many[..64]).is_ok());
        assert!(check_all(&many).is_err());
    }
}
