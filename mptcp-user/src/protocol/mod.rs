//! The 0-RTT TCP Convert Protocol (RFC 8803), spoken by both roles: the gateway asks, the
//! converter answers.
//!
//! - [`codec`]: messages and TLVs to and from bytes (pure, no I/O).
//! - [`wire`]: reading one whole message off a socket.
//! - [`cookie`]: the Cookie TLV that authenticates a request (HMAC-SHA256, replay window).
//! - [`speedtest`]: what a gateway and its converter say in a speed test.
//! - [`forward`]: our extension for inbound connections (port forwards).

pub mod codec;
pub mod cookie;
pub mod forward;
pub mod speedtest;
pub mod wire;
