//! Convert messages on a socket: read one whole message, whatever the segmentation.

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::codec::{self, DecodeError, HEADER_LEN, Message};

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed (or reset) before a whole message arrived.
    #[error("connection closed after {0} bytes, before a whole Convert message")]
    Closed(usize),
    /// The bytes are not a Convert message.
    #[error("{error}")]
    Decode {
        /// What is wrong with them.
        error: DecodeError,
        /// The bytes received, up to the message's length when the header gives it (a
        /// converter echoes them in its error, RFC 8803 section 6.2.8).
        received: Vec<u8>,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one Convert message. Returns it with the bytes that came after it in the same
/// reads (payload, to be forwarded first). Reads at most a message and one buffer more.
pub async fn read_message<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<(Message, Vec<u8>), WireError> {
    let mut received = Vec::with_capacity(2 * codec::MAX_MESSAGE_LEN);
    let mut chunk = [0u8; codec::MAX_MESSAGE_LEN];
    let mut needed = HEADER_LEN;
    let invalid = |error: DecodeError, received: &[u8], needed: usize| WireError::Decode {
        received: received[..received.len().min(needed)].to_vec(),
        error,
    };
    loop {
        if received.len() >= HEADER_LEN {
            needed = codec::message_len(&received)
                .map_err(|error| invalid(error, &received, HEADER_LEN))?;
        }
        if received.len() >= needed {
            let (message, used) =
                Message::decode(&received).map_err(|error| invalid(error, &received, needed))?;
            return Ok((message, received.split_off(used)));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(WireError::Closed(received.len()));
        }
        received.extend_from_slice(&chunk[..n]);
    }
}
