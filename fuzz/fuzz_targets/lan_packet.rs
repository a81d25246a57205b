//! The LAN program's packet reader (mptcp-ebpf-common's `packet`, the code the kernel
//! program runs) on arbitrary frames: it never panics, and what it reads as a TCP
//! segment is one: a whole header of a first fragment, at the offset the IP header
//! says, with the addresses the frame holds.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_ebpf_common::{
    mapped_v4,
    packet::{tcp_segment, udp_destination},
};

const ETHERNET: usize = 14;

fuzz_target!(|frame: &[u8]| {
    let _ = udp_destination(frame, 443);
    let Ok(segment) = tcp_segment(frame) else {
        return;
    };
    let transport = if segment.ipv6 {
        assert_eq!(frame[12..14], [0x86, 0xdd]);
        assert_eq!(frame[ETHERNET + 6], 6, "not TCP");
        ETHERNET + 40
    } else {
        assert_eq!(frame[12..14], [0x08, 0x00]);
        let header = &frame[ETHERNET..];
        assert_eq!(header[0] >> 4, 4);
        let words = usize::from(header[0] & 0x0f);
        assert!(words >= 5, "header of {words} words");
        assert_eq!(
            u16::from_be_bytes([header[6], header[7]]) & 0x1fff,
            0,
            "a later fragment"
        );
        assert_eq!(header[9], 6, "not TCP");
        let destination = u32::from_ne_bytes(header[16..20].try_into().unwrap());
        assert_eq!(segment.destination, mapped_v4(destination));
        ETHERNET + words * 4
    };
    // Ports and flags come from a TCP header that is there.
    assert!(frame.len() >= transport + 14, "read past the end");
    assert_eq!(
        segment.source_port.to_ne_bytes(),
        frame[transport..transport + 2]
    );
    assert_eq!(
        segment.destination_port.to_ne_bytes(),
        frame[transport + 2..transport + 4]
    );
    assert_eq!(segment.flags, frame[transport + 13]);
});
