//! The gateway's selection: which flows it intercepts, by destination prefix and port,
//! kept in the BPF maps the LAN and connect programs read at each flow's start (see
//! `mptcp_ebpf_common::selection`). Used by the daemon to install its defaults and by
//! `mptcp-user selection` to edit a running gateway's pinned maps.

use std::{
    borrow::{Borrow, BorrowMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    str::FromStr,
};

use anyhow::{Context as _, bail};
use aya::maps::{Array, HashMap, LpmTrie, MapData};
use ipnet::IpNet;
use mptcp_ebpf_common::{
    Address,
    selection::{
        ACTION_EXCLUDE, ACTION_EXCLUDE_FIXED, ACTION_INCLUDE, MAP_NAME, PORTS_MAP_NAME,
        PORTS_RESTRICTED_KEY, QUIC_FALLBACK_ON, QUIC_MAP_NAME,
    },
};
use serde::Serialize;

use crate::{
    bpf::{self, Programs, prefix_from_key, prefix_key},
    net::addr::{self, non_public_ranges},
};

/// What the selection does with destinations under a prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Intercept and convert to MPTCP.
    Include,
    /// Leave alone: plain forwarding.
    Exclude,
    /// Excluded by the daemon (the converter, the gateway's own addresses); cannot be
    /// deleted.
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
            other => bail!("unknown selection action {other} in the map"),
        })
    }

    /// The action's name, as the CLI takes and prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Include => "include",
            Self::Exclude => "exclude",
            Self::Fixed => "fixed",
        }
    }
}

impl FromStr for Action {
    type Err = anyhow::Error;

    /// `include` or `exclude`; `fixed` is the daemon's alone.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "include" => Ok(Self::Include),
            "exclude" => Ok(Self::Exclude),
            other => bail!("{other:?} is not an action: say include or exclude"),
        }
    }
}

/// One selection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// The destination prefix.
    #[serde(serialize_with = "serialize_display")]
    pub prefix: IpNet,
    /// What happens to destinations under it (the longest matching prefix decides).
    pub action: Action,
}

impl Rule {
    /// A rule for `prefix`.
    pub const fn new(prefix: IpNet, action: Action) -> Self {
        Self { prefix, action }
    }
}

fn serialize_display<S: serde::Serializer>(
    prefix: &IpNet,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(prefix)
}

/// The selection in a gateway's maps (loaded by the daemon, or pinned).
pub struct Selection<P, Q> {
    prefixes: LpmTrie<P, Address, u32>,
    ports: HashMap<Q, u16, u32>,
}

impl Selection<MapData, MapData> {
    /// Takes the selection maps out of the loaded programs (pin them first).
    pub fn take(programs: &mut Programs) -> anyhow::Result<Self> {
        Ok(Self {
            prefixes: LpmTrie::try_from(programs.take_map(MAP_NAME)?)?,
            ports: HashMap::try_from(programs.take_map(PORTS_MAP_NAME)?)?,
        })
    }

    /// Opens the selection a running gateway pinned under `pin_dir`.
    pub fn pinned(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            prefixes: LpmTrie::try_from(bpf::open_pinned(pin_dir, MAP_NAME)?)?,
            ports: HashMap::try_from(bpf::open_pinned(pin_dir, PORTS_MAP_NAME)?)?,
        })
    }
}

impl<P: Borrow<MapData>, Q: Borrow<MapData>> Selection<P, Q> {
    /// Every prefix rule, most general first.
    pub fn rules(&self) -> anyhow::Result<Vec<Rule>> {
        let mut rules = self
            .prefixes
            .iter()
            .map(|entry| {
                let (key, value) = entry.context("failed to read the selection map")?;
                Ok(Rule {
                    prefix: prefix_from_key(&key)?,
                    action: Action::from_map(value)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rules.sort_by_key(|rule| {
            (
                rule.prefix.addr().is_ipv6(),
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
            .context("failed to read the selection's ports map")?;
        ports.retain(|&port| port != PORTS_RESTRICTED_KEY);
        ports.sort_unstable();
        Ok(ports)
    }
}

impl<P: BorrowMut<MapData>, Q: BorrowMut<MapData>> Selection<P, Q> {
    /// Sets the action for `prefix`, replacing any earlier one. A fixed exclusion stays.
    pub fn set(&mut self, prefix: IpNet, action: Action) -> anyhow::Result<()> {
        if self.prefixes.get(&prefix_key(&prefix), 0).ok() == Some(ACTION_EXCLUDE_FIXED)
            && action != Action::Fixed
        {
            bail!("{prefix} is excluded by the gateway itself (the converter or its own address)");
        }
        self.prefixes
            .insert(&prefix_key(&prefix), action.to_map(), 0)
            .with_context(|| format!("failed to add {prefix} to the selection"))
    }

    /// Removes the rule for exactly `prefix`.
    pub fn remove(&mut self, prefix: IpNet) -> anyhow::Result<()> {
        match self.prefixes.get(&prefix_key(&prefix), 0) {
            Ok(ACTION_EXCLUDE_FIXED) => bail!(
                "{prefix} is excluded by the gateway itself (the converter or its own address)"
            ),
            Ok(_) => self
                .prefixes
                .remove(&prefix_key(&prefix))
                .with_context(|| format!("failed to remove {prefix}")),
            Err(_) => bail!("the selection has no rule for {prefix}"),
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
            bail!("the selection does not list port {port}");
        }
        if self.ports()?.is_empty() {
            self.ports.remove(&PORTS_RESTRICTED_KEY)?;
        }
        Ok(())
    }

    /// Installs the daemon's starting selection: everything included, the non-public
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
            self.set(IpNet::new(everything, 0)?, Action::Include)?;
        }
        for range in non_public_ranges() {
            self.set(range, Action::Exclude)?;
        }
        for rule in rules {
            self.set(rule.prefix, rule.action)?;
        }
        for &ip in never {
            self.set(addr::host_prefix(ip), Action::Fixed)?;
        }
        for &port in ports {
            self.add_port(port)?;
        }
        Ok(())
    }
}

/// The QUIC switch: while on, the LAN program turns QUIC (UDP to port 443) of the
/// destinations the selection takes away with ICMP "prohibited", so that browsers
/// use TCP, which the gateway aggregates.
pub struct QuicFallback {
    map: Array<MapData, u32>,
}

impl QuicFallback {
    /// Takes the switch out of the loaded programs (pin them first).
    pub fn take(programs: &mut Programs) -> anyhow::Result<Self> {
        Ok(Self {
            map: Array::try_from(programs.take_map(QUIC_MAP_NAME)?)?,
        })
    }

    /// Opens the switch a running gateway pinned under `pin_dir`.
    pub fn pinned(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            map: Array::try_from(bpf::open_pinned(pin_dir, QUIC_MAP_NAME)?)?,
        })
    }

    /// Whether QUIC is turned away.
    pub fn is_on(&self) -> anyhow::Result<bool> {
        Ok(self
            .map
            .get(&0, 0)
            .context("failed to read the QUIC switch")?
            == QUIC_FALLBACK_ON)
    }

    /// Turns QUIC away (`true`) or leaves it alone; applies to the next packet.
    pub fn set(&mut self, on: bool) -> anyhow::Result<()> {
        let value = if on { QUIC_FALLBACK_ON } else { 0 };
        self.map
            .set(0, value, 0)
            .context("failed to set the QUIC switch")
    }
}

#[cfg(test)]
mod tests {
    use super::Action;

    #[test]
    fn actions_parse_from_the_command_line_but_fixed_does_not() {
        assert_eq!("include".parse::<Action>().unwrap(), Action::Include);
        assert_eq!("exclude".parse::<Action>().unwrap(), Action::Exclude);
        assert!("fixed".parse::<Action>().is_err());
        assert_eq!(Action::Exclude.as_str(), "exclude");
    }
}
