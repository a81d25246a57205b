//! Which uplink carries what the gateway does not convert (DNS, UDP, TCP it does not
//! intercept, its own traffic): the choice, made anew after every probe round, as a
//! multi-WAN router makes it (OpenWrt's mwan3 is the model).
//!
//! Uplinks are ranked by role: primaries first, then backups, then metered lines whose
//! allowance is left, then spent ones. The default route takes the best ranked in the
//! configured order; UDP (calls, games, VPNs) the best ranked with the shortest probe
//! round trip, so that a call does not take the satellite line because it is listed
//! first. A choice changes when its uplink stops working (at once), or when a better
//! ranked one has worked for [`HOLD_DOWN`] without a break: a flapping line never
//! bounces the household. A change of round trip alone changes nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::config::Role;

/// How long an uplink that came back must work without a break before traffic returns
/// to it.
pub const HOLD_DOWN: Duration = Duration::from_secs(10);

/// One uplink as the choice sees it after a probe round.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    /// Whether it carries traffic now (the probes say so, or nothing says otherwise).
    pub usable: bool,
    /// Its role.
    pub role: Role,
    /// A metered line whose allowance is spent: used only when nothing else works.
    pub spent: bool,
    /// The last probe's round trip.
    pub rtt_ms: Option<f64>,
}

impl Line {
    /// The order in which lines are preferred; lower first.
    fn rank(&self) -> u8 {
        match (self.role, self.spent) {
            (Role::Primary, _) => 0,
            (Role::Backup, _) => 1,
            (Role::Metered, false) => 2,
            (Role::Metered, true) => 3,
        }
    }
}

/// What is chosen for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Traffic {
    /// Everything but UDP: the configured order decides.
    Default,
    /// UDP (calls, games, VPNs): the shortest round trip decides.
    Udp,
}

impl Traffic {
    /// Both kinds.
    pub const ALL: [Self; 2] = [Self::Default, Self::Udp];

    /// As `mptcp-user uplinks` and the metrics say it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Udp => "udp",
        }
    }

    /// As the log says it.
    pub fn route(self) -> &'static str {
        match self {
            Self::Default => "default route",
            Self::Udp => "UDP route",
        }
    }
}

/// Why a choice changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The first choice.
    Start,
    /// The uplink it was on stopped working.
    Down,
    /// The metered uplink it was on has spent its allowance, and another line works.
    Spent,
    /// A better ranked uplink has worked for the hold-down.
    Back,
}

/// A change of choice: `traffic` moves from uplink `from` to uplink `to` (indexes into
/// the lines given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    /// What moves.
    pub traffic: Traffic,
    /// Where it was.
    pub from: Option<usize>,
    /// Where it goes.
    pub to: usize,
    /// Why.
    pub reason: Reason,
}

/// The choices, kept from one probe round to the next.
#[derive(Debug, Default)]
pub struct Choice {
    chosen: [Option<usize>; 2],
    /// Since when each uplink has worked without a break; `None` while it does not.
    working_since: Vec<Option<Instant>>,
}

impl Choice {
    /// The uplink that carries `traffic` now.
    pub fn chosen(&self, traffic: Traffic) -> Option<usize> {
        self.chosen[traffic as usize]
    }

    /// Takes a probe round's `lines` (always the same uplinks, in the configured order)
    /// and returns the choices that changed.
    pub fn update(&mut self, lines: &[Line], now: Instant) -> Vec<Switch> {
        let first = self.working_since.is_empty();
        self.working_since.resize(lines.len(), None);
        for (since, line) in self.working_since.iter_mut().zip(lines) {
            *since = match (line.usable, *since) {
                (false, _) => None,
                // At the start every working line is as good as proven.
                (true, None) if first => Some(now.checked_sub(HOLD_DOWN).unwrap_or(now)),
                (true, None) => Some(now),
                (true, kept) => kept,
            };
        }
        let mut switches = Vec::new();
        for traffic in Traffic::ALL {
            if let Some(switch) = self.choose(traffic, lines, now) {
                self.chosen[traffic as usize] = Some(switch.to);
                switches.push(switch);
            }
        }
        switches
    }

    /// The change of `traffic`'s choice this round, if any.
    fn choose(&self, traffic: Traffic, lines: &[Line], now: Instant) -> Option<Switch> {
        let proven = |index: usize| {
            self.working_since[index].is_some_and(|since| now.duration_since(since) >= HOLD_DOWN)
        };
        let current = self.chosen[traffic as usize].filter(|&index| index < lines.len());
        // The first of the best rank in the configured order; for UDP, one of that
        // rank with a clearly shorter round trip beats it (so that jitter between
        // like lines picks nothing at random).
        let best = |allowed: &dyn Fn(usize) -> bool| {
            let candidates = || (0..lines.len()).filter(|&index| allowed(index));
            let first = candidates().min_by_key(|&index| (lines[index].rank(), index))?;
            let fastest = candidates().min_by(|&a, &b| {
                let rtt = |index: usize| lines[index].rtt_ms.unwrap_or(f64::MAX);
                (lines[a].rank().cmp(&lines[b].rank()))
                    .then(rtt(a).total_cmp(&rtt(b)))
                    .then(a.cmp(&b))
            })?;
            Some(
                if preferred(traffic, (fastest, &lines[fastest]), (first, &lines[first])) {
                    fastest
                } else {
                    first
                },
            )
        };
        // A spent allowance is kept only while nothing else works.
        let keeps = |index: usize| {
            let line = &lines[index];
            line.usable && !(line.spent && lines.iter().any(|other| other.usable && !other.spent))
        };
        match current {
            Some(index) if keeps(index) => {
                // Only a better line that has proven itself takes over.
                let better = best(&|other| proven(other))?;
                preferred(traffic, (better, &lines[better]), (index, &lines[index])).then_some(
                    Switch {
                        traffic,
                        from: Some(index),
                        to: better,
                        reason: Reason::Back,
                    },
                )
            }
            _ => {
                // Another line: a proven one if there is one; else one that just came
                // back beats none.
                let usable = |other: usize| lines[other].usable && Some(other) != current;
                let to = best(&|other| usable(other) && proven(other)).or_else(|| best(&usable))?;
                (Some(to) != current).then_some(Switch {
                    traffic,
                    from: current,
                    to,
                    reason: match current {
                        None => Reason::Start,
                        Some(index) if lines[index].usable => Reason::Spent,
                        Some(_) => Reason::Down,
                    },
                })
            }
        }
    }
}

/// Whether line `a` should take `traffic` over from line `b` (each with its index in
/// the configured order): a better rank, or, at the same rank, an earlier place in the
/// order (the default route) or a clearly shorter round trip (UDP: by a quarter, and 10 ms at
/// least, so that jitter moves nothing).
fn preferred(traffic: Traffic, (a_index, a): (usize, &Line), (b_index, b): (usize, &Line)) -> bool {
    if a.rank() != b.rank() {
        return a.rank() < b.rank();
    }
    match traffic {
        Traffic::Default => a_index < b_index,
        Traffic::Udp => match (a.rtt_ms, b.rtt_ms) {
            (Some(a_rtt), Some(b_rtt)) => a_rtt + (b_rtt / 4.0).max(10.0) < b_rtt,
            (Some(_), None) => true,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(role: Role, rtt_ms: f64) -> Line {
        Line {
            usable: true,
            role,
            spent: false,
            rtt_ms: Some(rtt_ms),
        }
    }

    fn at(seconds: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_secs(seconds)
    }

    #[test]
    fn the_default_takes_the_first_primary_and_udp_the_fastest() {
        let mut choice = Choice::default();
        // A satellite line listed first, DSL second, a backup LTE line third.
        let lines = [
            line(Role::Primary, 600.0),
            line(Role::Primary, 20.0),
            line(Role::Backup, 5.0),
        ];
        let switches = choice.update(&lines, at(0));
        assert_eq!(choice.chosen(Traffic::Default), Some(0));
        assert_eq!(choice.chosen(Traffic::Udp), Some(1));
        assert!(switches.iter().all(|switch| switch.reason == Reason::Start));
        // Lines alike but for jitter: the order decides, not the jitter.
        let mut alike = Choice::default();
        alike.update(
            &[line(Role::Primary, 21.0), line(Role::Primary, 20.0)],
            at(0),
        );
        assert_eq!(alike.chosen(Traffic::Udp), Some(0));
        // Nothing changes while nothing changes, round trips included.
        let faster = [lines[0], line(Role::Primary, 700.0), lines[2]];
        assert!(choice.update(&faster, at(2)).is_empty());
    }

    #[test]
    fn a_dead_line_is_left_at_once_and_taken_back_after_the_hold_down() {
        let mut choice = Choice::default();
        let mut lines = [line(Role::Primary, 20.0), line(Role::Primary, 50.0)];
        choice.update(&lines, at(0));
        lines[0].usable = false;
        let switches = choice.update(&lines, at(2));
        assert_eq!(
            switches,
            [
                Switch {
                    traffic: Traffic::Default,
                    from: Some(0),
                    to: 1,
                    reason: Reason::Down
                },
                Switch {
                    traffic: Traffic::Udp,
                    from: Some(0),
                    to: 1,
                    reason: Reason::Down
                },
            ]
        );
        lines[0].usable = true;
        assert!(
            choice.update(&lines, at(4)).is_empty(),
            "back before the hold-down"
        );
        assert!(
            choice.update(&lines, at(12)).is_empty(),
            "back before the hold-down"
        );
        let back = choice.update(&lines, at(14));
        assert_eq!(back.len(), 2, "{back:?}");
        assert!(
            back.iter()
                .all(|switch| switch.to == 0 && switch.reason == Reason::Back)
        );
    }

    #[test]
    fn a_flapping_line_moves_traffic_once_and_never_back() {
        let mut choice = Choice::default();
        let mut lines = [line(Role::Primary, 20.0), line(Role::Primary, 50.0)];
        let mut default_switches = 0;
        // Probe rounds 2 s apart over 30 s see it up and down in turn.
        for round in 0..15 {
            lines[0].usable = round % 2 == 0;
            default_switches += choice
                .update(&lines, at(2 * round))
                .iter()
                .filter(|switch| {
                    switch.traffic == Traffic::Default && switch.reason != Reason::Start
                })
                .count();
        }
        assert_eq!(default_switches, 1);
        assert_eq!(choice.chosen(Traffic::Default), Some(1));
    }

    #[test]
    fn backups_and_metered_lines_wait_for_the_others() {
        let mut choice = Choice::default();
        let mut lines = [
            line(Role::Metered, 30.0),
            line(Role::Backup, 30.0),
            line(Role::Primary, 30.0),
        ];
        choice.update(&lines, at(0));
        assert_eq!(choice.chosen(Traffic::Default), Some(2));
        lines[2].usable = false;
        choice.update(&lines, at(2));
        assert_eq!(
            choice.chosen(Traffic::Default),
            Some(1),
            "the backup before the metered line"
        );
        lines[1].usable = false;
        choice.update(&lines, at(4));
        assert_eq!(
            choice.chosen(Traffic::Default),
            Some(0),
            "the metered line, nothing else works"
        );
        // A spent allowance is left as soon as another line has proven itself.
        lines[0].spent = true;
        lines[1].usable = true;
        choice.update(&lines, at(6));
        assert_eq!(
            choice.chosen(Traffic::Default),
            Some(1),
            "a line that came back beats a spent one"
        );
    }

    #[test]
    fn with_nothing_working_the_last_choice_stays() {
        let mut choice = Choice::default();
        let mut lines = [line(Role::Primary, 20.0)];
        choice.update(&lines, at(0));
        lines[0].usable = false;
        assert!(choice.update(&lines, at(2)).is_empty());
        assert_eq!(choice.chosen(Traffic::Default), Some(0));
    }
}
