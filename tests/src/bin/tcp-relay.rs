//! The smallest terminating relay chain, for `cargo xtask bench relay` to compare with:
//! what any relay that ends the LAN host's TCP connection on the gateway and opens a
//! new one on the converter host costs on this machine, with nothing of ours in it.
//!
//! - `tcp-relay near LISTEN FAR`: on the gateway host, a transparent listener (the
//!   testbed's tproxy rule sends it the LAN's flows, so each accepted socket's local
//!   address is the original destination); each flow is relayed to `FAR`, after a
//!   fixed-size header naming that destination.
//! - `tcp-relay far LISTEN`: on the converter host, reads the header, connects to the
//!   destination and relays.
//!
//! Two threads a flow, blocking read/write with 256 KiB buffers, plain TCP between
//! the hosts (`--mptcp`: MPTCP). No pool, no splice, no policy, no error handling
//! beyond ending the flow.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
};

use clap::{Parser, Subcommand};
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes of the header that names the destination (text, space-padded).
const HEADER: usize = 64;
/// Bytes each read asks for.
const BUFFER: usize = 256 * 1024;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    role: Role,
    /// Speak MPTCP between the two relays.
    #[arg(long, global = true)]
    mptcp: bool,
}

#[derive(Subcommand)]
enum Role {
    /// The gateway host's end: a transparent listener.
    Near { listen: SocketAddr, far: SocketAddr },
    /// The converter host's end.
    Far { listen: SocketAddr },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let between = if cli.mptcp {
        Protocol::MPTCP
    } else {
        Protocol::TCP
    };
    match cli.role {
        Role::Near { listen, far } => {
            let listener = listener(listen, Protocol::TCP, true)?;
            for lan in listener.incoming().flatten() {
                thread::spawn(move || -> anyhow::Result<()> {
                    let destination = lan.local_addr()?;
                    let socket =
                        Socket::new(Domain::for_address(far), Type::STREAM, Some(between))?;
                    socket.connect(&far.into())?;
                    let mut upstream = TcpStream::from(socket);
                    let mut header = format!("{destination:<HEADER$}").into_bytes();
                    header.truncate(HEADER);
                    upstream.write_all(&header)?;
                    relay(lan, upstream)
                });
            }
        }
        Role::Far { listen } => {
            let listener = listener(listen, between, false)?;
            for mut near in listener.incoming().flatten() {
                thread::spawn(move || -> anyhow::Result<()> {
                    let mut header = [0u8; HEADER];
                    near.read_exact(&mut header)?;
                    let destination: SocketAddr = std::str::from_utf8(&header)?.trim().parse()?;
                    relay(near, TcpStream::connect(destination)?)
                });
            }
        }
    }
    Ok(())
}

fn listener(
    address: SocketAddr,
    protocol: Protocol,
    transparent: bool,
) -> anyhow::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(protocol))?;
    socket.set_reuse_address(true)?;
    if transparent {
        socket.set_ip_transparent_v4(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Copies both ways until both ends closed.
fn relay(a: TcpStream, b: TcpStream) -> anyhow::Result<()> {
    let (a2, b2) = (a.try_clone()?, b.try_clone()?);
    let forward = thread::spawn(move || copy(a, b2));
    copy(b, a2);
    let _ = forward.join();
    Ok(())
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = vec![0u8; BUFFER];
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 || to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
