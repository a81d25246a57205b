//! The converter's side of `mptcp-user speedtest` (the exchange is in
//! [`crate::protocol::speedtest`]): a source and a sink for authenticated gateways,
//! one test at a time, each at most [`MAX_SECONDS`](crate::protocol::speedtest::MAX_SECONDS)
//! and paced to a rate cap, ended at its deadline even when the gateway vanished, and
//! all of them within a budget of test time ([`BUDGET`] per [`BUDGET_WINDOW`]), so
//! that back-to-back tests cannot hold the converter's line.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

pub use crate::protocol::speedtest::asked;
use crate::protocol::speedtest::{Command, MAX_COMMAND_LEN, Meter, Received};

/// How long a gateway has to send its command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes moved per write or read.
const CHUNK: usize = 64 * 1024;
/// How long a test may run past its duration (queued bytes, the closing exchange)
/// before it is ended: a gateway that vanished mid-test leaves an MPTCP connection
/// the kernel may never end.
const GRACE: Duration = Duration::from_secs(5);
/// Seconds of tests served per [`BUDGET_WINDOW`]: `mptcp-user speedtest` on three
/// uplinks takes 80.
pub const BUDGET: Duration = Duration::from_mins(2);
/// The window in which [`BUDGET`] refills.
pub const BUDGET_WINDOW: Duration = Duration::from_mins(10);

/// The speed tests this converter serves.
pub struct SpeedTests {
    /// One test at a time: two would measure each other.
    running: Arc<Semaphore>,
    /// The cap on a test's rate, in bytes per second; 0: tests are off.
    max_bytes_per_s: u64,
    /// The test time left.
    budget: Arc<Mutex<Budget>>,
}

/// Test time left: a bucket of [`BUDGET`], refilled evenly over [`BUDGET_WINDOW`].
struct Budget {
    left: Duration,
    at: Instant,
}

impl Budget {
    /// The time left at `now`.
    fn refill(&mut self, now: Instant) -> Duration {
        let refilled = now
            .duration_since(self.at)
            .mul_f64(BUDGET.div_duration_f64(BUDGET_WINDOW));
        self.left = (self.left + refilled).min(BUDGET);
        self.at = now;
        self.left
    }
}

/// Why a test was not started.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// Another test runs.
    Running,
    /// The test time of the last [`BUDGET_WINDOW`] is spent.
    Spent,
}

/// A running test's right to the line; its time is charged to the budget when it ends.
pub struct SpeedTest {
    _running: OwnedSemaphorePermit,
    max_bytes_per_s: u64,
    budget: Arc<Mutex<Budget>>,
    started: Instant,
}

impl Drop for SpeedTest {
    fn drop(&mut self) {
        let mut budget = crate::lock(&self.budget);
        let now = Instant::now();
        budget.refill(now);
        budget.left = budget.left.saturating_sub(now.duration_since(self.started));
    }
}

impl SpeedTests {
    /// Tests capped at `max_mbit` Mbit/s; 0 turns them off.
    pub fn new(max_mbit: u64) -> Self {
        Self {
            running: Arc::new(Semaphore::new(1)),
            max_bytes_per_s: max_mbit.saturating_mul(1_000_000) / 8,
            budget: Arc::new(Mutex::new(Budget {
                left: BUDGET,
                at: Instant::now(),
            })),
        }
    }

    /// Whether tests are served at all.
    pub fn enabled(&self) -> bool {
        self.max_bytes_per_s > 0
    }

    /// The right to run a test, unless one runs already or the budget is spent (less
    /// than a second left).
    pub fn try_start(&self) -> Result<SpeedTest, Busy> {
        let permit = Arc::clone(&self.running)
            .try_acquire_owned()
            .map_err(|_| Busy::Running)?;
        let now = Instant::now();
        if crate::lock(&self.budget).refill(now) < Duration::from_secs(1) {
            return Err(Busy::Spent);
        }
        Ok(SpeedTest {
            _running: permit,
            max_bytes_per_s: self.max_bytes_per_s,
            budget: Arc::clone(&self.budget),
            started: now,
        })
    }
}

impl SpeedTest {
    /// Reads the gateway's command (after `early`, bytes that came with the request)
    /// and runs it; says what was done, for the log.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        gateway: &mut S,
        early: &[u8],
    ) -> anyhow::Result<String> {
        let (command, after) = tokio::time::timeout(COMMAND_TIMEOUT, read_command(gateway, early))
            .await
            .context("no speed test command in time")??;
        let duration = match command {
            Command::Down(duration) | Command::Up(duration) => duration,
        };
        tokio::time::timeout(
            duration + COMMAND_TIMEOUT + GRACE,
            self.run(gateway, command, after),
        )
        .await
        .context("the gateway stopped taking part: ended at the deadline")?
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        gateway: &mut S,
        command: Command,
        after: usize,
    ) -> anyhow::Result<String> {
        match command {
            Command::Down(duration) => {
                let sent = self.send(gateway, duration).await?;
                Ok(format!("speed test: sent {sent} bytes in {duration:?}"))
            }
            Command::Up(duration) => {
                let received = self.receive(gateway, after, duration).await?;
                gateway
                    .write_all(format!("{received}\n").as_bytes())
                    .await?;
                gateway.shutdown().await?;
                Ok(format!(
                    "speed test: received {} bytes in {:?}",
                    received.bytes, received.duration
                ))
            }
        }
    }

    /// Sends zeros for `duration`, paced to the cap, then closes the sending side.
    async fn send<W: AsyncWrite + Unpin>(
        &self,
        gateway: &mut W,
        duration: Duration,
    ) -> anyhow::Result<u64> {
        let zeros = vec![0u8; CHUNK];
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < duration {
            gateway.write_all(&zeros).await?;
            sent += CHUNK as u64;
            self.pace(started, sent).await;
        }
        gateway.shutdown().await?;
        Ok(sent)
    }

    /// Counts what arrives until the gateway closes its side, reading no faster than
    /// the cap, for at most `duration` and a few seconds of queued bytes.
    async fn receive<R: AsyncRead + Unpin>(
        &self,
        gateway: &mut R,
        already: usize,
        duration: Duration,
    ) -> anyhow::Result<Received> {
        let started = Instant::now();
        let deadline = started + duration + COMMAND_TIMEOUT;
        let mut buffer = vec![0u8; CHUNK];
        let mut meter = Meter::new(duration);
        let mut total = already as u64;
        if total > 0 {
            meter.record(total);
        }
        loop {
            let read = tokio::time::timeout_at(deadline, gateway.read(&mut buffer))
                .await
                .context("the upload went on past its time")??;
            if read == 0 {
                return Ok(meter.received());
            }
            meter.record(read as u64);
            total += read as u64;
            self.pace(started, total).await;
        }
    }

    /// Sleeps until `moved` bytes since `started` are within the rate cap.
    async fn pace(&self, started: Instant, moved: u64) {
        let nanos = u128::from(moved) * 1_000_000_000 / u128::from(self.max_bytes_per_s);
        let due = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        tokio::time::sleep_until(started + due).await;
    }
}

/// Reads the command line: from `early`, then from `gateway`. Returns it with how many
/// bytes after its newline were read already (upload bytes).
async fn read_command<R: AsyncRead + Unpin>(
    gateway: &mut R,
    early: &[u8],
) -> anyhow::Result<(Command, usize)> {
    let mut line = early.to_vec();
    let mut byte = [0u8; 1];
    loop {
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            let command = std::str::from_utf8(&line[..end])
                .context("the speed test command is not text")?
                .parse()?;
            return Ok((command, line.len() - end - 1));
        }
        if line.len() >= MAX_COMMAND_LEN {
            bail!("no speed test command in the first {MAX_COMMAND_LEN} bytes");
        }
        // Byte by byte: what follows the line is the upload, counted by `receive`.
        if gateway.read(&mut byte).await? == 0 {
            bail!("closed before its speed test command");
        }
        line.push(byte[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_download_is_paced_to_the_cap_and_an_upload_counted() {
        // 8 Mbit/s: 1 MB/s, so one second sends about 1 MB.
        let tests = SpeedTests::new(8);
        let (mut converter, mut gateway) = tokio::io::duplex(1 << 20);
        let test = tests.try_start().unwrap();
        assert!(
            matches!(tests.try_start(), Err(Busy::Running)),
            "two tests at once"
        );
        let serving = tokio::spawn(async move { test.serve(&mut converter, b"down 1\n").await });
        let mut received = Vec::new();
        gateway.read_to_end(&mut received).await.unwrap();
        serving.await.unwrap().unwrap();
        assert!(
            (900_000..1_200_000).contains(&received.len()),
            "{} bytes in a second at 1 MB/s",
            received.len()
        );
        assert!(tests.try_start().is_ok(), "the test's permit was kept");

        let test = tests.try_start().unwrap();
        let (mut converter, mut gateway) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(async move { test.serve(&mut converter, b"up 1\nabc").await });
        gateway.write_all(&[7u8; 5000]).await.unwrap();
        gateway.shutdown().await.unwrap();
        let mut answer = String::new();
        gateway.read_to_string(&mut answer).await.unwrap();
        serving.await.unwrap().unwrap();
        // All of it came at once: no warm-up to leave out.
        assert_eq!(answer.trim().parse::<Received>().unwrap().bytes, 5003);
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_that_stops_reading_is_ended_at_the_deadline() {
        let tests = SpeedTests::new(8);
        // Nobody reads the gateway's side: the second write blocks forever.
        let (mut converter, _gateway) = tokio::io::duplex(CHUNK);
        let started = Instant::now();
        let result = tests
            .try_start()
            .unwrap()
            .serve(&mut converter, b"down 2\n")
            .await;
        assert!(result.is_err(), "served to nobody");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(2)
                && took <= Duration::from_secs(2) + COMMAND_TIMEOUT + GRACE,
            "ended after {took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn back_to_back_tests_spend_the_budget_then_wait() {
        let tests = SpeedTests::new(1000);
        let mut served = Duration::ZERO;
        // The budget, plus what refills while the tests run (a fifth of their time).
        for _ in 0..20 {
            let test = match tests.try_start() {
                Ok(test) => test,
                Err(busy) => {
                    assert_eq!(busy, Busy::Spent);
                    break;
                }
            };
            let (mut converter, mut gateway) = tokio::io::duplex(1 << 20);
            let serving =
                tokio::spawn(async move { test.serve(&mut converter, b"down 20\n").await });
            tokio::io::copy(&mut gateway, &mut tokio::io::sink())
                .await
                .unwrap();
            serving.await.unwrap().unwrap();
            served += Duration::from_secs(20);
        }
        assert!(
            (BUDGET..=BUDGET * 3 / 2).contains(&served),
            "{served:?} served back to back"
        );
        assert_eq!(tests.try_start().err(), Some(Busy::Spent));
        // Half the window later, half the budget is back.
        tokio::time::sleep(BUDGET_WINDOW / 2).await;
        assert!(tests.try_start().is_ok());
    }

    #[tokio::test]
    async fn bad_commands_are_refused() {
        let tests = SpeedTests::new(8);
        for bad in [
            &b"down 99\n"[..],
            b"sideways 1\n",
            b"down 11111111111111111",
        ] {
            let (mut converter, _gateway) = tokio::io::duplex(1024);
            let result = tests.try_start().unwrap().serve(&mut converter, bad).await;
            assert!(result.is_err(), "{bad:?} was served");
        }
    }
}
