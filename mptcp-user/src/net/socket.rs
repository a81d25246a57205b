//! Sockets with options std does not offer: MPTCP, IP_TRANSPARENT, SO_LINGER 0, and the
//! kernel's identifiers of a socket. Built with socket2, then handed to tokio.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::OwnedFd,
    time::Duration,
};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};

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
    connecting(addr, mptcp, None, configure)?
        .connect(addr)
        .await
}

/// One source address to connect from, and how long to wait for it before the next
/// one is tried too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The local address to bind (an uplink's).
    pub source: IpAddr,
    /// How long this attempt runs alone.
    pub head_start: Duration,
}

/// Connects to `addr` from the first of `attempts` that answers: each starts when the
/// one before has had its head start without an answer, or has failed (RFC 8305's
/// connection racing, over source addresses instead of destination ones). The first
/// connected socket wins; the others are closed. Without attempts, or to an address of
/// another family, it is a plain [`connect`].
pub async fn connect_racing(
    addr: SocketAddr,
    mptcp: bool,
    attempts: &[Attempt],
    configure: impl Fn(&Socket) -> io::Result<()>,
) -> io::Result<TcpStream> {
    let attempts: Vec<&Attempt> = attempts
        .iter()
        .filter(|attempt| attempt.source.is_ipv4() == addr.is_ipv4())
        .collect();
    if attempts.is_empty() {
        return connect(addr, mptcp, configure).await;
    }
    let mut racing = JoinSet::new();
    let mut last_error = None;
    let mut waiting = attempts.into_iter();
    loop {
        let head_start = match waiting.next() {
            Some(attempt) => match connecting(addr, mptcp, Some(attempt.source), &configure) {
                Ok(socket) => {
                    racing.spawn(socket.connect(addr));
                    Some(attempt.head_start)
                }
                // A source that vanished (an uplink's address changed): the next one.
                Err(error) => {
                    last_error = Some(error);
                    continue;
                }
            },
            None => None,
        };
        if racing.is_empty() {
            break;
        }
        let head_start_over = async {
            match head_start {
                Some(head_start) => tokio::time::sleep(head_start).await,
                None => std::future::pending().await,
            }
        };
        // A failed attempt, or one whose head start is over, lets the next one start.
        tokio::select! {
            Some(finished) = racing.join_next() => match finished {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(error)) => last_error = Some(error),
                Err(join_error) => last_error = Some(io::Error::other(join_error)),
            },
            () = head_start_over => {}
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no source address to connect from")))
}

/// A socket for `addr` (MPTCP when `mptcp`), configured, bound to `source` if given,
/// ready to connect.
fn connecting(
    addr: SocketAddr,
    mptcp: bool,
    source: Option<IpAddr>,
    configure: impl FnOnce(&Socket) -> io::Result<()>,
) -> io::Result<tokio::net::TcpSocket> {
    let socket = stream_socket(addr, mptcp)?;
    configure(&socket)?;
    if let Some(source) = source {
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    Ok(tokio::net::TcpSocket::from_std_stream(
        std::net::TcpStream::from(OwnedFd::from(socket)),
    ))
}

/// A listening socket for `addr` with a queue of `backlog` connections: MPTCP when
/// `mptcp`; `[::]` serves IPv4 too. `transparent` sets IP_TRANSPARENT, so that it
/// accepts connections addressed to any destination the gateway's LAN program hands it;
/// an accepted socket's local address is then the client's original destination.
pub fn listen(
    addr: SocketAddr,
    mptcp: bool,
    transparent: bool,
    backlog: u32,
) -> io::Result<TcpListener> {
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
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    TcpListener::from_std(std::net::TcpListener::from(OwnedFd::from(socket)))
}

/// Makes the next close of `stream` send a reset instead of a FIN (SO_LINGER 0), also
/// when the process dies.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}

/// Undoes [`reset_on_close`]: the next close sends what is left, then a FIN.
pub fn close_normally(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(None);
}

/// TCP keepalive tuned so that a peer that stopped answering (every path of an MPTCP
/// connection dead) is given up after about `dead_after`: the first probe after half
/// of it idle, then three more a sixth apart. On MPTCP it reaches every subflow.
pub fn detect_dead_peer(stream: &TcpStream, dead_after: Duration) -> io::Result<()> {
    let first = (dead_after / 2).max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(first)
        .with_interval((dead_after / 6).max(Duration::from_secs(1)))
        .with_retries(3);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
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

    #[tokio::test]
    async fn racing_skips_sources_that_are_not_ours_and_binds_the_winner() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let attempt = |source: &str| Attempt {
            source: source.parse().unwrap(),
            head_start: Duration::from_secs(5),
        };
        // 203.0.113.9 is no address of this host: binding fails, the next one starts at
        // once instead of after its head start.
        let started = std::time::Instant::now();
        let stream = connect_racing(
            target,
            false,
            &[attempt("203.0.113.9"), attempt("127.0.0.3")],
            |_| Ok(()),
        )
        .await
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            stream.local_addr().unwrap().ip(),
            "127.0.0.3".parse::<IpAddr>().unwrap()
        );
        // IPv6 sources are skipped for an IPv4 destination: a plain connect.
        let plain = connect_racing(target, false, &[attempt("::1")], |_| Ok(()))
            .await
            .unwrap();
        assert_eq!(
            plain.local_addr().unwrap().ip(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test]
    async fn a_peer_without_mptcp_is_told_from_one_with_it() {
        for (listener_mptcp, expected) in [(true, true), (false, false)] {
            let listener =
                listen("127.0.0.1:0".parse().unwrap(), listener_mptcp, false, 16).unwrap();
            let target = listener.local_addr().unwrap();
            let stream = connect(target, true, |_| Ok(())).await.unwrap();
            assert_eq!(
                crate::sys::is_mptcp(&stream).unwrap(),
                expected,
                "MPTCP client, {} listener",
                if listener_mptcp { "MPTCP" } else { "TCP" }
            );
        }
    }

    #[tokio::test]
    async fn racing_fails_with_the_last_error_when_no_source_connects() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let attempts = [Attempt {
            source: "127.0.0.4".parse().unwrap(),
            head_start: Duration::from_millis(10),
        }];
        let error = connect_racing(closed, false, &attempts, |_| Ok(()))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn loopback_is_a_host_address_and_documentation_ranges_are_not() {
        assert!(is_host_address("127.0.0.1".parse().unwrap()));
        assert!(!is_host_address("203.0.113.77".parse().unwrap()));
    }
}
