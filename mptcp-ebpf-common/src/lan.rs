//! The maps of the LAN interception that userspace fills.

/// The sockmap holding the transparent listener (one entry, index
/// [`LISTENER_INDEX`]), for the sk_lookup program that hands it the SYNs reusing the
/// four-tuple of a connection the gateway still holds in TIME_WAIT.
pub const LISTENER_MAP_NAME: &str = "LISTENER";

/// The listener's index in [`LISTENER_MAP_NAME`].
pub const LISTENER_INDEX: u32 = 0;
