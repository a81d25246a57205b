//! What the metered uplinks have carried in their allowance's period: counted from their
//! interfaces' byte counters (all traffic, ours and the household's, as the operator
//! bills it), and kept in a state file so that a restart does not start the count again.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use log::{info, warn};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::{Period, Role, UplinkConfig};
use crate::sys;

/// How often the count is written down: what a crash may lose, against writes to the
/// router's flash.
const SAVE_EVERY: Duration = Duration::from_mins(1);

/// The state file's name in the state directory.
const FILE: &str = "usage.json";

/// One metered uplink's count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Count {
    /// The period counted, `2026-12` or `2026-12-03`.
    period: String,
    /// Bytes received and sent in it.
    bytes: u64,
}

/// The metered uplinks' counts.
pub(super) struct Usage {
    file: PathBuf,
    counts: BTreeMap<String, Count>,
    /// Each interface's counter at the last reading.
    last_counter: BTreeMap<String, u64>,
    saved: Instant,
    changed: bool,
}

impl Usage {
    /// The counts of the metered `uplinks`, as `state_dir` kept them.
    pub(super) fn load(state_dir: &Path, uplinks: &[UplinkConfig]) -> Self {
        let file = state_dir.join(FILE);
        let mut counts: BTreeMap<String, Count> = match std::fs::read_to_string(&file) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
                warn!(
                    "{}: {error}; the metered uplinks' usage starts again from 0",
                    file.display()
                );
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        counts.retain(|interface, _| {
            uplinks
                .iter()
                .any(|uplink| &uplink.interface == interface && uplink.role == Role::Metered)
        });
        Self {
            file,
            counts,
            last_counter: BTreeMap::new(),
            saved: Instant::now(),
            changed: false,
        }
    }

    /// Counts what `interface`'s counter (received + sent bytes) moved since the last
    /// reading, in the period `now` falls in.
    pub(super) fn add(&mut self, interface: &str, counter: u64, period: Period, now: SystemTime) {
        let moved = match self.last_counter.insert(interface.to_owned(), counter) {
            // The first reading: what came before is not ours to count (the state file
            // has it).
            None => 0,
            // A new interface (a modem that reconnected) counts from zero.
            Some(last) if counter < last => counter,
            Some(last) => counter - last,
        };
        let period = period_of(period, now);
        let count = self.counts.entry(interface.to_owned()).or_default();
        if count.period != period {
            if !count.period.is_empty() {
                info!("uplink {interface}: a new allowance period ({period}) starts");
            }
            *count = Count { period, bytes: 0 };
            self.changed = true;
        }
        count.bytes += moved;
        self.changed |= moved > 0;
    }

    /// The bytes `interface` carried in its current period.
    pub(super) fn bytes(&self, interface: &str) -> Option<u64> {
        self.counts.get(interface).map(|count| count.bytes)
    }

    /// Writes the counts down when [`SAVE_EVERY`] has passed since the last time (or
    /// `now_anyway`, at exit).
    pub(super) fn save(&mut self, now_anyway: bool) {
        if !self.changed || !(now_anyway || self.saved.elapsed() >= SAVE_EVERY) {
            return;
        }
        self.saved = Instant::now();
        let written = self
            .file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| sys::write_json_replacing(&self.file, &self.counts));
        match written {
            Ok(()) => self.changed = false,
            Err(error) => warn!(
                "cannot keep the metered uplinks' usage in {}: {error}",
                self.file.display()
            ),
        }
    }
}

/// The name of the period `now` falls in: `2026-12` (month) or `2026-12-03` (day), UTC.
fn period_of(period: Period, now: SystemTime) -> String {
    let days = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() / 86_400);
    let (year, month, day) = civil_date(days);
    match period {
        Period::Month => format!("{year:04}-{month:02}"),
        Period::Day => format!("{year:04}-{month:02}-{day:02}"),
    }
}

/// The calendar date of the day `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn periods_are_calendar_months_and_days() {
        assert_eq!(period_of(Period::Day, at(0)), "1970-01-01");
        // 2024-02-29 12:00 UTC, a leap day.
        assert_eq!(period_of(Period::Day, at(1_709_208_000)), "2024-02-29");
        assert_eq!(period_of(Period::Month, at(1_709_208_000)), "2024-02");
        // 2026-12-31 23:59:59 and a second later.
        assert_eq!(period_of(Period::Day, at(1_798_761_599)), "2026-12-31");
        assert_eq!(period_of(Period::Month, at(1_798_761_600)), "2027-01");
    }

    #[test]
    fn usage_counts_counter_moves_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("mptcp-usage-{}", std::process::id()));
        let uplinks: Vec<UplinkConfig> = vec![
            "dsl0".parse().unwrap(),
            "lte0,metered,allowance=1GB".parse().unwrap(),
        ];
        let day = at(1_709_208_000);
        let mut usage = Usage::load(&dir, &uplinks);
        usage.add("lte0", 5_000, Period::Month, day);
        assert_eq!(usage.bytes("lte0"), Some(0), "counted before we looked");
        usage.add("lte0", 7_000, Period::Month, day);
        // The interface came back with its counter from zero.
        usage.add("lte0", 500, Period::Month, day);
        assert_eq!(usage.bytes("lte0"), Some(2_500));
        usage.save(true);
        let mut again = Usage::load(&dir, &uplinks);
        assert_eq!(again.bytes("lte0"), Some(2_500), "kept across a restart");
        again.add("lte0", 900, Period::Month, day);
        again.add("lte0", 1_000, Period::Month, day);
        assert_eq!(again.bytes("lte0"), Some(2_600));
        // A month later the count starts again.
        again.add(
            "lte0",
            1_100,
            Period::Month,
            at(1_709_208_000 + 31 * 86_400),
        );
        assert_eq!(again.bytes("lte0"), Some(100));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
