//! One uplink's shape: a zero-delay veth pair shaped by HTB, or a line of the wire
//! emulator with a rate, a delay and loss.

use std::time::Duration;

use crate::emulator::Shape;

/// One uplink's shape, the same in both directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Uplink {
    /// Rate in Mbit/s.
    pub rate_mbit: u32,
    /// One-way delay in ms; zero with HTB.
    pub delay_ms: u32,
    /// Random loss in percent, each direction.
    pub loss_percent: f64,
    /// Whether the wire emulator carries it (else a veth pair shaped by HTB).
    pub emulated: bool,
}

impl Uplink {
    /// A zero-delay veth pair shaped by HTB (0: not shaped).
    pub const fn htb(rate_mbit: u32) -> Self {
        Self {
            rate_mbit,
            delay_ms: 0,
            loss_percent: 0.0,
            emulated: false,
        }
    }

    /// A veth pair with no shaping at all: as fast as the machine moves bytes.
    pub const fn unshaped() -> Self {
        Self::htb(0)
    }

    /// A line of the wire emulator with this rate and one-way delay.
    pub const fn line(rate_mbit: u32, delay_ms: u32) -> Self {
        Self {
            rate_mbit,
            delay_ms,
            loss_percent: 0.0,
            emulated: true,
        }
    }

    /// The same line, losing `loss_percent` of its frames each way.
    #[must_use]
    pub const fn with_loss(self, loss_percent: f64) -> Self {
        Self {
            loss_percent,
            ..self
        }
    }

    /// The emulator's shape for this line. Its queue holds one round trip (a modem
    /// buffer sized to the bandwidth-delay product), at least 50 ms.
    pub fn shape(&self) -> Shape {
        let delay = Duration::from_millis(self.delay_ms.into());
        Shape {
            rate_mbit: self.rate_mbit.into(),
            delay,
            jitter: Duration::ZERO,
            loss_percent: self.loss_percent,
            queue: (2 * delay).max(Duration::from_millis(50)),
        }
    }
}

impl std::fmt::Display for Uplink {
    /// `20 Mbit/s 15 ms 1% loss`, or `20 Mbit/s HTB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.rate_mbit == 0 {
            return write!(f, "unshaped veth");
        }
        write!(f, "{} Mbit/s", self.rate_mbit)?;
        if !self.emulated {
            return write!(f, " HTB");
        }
        write!(f, " {} ms", self.delay_ms)?;
        if self.loss_percent > 0.0 {
            write!(f, " {}% loss", self.loss_percent)?;
        }
        Ok(())
    }
}
