//! docs/configuration.md: every command, option and metric, generated from the clap
//! definitions, the [`defaults`] and the metrics registries, so that it cannot drift
//! from the code (`mptcp-user config reference` prints it, `cargo xtask docs` writes it,
//! and a test fails when the file is stale).

use std::{fmt::Write as _, time::Duration};

use clap::{Args as _, Command};

use super::{
    TuningOptions,
    defaults::{self, Table},
};
use crate::{
    gateway::{
        flows::{Carried, Intercepted},
        uplinks::{Health, Traffic},
    },
    metrics::{ConverterMetrics, ErrorCounts, GatewayMetrics, UplinkSample},
    protocol::codec::ErrorCode,
};

/// The whole reference, for `command` (the binary's, without defaults in its help).
pub fn markdown(command: &Command) -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code by `cargo xtask docs` (`mptcp-user config reference`); \
         do not edit by hand.\n\n\
         Both daemons read options from flags and from a TOML file (`--config PATH`): \
         every key of the `[gateway]` or `[converter]` table is the flag of the same name, \
         tuning keys sit in the role's `tuning` table, and a flag given on the command line \
         wins over the file. Commented samples with every key: `config/gateway.toml`, \
         `config/converter.toml`; `mptcp-user config check PATH` checks a file and names \
         the line at fault.\n",
    );
    // Built, clap fills in what the derive left implicit (how many values each takes).
    let mut command = command.clone();
    command.build();
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        section(&mut out, &format!("mptcp-user {}", sub.get_name()), sub);
    }
    metrics_section(&mut out, "Gateway metrics", &gateway_metrics());
    metrics_section(&mut out, "Converter metrics", &converter_metrics());
    out
}

/// The gateway's metrics with one sample in each labelled family (an empty family
/// leaves no line in the text).
fn gateway_metrics() -> String {
    let metrics = GatewayMetrics::new(ErrorCounts::default());
    drop(metrics.flow_started(Intercepted::Lan, Carried::Converter));
    metrics.converter_errors.count(ErrorCode::NotAuthorized);
    let uplink = UplinkSample {
        interface: "dsl0".to_owned(),
        state: Health::Up,
        rtt: Some(Duration::from_millis(15)),
        subflows: 1,
        interface_bytes: Some((1, 1)),
        carries: vec![Traffic::Default],
        usage: (Some(1), Some(1)),
    };
    metrics.sample(0, &[uplink]);
    metrics.text()
}

/// The converter's metrics with one sample in each labelled family.
fn converter_metrics() -> String {
    let metrics = ConverterMetrics::default();
    metrics.errors.count(ErrorCode::NotAuthorized);
    drop(metrics.relay_started("smith"));
    metrics.refused_over_limit("smith");
    metrics.text()
}

/// A command's section, then its subcommands'.
fn section(out: &mut String, name: &str, command: &Command) {
    let role = match command.get_name() {
        "gateway" => Some(Table::Gateway),
        "converter" => Some(Table::Converter),
        _ => None,
    };
    let _ = write!(out, "\n## `{name}`\n\n");
    if let Some(about) = command.get_long_about().or(command.get_about()) {
        let _ = writeln!(out, "{}\n", one_line(&about.to_string()));
    }
    let aliases: Vec<&str> = command
        .get_visible_aliases()
        .chain(command.get_aliases())
        .collect();
    if !aliases.is_empty() {
        let _ = writeln!(out, "Also: `{}`.\n", aliases.join("`, `"));
    }
    let arguments: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && !matches!(arg.get_id().as_str(), "help" | "version"))
        .collect();
    if !arguments.is_empty() {
        if role.is_some() {
            out.push_str("| option | file key | default | what it does |\n|---|---|---|---|\n");
        } else {
            out.push_str("| option | default | what it does |\n|---|---|---|\n");
        }
        let tuning = tuning_keys();
        for arg in arguments {
            row(out, arg, role, &tuning);
        }
    }
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        section(out, &format!("{name} {}", sub.get_name()), sub);
    }
}

/// One option's row.
fn row(out: &mut String, arg: &clap::Arg, role: Option<Table>, tuning: &[String]) {
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    let takes_value = arg.get_num_args().is_some_and(|range| range.takes_values());
    let option = match arg.get_long() {
        Some(long) if takes_value => format!("`--{long} {value}`"),
        Some(long) => format!("`--{long}`"),
        None => format!("`{}`", arg.get_id().as_str().to_uppercase()),
    };
    let shown_default = match (role, arg.get_long()) {
        (Some(role), Some(long)) => defaults::find(role, long).map(|shown| shown.text().to_owned()),
        _ => None,
    };
    let default = shown_default
        .or_else(|| {
            let values: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            (!values.is_empty()).then(|| values.join(", "))
        })
        .map_or_else(String::new, |default| format!("`{default}`"));
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|help| one_line(&help.to_string()))
        .unwrap_or_default();
    match (role, arg.get_long()) {
        (Some(role), Some(long)) => {
            let table = if role == Table::Gateway {
                "gateway"
            } else {
                "converter"
            };
            let key = match long {
                "config" => String::new(),
                key @ ("uplink" | "forward") => format!("`[[{table}.{key}]]`"),
                key if tuning.iter().any(|tuned| tuned == key) => {
                    format!("`{key}` in `[{table}.tuning]`")
                }
                key => format!("`{key}`"),
            };
            let _ = writeln!(out, "| {option} | {key} | {default} | {help} |");
        }
        _ => {
            let _ = writeln!(out, "| {option} | {default} | {help} |");
        }
    }
}

/// The metrics of one registry, from its text: name, type, labels and help.
fn metrics_section(out: &mut String, title: &str, text: &str) {
    let _ = write!(
        out,
        "\n## {title}\n\nServed at `http://ADDR:PORT/metrics` with `--metrics ADDR:PORT`.\n\n\
         | metric | type | labels | what it counts |\n|---|---|---|---|\n"
    );
    let mut help = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest
                .split_once(' ')
                .map(|(name, help)| (name.to_owned(), help.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
            && let Some((_, description)) = help.take().filter(|(helped, _)| helped == name)
        {
            // A counter's samples carry the suffix, unless its name has it already.
            let shown = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            let labels = labels(text, &shown);
            let _ = writeln!(
                out,
                "| `{shown}` | {kind} | {labels} | {} |",
                one_line(&description)
            );
        }
    }
}
/// The label names of metric `name`'s first sample in `text`, e.g. `uplink, state`.
fn labels(text: &str, name: &str) -> String {
    let prefix = format!("{name}{{");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix)?.split_once('}'))
        .map(|(labels, _)| {
            labels
                .split(',')
                .filter_map(|label| label.split_once('=').map(|(key, _)| format!("`{key}`")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The long names of the tuning options (the keys of a role's `tuning` table).
fn tuning_keys() -> Vec<String> {
    TuningOptions::augment_args(Command::new("tuning"))
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(ToOwned::to_owned))
        .collect()
}

/// `text` on one line, safe in a Markdown table cell.
fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory as _;

    use super::*;
    use crate::cli::Cli;

    #[test]
    fn docs_configuration_md_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let generated = markdown(&Cli::command());
        let written = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            written == generated,
            "{} is stale: run `cargo xtask docs` and commit it",
            path.display()
        );
    }

    #[test]
    fn every_option_of_the_daemons_is_in_the_reference_with_its_default() {
        let text = markdown(&Cli::command());
        for needle in [
            "| `--pool-size N` | `pool-size` | `32` |",
            "| `--congestion NAME` | `congestion` in `[gateway.tuning]` | `bbr` |",
            "| `--listen ADDR:PORT` | `listen` | `[::]:5124` |",
            "| `--uplink UPLINK` | `[[gateway.uplink]]` |",
            "| `mptcp_gateway_flows_total` | counter |",
            "| `mptcp_converter_relays_total` | counter |",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
    }
}
