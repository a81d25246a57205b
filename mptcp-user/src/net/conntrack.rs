//! The kernel's connection tracking, through ctnetlink: forgetting the flows that left
//! by an uplink that died, so that their next packet is routed, and NATed, anew.

use anyhow::{Context as _, bail};
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterProtoFamily,
    conntrack::{ConntrackAttribute, ConntrackMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

/// `CTA_MARK_MASK`: the crate names `CTA_MARK` but not its mask.
const CTA_MARK_MASK: u16 = 21;

/// Deletes every conntrack entry, IPv4 and IPv6, whose mark has `mark` in the bits of
/// `bits`; returns once the kernel has done it (a filtered flush: Linux 4.0 and later).
pub fn delete_marked(mark: u32, bits: u32) -> anyhow::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER).context("cannot open a ctnetlink socket")?;
    socket
        .bind_auto()
        .context("cannot bind a ctnetlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("cannot connect a ctnetlink socket")?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut request = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            // Unspecified: both families.
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, 0),
            ConntrackMessage::Delete(vec![
                ConntrackAttribute::CtaMark(mark),
                ConntrackAttribute::Other(DefaultNla::new(
                    CTA_MARK_MASK,
                    bits.to_be_bytes().to_vec(),
                )),
            ]),
        )),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0).context("cannot send to ctnetlink")?;
    let (reply, _) = socket
        .recv_from_full()
        .context("no answer from ctnetlink")?;
    let reply = NetlinkMessage::<NetfilterMessage>::deserialize(&reply)
        .context("cannot read ctnetlink's answer")?;
    match reply.payload {
        // Nothing matched: nothing to forget.
        NetlinkPayload::Error(error) if error.raw_code() == -libc::ENOENT => Ok(()),
        NetlinkPayload::Error(error) if error.code.is_some() => bail!(
            "ctnetlink refused to forget the flows of mark {mark:#x}: {}",
            std::io::Error::from_raw_os_error(-error.raw_code())
        ),
        _ => Ok(()),
    }
}
