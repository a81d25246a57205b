//! Sockets with options std does not offer: MPTCP, IP_TRANSPARENT, SO_LINGER 0, and the
//! kernel's identifiers of a socket. Built with socket2, then handed to tokio.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// A non-blocking stream socket of `addr`'s family: MPTCP when `mptcp`, else TCP.
fn stream_socket(addr: SocketAddr, mptcp: bool) -> io::Result<Socket> {
    let protocol = if mptcp {
        Protocol::MPTCP
    } else {
        Protocol::TCP
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(protocol))?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Connects a socket (MPTCP when `mptcp`) to `addr`, after `configure` has set its
/// options; callers bound the wait. The kernel falls back to plain TCP by itself when the
/// peer does not speak MPTCP.
pub async fn connect(
    addr: SocketAddr,
    mptcp: bool,
    configure: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let socket = stream_socket(addr, mptcp)?;
    configure(&socket)?;
    let socket =
        tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(OwnedFd::from(socket)));
    socket.connect(addr).await
}

/// A listening socket for `addr`: MPTCP when `mptcp`; `[::]` serves IPv4 too.
/// `transparent` sets IP_TRANSPARENT, so that it accepts connections addressed to any
/// destination the gateway's LAN program hands it; an accepted socket's local address is
/// then the client's original destination.
pub fn listen(addr: SocketAddr, mptcp: bool, transparent: bool) -> io::Result<TcpListener> {
    let socket = stream_socket(addr, mptcp)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
        if transparent {
            socket.set_ip_transparent_v6(true)?;
        }
    }
    if transparent {
        // IPv4 (and IPv4-mapped on a dual-stack socket) needs the IPv4-level option.
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(std::net::TcpListener::from(OwnedFd::from(socket)))
}

/// Makes the next close of `stream` send a reset instead of a FIN (SO_LINGER 0).
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// The kernel's cookie of a socket (`SO_COOKIE`): the key BPF programs see for it.
pub fn cookie(stream: &TcpStream) -> io::Result<u64> {
    SockRef::from(stream).cookie()
}

/// Whether `ip` is an address of this host now: a socket can bind to it without
/// IP_TRANSPARENT or IP_FREEBIND only if it is.
pub fn is_host_address(ip: IpAddr) -> bool {
    let address = SocketAddr::new(ip, 0);
    Socket::new(Domain::for_address(address), Type::DGRAM, None)
        .and_then(|socket| socket.bind(&address.into()))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_a_host_address_and_documentation_ranges_are_not() {
        assert!(is_host_address("127.0.0.1".parse().unwrap()));
        assert!(!is_host_address("203.0.113.77".parse().unwrap()));
    }
}
