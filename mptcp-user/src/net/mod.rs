//! Networking both roles share: addresses and prefixes, sockets, the splice relay and the
//! accept loop.

pub mod addr;
pub mod conntrack;
pub mod mptcp_pm;
pub mod netlink;
pub mod nft;
pub mod relay;
pub mod server;
pub mod sock_diag;
pub mod socket;
