//! Types shared by the eBPF programs (`mptcp-ebpf`) and the daemon (`mptcp-user`).
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, and free of implicit padding, so that
//! both sides agree on its bytes. Each map family has a module of its own, holding the
//! maps' names (the symbols both sides use) and their types.
//!
//! Addresses are kept in one form everywhere: four 32-bit words in network byte order
//! (the form the kernel hands to BPF programs), an IPv4 address as its IPv4-mapped IPv6
//! address `::ffff:a.b.c.d`. So one LPM trie holds the selection of both families, and a map
//! key never needs a family field.
#![no_std]

pub mod cgroups;
pub mod flows;
pub mod lan;
pub mod packet;
pub mod selection;
pub mod uplinks;

/// An IPv4 or IPv6 address as four network-order words; IPv4 is IPv4-mapped.
pub type Address = [u32; 4];

/// The third word of an IPv4-mapped address (bytes `00 00 ff ff`).
pub const MAPPED_V4_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4-mapped form of an IPv4 address given as one network-order word.
#[must_use]
pub const fn mapped_v4(address: u32) -> Address {
    [0, 0, MAPPED_V4_WORD, address]
}

/// Whether `address` is IPv4-mapped, i.e. an IPv4 address.
#[must_use]
pub const fn is_mapped_v4(address: &Address) -> bool {
    address[0] == 0 && address[1] == 0 && address[2] == MAPPED_V4_WORD
}

/// A socket address: an [`Address`] and a port in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Network-order words; IPv4 is IPv4-mapped.
    pub address: Address,
    /// Host byte order (a u32 so the struct has no padding).
    pub port: u32,
}

#[cfg(feature = "user")]
// SAFETY: `Endpoint` is `repr(C)`, `Copy`, and has no padding (see the size test).
unsafe impl aya::Pod for Endpoint {}

#[cfg(test)]
mod tests {
    use super::{Endpoint, is_mapped_v4, mapped_v4};

    #[test]
    fn endpoint_has_no_padding() {
        assert_eq!(size_of::<Endpoint>(), 16 + 4);
    }

    #[test]
    fn mapped_v4_has_the_rfc_4291_bytes() {
        let address = mapped_v4(u32::from_ne_bytes([192, 0, 2, 1]));
        let mut bytes = [0u8; 16];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(address) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]
        );
        assert!(is_mapped_v4(&address));
        assert!(!is_mapped_v4(&[0, 0, 0, 1]));
    }
}
