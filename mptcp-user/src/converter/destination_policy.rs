//! The converter's destination policy: it must never be an open relay into its
//! own network. By default it refuses loopback, private, link-local, CGNAT, multicast,
//! unspecified and broadcast destinations, and its own addresses; `--allow CIDR`
//! opens a prefix explicitly.

use std::net::IpAddr;

use ipnet::IpNet;

// IPv4-mapped IPv6 addresses are IPv4 addresses in disguise; check them as such.
use crate::net::addr::{canonical, non_public_ranges};

/// Which destinations the converter connects to.
#[derive(Clone, Debug)]
pub struct DestinationPolicy {
    refused: Vec<IpNet>,
    allowed: Vec<IpNet>,
    own: Vec<IpAddr>,
}

/// Why a destination was refused.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// Inside a range refused by default.
    #[error("{0} is in the refused range {1}")]
    Range(IpAddr, IpNet),
    /// One of the converter's own addresses.
    #[error("{0} is an address of this host")]
    Own(IpAddr),
}

impl DestinationPolicy {
    /// The default policy, widened by `allowed`; `own` are this host's addresses.
    pub fn new(allowed: Vec<IpNet>, own: Vec<IpAddr>) -> Self {
        Self {
            refused: non_public_ranges(),
            allowed,
            own: own.into_iter().map(canonical).collect(),
        }
    }

    /// Accepts `ip` unless a rule refuses it; an explicit allow wins over every rule.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self.allowed.iter().any(|prefix| prefix.contains(&ip)) {
            return Ok(());
        }
        if self.own.contains(&ip) {
            return Err(Refusal::Own(ip));
        }
        match self.refused.iter().find(|prefix| prefix.contains(&ip)) {
            Some(prefix) => Err(Refusal::Range(ip, *prefix)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_policy_refuses_internal_destinations() {
        let policy = DestinationPolicy::new(Vec::new(), vec![ip("198.51.100.7")]);
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "198.51.100.7",
        ] {
            assert!(
                policy.check(ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in [
            "203.0.113.10",
            "8.8.8.8",
            "2001:db8::1",
            "::ffff:203.0.113.10",
        ] {
            assert_eq!(
                policy.check(ip(allowed)),
                Ok(()),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn allow_opens_a_prefix_and_nothing_else() {
        let policy = DestinationPolicy::new(vec!["10.200.0.0/24".parse().unwrap()], Vec::new());
        assert_eq!(policy.check(ip("10.200.0.5")), Ok(()));
        assert!(policy.check(ip("10.201.0.5")).is_err());
    }
}
