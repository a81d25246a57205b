//! Networking both roles share: addresses and prefixes, sockets, the splice relay, the
//! accept loop and the small HTTP endpoints.

pub mod addr;
pub mod conntrack;
pub mod http;
pub mod mptcp_pm;
pub mod netlink;
pub mod nft;
pub mod relay;
pub mod server;
pub mod sock_diag;
pub mod socket;
