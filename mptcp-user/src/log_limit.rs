//! Rate-limited log lines, for what a stranger can cause: a flood must not flood the
//! log too. Each [`LogLimit`] lets a few lines through per window and counts the rest;
//! the next line let through says how many were left out.

use std::{
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::lock;

/// A budget of log lines: at most `burst` in each `window`.
pub struct LogLimit {
    burst: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    started: Option<Instant>,
    logged: u32,
    left_out: u64,
}

/// How many lines were left out before this one; shown as a suffix when any were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeftOut(pub u64);

impl fmt::Display for LeftOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            count => write!(f, " ({count} more like it left out of the log)"),
        }
    }
}

impl LogLimit {
    /// A budget of `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new(Window {
                started: None,
                logged: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether a line may be logged now (with the count left out before it), or `None`
    /// when this window's lines are spent (the line is counted).
    pub fn admit(&self) -> Option<LeftOut> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<LeftOut> {
        let mut state = lock(&self.state);
        if state
            .started
            .is_none_or(|started| now.duration_since(started) >= self.window)
        {
            state.started = Some(now);
            state.logged = 0;
        }
        if state.logged >= self.burst {
            state.left_out += 1;
            return None;
        }
        state.logged += 1;
        Some(LeftOut(std::mem::take(&mut state.left_out)))
    }
}

/// Logs at `level` (`warn`, `info`, ...) through the [`LogLimit`] `limit`:
/// `limited!(STRANGERS, warn, "{peer}: refused")`.
#[macro_export]
macro_rules! limited {
    ($limit:expr, $level:ident, $($arg:tt)+) => {
        if let Some(left_out) = $limit.admit() {
            log::$level!("{}{left_out}", format_args!($($arg)+));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_the_count_of_what_was_left_out() {
        let limit = LogLimit::new(2, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(limit.admit_at(start), Some(LeftOut(0)));
        assert_eq!(limit.admit_at(start), Some(LeftOut(0)));
        for _ in 0..5 {
            assert_eq!(limit.admit_at(start + Duration::from_secs(1)), None);
        }
        let next = start + Duration::from_secs(10);
        assert_eq!(limit.admit_at(next), Some(LeftOut(5)));
        assert_eq!(limit.admit_at(next), Some(LeftOut(0)));
        assert_eq!(limit.admit_at(next), None);
        assert_eq!(
            LeftOut(5).to_string(),
            " (5 more like it left out of the log)"
        );
        assert_eq!(LeftOut(0).to_string(), "");
    }
}
