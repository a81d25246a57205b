//! Our extension of the Convert protocol for inbound connections (port forwards), where
//! RFC 8803 has nothing: the converter's clients only ever connect out.
//!
//! A gateway opens an MPTCP connection to its converter and sends a claim (a Forward
//! Claim TLV: its identifier and the public ports it asks for, and a Cookie TLV over
//! both). The converter answers with a Forward Status TLV, one status per port, and
//! keeps the connection idle. When an outside client connects to one of those ports,
//! the converter writes an Inbound TLV (the port and the client's address) on an idle
//! connection of the port's gateway, and from then on relays the client's bytes on it.
//! docs/protocol.md has the bytes.

use std::net::SocketAddr;

use super::codec::{Message, RequestError, Tlv};

/// Connections on offer a converter keeps per gateway: a newer one retires the oldest
/// idle one, which the converter closes. A gateway replaces its connections by offering
/// new ones, not by closing idle ones itself (only when it moves to another converter,
/// or stops): the converter may be handing it an inbound connection that very moment,
/// whose client would then get nothing.
pub const OFFERS_KEPT: usize = 4;
/// Most ports one gateway may claim: the converter's answer, 4 bytes a port, fits in
/// one message with room to spare.
pub const MAX_PORTS: usize = 64;

/// A gateway's identifier: random, kept in its state directory, so that the converter
/// tells two gateways that share a key apart and gives a port to the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GatewayId(pub [u8; 16]);

impl std::fmt::Display for GatewayId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The first half is enough for a log line.
        self.0[..8]
            .iter()
            .try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

/// A gateway's claim of public ports on the converter, on a connection it offers for
/// inbound flows to them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Who claims.
    pub gateway: GatewayId,
    /// The public ports, as the gateway's forwards list them.
    pub ports: Vec<u16>,
    /// The Cookie TLV's value.
    pub cookie: Option<Vec<u8>>,
}

impl Claim {
    /// What the cookie covers: the identifier, then each port (big-endian).
    pub fn subject(&self) -> Vec<u8> {
        let mut subject = self.gateway.0.to_vec();
        for port in &self.ports {
            subject.extend_from_slice(&port.to_be_bytes());
        }
        subject
    }

    /// The claim as a message.
    pub fn to_message(&self) -> Message {
        let mut tlvs = vec![Tlv::ForwardClaim {
            gateway: self.gateway.0,
            ports: self.ports.clone(),
        }];
        if let Some(cookie) = &self.cookie {
            tlvs.push(Tlv::Cookie(cookie.clone()));
        }
        Message::new(tlvs)
    }

    /// The claim in `message`; `None` when it has no Forward Claim TLV (a Convert
    /// request, say). Beside the claim, only a cookie may travel.
    pub fn from_message(message: &Message) -> Option<Result<Self, RequestError>> {
        let mut claim = None;
        let mut cookie = None;
        for tlv in &message.tlvs {
            match tlv {
                Tlv::ForwardClaim { .. } if claim.is_some() => {
                    return Some(Err(RequestError::Repeated("Forward Claim")));
                }
                Tlv::ForwardClaim { gateway, ports } => claim = Some((*gateway, ports.clone())),
                Tlv::Cookie(_) if cookie.is_some() => {
                    return Some(Err(RequestError::Repeated("Cookie")));
                }
                Tlv::Cookie(opaque) => cookie = Some(opaque.clone()),
                _ => {}
            }
        }
        let (gateway, ports) = claim?;
        if ports.len() > MAX_PORTS {
            return Some(Err(RequestError::TooManyPorts(ports.len())));
        }
        if let Some(other) = message
            .tlvs
            .iter()
            .find(|tlv| !matches!(tlv, Tlv::ForwardClaim { .. } | Tlv::Cookie(_)))
        {
            return Some(Err(RequestError::NotARequestTlv(other.name())));
        }
        Some(Ok(Self {
            gateway: GatewayId(gateway),
            ports,
            cookie,
        }))
    }
}

/// What the converter says of one claimed port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortStatus {
    /// 0: inbound connections to it come to this gateway.
    Served,
    /// 1: the converter's `forward-ports` do not include it.
    NotAllowed,
    /// 2: another gateway claimed it first and still serves it.
    Taken,
    /// 3: the converter cannot listen on it (another program does).
    Unavailable,
    /// Any other number, kept so that it can be logged.
    Other(u8),
}

impl PortStatus {
    /// The number on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Served => 0,
            Self::NotAllowed => 1,
            Self::Taken => 2,
            Self::Unavailable => 3,
            Self::Other(number) => number,
        }
    }

    /// The status of a number on the wire.
    pub fn from_u8(number: u8) -> Self {
        match number {
            0 => Self::Served,
            1 => Self::NotAllowed,
            2 => Self::Taken,
            3 => Self::Unavailable,
            other => Self::Other(other),
        }
    }

    /// As logs and `mptcp-user flows` say it.
    pub fn describe(self) -> String {
        match self {
            Self::Served => "served".to_owned(),
            Self::NotAllowed => "refused: not among the converter's forward-ports".to_owned(),
            Self::Taken => "refused: another gateway claimed this port first".to_owned(),
            Self::Unavailable => "refused: the converter cannot listen on this port".to_owned(),
            Self::Other(number) => format!("refused (status {number})"),
        }
    }

    /// Whether claiming the port again may get it: another gateway or program may let
    /// it go. The converter's `forward-ports` change only with its restart.
    pub fn may_change(self) -> bool {
        matches!(self, Self::Taken | Self::Unavailable)
    }
}

/// The converter's answer to a claim, one status per port.
pub fn status_message(statuses: &[(u16, PortStatus)]) -> Message {
    Message::new(vec![Tlv::ForwardStatus(
        statuses
            .iter()
            .map(|&(port, status)| (port, status.to_u8()))
            .collect(),
    )])
}

/// The statuses in a converter's answer; `None` when it has no Forward Status TLV (an
/// Error TLV, say).
pub fn statuses(message: &Message) -> Option<Vec<(u16, PortStatus)>> {
    message.tlvs.iter().find_map(|tlv| match tlv {
        Tlv::ForwardStatus(statuses) => Some(
            statuses
                .iter()
                .map(|&(port, status)| (port, PortStatus::from_u8(status)))
                .collect(),
        ),
        _ => None,
    })
}

/// An inbound flow handed to a gateway's connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The public port it came to.
    pub port: u16,
    /// The outside client.
    pub client: SocketAddr,
}

impl Inbound {
    /// As a message.
    pub fn to_message(self) -> Message {
        Message::new(vec![Tlv::Inbound {
            port: self.port,
            client: self.client,
        }])
    }

    /// The inbound flow `message` announces, if it does.
    pub fn from_message(message: &Message) -> Option<Self> {
        message.tlvs.iter().find_map(|tlv| match *tlv {
            Tlv::Inbound { port, client } => Some(Self { port, client }),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_round_trips_and_pads_an_odd_port_count() {
        let claim = Claim {
            gateway: GatewayId([7; 16]),
            ports: vec![8443, 25565, 8080],
            cookie: Some(vec![1; 56]),
        };
        let bytes = claim.to_message().encode().unwrap();
        // Header, the claim (4 + 16 + 6 bytes, padded to 28), the cookie (4 + 56).
        assert_eq!(bytes.len(), 4 + 28 + 60);
        assert_eq!(&bytes[4..8], [0xc0, 7, 0, 0]);
        let (message, _) = Message::decode(&bytes).unwrap();
        assert_eq!(Claim::from_message(&message), Some(Ok(claim)));
    }

    #[test]
    fn a_claim_with_a_connect_is_refused_and_a_request_is_no_claim() {
        let destination: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let mut message = Claim {
            gateway: GatewayId([1; 16]),
            ports: vec![9000],
            cookie: None,
        }
        .to_message();
        message.tlvs.push(Tlv::Connect {
            destination,
            tcp_options: Vec::new(),
        });
        assert!(matches!(
            Claim::from_message(&message),
            Some(Err(RequestError::NotARequestTlv(_)))
        ));
        let request = super::super::codec::Request {
            destination,
            cookie: None,
        };
        assert_eq!(Claim::from_message(&request.to_message()), None);
    }

    #[test]
    fn a_claim_of_more_ports_than_an_answer_holds_is_refused() {
        let claim = |count: u16| Claim {
            gateway: GatewayId([1; 16]),
            ports: (1..=count).collect(),
            cookie: None,
        };
        let most = u16::try_from(MAX_PORTS).unwrap();
        let (message, _) = Message::decode(&claim(most).to_message().encode().unwrap()).unwrap();
        let accepted = Claim::from_message(&message).unwrap().unwrap();
        let answer: Vec<_> = accepted
            .ports
            .iter()
            .map(|&port| (port, PortStatus::Unavailable))
            .collect();
        assert!(status_message(&answer).encode().is_ok());
        let (message, _) =
            Message::decode(&claim(most + 1).to_message().encode().unwrap()).unwrap();
        assert_eq!(
            Claim::from_message(&message),
            Some(Err(RequestError::TooManyPorts(MAX_PORTS + 1)))
        );
    }

    #[test]
    fn statuses_and_inbound_flows_round_trip() {
        let statuses_sent = [(8443, PortStatus::Served), (22, PortStatus::Taken)];
        let bytes = status_message(&statuses_sent).encode().unwrap();
        assert_eq!(
            bytes,
            [
                1, 4, 0x22, 0x63, 0xc1, 3, 0, 0, 0x20, 0xfb, 0, 0, 0, 22, 2, 0
            ]
        );
        let (message, _) = Message::decode(&bytes).unwrap();
        assert_eq!(statuses(&message).unwrap(), statuses_sent);
        let inbound = Inbound {
            port: 8443,
            client: "203.0.113.10:40000".parse().unwrap(),
        };
        let bytes = inbound.to_message().encode().unwrap();
        assert_eq!(bytes.len(), 28);
        let (message, _) = Message::decode(&bytes).unwrap();
        assert_eq!(Inbound::from_message(&message), Some(inbound));
        // A cut Inbound TLV is malformed, not an inbound flow from nowhere.
        let mut short = bytes[..24].to_vec();
        short[1] = 6;
        short[5] = 5;
        assert!(Message::decode(&short).is_err());
    }
}
