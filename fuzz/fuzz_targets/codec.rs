//! The Convert codec on arbitrary bytes: decoding never panics, and whatever decodes
//! encodes back to a message that decodes to the same thing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mptcp_user::protocol::codec::{Message, Request, Response, message_len};

fuzz_target!(|data: &[u8]| {
    let _ = message_len(data);
    let Ok((message, used)) = Message::decode(data) else {
        return;
    };
    assert!(used <= data.len());
    if let Ok(bytes) = message.encode() {
        let (again, again_used) = Message::decode(&bytes).expect("an encoded message decodes");
        assert_eq!(again, message);
        assert_eq!(again_used, bytes.len());
    }
    if let Ok(request) = Request::from_message(&message) {
        let again = Request::from_message(&request.to_message())
            .expect("a request's own message is a request");
        assert_eq!(again, request);
    }
    let _ = Response::from_message(&message);
});
