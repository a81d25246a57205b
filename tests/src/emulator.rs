//! A userspace wire emulator for the testbed: it joins two TAP interfaces in two network
//! namespaces and gives each direction a rate, a one-way delay, optional jitter, random
//! loss and a drop-tail queue bounded in time.
//!
//! This kernel has no netem, and zero-delay veths make congestion control behave like on
//! no real line, so the realistic uplinks (DSL, LTE, satellite) are made here. It is test
//! and benchmark code, not part of the product.
//!
//! Model of one direction: a FIFO bottleneck that sends `rate` bits per second. A frame
//! arriving when the bottleneck is busy waits; if it would wait longer than the queue
//! bound it is dropped (drop-tail). After it has been sent it is delivered `delay` (±
//! `jitter`, never reordered) later. Random loss drops a frame before it queues.

use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use nix::{
    errno::Errno,
    fcntl::{OFlag, open},
    poll::{PollFd, PollFlags},
    sys::{stat::Mode, time::TimeSpec},
};

/// TCP payload per Ethernet frame the emulator counts (1448 of 1514 bytes, timestamps
/// on): the most goodput a line of a given rate can carry.
pub const TCP_PAYLOAD_SHARE: f64 = 1448.0 / 1514.0;

/// The shape of one direction of an emulated line.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    /// Bottleneck rate in Mbit/s (Ethernet frames, as a modem counts them).
    pub rate_mbit: f64,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each frame's delay varies uniformly within ±jitter (frames keep their order).
    pub jitter: Duration,
    /// Probability in percent that a frame is lost.
    pub loss_percent: f64,
    /// The longest a frame may wait in the bottleneck queue before it is dropped.
    pub queue: Duration,
}

impl Shape {
    /// Time the bottleneck needs to send `bytes`.
    fn transmission_time(&self, bytes: usize) -> Duration {
        #[allow(clippy::cast_precision_loss)]
        Duration::from_secs_f64(bytes as f64 * 8.0 / (self.rate_mbit * 1e6))
    }
}

/// One emulated line between two TAP interfaces; both interfaces vanish when it drops.
pub struct EmulatedLink {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EmulatedLink {
    /// Creates TAP interface `a_interface` in namespace `a_netns` and `b_interface` in
    /// `b_netns` (neither configured nor up), and forwards frames between them: `a_to_b`
    /// shapes what `a` sends, `b_to_a` what `b` sends.
    pub fn new(
        (a_netns, a_interface): (&str, &str),
        (b_netns, b_interface): (&str, &str),
        a_to_b: Shape,
        b_to_a: Shape,
    ) -> anyhow::Result<Self> {
        let a = open_tap(a_netns, a_interface)?;
        let b = open_tap(b_netns, b_interface)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to, shape) in [(a.try_clone()?, b.try_clone()?, a_to_b), (b, a, b_to_a)] {
            let stop = Arc::clone(&stop);
            let name = format!("wire {a_interface}");
            threads.push(
                thread::Builder::new()
                    .name(name)
                    .spawn(move || forward(&from, &to, shape, &stop))?,
            );
        }
        Ok(Self { stop, threads })
    }
}

impl Drop for EmulatedLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Opens a new non-blocking TAP interface `interface` inside network namespace `netns`
/// (entered by a short-lived thread, so the caller's namespace is untouched).
fn open_tap(netns: &str, interface: &str) -> anyhow::Result<OwnedFd> {
    let (netns, interface) = (netns.to_owned(), interface.to_owned());
    let context = format!("creating TAP {interface} in {netns}");
    thread::spawn(move || -> anyhow::Result<OwnedFd> {
        crate::netns::enter(&netns)?;
        let tap = open(
            "/dev/net/tun",
            OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let mut request = InterfaceRequest {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI,
            _padding: [0; 22],
        };
        anyhow::ensure!(interface.len() < request.name.len(), "name too long");
        request.name[..interface.len()].copy_from_slice(interface.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `InterfaceRequest`
        // lays out exactly (16-byte name, short flags, padding to 40 bytes).
        let result = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETIFF, &raw mut request) };
        Errno::result(result)?;
        Ok(tap)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("TAP thread panicked"))?
    .context(context)
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF uses it.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; 16],
    flags: libc::c_short,
    _padding: [u8; 22],
}

/// A frame on its way, and when it leaves the far end of the line.
struct InFlight {
    delivery: Instant,
    frame: Vec<u8>,
}

/// Forwards frames from `from` to `to` with `shape` until `stop` is set.
fn forward(from: &OwnedFd, to: &OwnedFd, shape: Shape, stop: &AtomicBool) {
    let mut line: VecDeque<InFlight> = VecDeque::new();
    let mut bottleneck_free = Instant::now();
    let mut last_delivery = Instant::now();
    let mut random = Random::new();
    let mut buffer = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while line.front().is_some_and(|f| f.delivery <= now) {
            let InFlight { frame, .. } = line.pop_front().expect("checked above");
            // A full receive backlog drops the frame, like a real NIC would.
            let _ = nix::unistd::write(to, &frame);
        }
        let wait = line.front().map_or(Duration::from_millis(50), |f| {
            f.delivery.saturating_duration_since(now)
        });
        let mut poll = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match nix::poll::ppoll(
            &mut poll,
            Some(TimeSpec::from_duration(wait.min(Duration::from_millis(50)))),
            None,
        ) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(error) => panic!("poll on TAP failed: {error}"),
        }
        loop {
            let length = match nix::unistd::read(from, &mut buffer) {
                Ok(length) => length,
                Err(Errno::EAGAIN) => break,
                Err(error) => panic!("read from TAP failed: {error}"),
            };
            let now = Instant::now();
            if random.chance(shape.loss_percent / 100.0) {
                continue;
            }
            let start = bottleneck_free.max(now);
            if start - now > shape.queue {
                continue;
            }
            bottleneck_free = start + shape.transmission_time(length);
            let delay = shape.delay.as_secs_f64()
                + shape.jitter.as_secs_f64() * (2.0 * random.unit() - 1.0);
            let delivery =
                (bottleneck_free + Duration::from_secs_f64(delay.max(0.0))).max(last_delivery);
            last_delivery = delivery;
            line.push_back(InFlight {
                delivery,
                frame: buffer[..length].to_vec(),
            });
        }
    }
}

/// Loss and jitter draws, different in every emulator.
struct Random(crate::Xorshift);

impl Random {
    fn new() -> Self {
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let stack = std::ptr::from_ref(&clock) as u64;
        Self(crate::Xorshift::new(
            u64::from(clock.subsec_nanos()) ^ clock.as_secs() ^ stack.rotate_left(29),
        ))
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "53 bits fit an f64 exactly")]
        let value = (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        value
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.unit() < probability
    }
}
