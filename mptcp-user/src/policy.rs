//! The remote converter's destination policy: it must never be an open relay into its
//! own network. By default it refuses loopback, private, link-local, CGNAT, multicast,
//! unspecified and broadcast destinations, and its own addresses; `--allow CIDR`
//! opens a prefix explicitly.

use std::{net::IpAddr, str::FromStr};

use anyhow::{Context as _, bail};

// IPv4-mapped IPv6 addresses are IPv4 addresses in disguise; check them as such.
use crate::protocol::canonical_ip as canonical;

/// An address prefix such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// A prefix from its network address and length (bits beyond it are kept as given).
    pub fn new(network: IpAddr, prefix_len: u8) -> anyhow::Result<Self> {
        let max = if network.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            bail!("prefix length {prefix_len} is too long for {network}");
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// The prefix's network address.
    pub const fn network(&self) -> IpAddr {
        self.network
    }

    /// The prefix's length in bits.
    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside the prefix (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .with_context(|| format!("{text:?} is not an address or prefix"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            Some(len) => len
                .parse::<u8>()
                .with_context(|| format!("bad prefix length in {text:?}"))?,
            None => max,
        };
        Self::new(network, prefix_len)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Ranges refused unless allowed explicitly.
const REFUSED: &[&str] = &[
    "0.0.0.0/8",      // unspecified, "this network"
    "10.0.0.0/8",     // private
    "100.64.0.0/10",  // CGNAT
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local
    "172.16.0.0/12",  // private
    "192.168.0.0/16", // private
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, broadcast
    "::/128",         // unspecified
    "::1/128",        // loopback
    "fc00::/7",       // unique local (private)
    "fe80::/10",      // link-local
    "ff00::/8",       // multicast
];

/// The ranges that are not the public internet: loopback, private, link-local, CGNAT,
/// multicast, unspecified and broadcast. The converter refuses them; the gateway does
/// not intercept them.
pub fn non_public_ranges() -> Vec<Cidr> {
    REFUSED
        .iter()
        .map(|cidr| cidr.parse().expect("built-in prefixes parse"))
        .collect()
}

/// Which destinations the converter connects to.
#[derive(Clone, Debug)]
pub struct DestinationPolicy {
    refused: Vec<Cidr>,
    allowed: Vec<Cidr>,
    own: Vec<IpAddr>,
}

/// Why a destination was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Inside a range refused by default.
    #[error("{0} is in the refused range {1}")]
    Range(IpAddr, Cidr),
    /// One of the converter's own addresses.
    #[error("{0} is an address of this host")]
    Own(IpAddr),
}

impl DestinationPolicy {
    /// The default policy, widened by `allowed`; `own` are this host's addresses.
    pub fn new(allowed: Vec<Cidr>, own: Vec<IpAddr>) -> Self {
        Self {
            refused: non_public_ranges(),
            allowed,
            own: own.into_iter().map(canonical).collect(),
        }
    }

    /// Accepts `ip` unless a rule refuses it; an explicit allow wins over every rule.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|cidr| cidr.contains(ip)) {
            return Ok(());
        }
        if self.own.contains(&ip) {
            return Err(Refusal::Own(ip));
        }
        match self.refused.iter().find(|cidr| cidr.contains(ip)) {
            Some(cidr) => Err(Refusal::Range(ip, *cidr)),
            None => Ok(()),
        }
    }
}

/// This host's addresses, from getifaddrs.
pub fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let addresses = nix::ifaddrs::getifaddrs().context("getifaddrs failed")?;
    Ok(addresses
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect())
}

/// The prefixes of this host's networks (each interface address with its netmask, the
/// host bits cleared), loopback left out.
pub fn local_prefixes() -> anyhow::Result<Vec<Cidr>> {
    let addresses = nix::ifaddrs::getifaddrs().context("getifaddrs failed")?;
    let mut prefixes = Vec::new();
    for interface in addresses {
        let (Some(address), Some(netmask)) = (interface.address, interface.netmask) else {
            continue;
        };
        let (network, prefix_len) = if let (Some(address), Some(mask)) =
            (address.as_sockaddr_in(), netmask.as_sockaddr_in())
        {
            let mask = u32::from(mask.ip());
            (
                IpAddr::V4((u32::from(address.ip()) & mask).into()),
                mask.count_ones(),
            )
        } else if let (Some(address), Some(mask)) =
            (address.as_sockaddr_in6(), netmask.as_sockaddr_in6())
        {
            let mask = u128::from(mask.ip());
            (
                IpAddr::V6((u128::from(address.ip()) & mask).into()),
                mask.count_ones(),
            )
        } else {
            continue;
        };
        if network.is_loopback() {
            continue;
        }
        let prefix = Cidr::new(network, u8::try_from(prefix_len)?)?;
        if !prefixes.contains(&prefix) {
            prefixes.push(prefix);
        }
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_internal_destinations() {
        let policy = DestinationPolicy::new(Vec::new(), vec![ip("198.51.100.7")]);
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "198.51.100.7",
        ] {
            assert!(
                policy.check(ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in [
            "203.0.113.10",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:203.0.113.10",
        ] {
            assert_eq!(
                policy.check(ip(allowed)),
                Ok(()),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn allow_opens_a_prefix_and_nothing_else() {
        let policy = DestinationPolicy::new(vec!["10.200.0.0/24".parse().unwrap()], Vec::new());
        assert_eq!(policy.check(ip("10.200.0.5")), Ok(()));
        assert!(policy.check(ip("10.201.0.5")).is_err());
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert!(host.contains(ip("2001:db8::1")));
        assert!(!host.contains(ip("2001:db8::2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")));
        assert!(!all.contains(ip("2001:db8::1")));
    }
}
