//! The converter's whole request handler (read, decode, authenticate, check the
//! destination) on arbitrary bytes, as a stranger on the internet would send them.
//!
//! An input whose first byte is odd has its request, if it decodes to one, signed with
//! the converter's key, so that the fuzzer also explores what lies past authentication:
//! the destination policy and the early data.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mptcp_user::{
    bpf::tuning::Tuning,
    config::ConverterOptions,
    converter::{Asked, Converter, ReadRequest, read_request},
    protocol::{
        codec::{Message, Request},
        cookie::{KEY_LEN, Key, unix_now},
        speedtest,
    },
};

const KEY: [u8; KEY_LEN] = [7; KEY_LEN];

static CONVERTER: LazyLock<Converter> = LazyLock::new(|| {
    let config = ConverterOptions {
        key_file: Some("/nonexistent".into()),
        ..ConverterOptions::default()
    }
    .into_config()
    .expect("the default converter config");
    let tuning = Tuning::new(&config.tuning).expect("the default tuning");
    let own = vec!["198.51.100.7".parse().expect("an address")];
    // Started a second ago: the cookies signed now are after its start.
    Converter::with_key(&config, Key::from_bytes(KEY), unix_now() - 1, own, tuning)
        .expect("a converter")
});

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let input = if flag & 1 == 1 {
        signed(rest)
    } else {
        rest.to_vec()
    };
    let mut reader: &[u8] = &input;
    let stranger = std::net::IpAddr::from([192, 0, 2, 1]);
    let read = RUNTIME.block_on(read_request(&mut reader, stranger, &CONVERTER));
    // A claim of public ports is never accepted: only requests are signed here.
    assert!(!matches!(read, Ok(Asked::Forward(..))));
    if let Ok(Asked::Convert(ReadRequest {
        request,
        early_data,
        ..
    })) = read
    {
        // Accepted: a destination the policy allows, or a gateway's speed test, which
        // only a request with a valid cookie gets (only signed inputs have one). And
        // the early data is what followed the message.
        let speed_test = speedtest::asked(request.destination);
        assert!(
            (speed_test && flag & 1 == 1 && request.cookie.is_some())
                || (!speed_test && CONVERTER.policy.check(request.destination).is_ok())
        );
        assert!(early_data.len() < input.len());
    }
});

/// `rest` with its request (if it is one) carrying a valid cookie.
fn signed(rest: &[u8]) -> Vec<u8> {
    let Ok((message, used)) = Message::decode(rest) else {
        return rest.to_vec();
    };
    let Ok(mut request) = Request::from_message(&message) else {
        return rest.to_vec();
    };
    let Ok(cookie) = Key::from_bytes(KEY).cookie(request.destination, unix_now()) else {
        return rest.to_vec();
    };
    request.cookie = Some(cookie);
    let Ok(mut bytes) = request.to_message().encode() else {
        return rest.to_vec();
    };
    bytes.extend_from_slice(&rest[used..]);
    bytes
}
