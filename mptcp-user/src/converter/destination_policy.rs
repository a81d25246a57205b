//! The converter's destination policy: it must never be an open relay into its
//! own network. By default it refuses loopback, private, link-local, CGNAT, multicast,
//! unspecified and broadcast destinations, IPv6 addresses that carry such an IPv4
//! address (IPv4-compatible, SIIT, NAT64, 6to4, Teredo), and its own addresses, which it
//! follows as they change; `--allow CIDR` opens a prefix explicitly, never the
//! converter's own addresses.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::RwLock,
};

use ipnet::IpNet;

// IPv4-mapped IPv6 addresses are IPv4 addresses in disguise; check them as such.
use crate::net::addr::{canonical, non_public_ranges};

/// Which destinations the converter connects to.
#[derive(Debug)]
pub struct DestinationPolicy {
    refused: Vec<IpNet>,
    allowed: Vec<IpNet>,
    own: RwLock<Vec<IpAddr>>,
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
    /// An IPv6 address carrying an IPv4 address that is refused.
    #[error("{0} carries {1}: {2}")]
    Embedded(IpAddr, Ipv4Addr, Box<Refusal>),
}

impl DestinationPolicy {
    /// The default policy, widened by `allowed`; `own` are this host's addresses.
    pub fn new(allowed: Vec<IpNet>, own: Vec<IpAddr>) -> Self {
        let policy = Self {
            refused: non_public_ranges(),
            allowed,
            own: RwLock::new(Vec::new()),
        };
        policy.set_own(own);
        policy
    }

    /// Replaces this host's addresses (they changed).
    pub fn set_own(&self, own: Vec<IpAddr>) {
        let own = own.into_iter().map(canonical).collect();
        *self
            .own
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = own;
    }

    /// Accepts `ip` unless a rule refuses it. An explicit allow wins over the default
    /// ranges, but not over the host's own addresses: connecting to itself through an
    /// allowed prefix would reach its local services.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        if self
            .own
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&ip)
        {
            return Err(Refusal::Own(ip));
        }
        if let IpAddr::V6(v6) = ip
            && let Some(carried) = embedded_ipv4(v6)
        {
            self.check(IpAddr::V4(carried))
                .map_err(|refusal| Refusal::Embedded(ip, carried, Box::new(refusal)))?;
        }
        if self.allowed.iter().any(|prefix| prefix.contains(&ip)) {
            return Ok(());
        }
        match self.refused.iter().find(|prefix| prefix.contains(&ip)) {
            Some(prefix) => Err(Refusal::Range(ip, *prefix)),
            None => Ok(()),
        }
    }
}

/// The IPv4 address an IPv6 address leads to, for the forms that carry one:
/// IPv4-compatible `::a.b.c.d` (RFC 4291, deprecated, still routed by some stacks), SIIT
/// `::ffff:0:a.b.c.d` (RFC 2765), the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052)
/// and the local-use one `64:ff9b:1::/48` (RFC 8215, taken with the /96 layout; the
/// range itself is refused too), 6to4 `2002:AABB:CCDD::/48` (RFC 3056) and Teredo
/// `2001::/32`, whose last 32 bits are the client's address inverted (RFC 4380).
/// IPv4-mapped addresses are turned into IPv4 by [`canonical`] before this.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let segments = ip.segments();
    let octets = ip.octets();
    let last32 = Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    match segments {
        // :: and ::1 are the IPv6 unspecified and loopback addresses, refused as such.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0 | 0xffff, 0, _, _]
        | [0x64, 0xff9b, 0, 0, 0, 0, _, _]
        | [0x64, 0xff9b, 1, ..] => Some(last32),
        [0x2002, ..] => Some(Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5])),
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(last32))),
        _ => None,
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
    fn ipv6_forms_carrying_a_refused_ipv4_address_are_refused() {
        let policy = DestinationPolicy::new(Vec::new(), vec![ip("198.51.100.7")]);
        for refused in [
            "::7f00:1",                             // IPv4-compatible 127.0.0.1
            "::ffff:0:7f00:1",                      // SIIT 127.0.0.1
            "64:ff9b::10.0.0.1",                    // NAT64 to a private address
            "64:ff9b::c633:6407",                   // NAT64 to the converter's own address
            "64:ff9b:1::a00:1",                     // local-use NAT64
            "64:ff9b:1::cb00:710a",                 // its range is refused whatever it carries
            "2002:a00:1::1",                        // 6to4 of 10.0.0.1
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo client 10.0.0.1
            "fec0::1",                              // site-local
        ] {
            assert!(
                policy.check(ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in ["64:ff9b::cb00:710a", "2002:cb00:710a::1"] {
            assert_eq!(
                policy.check(ip(allowed)),
                Ok(()),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn own_addresses_are_refused_inside_an_allow_and_followed() {
        let policy = DestinationPolicy::new(
            vec!["198.51.100.0/24".parse().unwrap()],
            vec![ip("198.51.100.7")],
        );
        assert_eq!(
            policy.check(ip("198.51.100.7")),
            Err(Refusal::Own(ip("198.51.100.7")))
        );
        assert_eq!(policy.check(ip("198.51.100.8")), Ok(()));
        // The host gains an address: refused from then on.
        policy.set_own(vec![ip("198.51.100.7"), ip("198.51.100.8")]);
        assert!(policy.check(ip("198.51.100.8")).is_err());
        assert!(policy.check(ip("::ffff:198.51.100.8")).is_err());
    }

    #[test]
    fn allow_opens_a_prefix_and_nothing_else() {
        let policy = DestinationPolicy::new(vec!["10.200.0.0/24".parse().unwrap()], Vec::new());
        assert_eq!(policy.check(ip("10.200.0.5")), Ok(()));
        assert!(policy.check(ip("10.201.0.5")).is_err());
    }
}
