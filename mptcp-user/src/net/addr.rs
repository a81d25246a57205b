//! Addresses and prefixes, in one place for both roles: IPv4-mapped forms, the BPF maps'
//! address form, prefix parsing, the ranges that are not the public internet, and this
//! host's own addresses and networks.

use std::net::{IpAddr, Ipv6Addr};

use anyhow::Context as _;
use ipnet::IpNet;
use mptcp_ebpf_common::{Address, Endpoint};

/// IPv4 as its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`): how IPv4 travels in the
/// Convert protocol, the cookie's MAC and the BPF maps.
#[must_use]
pub fn mapped(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// An address as the IPv4 address it is when it is IPv4-mapped (dual-stack sockets
/// report IPv4 peers that way); the inverse of [`mapped`].
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An address in the BPF maps' form: four network-order words, IPv4 as IPv4-mapped.
#[must_use]
pub fn to_map_address(ip: IpAddr) -> Address {
    let octets = mapped(ip).octets();
    let mut words = [0u32; 4];
    for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
        *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// The maps' address form as an [`IpAddr`] (IPv4-mapped comes back as IPv4).
#[must_use]
pub fn from_map_address(words: Address) -> IpAddr {
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    canonical(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// A socket address in the maps' form.
#[must_use]
pub fn to_endpoint(address: std::net::SocketAddr) -> Endpoint {
    Endpoint {
        address: to_map_address(address.ip()),
        port: u32::from(address.port()),
    }
}

/// The maps' endpoint as a socket address (`None` for a port that does not fit).
#[must_use]
pub fn from_endpoint(endpoint: Endpoint) -> Option<std::net::SocketAddr> {
    Some(std::net::SocketAddr::new(
        from_map_address(endpoint.address),
        u16::try_from(endpoint.port).ok()?,
    ))
}

/// Parses a prefix such as `10.0.0.0/8` or `2001:db8::/32`; a bare address means one
/// host. Host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`), and an IPv4-mapped
/// address is taken as the IPv4 address it is.
pub fn parse_prefix(text: &str) -> anyhow::Result<IpNet> {
    let prefix = match text.split_once('/') {
        Some(_) => text
            .parse::<IpNet>()
            .with_context(|| format!("{text:?} is not an address prefix"))?,
        None => IpNet::from(
            text.parse::<IpAddr>()
                .with_context(|| format!("{text:?} is not an address or prefix"))?,
        ),
    };
    Ok(canonical_prefix(prefix))
}

/// `prefix` with its host bits cleared and, when it lies inside `::ffff:0:0/96`, as the
/// IPv4 prefix it stands for.
#[must_use]
pub fn canonical_prefix(prefix: IpNet) -> IpNet {
    if let IpNet::V6(v6) = prefix
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        return IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
            .expect("96 bits less than a valid IPv6 length is a valid IPv4 length")
            .trunc();
    }
    prefix.trunc()
}

/// The prefix holding just `ip`.
#[must_use]
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(canonical(ip))
}

/// Ranges that are not the public internet.
const NON_PUBLIC: &[&str] = &[
    "0.0.0.0/8",      // unspecified, "this network"
    "10.0.0.0/8",     // private
    "100.64.0.0/10",  // CGNAT
    "127.0.0.0/8",    // loopback
    "169.254.0.0/16", // link-local
    "172.16.0.0/12",  // private
    "192.0.0.0/24",   // IETF protocol assignments (RFC 6890)
    "192.168.0.0/16", // private
    "198.18.0.0/15",  // benchmarking (RFC 2544)
    "224.0.0.0/4",    // multicast
    "240.0.0.0/4",    // reserved, broadcast
    "::/128",         // unspecified
    "::1/128",        // loopback
    "64:ff9b:1::/48", // local-use NAT64 (RFC 8215): a network's own translator
    "100::/64",       // discard-only (RFC 6666)
    "2001:db8::/32",  // documentation (RFC 3849), found inside networks that copied it
    "fc00::/7",       // unique local (private)
    "fe80::/10",      // link-local
    "fec0::/10",      // site-local (deprecated, private)
    "ff00::/8",       // multicast
];

/// The ranges that are not the public internet: loopback, private, link-local, CGNAT,
/// multicast, unspecified, broadcast, benchmarking, discard-only and IPv6
/// documentation. The converter refuses them as destinations; the gateway does not
/// intercept flows to them.
#[must_use]
pub fn non_public_ranges() -> Vec<IpNet> {
    NON_PUBLIC
        .iter()
        .map(|prefix| prefix.parse().expect("built-in prefixes parse"))
        .collect()
}

/// This host's addresses, from getifaddrs.
pub fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let addresses = nix::ifaddrs::getifaddrs().context("getifaddrs failed")?;
    Ok(addresses
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect())
}

/// The prefixes of this host's networks (each interface address with its netmask, the
/// host bits cleared), loopback left out.
pub fn local_prefixes() -> anyhow::Result<Vec<IpNet>> {
    let addresses = nix::ifaddrs::getifaddrs().context("getifaddrs failed")?;
    let mut prefixes = Vec::new();
    for interface in addresses {
        let (Some(address), Some(netmask)) = (interface.address, interface.netmask) else {
            continue;
        };
        let prefix = if let (Some(address), Some(mask)) =
            (address.as_sockaddr_in(), netmask.as_sockaddr_in())
        {
            ipnet::Ipv4Net::with_netmask(address.ip(), mask.ip()).map(IpNet::V4)
        } else if let (Some(address), Some(mask)) =
            (address.as_sockaddr_in6(), netmask.as_sockaddr_in6())
        {
            ipnet::Ipv6Net::with_netmask(address.ip(), mask.ip()).map(IpNet::V6)
        } else {
            continue;
        };
        // A non-contiguous netmask names no prefix.
        let Ok(prefix) = prefix else { continue };
        let prefix = prefix.trunc();
        if prefix.network().is_loopback() || prefixes.contains(&prefix) {
            continue;
        }
        prefixes.push(prefix);
    }
    Ok(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn map_addresses_round_trip_in_both_families() {
        for text in ["192.0.2.1", "2001:db8::7", "::1"] {
            assert_eq!(from_map_address(to_map_address(ip(text))), ip(text));
        }
        assert_eq!(
            to_map_address(ip("192.0.2.1")),
            mptcp_ebpf_common::mapped_v4(u32::from_ne_bytes([192, 0, 2, 1]))
        );
    }

    #[test]
    fn mapped_and_canonical_are_inverse() {
        assert_eq!(
            mapped(ip("192.0.2.1")),
            "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(canonical(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(canonical(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn prefixes_parse_with_host_bits_cleared() {
        assert_eq!(
            parse_prefix("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_prefix("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_prefix("::ffff:10.1.0.0/112").unwrap().to_string(),
            "10.1.0.0/16"
        );
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", ""] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        let all = parse_prefix("0.0.0.0/0").unwrap();
        assert!(all.contains(&ip("1.2.3.4")));
        assert!(!all.contains(&ip("2001:db8::1")));
    }

    #[test]
    fn non_public_ranges_cover_loopback_and_private() {
        let ranges = non_public_ranges();
        for inside in ["127.0.0.1", "10.9.9.9", "fd00::1", "ff02::1"] {
            assert!(ranges.iter().any(|r| r.contains(&ip(inside))), "{inside}");
        }
        assert!(!ranges.iter().any(|r| r.contains(&ip("203.0.113.10"))));
    }
}
