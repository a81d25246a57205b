//! The gateway's selection policy: which destinations it intercepts, kept in the BPF
//! maps the LAN and connect programs read at each flow's start (see
//! `mptcp_ebpf_common::policy`). Used by the daemon to install its defaults and by
//! `mptcp-user policy` to edit a running gateway's pinned maps.

use std::{
    borrow::{Borrow, BorrowMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, LpmTrie, MapData, lpm_trie::Key};
use mptcp_ebpf_common::{
    Address,
    policy::{ACTION_EXCLUDE, ACTION_EXCLUDE_FIXED, ACTION_INCLUDE, PORTS_RESTRICTED_KEY},
};
use serde::Serialize;

use crate::policy::{Cidr, non_public_ranges};

/// What the policy does with destinations under a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Intercept and convert to MPTCP.
    Include,
    /// Leave alone: plain forwarding.
    Exclude,
    /// Excluded by the daemon (the converter, the gateway's own addresses); cannot be
    /// deleted.
    #[value(skip)]
    Fixed,
}

impl Action {
    const fn to_map(self) -> u32 {
        match self {
            Self::Include => ACTION_INCLUDE,
            Self::Exclude => ACTION_EXCLUDE,
            Self::Fixed => ACTION_EXCLUDE_FIXED,
        }
    }

    fn from_map(value: u32) -> anyhow::Result<Self> {
        Ok(match value {
            ACTION_INCLUDE => Self::Include,
            ACTION_EXCLUDE => Self::Exclude,
            ACTION_EXCLUDE_FIXED => Self::Fixed,
            other => bail!("unknown policy action {other} in the map"),
        })
    }
}

/// One policy entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The destination prefix.
    #[serde(serialize_with = "crate::selection::serialize_display")]
    pub prefix: Cidr,
    /// What happens to destinations under it (the longest matching prefix decides).
    pub action: Action,
}

fn serialize_display<S: serde::Serializer>(cidr: &Cidr, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(cidr)
}

/// An address in the maps' form (IPv4 as IPv4-mapped).
#[must_use]
pub fn to_address(ip: IpAddr) -> Address {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let octets = v6.octets();
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// The address of the maps' form as an [`IpAddr`] (IPv4-mapped comes back as IPv4).
#[must_use]
pub fn from_address(words: Address) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    crate::protocol::canonical_ip(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// The LPM trie key of `prefix` (IPv4 prefixes as IPv4-mapped, 96 bits longer).
pub fn prefix_key(prefix: &Cidr) -> Key<Address> {
    let bits = u32::from(prefix.prefix_len()) + if prefix.network().is_ipv4() { 96 } else { 0 };
    Key::new(bits, to_address(prefix.network()))
}

fn prefix_from_key(key: &Key<Address>) -> anyhow::Result<Cidr> {
    let bits = key.prefix_len();
    let network = from_address(key.data());
    let bits = match network {
        IpAddr::V4(_) => bits.checked_sub(96).context("bad IPv4 prefix in the map")?,
        IpAddr::V6(_) => bits,
    };
    Cidr::new(network, u8::try_from(bits)?)
}

/// The policy in a gateway's maps (loaded by the daemon, or pinned).
pub struct Policy<P, Q> {
    prefixes: LpmTrie<P, Address, u32>,
    ports: HashMap<Q, u16, u32>,
}

impl<P: Borrow<MapData>, Q: Borrow<MapData>> Policy<P, Q> {
    /// Wraps the two policy maps.
    pub const fn new(prefixes: LpmTrie<P, Address, u32>, ports: HashMap<Q, u16, u32>) -> Self {
        Self { prefixes, ports }
    }

    /// Every prefix rule, most general first.
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let mut rules = self
            .prefixes
            .iter()
            .map(|entry| {
                let (key, value) = entry.context("failed to read the policy map")?;
                Ok(Rule {
                    prefix: prefix_from_key(&key)?,
                    action: Action::from_map(value)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rules.sort_by_key(|rule| {
            (
                rule.prefix.network().is_ipv6(),
                rule.prefix.prefix_len(),
                rule.prefix.network(),
            )
        });
        Ok(rules)
    }

    /// The destination ports interception is restricted to; empty for all ports.
    pub fn ports(&self) -> anyhow::Result<Vec<u16>> {
        let mut ports = self
            .ports
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .context("failed to read the policy ports map")?;
        ports.retain(|&port| port != PORTS_RESTRICTED_KEY);
        ports.sort_unstable();
        Ok(ports)
    }
}

impl<P: BorrowMut<MapData>, Q: BorrowMut<MapData>> Policy<P, Q> {
    /// Sets the action for `prefix`, replacing any earlier one. A fixed exclusion stays.
    pub fn set(&mut self, prefix: Cidr, action: Action) -> anyhow::Result<()> {
        if self.prefixes.get(&prefix_key(&prefix), 0).ok() == Some(ACTION_EXCLUDE_FIXED)
            && action != Action::Fixed
        {
            bail!("{prefix} is excluded by the gateway itself (the converter or its own address)");
        }
        self.prefixes
            .insert(&prefix_key(&prefix), action.to_map(), 0)
            .with_context(|| format!("failed to add {prefix} to the policy"))
    }

    /// Removes the rule for exactly `prefix`.
    pub fn remove(&mut self, prefix: Cidr) -> anyhow::Result<()> {
        match self.prefixes.get(&prefix_key(&prefix), 0) {
            Ok(ACTION_EXCLUDE_FIXED) => bail!(
                "{prefix} is excluded by the gateway itself (the converter or its own address)"
            ),
            Ok(_) => self
                .prefixes
                .remove(&prefix_key(&prefix))
                .with_context(|| format!("failed to remove {prefix}")),
            Err(_) => bail!("the policy has no rule for {prefix}"),
        }
    }

    /// Restricts interception to `port` too (the first port turns the restriction on).
    pub fn add_port(&mut self, port: u16) -> anyhow::Result<()> {
        if port == PORTS_RESTRICTED_KEY {
            bail!("port 0 is not a destination port");
        }
        self.ports.insert(port, 1, 0)?;
        self.ports.insert(PORTS_RESTRICTED_KEY, 1, 0)?;
        Ok(())
    }

    /// Takes `port` off the list; when the list empties, every port is intercepted again.
    pub fn remove_port(&mut self, port: u16) -> anyhow::Result<()> {
        if port == PORTS_RESTRICTED_KEY || self.ports.remove(&port).is_err() {
            bail!("the policy does not list port {port}");
        }
        if self.ports()?.is_empty() {
            self.ports.remove(&PORTS_RESTRICTED_KEY)?;
        }
        Ok(())
    }

    /// Installs the daemon's starting policy: everything included, the non-public
    /// ranges excluded, then `rules` from the command line, then the addresses that
    /// must never be intercepted (the converter, the gateway's own) as fixed exclusions.
    pub fn install(
        &mut self,
        rules: &[Rule],
        never: &[IpAddr],
        ports: &[u16],
    ) -> anyhow::Result<()> {
        for everything in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            self.set(Cidr::new(everything, 0)?, Action::Include)?;
        }
        for range in non_public_ranges() {
            self.set(range, Action::Exclude)?;
        }
        for rule in rules {
            self.set(rule.prefix, rule.action)?;
        }
        for &ip in never {
            let ip = crate::protocol::canonical_ip(ip);
            let len = if ip.is_ipv4() { 32 } else { 128 };
            self.set(Cidr::new(ip, len)?, Action::Fixed)?;
        }
        for &port in ports {
            self.add_port(port)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{from_address, prefix_from_key, prefix_key, to_address};
    use crate::policy::Cidr;

    #[test]
    fn addresses_round_trip_in_both_families() {
        for text in ["192.0.2.1", "2001:db8::7", "::1"] {
            let ip = text.parse().unwrap();
            assert_eq!(from_address(to_address(ip)), ip);
        }
    }

    #[test]
    fn ipv4_prefixes_are_mapped_with_96_more_bits() {
        let prefix: Cidr = "10.0.0.0/8".parse().unwrap();
        let key = prefix_key(&prefix);
        assert_eq!(key.prefix_len(), 104);
        assert_eq!(prefix_from_key(&key).unwrap(), prefix);
        let everything: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(
            prefix_from_key(&prefix_key(&everything)).unwrap(),
            everything
        );
    }
}
