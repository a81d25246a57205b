//! The converter's request handling, served on loopback by [`serve`] as the daemon
//! serves it, without root: plain TCP clients (as MPTCP clients that fell back) and a
//! destination on 127.0.0.1.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{Converter, serve};
use crate::{
    bpf::tuning::Tuning,
    config::ConverterOptions,
    protocol::{
        codec::{ErrorCode, Request, Response},
        cookie::{KEY_LEN, Key, unix_now},
        wire,
    },
};

const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

/// A converter on 127.0.0.1 that allows loopback destinations, and its task.
async fn converter() -> (SocketAddr, Arc<Converter>, JoinHandle<()>) {
    let config = ConverterOptions {
        key_file: Some("/nonexistent".into()),
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        request_timeout: Some(1),
        ..ConverterOptions::default()
    }
    .into_config()
    .unwrap();
    let tuning = Tuning::new(&config.tuning).unwrap();
    // Not loopback: the converter refuses its own addresses even where allowed.
    let own = vec!["198.51.100.7".parse().unwrap()];
    let converter = Arc::new(
        Converter::with_key(&config, Key::from_bytes(KEY), unix_now() - 1, own, tuning).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = tokio::spawn(serve(
        listener,
        Arc::clone(&converter),
        std::future::pending(),
    ));
    (address, converter, served)
}

/// A destination that answers each connection's bytes upper-cased, until it closes.
async fn shouting_destination() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                    buffer[..n].make_ascii_uppercase();
                    if stream.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// A request for `destination`, signed with `key` if given, followed by `early`.
fn request(destination: SocketAddr, key: Option<[u8; KEY_LEN]>, early: &[u8]) -> Vec<u8> {
    let request = Request {
        destination,
        cookie: key.map(|key| {
            Key::from_bytes(key)
                .cookie(destination, unix_now())
                .unwrap()
        }),
    };
    let mut bytes = request.to_message().encode().unwrap();
    bytes.extend_from_slice(early);
    bytes
}

/// Sends `bytes` to the converter and reads its answer and whatever follows it.
async fn ask(converter: SocketAddr, bytes: &[u8]) -> (TcpStream, Response, Vec<u8>) {
    let mut stream = TcpStream::connect(converter).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let (message, after) =
        tokio::time::timeout(Duration::from_secs(5), wire::read_message(&mut stream))
            .await
            .expect("an answer within 5 s")
            .expect("a valid answer");
    (stream, Response::from_message(&message), after)
}

#[tokio::test]
async fn a_request_with_the_key_is_relayed_to_its_destination_both_ways() {
    let (converter, _, served) = converter().await;
    let destination = shouting_destination().await;
    let (mut stream, response, mut received) =
        ask(converter, &request(destination, Some(KEY), b"hello, ")).await;
    assert_eq!(response, Response::Connected);
    stream.write_all(b"world").await.unwrap();
    let mut buffer = [0u8; 64];
    while received.len() < b"HELLO, WORLD".len() {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("the destination's answer within 5 s")
            .unwrap();
        assert_ne!(n, 0, "closed after {received:?}");
        received.extend_from_slice(&buffer[..n]);
    }
    assert_eq!(received, b"HELLO, WORLD");
    served.abort();
}

#[tokio::test]
async fn bad_requests_get_the_rfc_error_code_and_nothing_else() {
    let (converter, state, served) = converter().await;
    let destination = shouting_destination().await;
    let cases = [
        (
            "no cookie",
            request(destination, None, b""),
            ErrorCode::MissingCookie,
        ),
        (
            "another key",
            request(destination, Some([8; KEY_LEN]), b""),
            ErrorCode::NotAuthorized,
        ),
        (
            "a refused destination",
            request("10.0.0.1:80".parse().unwrap(), Some(KEY), b""),
            ErrorCode::NotAuthorized,
        ),
        (
            "version 2",
            vec![2, 1, 0x22, 0x63],
            ErrorCode::UnsupportedVersion,
        ),
        (
            "nothing within the request timeout",
            Vec::new(),
            ErrorCode::MalformedMessage,
        ),
    ];
    for (what, bytes, expected) in cases {
        let (mut stream, response, after) = ask(converter, &bytes).await;
        assert_eq!(response, Response::Error(expected), "{what}");
        assert!(after.is_empty(), "{what}: bytes after the error: {after:?}");
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(
            matches!(closed.await, Ok(Ok(0))),
            "{what}: not closed after the error"
        );
    }
    let text = state.metrics.text();
    assert!(
        text.contains(r#"mptcp_converter_errors_total{code="32",error="Not Authorized"} 2"#),
        "{text}"
    );
    served.abort();
}

#[tokio::test]
async fn a_wrong_magic_number_is_reset_without_an_answer() {
    let (converter, _, served) = converter().await;
    let mut stream = TcpStream::connect(converter).await.unwrap();
    stream.write_all(&[1, 1, 0x12, 0x34]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s");
    assert!(answer.is_empty(), "answered {answer:?}");
    assert_eq!(
        read.map_err(|error| error.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    served.abort();
}
