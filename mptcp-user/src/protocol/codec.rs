//! The 0-RTT TCP Convert Protocol (RFC 8803, version 1): a pure codec, no I/O.
//!
//! A Convert message is a 4-byte header followed by TLVs, all sized in 32-bit words:
//!
//! ```text
//! header: | version (8) | total length in words, header included (8) | magic 0x2263 (16) |
//! TLV:    | type (8)    | length in words, type and length included (8) | value ...       |
//! ```
//!
//! The client (our gateway) opens the connection with a message holding a Connect TLV
//! (destination port and IPv6 or IPv4-mapped address) and our Cookie TLV, then its data.
//! The converter answers with an Extended TCP Header TLV when the destination accepted
//! the connection, or an Error TLV before it closes.

use std::net::{Ipv6Addr, SocketAddr};

use thiserror::Error;

use crate::net::addr::{canonical, mapped};

/// The only protocol version there is.
pub const VERSION: u8 = 1;
/// Fixed value of the header's last 16 bits (8803 in hexadecimal).
pub const MAGIC: u16 = 0x2263;
/// Bytes in the fixed header.
pub const HEADER_LEN: usize = 4;
/// The total length is an 8-bit count of 32-bit words.
pub const MAX_MESSAGE_LEN: usize = 255 * 4;

const TLV_INFO: u8 = 0x01;
const TLV_CONNECT: u8 = 0x0a;
const TLV_EXTENDED_TCP_HEADER: u8 = 0x14;
const TLV_SUPPORTED_TCP_EXTENSIONS: u8 = 0x15;
const TLV_COOKIE: u8 = 0x16;
const TLV_ERROR: u8 = 0x1e;
// Our extension for inbound connections (docs/protocol.md, "Port forwards"), from the
// registry's Private Use range (192-255, RFC 8803 section 8.2): no other client or
// converter gives them a meaning, so none can mistake them for its own.
const TLV_FORWARD_CLAIM: u8 = 0xc0;
const TLV_FORWARD_STATUS: u8 = 0xc1;
const TLV_INBOUND: u8 = 0xc2;
/// Forward Claim TLV without ports: type, length, reserved (2), gateway identifier (16).
const FORWARD_CLAIM_MIN_LEN: usize = 20;
/// Inbound TLV: type, length, public port, client port, reserved (2), client address.
const INBOUND_LEN: usize = 24;

/// Connect TLV without TCP options: type, length, port (2), address (16).
const CONNECT_MIN_LEN: usize = 20;

/// TCP option kinds (RFC 8803, sections 6.2.4 and 7).
mod kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
    pub const MPTCP: u8 = 30;
}

/// What the Supported TCP Extensions TLV lists (section 6.2.4): SACK-permitted and
/// timestamps, which the converter's kernel puts in every SYN it sends, and MPTCP,
/// which it speaks with its clients. Kinds 0-3 and 5 must not be listed.
pub const SUPPORTED_TCP_EXTENSIONS: [u8; 3] = [kind::SACK_PERMITTED, kind::TIMESTAMPS, kind::MPTCP];

/// The delay the converter suggests in Resource Exceeded and Network Failure (section
/// 6.2.8: the Value is seconds to wait before retrying, and 0 means at least 30 s).
pub const RETRY_AFTER_SECS: u8 = 1;

/// Error codes of the Error TLV (RFC 8803, section 6.2.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 0: the version is not supported; the value carries the supported one.
    UnsupportedVersion,
    /// 1: the message could not be parsed.
    MalformedMessage,
    /// 2: a TLV type the converter does not know.
    UnsupportedMessage,
    /// 3: the converter requires a Cookie TLV and there was none.
    MissingCookie,
    /// 32: the cookie is wrong, or the destination is not allowed.
    NotAuthorized,
    /// 33: a requested TCP option is not supported.
    UnsupportedTcpOption,
    /// 64: the converter is out of resources (too many connections).
    ResourceExceeded,
    /// 65: the converter could not reach the destination's network (or timed out).
    NetworkFailure,
    /// 96: the destination answered with a reset.
    ConnectionReset,
    /// 97: the destination is unreachable.
    DestinationUnreachable,
    /// Any other code, kept so that it can be logged.
    Other(u8),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::UnsupportedVersion => 0,
            Self::MalformedMessage => 1,
            Self::UnsupportedMessage => 2,
            Self::MissingCookie => 3,
            Self::NotAuthorized => 32,
            Self::UnsupportedTcpOption => 33,
            Self::ResourceExceeded => 64,
            Self::NetworkFailure => 65,
            Self::ConnectionReset => 96,
            Self::DestinationUnreachable => 97,
            Self::Other(code) => code,
        }
    }

    /// The Error TLV's value when there is nothing more to say (section 6.2.8): the
    /// supported version; a retry delay (0 would mean "at least 30 s"); zero for the
    /// rest. Callers with more to say (the options refused, the ICMP code, the echo)
    /// build the TLV themselves.
    pub fn usual_value(self) -> Vec<u8> {
        match self {
            Self::UnsupportedVersion => vec![VERSION],
            Self::ResourceExceeded | Self::NetworkFailure => vec![RETRY_AFTER_SECS],
            _ => Vec::new(),
        }
    }

    /// The code for a number on the wire.
    pub fn from_u8(code: u8) -> Self {
        match code {
            0 => Self::UnsupportedVersion,
            1 => Self::MalformedMessage,
            2 => Self::UnsupportedMessage,
            3 => Self::MissingCookie,
            32 => Self::NotAuthorized,
            33 => Self::UnsupportedTcpOption,
            64 => Self::ResourceExceeded,
            65 => Self::NetworkFailure,
            96 => Self::ConnectionReset,
            97 => Self::DestinationUnreachable,
            other => Self::Other(other),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::UnsupportedVersion => "Unsupported Version",
            Self::MalformedMessage => "Malformed Message",
            Self::UnsupportedMessage => "Unsupported Message",
            Self::MissingCookie => "Missing Cookie",
            Self::NotAuthorized => "Not Authorized",
            Self::UnsupportedTcpOption => "Unsupported TCP Option",
            Self::ResourceExceeded => "Resource Exceeded",
            Self::NetworkFailure => "Network Failure",
            Self::ConnectionReset => "Connection Reset",
            Self::DestinationUnreachable => "Destination Unreachable",
            Self::Other(code) => return write!(f, "error code {code}"),
        };
        write!(f, "{name} ({})", self.to_u8())
    }
}

/// One TLV of a Convert message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tlv {
    /// Asks the converter which TCP extensions it supports.
    Info,
    /// The destination to connect to, with TCP options for the SYN (raw bytes).
    Connect {
        /// Destination address and port; IPv4 travels as an IPv4-mapped IPv6 address.
        destination: SocketAddr,
        /// TCP options to put in the SYN, padded to 32 bits on the wire.
        tcp_options: Vec<u8>,
    },
    /// The converter's answer after the destination accepted: TCP header bytes of the
    /// destination's SYN+ACK (we send none: sockets do not expose it).
    ExtendedTcpHeader(Vec<u8>),
    /// TCP option kinds the converter supports.
    SupportedTcpExtensions(Vec<u8>),
    /// Opaque authentication data (a whole number of 32-bit words).
    Cookie(Vec<u8>),
    /// Why the converter refused or failed.
    Error {
        /// The error code.
        code: ErrorCode,
        /// Code-specific value (e.g. the supported version), padded on the wire.
        value: Vec<u8>,
    },
    /// A gateway offers this connection for inbound flows to its public ports (our
    /// extension, [`super::forward`]).
    ForwardClaim {
        /// Which gateway: the first to claim a port keeps it.
        gateway: [u8; 16],
        /// The converter ports it asks for (never 0: a zero is padding).
        ports: Vec<u16>,
    },
    /// The converter's answer to a claim: each port and its [`super::forward::PortStatus`]
    /// number.
    ForwardStatus(Vec<(u16, u8)>),
    /// The converter hands the connection an inbound flow: from `client` to its public
    /// `port`.
    Inbound {
        /// The public port the client connected to.
        port: u16,
        /// The client's address and port; IPv4 travels IPv4-mapped.
        client: SocketAddr,
    },
}

impl Tlv {
    /// The TLV's name, as errors say it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Info => "Info",
            Self::Connect { .. } => "Connect",
            Self::ExtendedTcpHeader(_) => "Extended TCP Header",
            Self::SupportedTcpExtensions(_) => "Supported TCP Extensions",
            Self::Cookie(_) => "Cookie",
            Self::Error { .. } => "Error",
            Self::ForwardClaim { .. } => "Forward Claim",
            Self::ForwardStatus(_) => "Forward Status",
            Self::Inbound { .. } => "Inbound",
        }
    }
}

/// A Convert message: the TLVs after the header, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The TLVs, in the order they travel.
    pub tlvs: Vec<Tlv>,
}

/// Why bytes are not a valid Convert message.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or the total length says; more may arrive.
    #[error("message truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the message needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// A version other than 1.
    #[error("unsupported Convert version {0}")]
    UnsupportedVersion(u8),
    /// The header's magic number is not 0x2263.
    #[error("bad magic number {0:#06x}")]
    BadMagic(u16),
    /// The total length is shorter than the header itself.
    #[error("total length of {0} words is shorter than the header")]
    BadTotalLength(u8),
    /// A TLV with length 0, or one that runs past the end of the message.
    #[error("TLV at byte {offset} has a bad length")]
    BadTlvLength {
        /// Where the TLV starts.
        offset: usize,
    },
    /// A TLV whose value does not fit its type (e.g. a short Connect).
    #[error("malformed {kind} TLV at byte {offset}")]
    BadTlvValue {
        /// The TLV's name.
        kind: &'static str,
        /// Where the TLV starts.
        offset: usize,
    },
    /// A TLV type this implementation does not know.
    #[error("unknown TLV type {tlv_type:#04x} at byte {offset}")]
    UnknownTlv {
        /// The type on the wire.
        tlv_type: u8,
        /// Where the TLV starts.
        offset: usize,
    },
}

impl DecodeError {
    /// The Error TLV code a converter answers this error with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Self::UnknownTlv { .. } => ErrorCode::UnsupportedMessage,
            _ => ErrorCode::MalformedMessage,
        }
    }
}

/// Why a message cannot be encoded.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// Longer than the 1020 bytes the 8-bit total length can describe.
    #[error("message of {0} bytes exceeds the 1020-byte limit")]
    TooLong(usize),
}

/// Reads the header and returns the whole message's length in bytes, so that a reader
/// knows how much more to read. Fails on a bad version, magic or length.
pub fn message_len(header: &[u8]) -> Result<usize, DecodeError> {
    let header: [u8; HEADER_LEN] = header
        .get(..HEADER_LEN)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(DecodeError::Truncated {
            needed: HEADER_LEN,
            have: header.len(),
        })?;
    if header[0] != VERSION {
        return Err(DecodeError::UnsupportedVersion(header[0]));
    }
    let magic = u16::from_be_bytes([header[2], header[3]]);
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let words = header[1];
    if words < 1 {
        return Err(DecodeError::BadTotalLength(words));
    }
    Ok(usize::from(words) * 4)
}

impl Message {
    /// A message of these TLVs.
    pub fn new(tlvs: Vec<Tlv>) -> Self {
        Self { tlvs }
    }

    /// Encodes the message, padding every TLV to 32 bits.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = vec![VERSION, 0, 0, 0];
        out[2..4].copy_from_slice(&MAGIC.to_be_bytes());
        for tlv in &self.tlvs {
            encode_tlv(tlv, &mut out)?;
        }
        if out.len() > MAX_MESSAGE_LEN {
            return Err(EncodeError::TooLong(out.len()));
        }
        out[1] = u8::try_from(out.len() / 4).map_err(|_| EncodeError::TooLong(out.len()))?;
        Ok(out)
    }

    /// Decodes one message from the front of `bytes`; returns it and the number of
    /// bytes it took (what follows is payload). Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<(Self, usize), DecodeError> {
        let len = message_len(bytes)?;
        let message = bytes.get(..len).ok_or(DecodeError::Truncated {
            needed: len,
            have: bytes.len(),
        })?;
        let mut tlvs = Vec::new();
        let mut offset = HEADER_LEN;
        while offset < len {
            let (tlv, tlv_len) = decode_tlv(message, offset)?;
            tlvs.push(tlv);
            offset += tlv_len;
        }
        Ok((Self { tlvs }, len))
    }
}

fn encode_tlv(tlv: &Tlv, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    match tlv {
        Tlv::Info => out.extend_from_slice(&[TLV_INFO, 0, 0, 0]),
        Tlv::Connect {
            destination,
            tcp_options,
        } => {
            out.extend_from_slice(&[TLV_CONNECT, 0]);
            out.extend_from_slice(&destination.port().to_be_bytes());
            out.extend_from_slice(&mapped(destination.ip()).octets());
            out.extend_from_slice(tcp_options);
        }
        Tlv::ExtendedTcpHeader(header) => {
            out.extend_from_slice(&[TLV_EXTENDED_TCP_HEADER, 0, 0, 0]);
            out.extend_from_slice(header);
        }
        Tlv::SupportedTcpExtensions(kinds) => {
            out.extend_from_slice(&[TLV_SUPPORTED_TCP_EXTENSIONS, 0, 0, 0]);
            out.extend_from_slice(kinds);
        }
        Tlv::Cookie(opaque) => {
            out.extend_from_slice(&[TLV_COOKIE, 0, 0, 0]);
            out.extend_from_slice(opaque);
        }
        Tlv::Error { code, value } => {
            out.extend_from_slice(&[TLV_ERROR, 0, code.to_u8()]);
            out.extend_from_slice(value);
        }
        Tlv::ForwardClaim { gateway, ports } => {
            out.extend_from_slice(&[TLV_FORWARD_CLAIM, 0, 0, 0]);
            out.extend_from_slice(gateway);
            for port in ports {
                out.extend_from_slice(&port.to_be_bytes());
            }
        }
        Tlv::ForwardStatus(statuses) => {
            out.extend_from_slice(&[TLV_FORWARD_STATUS, 0, 0, 0]);
            for (port, status) in statuses {
                out.extend_from_slice(&port.to_be_bytes());
                out.extend_from_slice(&[*status, 0]);
            }
        }
        Tlv::Inbound { port, client } => {
            out.extend_from_slice(&[TLV_INBOUND, 0]);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&client.port().to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&mapped(client.ip()).octets());
        }
    }
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let tlv_len = out.len() - start;
    out[start + 1] = u8::try_from(tlv_len / 4).map_err(|_| EncodeError::TooLong(tlv_len))?;
    Ok(())
}

fn decode_tlv(message: &[u8], offset: usize) -> Result<(Tlv, usize), DecodeError> {
    let bad_length = DecodeError::BadTlvLength { offset };
    let (&tlv_type, &words) = message
        .get(offset)
        .zip(message.get(offset + 1))
        .ok_or(bad_length.clone())?;
    let tlv_len = usize::from(words) * 4;
    if tlv_len == 0 {
        return Err(bad_length);
    }
    let tlv = message.get(offset..offset + tlv_len).ok_or(bad_length)?;
    // Every TLV is at least one word, so bytes 2 and 3 exist.
    let after_reserved = &tlv[4..];
    let decoded = match tlv_type {
        TLV_INFO => Tlv::Info,
        TLV_CONNECT => {
            if tlv.len() < CONNECT_MIN_LEN {
                return Err(DecodeError::BadTlvValue {
                    kind: "Connect",
                    offset,
                });
            }
            let port = u16::from_be_bytes([tlv[2], tlv[3]]);
            let mut address = [0u8; 16];
            address.copy_from_slice(&tlv[4..20]);
            Tlv::Connect {
                destination: SocketAddr::new(canonical(Ipv6Addr::from(address).into()), port),
                tcp_options: tlv[CONNECT_MIN_LEN..].to_vec(),
            }
        }
        TLV_EXTENDED_TCP_HEADER => Tlv::ExtendedTcpHeader(after_reserved.to_vec()),
        // Kind 0 is never listed (section 6.2.4): trailing zeros are padding.
        TLV_SUPPORTED_TCP_EXTENSIONS => {
            let listed = after_reserved.len()
                - after_reserved
                    .iter()
                    .rev()
                    .take_while(|&&kind| kind == 0)
                    .count();
            Tlv::SupportedTcpExtensions(after_reserved[..listed].to_vec())
        }
        TLV_COOKIE => Tlv::Cookie(after_reserved.to_vec()),
        TLV_ERROR => Tlv::Error {
            code: ErrorCode::from_u8(tlv[2]),
            value: tlv[3..].to_vec(),
        },
        TLV_FORWARD_CLAIM => {
            let bad = DecodeError::BadTlvValue {
                kind: "Forward Claim",
                offset,
            };
            let gateway = tlv
                .get(4..FORWARD_CLAIM_MIN_LEN)
                .and_then(|id| id.try_into().ok())
                .ok_or(bad)?;
            Tlv::ForwardClaim {
                gateway,
                ports: tlv[FORWARD_CLAIM_MIN_LEN..]
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                    .filter(|&port| port != 0)
                    .collect(),
            }
        }
        TLV_FORWARD_STATUS => Tlv::ForwardStatus(
            after_reserved
                .chunks_exact(4)
                .map(|entry| (u16::from_be_bytes([entry[0], entry[1]]), entry[2]))
                .collect(),
        ),
        TLV_INBOUND => {
            if tlv.len() != INBOUND_LEN {
                return Err(DecodeError::BadTlvValue {
                    kind: "Inbound",
                    offset,
                });
            }
            let mut address = [0u8; 16];
            address.copy_from_slice(&tlv[8..INBOUND_LEN]);
            Tlv::Inbound {
                port: u16::from_be_bytes([tlv[2], tlv[3]]),
                client: SocketAddr::new(
                    canonical(Ipv6Addr::from(address).into()),
                    u16::from_be_bytes([tlv[4], tlv[5]]),
                ),
            }
        }
        tlv_type => return Err(DecodeError::UnknownTlv { tlv_type, offset }),
    };
    Ok((decoded, tlv_len))
}

/// Judges the TCP options of a Connect TLV (section 6.2.5 and 7): EOL ends the list
/// and NOP is skipped (neither should be there); MSS, window scale and SACK, which the
/// converter's kernel chooses for itself, are ignored as section 7 says; SACK-permitted
/// and timestamps are what its kernel sends anyway; anything else is unsupported.
/// Returns the unsupported kinds.
pub fn unsupported_tcp_options(options: &[u8]) -> Result<Vec<u8>, RequestError> {
    let mut unsupported = Vec::new();
    let mut at = 0;
    while let Some(&option) = options.get(at) {
        match option {
            kind::EOL => break,
            kind::NOP => at += 1,
            _ => {
                let len = usize::from(*options.get(at + 1).ok_or(RequestError::BadTcpOptions)?);
                if len < 2 || at + len > options.len() {
                    return Err(RequestError::BadTcpOptions);
                }
                let ignored = [
                    kind::MSS,
                    kind::WINDOW_SCALE,
                    kind::SACK,
                    kind::SACK_PERMITTED,
                    kind::TIMESTAMPS,
                ];
                if !ignored.contains(&option) && !unsupported.contains(&option) {
                    unsupported.push(option);
                }
                at += len;
            }
        }
    }
    Ok(unsupported)
}

/// What a gateway asks of the converter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The original destination of the intercepted connection.
    pub destination: SocketAddr,
    /// The Cookie TLV's opaque bytes (authentication), if any.
    pub cookie: Option<Vec<u8>>,
}

/// Why a well-formed message is not a usable request.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RequestError {
    /// No Connect TLV (and no Info TLV either).
    #[error("no Connect TLV")]
    NoConnect,
    /// Only an Info TLV: the client asks what the converter supports.
    #[error("an Info request")]
    InfoOnly,
    /// A TLV that may appear once appeared again (section 6.2.1).
    #[error("more than one {0} TLV")]
    Repeated(&'static str),
    /// The Connect TLV asks for TCP options the converter does not support.
    #[error("unsupported TCP options {0:?} in the Connect TLV")]
    UnsupportedTcpOptions(Vec<u8>),
    /// The Connect TLV's TCP options are not a list of options.
    #[error("malformed TCP options in the Connect TLV")]
    BadTcpOptions,
    /// A TLV only a converter sends (Extended TCP Header, Supported TCP Extensions,
    /// Error).
    #[error("a {0} TLV in a request")]
    NotARequestTlv(&'static str),
    /// A Forward Claim of more ports than the answer has room for.
    #[error("a claim of {0} ports, more than {max}", max = super::forward::MAX_PORTS)]
    TooManyPorts(usize),
}

impl RequestError {
    /// The Error TLV code a converter answers this error with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::UnsupportedTcpOptions(_) => ErrorCode::UnsupportedTcpOption,
            Self::NotARequestTlv(_) => ErrorCode::UnsupportedMessage,
            Self::NoConnect
            | Self::InfoOnly
            | Self::Repeated(_)
            | Self::BadTcpOptions
            | Self::TooManyPorts(_) => ErrorCode::MalformedMessage,
        }
    }
}

impl Request {
    /// The request as a message: Connect, then Cookie.
    pub fn to_message(&self) -> Message {
        let mut tlvs = vec![Tlv::Connect {
            destination: self.destination,
            tcp_options: Vec::new(),
        }];
        if let Some(cookie) = &self.cookie {
            tlvs.push(Tlv::Cookie(cookie.clone()));
        }
        Message::new(tlvs)
    }

    /// Reads a request out of a decoded message: one Connect TLV, at most one Cookie
    /// and one Info TLV (section 6.2.1: a TLV appears once), TCP options judged by
    /// [`unsupported_tcp_options`].
    pub fn from_message(message: &Message) -> Result<Self, RequestError> {
        let mut destination = None;
        let mut cookie = None;
        let mut info = false;
        for tlv in &message.tlvs {
            match tlv {
                Tlv::Connect { .. } if destination.is_some() => {
                    return Err(RequestError::Repeated("Connect"));
                }
                Tlv::Connect {
                    destination: found,
                    tcp_options,
                } => {
                    let unsupported = unsupported_tcp_options(tcp_options)?;
                    if !unsupported.is_empty() {
                        return Err(RequestError::UnsupportedTcpOptions(unsupported));
                    }
                    destination = Some(*found);
                }
                Tlv::Cookie(_) if cookie.is_some() => return Err(RequestError::Repeated("Cookie")),
                Tlv::Cookie(opaque) => cookie = Some(opaque.clone()),
                Tlv::Info if info => return Err(RequestError::Repeated("Info")),
                Tlv::Info => info = true,
                other => return Err(RequestError::NotARequestTlv(other.name())),
            }
        }
        match destination {
            Some(destination) => Ok(Self {
                destination,
                cookie,
            }),
            None if info => Err(RequestError::InfoOnly),
            None => Err(RequestError::NoConnect),
        }
    }

    /// Whether `message` asks for the supported TCP extensions (an Info TLV).
    pub fn asks_info(message: &Message) -> bool {
        message.tlvs.contains(&Tlv::Info)
    }
}

/// What the converter answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The destination accepted; bytes that follow are the destination's.
    Connected,
    /// The converter refused or failed, and closes.
    Error(ErrorCode),
}

impl Response {
    /// The response as a message.
    pub fn to_message(&self) -> Message {
        match self {
            Self::Connected => Message::new(vec![Tlv::ExtendedTcpHeader(Vec::new())]),
            Self::Error(code) => Message::new(vec![Tlv::Error {
                code: *code,
                value: code.usual_value(),
            }]),
        }
    }

    /// Reads the response out of a decoded message: the first Error TLV wins; a
    /// message without one means success.
    pub fn from_message(message: &Message) -> Self {
        message
            .tlvs
            .iter()
            .find_map(|tlv| match tlv {
                Tlv::Error { code, .. } => Some(Self::Error(*code)),
                _ => None,
            })
            .unwrap_or(Self::Connected)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn connect_to_ipv4_destination_matches_rfc_layout() {
        // RFC 8803 figures: header, then a 5-word Connect TLV with an IPv4-mapped address.
        let request = Request {
            destination: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 80)),
            cookie: None,
        };
        let bytes = request.to_message().encode().unwrap();
        let expected = [
            1, 6, 0x22, 0x63, // version 1, 6 words, magic
            0x0a, 5, 0, 80, // Connect, 5 words, port 80
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1, // ::ffff:192.0.2.1
        ];
        assert_eq!(bytes, expected);
        let (decoded, used) = Message::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(Request::from_message(&decoded).unwrap(), request);
    }

    #[test]
    fn error_tlv_is_one_word_and_round_trips() {
        let bytes = Response::Error(ErrorCode::NotAuthorized)
            .to_message()
            .encode()
            .unwrap();
        assert_eq!(bytes, [1, 2, 0x22, 0x63, 0x1e, 1, 32, 0]);
        let (message, _) = Message::decode(&bytes).unwrap();
        assert_eq!(
            Response::from_message(&message),
            Response::Error(ErrorCode::NotAuthorized)
        );
    }

    #[test]
    fn success_response_carries_no_error() {
        let bytes = Response::Connected.to_message().encode().unwrap();
        assert_eq!(bytes, [1, 2, 0x22, 0x63, 0x14, 1, 0, 0]);
        let (message, _) = Message::decode(&bytes).unwrap();
        assert_eq!(Response::from_message(&message), Response::Connected);
    }

    #[test]
    fn payload_after_the_message_is_left_alone() {
        let mut bytes = Response::Connected.to_message().encode().unwrap();
        bytes.extend_from_slice(b"HTTP/1.1 200 OK");
        let (_, used) = Message::decode(&bytes).unwrap();
        assert_eq!(&bytes[used..], b"HTTP/1.1 200 OK");
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        assert_eq!(
            message_len(&[2, 1, 0x22, 0x63]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(message_len(&[1, 1, 0, 0]), Err(DecodeError::BadMagic(0)));
        assert_eq!(
            message_len(&[1, 0, 0x22, 0x63]),
            Err(DecodeError::BadTotalLength(0))
        );
        assert!(matches!(
            message_len(&[1, 1]),
            Err(DecodeError::Truncated { needed: 4, have: 2 })
        ));
        assert_eq!(
            DecodeError::UnsupportedVersion(2).error_code(),
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn bad_tlvs_are_typed_errors() {
        // Zero-length TLV.
        assert_eq!(
            Message::decode(&[1, 2, 0x22, 0x63, 0x0a, 0, 0, 0]),
            Err(DecodeError::BadTlvLength { offset: 4 })
        );
        // TLV longer than the message.
        assert_eq!(
            Message::decode(&[1, 2, 0x22, 0x63, 0x16, 3, 0, 0]),
            Err(DecodeError::BadTlvLength { offset: 4 })
        );
        // Connect too short for an address.
        assert_eq!(
            Message::decode(&[1, 2, 0x22, 0x63, 0x0a, 1, 0, 80]),
            Err(DecodeError::BadTlvValue {
                kind: "Connect",
                offset: 4
            })
        );
        let unknown = Message::decode(&[1, 2, 0x22, 0x63, 0x42, 1, 0, 0]).unwrap_err();
        assert_eq!(unknown.error_code(), ErrorCode::UnsupportedMessage);
    }

    #[test]
    fn requests_carry_each_tlv_once_and_info_alone_is_a_question() {
        assert_eq!(
            Request::from_message(&Message::new(vec![Tlv::Info])),
            Err(RequestError::InfoOnly)
        );
        assert_eq!(
            Request::from_message(&Message::default()),
            Err(RequestError::NoConnect)
        );
        let connect = Tlv::Connect {
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            tcp_options: Vec::new(),
        };
        for repeated in [connect.clone(), Tlv::Info, Tlv::Cookie(vec![1; 4])] {
            let mut tlvs = vec![connect.clone(), Tlv::Info, Tlv::Cookie(vec![1; 4])];
            tlvs.push(repeated);
            let error = Request::from_message(&Message::new(tlvs)).unwrap_err();
            assert!(matches!(error, RequestError::Repeated(_)), "{error:?}");
            assert_eq!(error.error_code(), ErrorCode::MalformedMessage);
        }
        let with_info = Message::new(vec![Tlv::Info, connect]);
        assert!(Request::from_message(&with_info).is_ok());
        assert!(Request::asks_info(&with_info));
        let answer_tlv = Message::new(vec![Tlv::ExtendedTcpHeader(Vec::new())]);
        assert_eq!(
            Request::from_message(&answer_tlv).unwrap_err().error_code(),
            ErrorCode::UnsupportedMessage
        );
    }

    #[test]
    fn tcp_options_are_ignored_accepted_or_refused_as_the_rfc_says() {
        // EOL, NOP, MSS, window scale, SACK: ignored; SACK-permitted, timestamps: ours.
        let fine = [
            1, 1, 2, 4, 5, 0xb4, 3, 3, 7, 4, 2, 8, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(unsupported_tcp_options(&fine), Ok(Vec::new()));
        assert_eq!(unsupported_tcp_options(&[0, 0, 0, 0]), Ok(Vec::new()));
        // TCP-AO (29), MPTCP (30) towards the destination, TFO (34): refused, named.
        assert_eq!(
            unsupported_tcp_options(&[29, 4, 0, 0, 30, 2, 34, 2, 29, 2]),
            Ok(vec![29, 30, 34])
        );
        // A length running past the list, or below 2.
        assert_eq!(
            unsupported_tcp_options(&[2, 8, 0, 0]),
            Err(RequestError::BadTcpOptions)
        );
        assert_eq!(
            unsupported_tcp_options(&[8, 1]),
            Err(RequestError::BadTcpOptions)
        );
        let refused = Message::new(vec![Tlv::Connect {
            destination: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
            tcp_options: vec![34, 2, 0, 0],
        }]);
        let error = Request::from_message(&refused).unwrap_err();
        assert_eq!(error, RequestError::UnsupportedTcpOptions(vec![34]));
        assert_eq!(error.error_code(), ErrorCode::UnsupportedTcpOption);
    }

    #[test]
    fn error_values_say_what_the_rfc_asks() {
        let value = |code| match &Response::Error(code).to_message().tlvs[0] {
            Tlv::Error { value, .. } => value.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(value(ErrorCode::UnsupportedVersion), [VERSION]);
        // A retry delay, not 0 ("at least 30 s").
        assert_eq!(value(ErrorCode::ResourceExceeded), [RETRY_AFTER_SECS]);
        assert_eq!(value(ErrorCode::NetworkFailure), [RETRY_AFTER_SECS]);
        const { assert!(RETRY_AFTER_SECS > 0) };
        assert!(value(ErrorCode::NotAuthorized).is_empty());
        // Kinds 0-3 and 5 are never listed as supported; MPTCP is.
        assert!(!SUPPORTED_TCP_EXTENSIONS.iter().any(|&k| k <= 3 || k == 5));
        assert!(SUPPORTED_TCP_EXTENSIONS.contains(&30));
    }

    #[test]
    fn oversized_messages_are_refused() {
        let message = Message::new(vec![Tlv::Cookie(vec![0; 1100])]);
        assert!(matches!(message.encode(), Err(EncodeError::TooLong(_))));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(|b| canonical(Ipv6Addr::from(b).into())),
        ]
    }

    fn any_tlv() -> impl Strategy<Value = Tlv> {
        // Values are whole words with a non-zero last byte, so padding cannot blur them.
        let words = || {
            prop::collection::vec(any::<[u8; 3]>(), 0..8).prop_map(|chunks| {
                chunks
                    .into_iter()
                    .flat_map(|[a, b, c]| [a, b, c, 1])
                    .collect::<Vec<u8>>()
            })
        };
        prop_oneof![
            Just(Tlv::Info),
            (any_ip(), any::<u16>()).prop_map(|(ip, port)| Tlv::Connect {
                destination: SocketAddr::new(ip, port),
                tcp_options: Vec::new(),
            }),
            words().prop_map(Tlv::ExtendedTcpHeader),
            words().prop_map(Tlv::SupportedTcpExtensions),
            words().prop_map(Tlv::Cookie),
            (any::<u8>(), words()).prop_map(|(code, mut value)| {
                // Type, length and code take three bytes of the first word; one value
                // byte completes it, so the value needs no padding.
                value.insert(0, 7);
                Tlv::Error {
                    code: ErrorCode::from_u8(code),
                    value,
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(tlvs in prop::collection::vec(any_tlv(), 0..6)) {
            let message = Message::new(tlvs);
            let bytes = message.encode().unwrap();
            prop_assert_eq!(bytes.len() % 4, 0);
            let (decoded, used) = Message::decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded, message);
        }

        #[test]
        fn any_bytes_decode_to_a_value_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn any_bytes_after_a_valid_header_never_panic(
            words in 1u8..=12,
            body in prop::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut bytes = vec![VERSION, words, 0x22, 0x63];
            bytes.extend(body);
            if let Ok((message, used)) = Message::decode(&bytes) {
                prop_assert_eq!(used, usize::from(words) * 4);
                let _ = Request::from_message(&message);
            }
        }
    }
}
