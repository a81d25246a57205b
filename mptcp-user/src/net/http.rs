//! The daemons' small read-only HTTP endpoints (metrics, the status page): one GET per
//! connection, answered and closed. Hand-written on tokio: a few paths, no body to
//! read, and limits we choose (connections at once, request size and time), which is
//! all an HTTP framework would add to two dozen lines.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use log::debug;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{limited, log_limit::LogLimit};

/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request read; a browser's is under two kilobytes.
const MAX_REQUEST: usize = 8192;
/// Connections served at once; beyond them new ones are closed at once, so that
/// whoever reaches the endpoint cannot take the daemon's open files.
pub const MAX_CONNECTIONS: usize = 16;
/// Accept failures (out of files, say) are logged at most this often.
static ACCEPT_FAILURES: LogLimit = LogLimit::new(1, Duration::from_secs(10));

/// What a request asks: its method, path and Host header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, say.
    pub method: String,
    /// The path, query included.
    pub path: String,
    /// The Host header, if any.
    pub host: Option<String>,
}

/// An answer: status line, content type and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// `200 OK`, say.
    pub status: &'static str,
    /// The Content-Type header.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A 200 answer of `content_type`.
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status: "200 OK",
            content_type,
            body: body.into(),
        }
    }

    /// A plain-text answer of `status`.
    pub fn text(status: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What answers an endpoint's requests.
pub trait Handler: Send + Sync {
    /// The answer to `request`.
    fn respond(&self, request: &Request) -> impl Future<Output = Response> + Send;
}

/// Listens on `address` for the endpoint `what` (for the error).
pub fn listen(address: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(address)
        .with_context(|| format!("cannot serve {what} on {address}"))?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Answers requests on `listener` with `handler`, each connection in a task of its own,
/// forever.
pub async fn serve<H: Handler + 'static>(listener: TcpListener, handler: Arc<H>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                limited!(ACCEPT_FAILURES, warn, "http: accept failed: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            debug!("http: {peer}: {MAX_CONNECTIONS} connections served already; closed");
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            if let Err(error) = answer(stream, handler.as_ref()).await {
                debug!("http: {peer}: {error:#}");
            }
            drop(permit);
        });
    }
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, handler: &impl Handler) -> anyhow::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut chunk).await?;
            anyhow::ensure!(read > 0, "closed before a whole request");
            request.extend_from_slice(&chunk[..read]);
            anyhow::ensure!(request.len() <= MAX_REQUEST, "request too long");
        }
        Ok(())
    })
    .await
    .context("no whole request in time")??;
    let response = handler.respond(&parse(&request)).await;
    // No Access-Control-Allow-Origin: another site's page cannot read the answers.
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&response.body).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The method, path and Host header of a request's head.
fn parse(head: &[u8]) -> Request {
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let mut words = lines.next().unwrap_or_default().split(' ');
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let host = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("host")
            .then(|| value.trim().to_owned())
    });
    Request { method, path, host }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Handler for Fixed {
        async fn respond(&self, request: &Request) -> Response {
            match request.path.as_str() {
                "/answer" => Response::ok("text/plain", "42\n"),
                _ => Response::text("404 Not Found", "no\n"),
            }
        }
    }

    #[test]
    fn a_request_head_gives_its_method_path_and_host() {
        let request = parse(b"GET /api/status HTTP/1.1\r\nhOsT: 192.168.1.1:8080\r\nX: y\r\n\r\n");
        assert_eq!(
            request,
            Request {
                method: "GET".to_owned(),
                path: "/api/status".to_owned(),
                host: Some("192.168.1.1:8080".to_owned()),
            }
        );
        assert_eq!(parse(b"\r\n\r\n"), Request::default());
    }

    #[tokio::test]
    async fn requests_get_the_handlers_answer() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), "test").unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Fixed)));
        let get = |path: &'static str| async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer
        };
        let answer = get("/answer").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("\r\nCache-Control: no-store\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with("\r\n\r\n42\n"), "{answer}");
        assert!(get("/").await.starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_at_once() {
        let listener = listen("127.0.0.1:0".parse().unwrap(), "test").unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Arc::new(Fixed)));
        // Connections that send nothing: the first ones wait for their request.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + 24 {
            idle.push(TcpStream::connect(address).await.unwrap());
        }
        // All at once, well within the request timeout of those served.
        let reads = idle.iter_mut().map(|stream| async move {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut byte));
            matches!(read.await, Ok(Ok(0) | Err(_)))
        });
        let closed = futures::future::join_all(reads)
            .await
            .into_iter()
            .filter(|&closed| closed)
            .count();
        assert_eq!(closed, 24, "connections closed at once");
    }
}
