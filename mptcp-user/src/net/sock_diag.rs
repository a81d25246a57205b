//! The kernel's table of TCP sockets, through sock_diag: ending the TIME_WAIT sockets
//! that a previous run left on an address the kernel must now listen on itself.
//!
//! The kernel's own listeners (an MPTCP `signal` endpoint with a port) bind without
//! SO_REUSEADDR, so for a minute after a converter that carried joins there stopped,
//! their TIME_WAIT sockets keep a new one from starting (EADDRINUSE). Ending them is
//! what `ss -K state time-wait` does.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

/// `SOCK_DIAG_BY_FAMILY`: list sockets.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `SOCK_DESTROY`: end one socket (CONFIG_INET_DIAG_DESTROY).
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// `TCP_TIME_WAIT` in the kernel's state numbering.
const TCP_TIME_WAIT: u32 = 6;
/// Length of a netlink message header.
const HEADER: usize = 16;
/// Length of `struct inet_diag_sockid`.
const SOCKID: usize = 48;

/// Ends every TCP socket in TIME_WAIT whose local end is `local`; returns how many.
pub fn end_time_wait(local: SocketAddr) -> anyhow::Result<usize> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("cannot open a sock_diag socket")?;
    socket
        .bind_auto()
        .context("cannot bind a sock_diag socket")?;
    socket
        .connect(&NetlinkAddr::new(0, 0))
        .context("cannot connect a sock_diag socket")?;
    let mut filter = [0u8; SOCKID];
    filter[0..2].copy_from_slice(&local.port().to_be_bytes());
    let dump = request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        local.ip(),
        1 << TCP_TIME_WAIT,
        &filter,
    );
    socket.send(&dump, 0).context("cannot ask sock_diag")?;
    let mut waiting = Vec::new();
    'dump: loop {
        let (reply, _) = socket
            .recv_from_full()
            .context("no answer from sock_diag")?;
        for (kind, body) in messages(&reply) {
            match kind {
                NLMSG_DONE => break 'dump,
                NLMSG_ERROR => bail!("sock_diag cannot list sockets: {}", error_of(body)),
                // struct inet_diag_msg: family, state, timer, retrans, then the id.
                _ if body.len() >= 4 + SOCKID => {
                    let id: [u8; SOCKID] = body[4..4 + SOCKID].try_into()?;
                    let port = u16::from_be_bytes([id[0], id[1]]);
                    if port == local.port() && local_address(&id, local.ip()) == Some(local.ip()) {
                        waiting.push(id);
                    }
                }
                _ => {}
            }
        }
    }
    for id in &waiting {
        let destroy = request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, local.ip(), !0, id);
        socket.send(&destroy, 0).context("cannot ask sock_diag")?;
        let (reply, _) = socket
            .recv_from_full()
            .context("no answer from sock_diag")?;
        for (kind, body) in messages(&reply) {
            let code = error_code(body);
            // 0 is the acknowledgement; ENOENT, a socket whose time ran out meanwhile.
            if kind == NLMSG_ERROR && code != 0 && code != -libc::ENOENT {
                bail!(
                    "sock_diag cannot end a TIME_WAIT socket: {}",
                    error_of(body)
                );
            }
        }
    }
    Ok(waiting.len())
}

/// A netlink message of `kind` carrying a `struct inet_diag_req_v2` for TCP over
/// `address`'s family, in `states`, about the socket `id`.
fn request(kind: u16, flags: u16, address: IpAddr, states: u32, id: &[u8; SOCKID]) -> Vec<u8> {
    let family = match address {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    let length = HEADER + 8 + SOCKID;
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(&u32::try_from(length).unwrap_or(0).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&flags.to_ne_bytes());
    bytes.extend_from_slice(&[0; 8]); // sequence number and port id: the kernel's
    bytes.push(u8::try_from(family).unwrap_or(0));
    bytes.push(u8::try_from(libc::IPPROTO_TCP).unwrap_or(0));
    bytes.extend_from_slice(&[0, 0]); // no extensions, padding
    bytes.extend_from_slice(&states.to_ne_bytes());
    bytes.extend_from_slice(id);
    bytes
}

/// The (type, body) of each netlink message in `reply`.
fn messages(reply: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    let mut rest = reply;
    while rest.len() >= HEADER {
        let length = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length < HEADER || length > rest.len() {
            break;
        }
        found.push((
            u16::from_ne_bytes([rest[4], rest[5]]),
            &rest[HEADER..length],
        ));
        // Messages are aligned to 4 bytes.
        rest = &rest[length.next_multiple_of(4).min(rest.len())..];
    }
    found
}

/// The local address in a `struct inet_diag_sockid`, read as `like`'s family.
fn local_address(id: &[u8; SOCKID], like: IpAddr) -> Option<IpAddr> {
    let source = &id[4..20];
    match like {
        IpAddr::V4(_) => <[u8; 4]>::try_from(&source[..4]).ok().map(IpAddr::from),
        IpAddr::V6(_) => <[u8; 16]>::try_from(source).ok().map(IpAddr::from),
    }
}

/// The (negative) errno of an `NLMSG_ERROR` body.
fn error_code(body: &[u8]) -> i32 {
    body.get(..4)
        .and_then(|code| code.try_into().ok())
        .map_or(0, i32::from_ne_bytes)
}

/// An `NLMSG_ERROR` body as an error.
fn error_of(body: &[u8]) -> std::io::Error {
    std::io::Error::from_raw_os_error(-error_code(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_netlink_message_of_the_kernels_layout() {
        let mut id = [0u8; SOCKID];
        id[0..2].copy_from_slice(&5125u16.to_be_bytes());
        let bytes = request(
            SOCK_DESTROY,
            NLM_F_REQUEST,
            "10.0.1.2".parse().unwrap(),
            !0,
            &id,
        );
        assert_eq!(bytes.len(), 72);
        let parsed = messages(&bytes);
        assert_eq!(parsed.len(), 1);
        let (kind, body) = parsed[0];
        assert_eq!(kind, SOCK_DESTROY);
        assert_eq!(body[0], u8::try_from(libc::AF_INET).unwrap());
        assert_eq!(body[1], u8::try_from(libc::IPPROTO_TCP).unwrap());
        assert_eq!(&body[8..10], &5125u16.to_be_bytes());
    }

    #[test]
    fn the_local_address_is_read_in_the_family_asked() {
        let mut id = [0u8; SOCKID];
        id[4..8].copy_from_slice(&[10, 0, 1, 2]);
        let v4: IpAddr = "10.0.1.2".parse().unwrap();
        assert_eq!(local_address(&id, v4), Some(v4));
        let v6: IpAddr = "::".parse().unwrap();
        assert_ne!(local_address(&id, v6), Some(v4));
    }
}
