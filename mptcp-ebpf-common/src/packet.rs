//! What the LAN program reads from a packet's headers, as functions over any byte
//! source ([`Bytes`]): the kernel program reads the socket buffer, the tests and the
//! fuzzer (`fuzz/fuzz_targets/lan_packet.rs`) read a slice, and both run this code.
//!
//! Headers are read field by field, each load checked: whole-header copies made code
//! the verifier rejected. Anything this does not parse (other protocols, truncated
//! headers, IPv4 fragments after the first, an IPv4 header length below 5 words, IPv6
//! extension headers) is `Err`: the program then lets the packet through untouched.

#![expect(
    clippy::inline_always,
    reason = "folded into the LAN program: one function for the verifier"
)]

use core::mem::offset_of;

use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
};

use crate::{Address, mapped_v4};

/// A packet's bytes, read by offset. Loads past the end fail.
pub trait Bytes {
    /// The `T` at `offset` (unaligned, as the packet holds it).
    ///
    /// # Errors
    /// When the packet is shorter than `offset` plus `T`'s size.
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64>;
}

impl Bytes for [u8] {
    fn load<T: Copy>(&self, offset: usize) -> Result<T, i64> {
        let bytes = self
            .get(offset..offset.saturating_add(size_of::<T>()))
            .filter(|bytes| bytes.len() == size_of::<T>())
            .ok_or(-1i64)?;
        // SAFETY: `bytes` holds exactly `size_of::<T>()` bytes; every `T` read here is
        // a plain integer or array of them, valid for any bits.
        Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
    }
}

/// "Not a packet we read" (as opposed to a failed load).
const NOT_OURS: i64 = 0;

/// The EtherTypes as the header holds them (network order).
const IPV4: u16 = EtherType::Ipv4 as u16;
const IPV6: u16 = EtherType::Ipv6 as u16;
/// The flags byte: the second of the 16 bits that follow the acknowledgment number
/// (data offset and reserved bits come first).
const TCP_FLAGS_OFFSET: usize = offset_of!(TcpHdr, _bitfield_1) + 1;
/// TCP flags.
pub const TCP_FLAG_SYN: u8 = 0x02;
/// See [`TCP_FLAG_SYN`].
pub const TCP_FLAG_ACK: u8 = 0x10;
/// The fragment offset bits of the IPv4 flags-and-offset field (host order).
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// A TCP segment's addresses, ports and flags. Every field is set for both families
/// (an IPv4 address in its IPv4-mapped form): an enum of per-family tuples made the
/// compiler copy the unused variant's bytes, uninitialised, which the verifier rejects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    /// IPv6; else IPv4.
    pub ipv6: bool,
    pub source: Address,
    pub destination: Address,
    /// Network order, as the socket lookup takes them.
    pub source_port: u16,
    /// See `source_port`.
    pub destination_port: u16,
    pub flags: u8,
}

impl TcpSegment {
    /// Whether it opens a flow: a SYN without ACK.
    #[inline(always)]
    #[must_use]
    pub const fn opens(&self) -> bool {
        self.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN
    }
}

/// Where an IPv4 packet's transport header starts, or `None` when it has none to read:
/// a header length below 5 words (malformed), or a fragment after the first (its
/// payload is the middle of a segment, whose first bytes are no ports).
#[inline(always)]
#[must_use]
pub const fn ipv4_transport_offset(version_ihl: u8, flags_and_offset: u16) -> Option<usize> {
    let words = version_ihl & 0x0f;
    if version_ihl >> 4 != 4 || words < 5 || flags_and_offset & FRAGMENT_OFFSET != 0 {
        return None;
    }
    Some(EthHdr::LEN + words as usize * 4)
}

/// The IPv4 header's transport offset for protocol `protocol`, or [`NOT_OURS`].
#[inline(always)]
fn ipv4_transport<B: Bytes + ?Sized>(packet: &B, protocol: IpProto) -> Result<usize, i64> {
    let ip = EthHdr::LEN;
    if packet.load::<u8>(ip + offset_of!(Ipv4Hdr, proto))? != protocol as u8 {
        return Err(NOT_OURS);
    }
    let version_ihl: u8 = packet.load(ip + offset_of!(Ipv4Hdr, vihl))?;
    let flags_and_offset = u16::from_be(packet.load(ip + offset_of!(Ipv4Hdr, frags))?);
    ipv4_transport_offset(version_ihl, flags_and_offset).ok_or(NOT_OURS)
}

/// The IPv6 header's transport offset when its next header is `protocol` (no
/// extension headers), or [`NOT_OURS`].
#[inline(always)]
fn ipv6_transport<B: Bytes + ?Sized>(packet: &B, protocol: IpProto) -> Result<usize, i64> {
    let ip = EthHdr::LEN;
    if packet.load::<u8>(ip + offset_of!(Ipv6Hdr, next_hdr))? != protocol as u8 {
        return Err(NOT_OURS);
    }
    Ok(ip + Ipv6Hdr::LEN)
}

/// Reads a TCP segment's headers (Ethernet, then IPv4 or IPv6, then TCP).
///
/// # Errors
/// For any packet that is not a whole TCP header of a first (or only) fragment.
#[inline(always)]
pub fn tcp_segment<B: Bytes + ?Sized>(packet: &B) -> Result<TcpSegment, i64> {
    let ether_type: u16 = packet.load(offset_of!(EthHdr, ether_type))?;
    let ip = EthHdr::LEN;
    let (ipv6, source, destination, tcp) = match ether_type {
        IPV4 => {
            let tcp = ipv4_transport(packet, IpProto::Tcp)?;
            let source: u32 = packet.load(ip + offset_of!(Ipv4Hdr, src_addr))?;
            let destination: u32 = packet.load(ip + offset_of!(Ipv4Hdr, dst_addr))?;
            (false, mapped_v4(source), mapped_v4(destination), tcp)
        }
        IPV6 => {
            let tcp = ipv6_transport(packet, IpProto::Tcp)?;
            let source: Address = packet.load(ip + offset_of!(Ipv6Hdr, src_addr))?;
            let destination: Address = packet.load(ip + offset_of!(Ipv6Hdr, dst_addr))?;
            (true, source, destination, tcp)
        }
        _ => return Err(NOT_OURS),
    };
    Ok(TcpSegment {
        ipv6,
        source,
        destination,
        source_port: packet.load(tcp + offset_of!(TcpHdr, source))?,
        destination_port: packet.load(tcp + offset_of!(TcpHdr, dest))?,
        flags: packet.load(tcp + TCP_FLAGS_OFFSET)?,
    })
}

/// The destination of a UDP datagram to `port`, `Ok(None)` for any other packet.
/// Read apart from [`tcp_segment`]: one parser returning both kinds of result made
/// code the verifier rejected (copies of the enum's unused bytes).
///
/// # Errors
/// When a header it needs is truncated.
#[inline(always)]
pub fn udp_destination<B: Bytes + ?Sized>(packet: &B, port: u16) -> Result<Option<Address>, i64> {
    let ether_type: u16 = packet.load(offset_of!(EthHdr, ether_type))?;
    let ip = EthHdr::LEN;
    let (destination, udp) = match ether_type {
        IPV4 => {
            let Ok(udp) = ipv4_transport(packet, IpProto::Udp) else {
                return Ok(None);
            };
            let daddr: u32 = packet.load(ip + offset_of!(Ipv4Hdr, dst_addr))?;
            (mapped_v4(daddr), udp)
        }
        IPV6 => {
            let Ok(udp) = ipv6_transport(packet, IpProto::Udp) else {
                return Ok(None);
            };
            let daddr: Address = packet.load(ip + offset_of!(Ipv6Hdr, dst_addr))?;
            (daddr, udp)
        }
        _ => return Ok(None),
    };
    // The destination port is the UDP header's second field.
    let destination_port: u16 = packet.load(udp + 2)?;
    Ok((u16::from_be(destination_port) == port).then_some(destination))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    /// An Ethernet frame holding an IPv4 header of `words` 32-bit words (options
    /// zeroed), protocol `protocol`, flags-and-offset `fragment`, then `transport`.
    fn ipv4(protocol: u8, words: u8, fragment: u16, transport: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let mut header = vec![0u8; usize::from(words.max(5)) * 4];
        header[0] = 0x40 | words;
        header[6..8].copy_from_slice(&fragment.to_be_bytes());
        header[8] = 64;
        header[9] = protocol;
        header[12..16].copy_from_slice(&[192, 168, 1, 2]);
        header[16..20].copy_from_slice(&[203, 0, 113, 10]);
        frame.extend_from_slice(&header);
        frame.extend_from_slice(transport);
        frame
    }

    /// A TCP header from port 40000 to 443 with `flags`.
    fn tcp(flags: u8) -> Vec<u8> {
        let mut header = vec![0u8; 20];
        header[0..2].copy_from_slice(&40000u16.to_be_bytes());
        header[2..4].copy_from_slice(&443u16.to_be_bytes());
        header[12] = 5 << 4;
        header[13] = flags;
        header
    }

    #[test]
    fn a_syn_is_read_with_and_without_ip_options() {
        for words in [5, 6, 15] {
            let segment = tcp_segment(&ipv4(6, words, 0, &tcp(TCP_FLAG_SYN))[..]).unwrap();
            assert!(segment.opens());
            assert!(!segment.ipv6);
            assert_eq!(u16::from_be(segment.destination_port), 443);
            assert_eq!(u16::from_be(segment.source_port), 40000);
            assert_eq!(
                segment.destination,
                mapped_v4(u32::from_ne_bytes([203, 0, 113, 10]))
            );
        }
        let ack = tcp_segment(&ipv4(6, 5, 0, &tcp(TCP_FLAG_SYN | TCP_FLAG_ACK))[..]).unwrap();
        assert!(!ack.opens());
    }

    #[test]
    fn fragments_short_headers_and_truncation_are_not_read() {
        let syn = tcp(TCP_FLAG_SYN);
        // A later fragment: its first bytes are payload, not ports.
        assert!(tcp_segment(&ipv4(6, 5, 185, &syn)[..]).is_err());
        // The first fragment (more fragments, offset 0) carries the header.
        assert!(tcp_segment(&ipv4(6, 5, 0x2000, &syn)[..]).is_ok());
        // A header length below 5 words.
        for words in 0..5 {
            assert!(
                tcp_segment(&ipv4(6, words, 0, &syn)[..]).is_err(),
                "{words}"
            );
        }
        // Cut anywhere before the flags byte.
        let whole = ipv4(6, 5, 0, &syn);
        for length in 0..14 + 20 + 14 {
            assert!(tcp_segment(&whole[..length]).is_err(), "{length} bytes");
        }
        assert!(tcp_segment(&whole[..14 + 20 + 14]).is_ok());
        // Not TCP.
        assert!(tcp_segment(&ipv4(17, 5, 0, &syn)[..]).is_err());
    }

    #[test]
    fn ipv6_with_an_extension_header_is_not_read() {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x86, 0xdd]);
        let mut header = vec![0u8; 40];
        header[0] = 0x60;
        header[6] = 6;
        frame.extend_from_slice(&header);
        frame.extend_from_slice(&tcp(TCP_FLAG_SYN));
        let segment = tcp_segment(&frame[..]).unwrap();
        assert!(segment.opens() && segment.ipv6);
        // Hop-by-hop options first.
        frame[14 + 6] = 0;
        assert!(tcp_segment(&frame[..]).is_err());
    }

    #[test]
    fn quic_is_udp_to_its_port_in_a_first_fragment() {
        let mut udp = vec![0u8; 8];
        udp[2..4].copy_from_slice(&443u16.to_be_bytes());
        let destination = mapped_v4(u32::from_ne_bytes([203, 0, 113, 10]));
        assert_eq!(
            udp_destination(&ipv4(17, 5, 0, &udp)[..], 443),
            Ok(Some(destination))
        );
        assert_eq!(udp_destination(&ipv4(17, 5, 0, &udp)[..], 53), Ok(None));
        assert_eq!(udp_destination(&ipv4(17, 5, 100, &udp)[..], 443), Ok(None));
        assert_eq!(udp_destination(&ipv4(17, 3, 0, &udp)[..], 443), Ok(None));
        assert_eq!(udp_destination(&ipv4(6, 5, 0, &udp)[..], 443), Ok(None));
        assert!(udp_destination(&ipv4(17, 5, 0, &udp[..3])[..], 443).is_err());
    }
}
