//! An uplink as the config file or `--uplink` gives it.

use std::{net::IpAddr, str::FromStr};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// One uplink, as configured (`[[gateway.uplink]]` or `--uplink`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UplinkConfig {
    /// The interface, e.g. `dsl0`, `wwan0`, `ppp0`.
    pub interface: String,
    /// The next hop; by default the one of the interface's default route (DHCP, PPP).
    #[serde(default)]
    pub next_hop: Option<IpAddr>,
    /// Carries traffic only when no regular uplink is up.
    #[serde(default)]
    pub backup: bool,
}

impl FromStr for UplinkConfig {
    type Err = anyhow::Error;

    /// `IFACE[,next-hop=ADDR][,backup]`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let mut parts = text.split(',');
        let interface = parts.next().unwrap_or_default();
        if interface.is_empty() {
            bail!("{text:?}: an uplink starts with its interface: IFACE[,next-hop=ADDR][,backup]");
        }
        let mut uplink = Self {
            interface: interface.to_owned(),
            next_hop: None,
            backup: false,
        };
        for part in parts {
            match part.split_once('=') {
                Some(("next-hop", address)) => {
                    uplink.next_hop = Some(
                        address
                            .parse()
                            .with_context(|| format!("{text:?}: bad next hop {address:?}"))?,
                    );
                }
                None if part == "backup" => uplink.backup = true,
                _ => bail!("{text:?}: unknown uplink option {part:?} (next-hop=ADDR, backup)"),
            }
        }
        Ok(uplink)
    }
}

/// Refuses two uplinks on one interface.
pub fn check_unique(uplinks: &[UplinkConfig]) -> anyhow::Result<()> {
    for (index, uplink) in uplinks.iter().enumerate() {
        if uplinks[..index]
            .iter()
            .any(|other| other.interface == uplink.interface)
        {
            bail!("uplink {} is configured twice", uplink.interface);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_flags_parse() {
        let plain: UplinkConfig = "dsl0".parse().unwrap();
        assert_eq!(plain.interface, "dsl0");
        assert!(!plain.backup && plain.next_hop.is_none());
        let full: UplinkConfig = "lte0,next-hop=198.51.100.1,backup".parse().unwrap();
        assert_eq!(full.next_hop, Some("198.51.100.1".parse().unwrap()));
        assert!(full.backup);
        for bad in ["", ",backup", "dsl0,next-hop=nonsense", "dsl0,fast"] {
            assert!(bad.parse::<UplinkConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_interface_is_one_uplink() {
        let dsl: UplinkConfig = "dsl0".parse().unwrap();
        let lte: UplinkConfig = "lte0".parse().unwrap();
        assert!(check_unique(&[dsl.clone(), lte]).is_ok());
        let error = check_unique(&[dsl.clone(), dsl]).unwrap_err();
        assert!(error.to_string().contains("dsl0"), "{error}");
    }
}
