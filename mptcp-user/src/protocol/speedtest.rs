//! The speed test a gateway runs against its converter (`mptcp-user speedtest`): what
//! the two sides say to each other after a Convert request names [`DESTINATION`].
//!
//! The request carries a cookie like any other, and the converter answers it with the
//! usual Extended TCP Header TLV; then the gateway sends one command line:
//! - `down SECS\n`: the converter sends zeros for SECS seconds, then closes;
//! - `up SECS\n`: the gateway sends for SECS seconds, then closes its side; the
//!   converter answers with a [`Received`] line and closes.
//!
//! SECS is at most [`MAX_SECONDS`], and the converter caps the rate and runs one test
//! at a time, so the test cannot be turned into a flood.

use std::{
    fmt,
    net::{Ipv6Addr, SocketAddr},
    str::FromStr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The destination that asks for a speed test: port 0 of the unspecified address,
/// which no real destination can be.
pub const DESTINATION: SocketAddr = SocketAddr::new(std::net::IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
/// The longest test, each direction.
pub const MAX_SECONDS: u64 = 20;
/// The longest command line, newline included.
pub const MAX_COMMAND_LEN: usize = 16;

/// Whether a request for `destination` asks for a speed test.
pub fn asked(destination: SocketAddr) -> bool {
    destination.ip().is_unspecified() && destination.port() == 0
}

/// What the gateway asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The converter sends for this long.
    Down(Duration),
    /// The gateway sends for this long.
    Up(Duration),
}

impl Command {
    /// How long the test runs.
    pub fn duration(self) -> Duration {
        match self {
            Self::Down(duration) | Self::Up(duration) => duration,
        }
    }
}

impl fmt::Display for Command {
    /// The command line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Down(duration) => write!(f, "down {}", duration.as_secs()),
            Self::Up(duration) => write!(f, "up {}", duration.as_secs()),
        }
    }
}

impl FromStr for Command {
    type Err = anyhow::Error;

    /// `down SECS` or `up SECS`, SECS from 1 to [`MAX_SECONDS`].
    fn from_str(line: &str) -> anyhow::Result<Self> {
        let (direction, seconds) = line
            .trim_end()
            .split_once(' ')
            .with_context(|| format!("{line:?} is not `down SECS` or `up SECS`"))?;
        let seconds: u64 = seconds
            .parse()
            .with_context(|| format!("{seconds:?} is not a number of seconds"))?;
        if !(1..=MAX_SECONDS).contains(&seconds) {
            bail!("{seconds} s is not within 1 to {MAX_SECONDS} s");
        }
        let duration = Duration::from_secs(seconds);
        match direction {
            "down" => Ok(Self::Down(duration)),
            "up" => Ok(Self::Up(duration)),
            other => bail!("{other:?} is not down or up"),
        }
    }
}

/// What the converter received in an upload test after the warm-up (see [`Meter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// Bytes received.
    pub bytes: u64,
    /// From the end of the warm-up to the last byte.
    pub duration: Duration,
}

impl fmt::Display for Received {
    /// `received BYTES MICROS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "received {} {}", self.bytes, self.duration.as_micros())
    }
}

impl FromStr for Received {
    type Err = anyhow::Error;

    fn from_str(line: &str) -> anyhow::Result<Self> {
        let mut words = line.split_whitespace();
        let (Some("received"), Some(bytes), Some(micros), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            bail!("{line:?} is not `received BYTES MICROS`");
        };
        Ok(Self {
            bytes: bytes.parse().context("bad byte count")?,
            duration: Duration::from_micros(micros.parse().context("bad duration")?),
        })
    }
}

/// Measures what a receiving side gets, leaving out the first second (or quarter of a
/// short test): slow start on every path, which a line's capacity is not.
#[derive(Debug)]
pub struct Meter {
    warm_up: Duration,
    /// When the first bytes came.
    first: Option<Instant>,
    /// When the warm-up ended, and the bytes counted by then.
    warm: Option<(Instant, u64)>,
    /// When the last bytes came.
    last: Option<Instant>,
    bytes: u64,
}

impl Meter {
    /// A meter for a test of `duration`.
    pub fn new(duration: Duration) -> Self {
        Self {
            warm_up: (duration / 4).min(Duration::from_secs(1)),
            first: None,
            warm: None,
            last: None,
            bytes: 0,
        }
    }

    /// Counts `bytes` received now.
    pub fn record(&mut self, bytes: u64) {
        let now = Instant::now();
        let first = *self.first.get_or_insert(now);
        self.bytes += bytes;
        // These bytes came during the warm-up: the measured span starts after them.
        if self.warm.is_none() && now - first >= self.warm_up {
            self.warm = Some((now, self.bytes));
        }
        self.last = Some(now);
    }

    /// What was received after the warm-up (or all of it, if the test was that short).
    pub fn received(&self) -> Received {
        match (self.first, self.warm, self.last) {
            (_, Some((warm, before)), Some(last)) if last > warm => Received {
                bytes: self.bytes - before,
                duration: last - warm,
            },
            (Some(first), _, Some(last)) => Received {
                bytes: self.bytes,
                duration: last - first,
            },
            _ => Received {
                bytes: 0,
                duration: Duration::ZERO,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_read_back_as_written_and_stay_within_bounds() {
        for command in [
            Command::Down(Duration::from_secs(5)),
            Command::Up(Duration::from_secs(MAX_SECONDS)),
        ] {
            assert_eq!(command.to_string().parse::<Command>().unwrap(), command);
        }
        for bad in ["down 0", "up 21", "down", "sideways 3", "down -1", "up 3 4"] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?} was accepted");
        }
        assert!(format!("{}\n", Command::Up(Duration::from_secs(20))).len() <= MAX_COMMAND_LEN);
    }

    #[test]
    fn received_lines_read_back_as_written() {
        let received = Received {
            bytes: 123_456_789,
            duration: Duration::from_micros(5_000_123),
        };
        assert_eq!(received.to_string().parse::<Received>().unwrap(), received);
        assert!("received 1".parse::<Received>().is_err());
        assert!("got 1 2".parse::<Received>().is_err());
    }

    #[test]
    fn the_meter_leaves_the_warm_up_out() {
        let mut meter = Meter::new(Duration::from_millis(80));
        meter.record(1000);
        std::thread::sleep(Duration::from_millis(30));
        meter.record(10);
        std::thread::sleep(Duration::from_millis(30));
        meter.record(20);
        let received = meter.received();
        assert_eq!(
            received.bytes, 20,
            "the bytes before the warm-up ended are out"
        );
        assert!(received.duration >= Duration::from_millis(25));
        assert_eq!(Meter::new(Duration::from_secs(1)).received().bytes, 0);
    }

    #[test]
    fn only_port_zero_of_the_unspecified_address_asks_for_a_test() {
        assert!(asked(DESTINATION));
        assert!(asked("0.0.0.0:0".parse().unwrap()));
        assert!(!asked("[::]:80".parse().unwrap()));
        assert!(!asked("192.0.2.1:0".parse().unwrap()));
    }
}
