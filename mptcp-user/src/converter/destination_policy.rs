//! The converter's destination policy: it must never be an open relay into its
//! own network. By default it refuses loopback, private, link-local, CGNAT, multicast,
//! unspecified, broadcast, benchmarking and documentation destinations, IPv6 addresses
//! that carry such an IPv4 address (IPv4-compatible, SIIT, NAT64, 6to4, Teredo), its own
//! addresses, which it follows as they change, and the ones it is told are its own
//! (`--own-address`: a public address behind 1:1 NAT, a provider's host services), and
//! port 25 (mail relaying, the usual abuse of a relay; `--allow-smtp` lifts it).
//! `--allow CIDR` opens a prefix explicitly, never the converter's own addresses;
//! `--deny CIDR[:PORT]` closes one, whatever else says.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    str::FromStr,
    sync::RwLock,
};

use anyhow::Context as _;
use ipnet::IpNet;

// IPv4-mapped IPv6 addresses are IPv4 addresses in disguise; check them as such.
use crate::net::addr::{self, canonical, non_public_ranges};

/// The port mail servers take mail from other servers on.
pub const SMTP_PORT: u16 = 25;

/// A `--deny` rule: a prefix, and a port of it or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyRule {
    /// The destinations.
    pub prefix: IpNet,
    /// Only this port of them; all when `None`.
    pub port: Option<u16>,
}

impl DenyRule {
    fn matches(&self, destination: SocketAddr) -> bool {
        self.prefix.contains(&destination.ip())
            && self.port.is_none_or(|port| port == destination.port())
    }
}

impl FromStr for DenyRule {
    type Err = anyhow::Error;

    /// `CIDR` or `CIDR:PORT` (`0.0.0.0/0:25`, `2001:db8::/32:22`; a bare address is a
    /// host): the port follows the prefix length, so IPv6 colons are never mistaken.
    fn from_str(text: &str) -> anyhow::Result<Self> {
        let (prefix, port) = match text.split_once('/') {
            Some((address, rest)) => match rest.split_once(':') {
                Some((length, port)) => (format!("{address}/{length}"), Some(port)),
                None => (text.to_owned(), None),
            },
            None => (text.to_owned(), None),
        };
        let port = port
            .map(|port| {
                port.parse::<u16>()
                    .ok()
                    .filter(|&port| port > 0)
                    .with_context(|| format!("{text}: {port} is not a port"))
            })
            .transpose()?;
        Ok(Self {
            prefix: addr::canonical_prefix(addr::parse_prefix(&prefix)?),
            port,
        })
    }
}

impl fmt::Display for DenyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(port) => write!(f, "{}:{port}", self.prefix),
            None => write!(f, "{}", self.prefix),
        }
    }
}

/// What the operator set beyond the defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Prefixes allowed although the default ranges refuse them (`--allow`).
    pub allow: Vec<IpNet>,
    /// Destinations refused whatever else says (`--deny`).
    pub deny: Vec<DenyRule>,
    /// Addresses of this host the interfaces do not show (`--own-address`).
    pub own_addresses: Vec<IpAddr>,
    /// Whether destination port 25 is allowed (`--allow-smtp`).
    pub allow_smtp: bool,
}

/// Which destinations the converter connects to.
#[derive(Debug)]
pub struct DestinationPolicy {
    refused: Vec<IpNet>,
    config: PolicyConfig,
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
    /// Refused by a `--deny` rule.
    #[error("{0} is denied ({1})")]
    Denied(SocketAddr, DenyRule),
    /// Mail relaying, without `--allow-smtp`.
    #[error("port {SMTP_PORT} (mail) is refused without --allow-smtp")]
    Smtp,
    /// An IPv6 address carrying an IPv4 address that is refused.
    #[error("{0} carries {1}: {2}")]
    Embedded(IpAddr, Ipv4Addr, Box<Refusal>),
}

impl DestinationPolicy {
    /// The default policy, changed by `config`; `own` are this host's addresses.
    pub fn new(config: PolicyConfig, own: Vec<IpAddr>) -> Self {
        let policy = Self {
            refused: non_public_ranges(),
            config,
            own: RwLock::new(Vec::new()),
        };
        policy.set_own(own);
        policy
    }

    /// Replaces this host's addresses (they changed); those of `--own-address` stay.
    pub fn set_own(&self, own: Vec<IpAddr>) {
        let own = own
            .into_iter()
            .chain(self.config.own_addresses.iter().copied())
            .map(canonical)
            .collect();
        *self
            .own
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = own;
    }

    /// Accepts `destination` unless a rule refuses it: a deny first, then the host's
    /// own addresses, port 25, and the default ranges, which an explicit allow opens
    /// (but not the host's own addresses: connecting to itself through an allowed
    /// prefix would reach its local services).
    pub fn check(&self, destination: SocketAddr) -> Result<(), Refusal> {
        let destination = SocketAddr::new(canonical(destination.ip()), destination.port());
        if let Some(rule) = self
            .config
            .deny
            .iter()
            .find(|rule| rule.matches(destination))
        {
            return Err(Refusal::Denied(destination, *rule));
        }
        if destination.port() == SMTP_PORT && !self.config.allow_smtp {
            return Err(Refusal::Smtp);
        }
        self.check_address(destination.ip())
    }

    fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
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
            self.check_address(IpAddr::V4(carried))
                .map_err(|refusal| Refusal::Embedded(ip, carried, Box::new(refusal)))?;
        }
        if self.config.allow.iter().any(|prefix| prefix.contains(&ip)) {
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

    /// `policy` accepts `ip` on port 443.
    fn check(policy: &DestinationPolicy, ip: IpAddr) -> Result<(), Refusal> {
        policy.check(SocketAddr::new(ip, 443))
    }

    fn policy(allow: &[&str], own: &[&str]) -> DestinationPolicy {
        DestinationPolicy::new(
            PolicyConfig {
                allow: allow.iter().map(|prefix| prefix.parse().unwrap()).collect(),
                ..PolicyConfig::default()
            },
            own.iter().map(|address| ip(address)).collect(),
        )
    }

    #[test]
    fn default_policy_refuses_internal_destinations() {
        let policy = policy(&[], &["198.51.100.7"]);
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
            "192.0.0.8",  // IETF protocol assignments
            "198.18.0.1", // benchmarking
            "198.19.255.1",
            "100::1",      // discard-only
            "2001:db8::1", // documentation
        ] {
            assert!(
                check(&policy, ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in [
            "203.0.113.10",
            "8.8.8.8",
            "2001:4860::8888",
            "::ffff:203.0.113.10",
        ] {
            assert_eq!(
                check(&policy, ip(allowed)),
                Ok(()),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn ipv6_forms_carrying_a_refused_ipv4_address_are_refused() {
        let policy = policy(&[], &["198.51.100.7"]);
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
                check(&policy, ip(refused)).is_err(),
                "{refused} must be refused"
            );
        }
        for allowed in ["64:ff9b::cb00:710a", "2002:cb00:710a::1"] {
            assert_eq!(
                check(&policy, ip(allowed)),
                Ok(()),
                "{allowed} must be allowed"
            );
        }
    }

    #[test]
    fn own_addresses_are_refused_inside_an_allow_and_followed() {
        let policy = policy(&["198.51.100.0/24"], &["198.51.100.7"]);
        assert_eq!(
            check(&policy, ip("198.51.100.7")),
            Err(Refusal::Own(ip("198.51.100.7")))
        );
        assert_eq!(check(&policy, ip("198.51.100.8")), Ok(()));
        // The host gains an address: refused from then on.
        policy.set_own(vec![ip("198.51.100.7"), ip("198.51.100.8")]);
        assert!(check(&policy, ip("198.51.100.8")).is_err());
        assert!(check(&policy, ip("::ffff:198.51.100.8")).is_err());
    }

    #[test]
    fn allow_opens_a_prefix_and_nothing_else() {
        let policy = policy(&["10.200.0.0/24"], &[]);
        assert_eq!(check(&policy, ip("10.200.0.5")), Ok(()));
        assert!(check(&policy, ip("10.201.0.5")).is_err());
    }

    #[test]
    fn deny_rules_close_prefixes_and_ports_whatever_allows_them() {
        let policy = DestinationPolicy::new(
            PolicyConfig {
                allow: vec!["10.200.0.0/24".parse().unwrap()],
                deny: ["10.200.0.5", "203.0.113.0/24:22", "::/0:23"]
                    .iter()
                    .map(|rule| rule.parse().unwrap())
                    .collect(),
                ..PolicyConfig::default()
            },
            Vec::new(),
        );
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(matches!(
            policy.check(at("10.200.0.5:443")),
            Err(Refusal::Denied(..))
        ));
        assert_eq!(policy.check(at("10.200.0.6:443")), Ok(()));
        assert!(matches!(
            policy.check(at("203.0.113.9:22")),
            Err(Refusal::Denied(..))
        ));
        assert_eq!(policy.check(at("203.0.113.9:443")), Ok(()));
        assert!(matches!(
            policy.check(at("[2001:4860::1]:23")),
            Err(Refusal::Denied(..))
        ));
        assert_eq!(policy.check(at("[2001:4860::1]:443")), Ok(()));
    }

    #[test]
    fn deny_rules_parse_with_and_without_a_port() {
        let rule: DenyRule = "2001:db8::/32:25".parse().unwrap();
        assert_eq!(rule.prefix, "2001:db8::/32".parse::<IpNet>().unwrap());
        assert_eq!(rule.port, Some(25));
        assert_eq!(rule.to_string(), "2001:db8::/32:25");
        let host: DenyRule = "192.0.2.7".parse().unwrap();
        assert_eq!(host.to_string(), "192.0.2.7/32");
        for bad in [
            "10.0.0.0/8:0",
            "10.0.0.0/8:http",
            "10.0.0.0/33",
            "10.0.0.0/8:70000",
        ] {
            assert!(bad.parse::<DenyRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mail_is_refused_unless_allowed_and_told_addresses_are_own() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        let strict = policy(&[], &[]);
        assert_eq!(strict.check(at("203.0.113.9:25")), Err(Refusal::Smtp));
        assert_eq!(strict.check(at("203.0.113.9:587")), Ok(()));
        let open = DestinationPolicy::new(
            PolicyConfig {
                allow_smtp: true,
                own_addresses: vec![ip("198.51.100.1"), ip("168.63.129.16")],
                ..PolicyConfig::default()
            },
            vec![ip("10.0.0.4")],
        );
        assert_eq!(open.check(at("203.0.113.9:25")), Ok(()));
        assert!(matches!(
            open.check(at("198.51.100.1:443")),
            Err(Refusal::Own(_))
        ));
        // A refresh of the interfaces' addresses keeps the told ones.
        open.set_own(vec![ip("10.0.0.5")]);
        assert!(matches!(
            open.check(at("168.63.129.16:80")),
            Err(Refusal::Own(_))
        ));
    }
}
