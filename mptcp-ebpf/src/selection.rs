//! The selection, as both interception paths evaluate it at a flow's start.

use aya_ebpf::maps::lpm_trie::Key;
use mptcp_ebpf_common::{
    Address,
    selection::{self, PORTS_RESTRICTED_KEY, intercepts},
};

use crate::maps::{SELECTION, SELECTION_PORTS, SHEDDING};

/// Whether a new flow to `address`:`port` (host order) is intercepted: the gateway is not
/// full, the longest matching prefix says include, and the port is listed (or none is).
#[inline(always)]
pub fn selects(address: Address, port: u16) -> bool {
    if SHEDDING
        .get(0)
        .is_some_and(|&value| value == selection::SHEDDING)
    {
        return false;
    }
    let Some(action) = SELECTION.get(Key::new(128, address)) else {
        return false;
    };
    if !intercepts(*action) {
        return false;
    }
    // The key is copied to the stack: a reference to the constant itself would point
    // into a read-only data section, and such map keys were not found.
    let restricted_key: u16 = PORTS_RESTRICTED_KEY;
    // SAFETY: lookups in a hash map of plain integers.
    let restricted = unsafe { SELECTION_PORTS.get(restricted_key) }.is_some();
    // SAFETY: as above.
    !restricted || unsafe { SELECTION_PORTS.get(port) }.is_some()
}
