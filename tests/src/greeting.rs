//! A server run by this process inside a testbed namespace: the greeting server, which
//! answers each connection with the address it came from, so that a test or benchmark
//! reads off who carried the connection (the converter, the client directly, or which
//! uplink); and its client, [`greeting`].

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use crate::netns::{Netns, enter};

/// A server greeting each connection with the address it came from (a line), then
/// closing it; it stops when dropped.
pub struct GreetingServer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl GreetingServer {
    /// Starts one in `netns` on `port` (every address).
    pub fn start(netns: &Netns, port: u16) -> anyhow::Result<Self> {
        let listener = listen_in(netns, port)?;
        // accept() wakes up now and then to see `stop`; a sleep between polls would cap
        // the rate at one connection per sleep.
        socket2::SockRef::from(&listener).set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Ok((mut stream, peer)) = listener.accept() {
                    let _ = writeln!(stream, "{}", peer.ip());
                }
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for GreetingServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A listener on every address of `netns`, at `port`.
pub fn listen_in(netns: &Netns, port: u16) -> anyhow::Result<TcpListener> {
    let name = netns.name().to_owned();
    thread::spawn(move || {
        enter(&name)?;
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
        socket.listen(4096)?;
        Ok(TcpListener::from(socket))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the listener thread panicked"))?
}

/// Connects to the greeting server at `server` and reads its greeting line, waiting at
/// most `patience` for each; returns the open connection and the line (the address the
/// server saw). Call it from a thread inside the client's namespace.
pub fn greeting(server: SocketAddr, patience: Duration) -> std::io::Result<(TcpStream, String)> {
    let stream = TcpStream::connect_timeout(&server, patience)?;
    stream.set_read_timeout(Some(patience))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((stream, line.trim().to_owned()))
}
