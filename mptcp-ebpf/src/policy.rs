//! The selection policy, as both interception paths evaluate it at a flow's start.

use aya_ebpf::maps::lpm_trie::Key;
use mptcp_ebpf_common::{
    Address,
    policy::{PORTS_RESTRICTED_KEY, intercepts},
};

use crate::maps::{POLICY, POLICY_PORTS};

/// Whether a new flow to `address`:`port` (host order) is intercepted: the longest
/// matching prefix says include, and the port is allowed.
#[inline(always)]
pub fn selects(address: Address, port: u16) -> bool {
    let Some(action) = POLICY.get(Key::new(128, address)) else {
        return false;
    };
    if !intercepts(*action) {
        return false;
    }
    // SAFETY: lookups in a hash map of plain integers.
    let restricted = unsafe { POLICY_PORTS.get(&PORTS_RESTRICTED_KEY) }.is_some();
    !restricted || unsafe { POLICY_PORTS.get(&port) }.is_some()
}
