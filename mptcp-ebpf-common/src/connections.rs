//! The `CONNECTIONS` map: TCP connections of the watched cgroups, as sock_ops saw them
//! become established.
//!
//! Written by the `sock_ops` program (insert at established, delete at close); read by
//! the daemon and the inspection CLI. Keyed by the kernel's socket cookie, which is
//! unique for the life of the host and the same value userspace gets from
//! `SO_COOKIE`.

/// Name of the map in the eBPF object.
pub const MAP_NAME: &str = "CONNECTIONS";

/// Most connections the map tracks; it is an LRU map, so the oldest entry gives way.
pub const MAX_ENTRIES: u32 = 65_536;

/// This host opened the connection (`connect`).
pub const DIRECTION_ACTIVE: u32 = 1;
/// This host accepted the connection (`accept`).
pub const DIRECTION_PASSIVE: u32 = 2;

/// One established TCP connection.
///
/// Addresses are kept as the kernel hands them to sock_ops: four 32-bit words in network
/// byte order, an IPv4 address in the first word and zeros after it. Ports are in host
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// `AF_INET` or `AF_INET6`.
    pub family: u32,
    /// [`DIRECTION_ACTIVE`] or [`DIRECTION_PASSIVE`].
    pub direction: u32,
    /// Local address, network byte order.
    pub local_addr: [u32; 4],
    /// Remote address, network byte order.
    pub remote_addr: [u32; 4],
    /// Local port, host byte order.
    pub local_port: u32,
    /// Remote port, host byte order.
    pub remote_port: u32,
    /// `bpf_ktime_get_ns()` when the connection became established.
    pub established_ns: u64,
}

#[cfg(feature = "user")]
// SAFETY: `Connection` is `repr(C)`, `Copy`, and has no padding (see the size test), so
// every byte pattern the kernel writes is a valid value.
unsafe impl aya::Pod for Connection {}

#[cfg(test)]
mod tests {
    use super::Connection;

    #[test]
    fn connection_has_no_padding() {
        // 2 * u32 + 2 * [u32; 4] + 2 * u32 + u64, with no gaps the compiler could fill.
        assert_eq!(size_of::<Connection>(), 4 + 4 + 16 + 16 + 4 + 4 + 8);
        assert_eq!(core::mem::offset_of!(Connection, established_ns), 48);
    }
}
