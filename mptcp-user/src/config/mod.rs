//! Options of the daemons, from flags and from a TOML config file, and the plain configs
//! they turn into. Every file key is also a flag of the same name; a flag given on the
//! command line wins over the file, and what neither says takes the default (shown in
//! `--help` and in the sample files under `config/`), all read from [`defaults`].
//!
//! A file holds a `[gateway]` table, a `[converter]` table, or both, each with its
//! `tuning` table; the gateway's uplinks are `[[gateway.uplink]]` entries. Unknown keys
//! are errors, which name the line.

//!
//! - [`gateway`], [`converter`], [`tuning`]: each role's options and its plain config.
//! - [`defaults`]: every option's default, in one place.
//! - [`reference`]: docs/configuration.md, generated from the options and the metrics.

/// Declares an options struct (flags and file keys) and its merge: each option given
/// as a flag wins over the file's ([`Merge`]), so no merge is written field by field.
macro_rules! options {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                pub $field:ident : $ty:ty,
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$field_meta])*
                pub $field: $ty,
            )*
        }

        impl $crate::config::Merge for $name {
            fn merge(self, file: Self) -> Self {
                Self {
                    $($field: $crate::config::Merge::merge(self.$field, file.$field),)*
                }
            }
        }
    };
}

pub mod converter;
pub mod defaults;
pub mod gateway;
pub mod reference;
pub mod tuning;

use std::{
    fmt::Display,
    fs,
    ops::RangeInclusive,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, de::Error as _};

pub use converter::ConverterOptions;
pub use gateway::GatewayOptions;
pub use tuning::TuningOptions;

use crate::net::addr::parse_prefix;

/// An option given as a flag, over the same option from the config file.
pub trait Merge {
    /// `self` where it was given, else `file`.
    #[must_use]
    fn merge(self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    fn merge(self, file: Self) -> Self {
        self.or(file)
    }
}

/// A repeated flag's values where given, else the file's list.
impl<T> Merge for Vec<T> {
    fn merge(self, file: Self) -> Self {
        if self.is_empty() { file } else { self }
    }
}

/// A switch: on when either says so.
impl Merge for bool {
    fn merge(self, file: Self) -> Self {
        self || file
    }
}

/// `flags` over the table `table` picks out of the file at `path`, if any (`role`
/// names the table in errors).
fn over_file<T: Merge>(
    flags: T,
    path: Option<&PathBuf>,
    role: &str,
    table: impl FnOnce(ConfigFile) -> Option<T>,
) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(flags);
    };
    let file = table(ConfigFile::load(path)?)
        .with_context(|| format!("{} has no [{role}] table", path.display()))?;
    Ok(flags.merge(file))
}

/// A config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[gateway]`.
    pub gateway: Option<GatewayOptions>,
    /// `[converter]`.
    pub converter: Option<ConverterOptions>,
}

impl ConfigFile {
    /// Reads and parses the file at `path`; errors name the line and the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("bad config file {}", path.display()))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }
}

/// `mptcp-user config check PATH`: every table of the file turns into a valid config,
/// and the interfaces it names exist here.
pub fn check(path: &Path) -> anyhow::Result<String> {
    let file = ConfigFile::load(path)?;
    let mut found = Vec::new();
    if let Some(gateway) = file.gateway {
        let config = gateway.into_config()?;
        config.check_interfaces()?;
        found.push(format!(
            "gateway ({} uplinks, {} LAN interfaces)",
            config.uplinks.len(),
            config.interception.lan.len()
        ));
    }
    if let Some(converter) = file.converter {
        converter.into_config()?;
        found.push("converter".to_owned());
    }
    if found.is_empty() {
        bail!(
            "{} has neither a [gateway] nor a [converter] table",
            path.display()
        );
    }
    Ok(format!("{}: valid {}", path.display(), found.join(" and ")))
}

/// One string, or a list of them.
fn one_or_more<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    Ok(match OneOrMore::deserialize(deserializer)? {
        OneOrMore::One(one) => vec![one],
        OneOrMore::More(more) => more,
    })
}

/// A list of prefixes, parsed as on the command line (host bits cleared).
fn prefixes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| parse_prefix(text).map_err(|error| D::Error::custom(format!("{error:#}"))))
        .collect()
}

/// Option `name`'s `value` (`default` when not given), if it lies within `range`: a
/// value out of range is an error that says the range, never a wrapped sum, a panic or
/// a timer that fires at once.
fn within<T: PartialOrd + Display + Copy>(
    name: &str,
    value: Option<T>,
    default: T,
    range: RangeInclusive<T>,
) -> anyhow::Result<T> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        bail!(
            "{name} = {value} is out of range: from {} to {}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// [`within`] for an option in seconds.
fn seconds(
    name: &str,
    value: Option<u64>,
    default: u64,
    range: RangeInclusive<u64>,
) -> anyhow::Result<Duration> {
    within(name, value, default, range).map(Duration::from_secs)
}

/// Seconds to connect (`connect-timeout`, `request-timeout`): at least one, at most
/// five minutes.
const CONNECT_SECONDS: RangeInclusive<u64> = 1..=300;

/// A list of values parsed from strings, as on the command line.
fn parsed_strings<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|text| text.parse().map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::gateway::upstream::UpstreamConfig;

    /// The error `text` gets, as one line.
    fn error_of(text: &str) -> String {
        let error = ConfigFile::parse(text)
            .and_then(|file| file.gateway.context("no gateway")?.into_config())
            .expect_err("must be refused");
        format!("{error:#}").replace('\n', " ")
    }

    #[test]
    fn the_sample_files_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        let gateway = ConfigFile::load(&root.join("gateway.toml")).unwrap();
        let config = gateway.gateway.unwrap().into_config().unwrap();
        assert_eq!(config.uplinks.len(), 2);
        let lte = &config.uplinks[1];
        assert_eq!(lte.role, crate::gateway::uplinks::Role::Metered);
        assert_eq!(
            lte.allowance.map(|allowance| allowance.bytes),
            Some(20_000_000_000)
        );
        let converter = ConfigFile::load(&root.join("converter.toml")).unwrap();
        converter.converter.unwrap().into_config().unwrap();
    }

    #[test]
    fn intercept_tables_that_would_touch_the_systems_are_refused() {
        for table in [0, 1, 243, 250, 256, 32_754, u32::MAX] {
            let error = error_of(&format!(
                "[gateway]\ndirect = true\nintercept-table = {table}\n"
            ));
            assert!(error.contains("intercept-table"), "{table}: {error}");
        }
        for table in [2, 242, 257, 15_124, 32_753] {
            let text = format!("[gateway]\ndirect = true\nintercept-table = {table}\n");
            let config = ConfigFile::parse(&text)
                .unwrap()
                .gateway
                .unwrap()
                .into_config();
            assert!(config.is_ok(), "{table}: {:?}", config.err());
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_not_wrapped() {
        let converter_error = |text: &str| {
            let error = ConfigFile::parse(&format!("[converter]\nkey-file = \"/k\"\n{text}\n"))
                .and_then(|file| file.converter.context("no converter")?.into_config())
                .expect_err("must be refused");
            format!("{error:#}")
        };
        for (text, name) in [
            // timestamp + window wrapped: nonces were forgotten at once.
            ("replay-window = 18446744073709551615", "replay-window"),
            ("replay-window = 0", "replay-window"),
            // The rate in bytes per second overflowed.
            ("speedtest-rate = 18446744073709551615", "speedtest-rate"),
            // Beyond the semaphore's permits: a panic at start.
            ("max-conns = 4611686018427387904", "max-conns"),
            ("max-conns = 0", "max-conns"),
            ("max-pending = 0", "max-pending"),
            ("request-timeout = 0", "request-timeout"),
            ("connect-timeout = 0", "connect-timeout"),
            ("idle-timeout = 0", "idle-timeout"),
            ("dead-path-timeout = 0", "dead-path-timeout"),
        ] {
            let error = converter_error(text);
            assert!(
                error.contains(name) && error.contains("out of range"),
                "{text}: {error}"
            );
        }
        // The balanced port announced: the kernel would not announce it.
        let error = converter_error("announce = \"198.51.100.21:5124\"");
        assert!(error.contains("a port other than listen's"), "{error}");
        for (text, name) in [
            ("connect-timeout = 0", "connect-timeout"),
            ("idle-timeout = 0", "idle-timeout"),
            ("idle-timeout = 18446744073709551615", "idle-timeout"),
        ] {
            let error = error_of(&format!("[gateway]\ndirect = true\n{text}\n"));
            assert!(error.contains(name), "{text}: {error}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_line_and_key() {
        let unknown = error_of("[gateway]\ndirect = true\nlan = [\"br0\"]\nspeed = 3\n");
        assert!(
            unknown.contains("line 4") && unknown.contains("speed"),
            "{unknown}"
        );
        let prefix = error_of("[gateway]\ndirect = true\n\nexclude = [\"10.0.0.0/40\"]\n");
        assert!(
            prefix.contains("line 4") && prefix.contains("10.0.0.0/40"),
            "{prefix}"
        );
        let uplink = error_of(
            "[gateway]\ndirect = true\n[[gateway.uplink]]\ninterface = \"dsl0\"\nmtu = 1400\n",
        );
        assert!(
            uplink.contains("line 5") && uplink.contains("mtu"),
            "{uplink}"
        );
        let twice = error_of(
            "[gateway]\ndirect = true\n[[gateway.uplink]]\ninterface = \"dsl0\"\n\
             [[gateway.uplink]]\ninterface = \"dsl0\"\n",
        );
        assert!(twice.contains("dsl0 is configured twice"), "{twice}");
        let no_key = error_of("[gateway]\nconverter = \"vps:5124\"\n");
        assert!(no_key.contains("key file"), "{no_key}");
    }

    #[test]
    fn converters_are_one_or_a_list_preferred_first() {
        for (text, expected) in [
            ("converter = \"a:1\"", vec!["a:1"]),
            ("converter = [\"a:1\", \"b:2\"]", vec!["a:1", "b:2"]),
        ] {
            let file =
                ConfigFile::parse(&format!("[gateway]\nkey-file = \"/k\"\n{text}\n")).unwrap();
            let config = file.gateway.unwrap().into_config().unwrap();
            let UpstreamConfig::Converter { addresses, .. } = config.upstream else {
                panic!("no converter");
            };
            assert_eq!(addresses, expected);
        }
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let file = ConfigFile::parse(
            "[gateway]\nconverter = \"vps:5124\"\nkey-file = \"/k\"\nlan = [\"br0\"]\n\
             idle-timeout = 60\n[gateway.tuning]\ncongestion = \"cubic\"\n",
        )
        .unwrap()
        .gateway
        .unwrap();
        let flags = GatewayOptions {
            idle_timeout: Some(5),
            lan: vec!["lan1".to_owned()],
            ..GatewayOptions::default()
        };
        let config = flags.merge(file).into_config().unwrap();
        assert_eq!(config.timeouts.idle, Duration::from_secs(5));
        assert_eq!(config.timeouts.dead_path, Duration::from_mins(1));
        assert_eq!(config.interception.lan, ["lan1"]);
        assert_eq!(config.tuning.congestion, "cubic");
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.interception.mark, defaults::INTERCEPT_MARK);
    }

    /// The `key = value` lines of `table` in a sample file, commented out or not.
    fn sample_keys(text: &str, table: &str) -> Vec<(String, String, bool)> {
        let mut current = String::new();
        let mut keys = Vec::new();
        for line in text.lines() {
            if let Some(name) = line
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
            {
                current = name.trim_matches(['[', ']']).to_owned();
                continue;
            }
            let (commented, line) = match line.strip_prefix("# ") {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            if current == table
                && let Some((key, value)) = line.split_once(" = ")
                && key.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            {
                keys.push((key.to_owned(), value.to_owned(), commented));
            }
        }
        keys
    }

    #[test]
    fn the_sample_files_show_every_default_as_the_defaults_table_says() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for (role, file) in [
            (defaults::Table::Gateway, "gateway"),
            (defaults::Table::Converter, "converter"),
        ] {
            let text = fs::read_to_string(root.join(format!("{file}.toml"))).unwrap();
            for shown in defaults::shown() {
                if !shown.is_for(role, shown.key) {
                    continue;
                }
                let table = if shown.table == defaults::Table::Tuning {
                    format!("{file}.tuning")
                } else {
                    file.to_owned()
                };
                let found = sample_keys(&text, &table)
                    .into_iter()
                    .find(|(key, _, _)| key == shown.key);
                let Some((_, value, commented)) = found else {
                    panic!("config/{file}.toml has no {} in [{table}]", shown.key);
                };
                assert!(
                    !commented || value == shown.toml,
                    "config/{file}.toml shows {} = {value}, the default is {}",
                    shown.key,
                    shown.toml
                );
            }
        }
    }

    /// The keys serde expects in `[table]`, from its error for an unknown one.
    fn file_keys(table: &str) -> Vec<String> {
        let error = ConfigFile::parse(&format!("[{table}]\nno-such-key = 1\n"))
            .expect_err("an unknown key");
        let text = format!("{error:#}");
        let list = text.split("expected one of").nth(1).unwrap_or_default();
        list.split(',')
            .map(|key| key.trim().trim_matches('`').trim().to_owned())
            .filter(|key| !key.is_empty())
            .collect()
    }

    #[test]
    fn every_flag_of_the_daemons_is_a_key_of_their_table() {
        use clap::CommandFactory as _;
        let command = crate::cli::Cli::command();
        for (role, table) in [("gateway", "gateway"), ("converter", "converter")] {
            let mut keys = file_keys(table);
            keys.sort();
            let mut flags: Vec<String> = command
                .find_subcommand(role)
                .unwrap()
                .get_arguments()
                .filter_map(|arg| arg.get_long().map(ToOwned::to_owned))
                .filter(|long| long != "config")
                .collect();
            let tuning = file_keys(&format!("{table}.tuning"));
            flags.retain(|flag| !tuning.contains(flag));
            flags.push("tuning".to_owned());
            flags.sort();
            assert_eq!(keys, flags, "[{table}]");
        }
    }
}
