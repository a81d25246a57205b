//! An uplink as the config file or `--uplink` gives it.

use std::{fmt, net::IpAddr, str::FromStr};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// One uplink, as configured (`[[gateway.uplink]]` or `--uplink`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "UplinkEntry")]
pub struct UplinkConfig {
    /// The interface, e.g. `dsl0`, `wwan0`, `ppp0`.
    pub interface: String,
    /// The next hop; by default the one of the interface's default route (DHCP, PPP).
    pub next_hop: Option<IpAddr>,
    /// What the line is for.
    pub role: Role,
    /// A metered line's allowance.
    pub allowance: Option<Allowance>,
}

/// An uplink's role: which traffic it carries, and when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Carries traffic whenever it works.
    #[default]
    Primary,
    /// Carries traffic only when no primary works (its MPTCP endpoint is a `backup`).
    Backup,
    /// A line paid by the byte: never the default route while another line works, and
    /// once its allowance is spent, only when nothing else works (a `backup` endpoint).
    Metered,
}

impl Role {
    /// As the config file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Backup => "backup",
            Self::Metered => "metered",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much a metered line may carry in a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Bytes received and sent on the interface.
    pub bytes: u64,
    /// The period after which the count starts again.
    pub period: Period,
}

/// The period of an allowance; periods start at midnight UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Period {
    /// A calendar month.
    #[default]
    Month,
    /// A day.
    Day,
}

/// `[[gateway.uplink]]` as written, before the checks that span keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct UplinkEntry {
    interface: String,
    #[serde(default)]
    next_hop: Option<IpAddr>,
    #[serde(default)]
    role: Option<Role>,
    /// The role's older spelling: `backup = true`.
    #[serde(default)]
    backup: bool,
    #[serde(default)]
    allowance: Option<String>,
    #[serde(default)]
    allowance_period: Option<Period>,
}

impl TryFrom<UplinkEntry> for UplinkConfig {
    type Error = anyhow::Error;

    fn try_from(entry: UplinkEntry) -> anyhow::Result<Self> {
        let role = match (entry.role, entry.backup) {
            (Some(role), false) => role,
            (None | Some(Role::Backup), true) => Role::Backup,
            (None, false) => Role::Primary,
            (Some(role), true) => bail!(
                "uplink {}: role = \"{role}\" and backup = true contradict",
                entry.interface
            ),
        };
        let allowance = entry
            .allowance
            .map(|text| parse_bytes(&text))
            .transpose()
            .with_context(|| format!("uplink {}: bad allowance", entry.interface))?;
        let uplink = Self {
            interface: entry.interface,
            next_hop: entry.next_hop,
            role,
            allowance: allowance.map(|bytes| Allowance {
                bytes,
                period: entry.allowance_period.unwrap_or_default(),
            }),
        };
        if uplink.allowance.is_none() && entry.allowance_period.is_some() {
            bail!(
                "uplink {}: allowance-period without an allowance",
                uplink.interface
            );
        }
        uplink.check()?;
        Ok(uplink)
    }
}

impl UplinkConfig {
    /// Refuses an allowance on a line that is not metered, and interface names that no
    /// interface has (nftables rules quote them).
    fn check(&self) -> anyhow::Result<()> {
        if self.interface.is_empty()
            || self
                .interface
                .chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '/')
        {
            bail!("{:?} is not an interface name", self.interface);
        }
        if self.allowance.is_some() && self.role != Role::Metered {
            bail!(
                "uplink {}: an allowance needs role = \"metered\"",
                self.interface
            );
        }
        Ok(())
    }
}

impl FromStr for UplinkConfig {
    type Err = anyhow::Error;

    /// `IFACE[,next-hop=ADDR][,backup|,metered][,allowance=SIZE][,allowance-period=month|day]`.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        const FORM: &str = "IFACE[,next-hop=ADDR][,backup|,metered][,allowance=SIZE]\
                            [,allowance-period=month|day]";
        let mut parts = text.split(',');
        let interface = parts.next().unwrap_or_default();
        if interface.is_empty() {
            bail!("{text:?}: an uplink starts with its interface: {FORM}");
        }
        let mut uplink = Self {
            interface: interface.to_owned(),
            next_hop: None,
            role: Role::Primary,
            allowance: None,
        };
        let mut period = None;
        for part in parts {
            match part.split_once('=') {
                Some(("next-hop", address)) => {
                    uplink.next_hop = Some(
                        address
                            .parse()
                            .with_context(|| format!("{text:?}: bad next hop {address:?}"))?,
                    );
                }
                Some(("allowance", size)) => {
                    let bytes = parse_bytes(size).with_context(|| format!("{text:?}"))?;
                    uplink.allowance = Some(Allowance {
                        bytes,
                        period: Period::Month,
                    });
                }
                Some(("allowance-period", "month")) => period = Some(Period::Month),
                Some(("allowance-period", "day")) => period = Some(Period::Day),
                None if part == "backup" => uplink.role = Role::Backup,
                None if part == "metered" => uplink.role = Role::Metered,
                _ => bail!("{text:?}: unknown uplink option {part:?} ({FORM})"),
            }
        }
        match (&mut uplink.allowance, period) {
            (Some(allowance), Some(period)) => allowance.period = period,
            (None, Some(_)) => bail!("{text:?}: allowance-period without an allowance"),
            _ => {}
        }
        uplink.check().with_context(|| format!("{text:?}"))?;
        Ok(uplink)
    }
}

/// A size in bytes: a plain number, or one with a decimal (kB, MB, GB, TB) or binary
/// (KiB, MiB, GiB, TiB) unit; `2.5GB` and `500 MiB` are both fine.
pub fn parse_bytes(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => bail!("{text:?}: unknown unit {other:?} (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"),
    };
    let number: f64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a size such as 20GB"))?;
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let bytes = (number * scale as f64).round() as u64;
    Ok(bytes)
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
        assert!(plain.role == Role::Primary && plain.next_hop.is_none());
        let full: UplinkConfig = "lte0,next-hop=198.51.100.1,backup".parse().unwrap();
        assert_eq!(full.next_hop, Some("198.51.100.1".parse().unwrap()));
        assert_eq!(full.role, Role::Backup);
        let metered: UplinkConfig = "wwan0,metered,allowance=20GB,allowance-period=day"
            .parse()
            .unwrap();
        assert_eq!(metered.role, Role::Metered);
        assert_eq!(
            metered.allowance,
            Some(Allowance {
                bytes: 20_000_000_000,
                period: Period::Day
            })
        );
        for bad in [
            "",
            ",backup",
            "dsl0,next-hop=nonsense",
            "dsl0,fast",
            "dsl0,allowance=1GB",
            "wwan0,metered,allowance=lots",
            "wwan0,metered,allowance-period=day",
        ] {
            assert!(bad.parse::<UplinkConfig>().is_err(), "{bad}");
        }
    }

    #[test]
    fn uplink_entries_parse_with_the_older_backup_key() {
        let parse = |text: &str| toml::from_str::<UplinkConfig>(text);
        let backup = parse("interface = \"lte0\"\nbackup = true").unwrap();
        assert_eq!(backup.role, Role::Backup);
        let metered =
            parse("interface = \"wwan0\"\nrole = \"metered\"\nallowance = \"1.5 GiB\"").unwrap();
        assert_eq!(
            metered.allowance.map(|allowance| allowance.bytes),
            Some(1_610_612_736)
        );
        assert_eq!(metered.allowance.unwrap().period, Period::Month);
        for bad in [
            "interface = \"a\"\nrole = \"metered\"\nbackup = true",
            "interface = \"a\"\nallowance = \"1GB\"",
            "interface = \"a\"\nrole = \"cheap\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_in_decimal_and_binary_units() {
        assert_eq!(parse_bytes("1234").unwrap(), 1234);
        assert_eq!(parse_bytes("3MB").unwrap(), 3_000_000);
        assert_eq!(parse_bytes("2.5 GB").unwrap(), 2_500_000_000);
        assert_eq!(parse_bytes("1KiB").unwrap(), 1024);
        for bad in ["", "GB", "1 parsec", "-1GB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
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
