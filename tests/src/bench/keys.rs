//! `bench keys`: what a converter serving many gateways pays to authenticate a request.
//!
//! The converter's cookie verifier ([`Verifier`]) is built with one key, then with as
//! many keys as `gateways` says (each gateway's key), and verifies the same number of
//! fresh cookies with each, in alternating rounds in this process (no testbed): cookies
//! of known keys, cookies whose key id no gateway has, and cookies of a known key with a
//! wrong MAC. It prints the median time per verification and the ratios: many keys
//! against one (the cost of the lookup), and an unknown id against a wrong MAC (the two
//! must cost the same, or an attacker could tell which ids exist).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use mptcp_user::protocol::cookie::{KEY_LEN, Key, Verifier, unix_now};

use crate::{Xorshift, median_by};

/// What the benchmark is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// The numbers of gateways compared with one.
    pub gateways: Vec<usize>,
    /// Cookies verified per round and kind.
    pub cookies: usize,
    /// Alternating rounds; medians are compared.
    pub rounds: usize,
}

/// One number of gateways, measured.
#[derive(Clone, Debug)]
pub struct Row {
    /// Keys in the verifier.
    pub gateways: usize,
    /// Median time to verify a valid cookie.
    pub valid: Duration,
    /// Median time to refuse a cookie whose key id is unknown.
    pub unknown_id: Duration,
    /// Median time to refuse a cookie of a known key with a wrong MAC.
    pub bad_mac: Duration,
}

/// Runs the benchmark; one row per number of gateways, one key first.
pub fn run(options: &Options, progress: &dyn Fn(&str)) -> anyhow::Result<Vec<Row>> {
    let mut counts = vec![1];
    counts.extend(options.gateways.iter().copied().filter(|&count| count > 1));
    let mut random = Xorshift::new(0x6b65_7973);
    let mut key = || {
        let mut bytes = [0u8; KEY_LEN];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&random.next_u64().to_le_bytes());
        }
        Key::from_bytes(bytes)
    };
    let largest = counts.iter().copied().max().unwrap_or(1);
    let keys: Vec<Key> = (0..largest).map(|_| key()).collect();
    // As many as the gateways: an attacker probing ids tries many.
    let strangers: Vec<Key> = (0..largest).map(|_| key()).collect();
    let mut samples: Vec<Vec<[Duration; 3]>> = vec![Vec::new(); counts.len()];
    for round in 0..options.rounds {
        for (row, &count) in counts.iter().enumerate() {
            progress(&format!("round {}: {count} gateways", round + 1));
            samples[row].push(measure(&keys[..count], &strangers, options.cookies)?);
        }
    }
    Ok(counts
        .iter()
        .zip(samples)
        .map(|(&gateways, rounds)| {
            let median = |kind: usize| {
                median_by(rounds.iter().map(|times| times[kind]).collect(), |time| {
                    time.as_secs_f64()
                })
                .unwrap_or_default()
            };
            Row {
                gateways,
                valid: median(0),
                unknown_id: median(1),
                bad_mac: median(2),
            }
        })
        .collect())
}

/// Time per verification with a verifier of `keys`: valid cookies (of keys spread over
/// all of them), cookies of `strangers`, and valid cookies with a flipped MAC bit.
fn measure(keys: &[Key], strangers: &[Key], cookies: usize) -> anyhow::Result<[Duration; 3]> {
    let now = unix_now();
    let mut verifier = Verifier::new(
        keys.iter().cloned().enumerate().map(|(i, key)| (key, i)),
        Duration::from_mins(1),
        now - 10,
    )?;
    let destination = SocketAddr::from(([203, 0, 113, 10], 443));
    let spread = |i: usize, of: &[Key]| of[i * 7919 % of.len()].clone();
    let valid: Vec<Vec<u8>> = (0..cookies)
        .map(|i| spread(i, keys).cookie(destination, now))
        .collect::<anyhow::Result<_>>()?;
    let unknown: Vec<Vec<u8>> = (0..cookies)
        .map(|i| spread(i, strangers).cookie(destination, now))
        .collect::<anyhow::Result<_>>()?;
    let mut bad: Vec<Vec<u8>> = (0..cookies)
        .map(|i| spread(i, keys).cookie(destination, now))
        .collect::<anyhow::Result<_>>()?;
    for cookie in &mut bad {
        if let Some(last) = cookie.last_mut() {
            *last ^= 1;
        }
    }
    let mut time = |batch: &[Vec<u8>], accepted: bool| -> anyhow::Result<Duration> {
        let started = Instant::now();
        for cookie in batch {
            let verdict = verifier.verify(destination, Some(cookie), now);
            anyhow::ensure!(
                verdict.is_ok() == accepted,
                "unexpected verdict {verdict:?}"
            );
        }
        Ok(started.elapsed() / u32::try_from(batch.len().max(1))?)
    };
    Ok([
        time(&valid, true)?,
        time(&unknown, false)?,
        time(&bad, false)?,
    ])
}

/// Prints the rows and their ratios.
pub fn print(rows: &[Row]) {
    let Some(one) = rows.first() else { return };
    for row in rows {
        println!(
            "{:>6} gateways: valid {:.2} us, unknown key id {:.2} us, wrong MAC {:.2} us; \
             valid / one gateway's {:.3}, unknown id / wrong MAC {:.3}",
            row.gateways,
            row.valid.as_secs_f64() * 1e6,
            row.unknown_id.as_secs_f64() * 1e6,
            row.bad_mac.as_secs_f64() * 1e6,
            row.valid.as_secs_f64() / one.valid.as_secs_f64(),
            row.unknown_id.as_secs_f64() / row.bad_mac.as_secs_f64(),
        );
    }
}

/// The rows as JSON.
pub fn to_json(rows: &[Row]) -> serde_json::Value {
    let one = rows.first().map_or(1.0, |row| row.valid.as_secs_f64());
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "gateways": row.gateways,
                "valid_us": row.valid.as_secs_f64() * 1e6,
                "unknown_id_us": row.unknown_id.as_secs_f64() * 1e6,
                "bad_mac_us": row.bad_mac.as_secs_f64() * 1e6,
                "valid_over_one_gateway": row.valid.as_secs_f64() / one,
                "unknown_id_over_bad_mac":
                    row.unknown_id.as_secs_f64() / row.bad_mac.as_secs_f64(),
            })
        })
        .collect()
}
