//! The MPTCP path manager's generic netlink family (`mptcp_pm`, uapi/linux/mptcp_pm.h):
//! endpoints and limits, what `ip mptcp endpoint` and `ip mptcp limits` set. The
//! `mptcp-pm` crate only reads them, so the messages are written here on top of
//! netlink-packet-generic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use futures::StreamExt as _;
use genetlink::GenetlinkHandle;
use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload, Nla, NlaBuffer, NlasIterator, Parseable, ParseableParametrized, emit_i32,
    emit_u16, emit_u32, parse_i32, parse_u8, parse_u16, parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};

/// The address families as the path manager's u16 attribute carries them.
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

const CMD_ADD_ADDR: u8 = 1;
const CMD_DEL_ADDR: u8 = 2;
const CMD_GET_ADDR: u8 = 3;
const CMD_SET_LIMITS: u8 = 5;
const CMD_GET_LIMITS: u8 = 6;

const ATTR_ADDR: u16 = 1;
const ATTR_RCV_ADD_ADDRS: u16 = 2;
const ATTR_SUBFLOWS: u16 = 3;

const ADDR_ATTR_FAMILY: u16 = 1;
const ADDR_ATTR_ID: u16 = 2;
const ADDR_ATTR_ADDR4: u16 = 3;
const ADDR_ATTR_ADDR6: u16 = 4;
const ADDR_ATTR_PORT: u16 = 5;
const ADDR_ATTR_FLAGS: u16 = 6;
const ADDR_ATTR_IF_IDX: u16 = 7;

/// Endpoint flag: announce this address (ADD_ADDR) to the peers of every connection.
pub const FLAG_SIGNAL: u32 = 1;
/// Endpoint flag: open a subflow from this address on every connection.
pub const FLAG_SUBFLOW: u32 = 2;
/// Endpoint flag: its subflows are backups, used when no other subflow can send.
pub const FLAG_BACKUP: u32 = 4;
/// The kernel refuses limits above this.
pub const MAX_LIMIT: u32 = 8;

/// One path manager endpoint, as `ip mptcp endpoint show` lists it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The kernel's id of the endpoint.
    pub id: u8,
    /// Its address.
    pub address: Option<IpAddr>,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Its interface, if bound to one.
    pub interface: Option<u32>,
}

/// The path manager's limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// ADD_ADDR announcements accepted per connection.
    pub add_addr_accepted: u32,
    /// Extra subflows per connection.
    pub subflows: u32,
}

/// A connection to the path manager.
#[derive(Clone)]
pub struct PathManager {
    handle: GenetlinkHandle,
}

impl PathManager {
    /// Opens the generic netlink socket; its task runs on the current tokio runtime.
    pub fn connect() -> anyhow::Result<Self> {
        let (connection, handle, _) =
            genetlink::new_connection().context("cannot open a generic netlink socket")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// `ip mptcp endpoint show`.
    pub async fn endpoints(&self) -> anyhow::Result<Vec<Endpoint>> {
        let replies = self
            .request(
                Message::new(CMD_GET_ADDR, Vec::new()),
                NLM_F_REQUEST | NLM_F_DUMP,
            )
            .await
            .context("cannot list the MPTCP endpoints")?;
        Ok(replies
            .into_iter()
            .flat_map(|reply| reply.attributes)
            .filter_map(|attribute| match attribute {
                Attribute::Address(fields) => Some(endpoint_of(fields)),
                _ => None,
            })
            .collect())
    }

    /// `ip mptcp endpoint add ADDRESS dev INTERFACE FLAGS`.
    pub async fn add_endpoint(
        &self,
        address: IpAddr,
        interface: u32,
        flags: u32,
    ) -> anyhow::Result<()> {
        let mut fields = address_fields(address);
        fields.push(AddressField::Flags(flags));
        fields.push(AddressField::Interface(
            i32::try_from(interface).context("interface index out of range")?,
        ));
        self.request(
            Message::new(CMD_ADD_ADDR, vec![Attribute::Address(fields)]),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .with_context(|| format!("cannot add the MPTCP endpoint {address}"))?;
        Ok(())
    }

    /// `ip mptcp endpoint add ADDRESS port PORT signal`: every connection announces
    /// `address` to its peer, which joins it there; the kernel listens on it for the
    /// joins. Returns the endpoint's id.
    pub async fn add_signal_endpoint(&self, address: std::net::SocketAddr) -> anyhow::Result<u8> {
        let mut fields = address_fields(address.ip());
        fields.push(AddressField::Port(address.port()));
        fields.push(AddressField::Flags(FLAG_SIGNAL));
        self.request(
            Message::new(CMD_ADD_ADDR, vec![Attribute::Address(fields)]),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .with_context(|| format!("cannot add the MPTCP signal endpoint {address}"))?;
        self.endpoints()
            .await?
            .into_iter()
            .find(|endpoint| {
                endpoint.address == Some(address.ip()) && endpoint.flags & FLAG_SIGNAL != 0
            })
            .map(|endpoint| endpoint.id)
            .with_context(|| format!("the MPTCP signal endpoint {address} is not listed"))
    }

    /// `ip mptcp endpoint delete id ID`.
    pub async fn delete_endpoint(&self, id: u8) -> anyhow::Result<()> {
        self.request(
            Message::new(
                CMD_DEL_ADDR,
                vec![Attribute::Address(vec![AddressField::Id(id)])],
            ),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .with_context(|| format!("cannot delete MPTCP endpoint {id}"))?;
        Ok(())
    }

    /// `ip mptcp limits show`.
    pub async fn limits(&self) -> anyhow::Result<Limits> {
        let replies = self
            .request(Message::new(CMD_GET_LIMITS, Vec::new()), NLM_F_REQUEST)
            .await
            .context("cannot read the MPTCP limits")?;
        let mut limits = Limits::default();
        for attribute in replies.into_iter().flat_map(|reply| reply.attributes) {
            match attribute {
                Attribute::AddAddrAccepted(value) => limits.add_addr_accepted = value,
                Attribute::Subflows(value) => limits.subflows = value,
                _ => {}
            }
        }
        Ok(limits)
    }

    /// `ip mptcp limits set ...`.
    pub async fn set_limits(&self, limits: Limits) -> anyhow::Result<()> {
        self.request(
            Message::new(
                CMD_SET_LIMITS,
                vec![
                    Attribute::AddAddrAccepted(limits.add_addr_accepted),
                    Attribute::Subflows(limits.subflows),
                ],
            ),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
        .context("cannot set the MPTCP limits")?;
        Ok(())
    }

    /// Sends `message`, collects the answers; the kernel's error becomes ours.
    async fn request(&self, message: Message, flags: u16) -> anyhow::Result<Vec<Message>> {
        let mut request = NetlinkMessage::from(GenlMessage::from_payload(message));
        request.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut answers = handle
            .request(request)
            .await
            .context("the mptcp_pm netlink family is missing (is MPTCP enabled?)")?;
        let mut replies = Vec::new();
        while let Some(answer) = answers.next().await {
            match answer?.payload {
                NetlinkPayload::InnerMessage(reply) => replies.push(reply.payload),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(std::io::Error::from_raw_os_error(-error.raw_code()).into());
                }
                _ => {}
            }
        }
        Ok(replies)
    }
}

fn address_fields(address: IpAddr) -> Vec<AddressField> {
    match address {
        IpAddr::V4(v4) => vec![AddressField::Family(AF_INET), AddressField::V4(v4)],
        IpAddr::V6(v6) => vec![AddressField::Family(AF_INET6), AddressField::V6(v6)],
    }
}

fn endpoint_of(fields: Vec<AddressField>) -> Endpoint {
    let mut endpoint = Endpoint::default();
    for field in fields {
        match field {
            AddressField::Id(id) => endpoint.id = id,
            AddressField::V4(v4) => endpoint.address = Some(v4.into()),
            AddressField::V6(v6) => endpoint.address = Some(v6.into()),
            AddressField::Flags(flags) => endpoint.flags = flags,
            AddressField::Interface(index) => endpoint.interface = u32::try_from(index).ok(),
            AddressField::Family(_) | AddressField::Port(_) | AddressField::Other(_) => {}
        }
    }
    endpoint
}

/// A field of the nested MPTCP_PM_ATTR_ADDR attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
enum AddressField {
    Family(u16),
    Id(u8),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Port(u16),
    Flags(u32),
    Interface(i32),
    Other(DefaultNla),
}

impl Nla for AddressField {
    fn value_len(&self) -> usize {
        match self {
            Self::Family(_) | Self::Port(_) => 2,
            Self::Id(_) => 1,
            Self::V4(_) | Self::Flags(_) | Self::Interface(_) => 4,
            Self::V6(_) => 16,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Family(_) => ADDR_ATTR_FAMILY,
            Self::Id(_) => ADDR_ATTR_ID,
            Self::V4(_) => ADDR_ATTR_ADDR4,
            Self::V6(_) => ADDR_ATTR_ADDR6,
            Self::Port(_) => ADDR_ATTR_PORT,
            Self::Flags(_) => ADDR_ATTR_FLAGS,
            Self::Interface(_) => ADDR_ATTR_IF_IDX,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        // The buffer is value_len() bytes, which these writes fill exactly.
        match self {
            Self::Family(value) | Self::Port(value) => {
                let _ = emit_u16(buffer, *value);
            }
            Self::Id(value) => buffer[0] = *value,
            Self::V4(address) => buffer.copy_from_slice(&address.octets()),
            Self::V6(address) => buffer.copy_from_slice(&address.octets()),
            Self::Flags(value) => {
                let _ = emit_u32(buffer, *value);
            }
            Self::Interface(value) => {
                let _ = emit_i32(buffer, *value);
            }
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for AddressField {
    fn parse(buffer: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buffer.value();
        Ok(match buffer.kind() {
            ADDR_ATTR_FAMILY => Self::Family(parse_u16(value)?),
            ADDR_ATTR_ID => Self::Id(parse_u8(value)?),
            ADDR_ATTR_ADDR4 => Self::V4(<[u8; 4]>::try_from(value).map_err(|_| "bad IPv4")?.into()),
            ADDR_ATTR_ADDR6 => {
                Self::V6(<[u8; 16]>::try_from(value).map_err(|_| "bad IPv6")?.into())
            }
            ADDR_ATTR_PORT => Self::Port(parse_u16(value)?),
            ADDR_ATTR_FLAGS => Self::Flags(parse_u32(value)?),
            ADDR_ATTR_IF_IDX => Self::Interface(parse_i32(value)?),
            _ => Self::Other(DefaultNla::parse(buffer)?),
        })
    }
}

/// An attribute of an `mptcp_pm` message.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    Address(Vec<AddressField>),
    AddAddrAccepted(u32),
    Subflows(u32),
    Other(DefaultNla),
}

impl Nla for Attribute {
    fn value_len(&self) -> usize {
        match self {
            Self::Address(fields) => fields.as_slice().buffer_len(),
            Self::AddAddrAccepted(_) | Self::Subflows(_) => 4,
            Self::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Self::Address(_) => ATTR_ADDR,
            Self::AddAddrAccepted(_) => ATTR_RCV_ADD_ADDRS,
            Self::Subflows(_) => ATTR_SUBFLOWS,
            Self::Other(nla) => nla.kind(),
        }
    }

    fn is_nested(&self) -> bool {
        matches!(self, Self::Address(_))
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Self::Address(fields) => fields.as_slice().emit(buffer),
            Self::AddAddrAccepted(value) | Self::Subflows(value) => {
                let _ = emit_u32(buffer, *value);
            }
            Self::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for Attribute {
    fn parse(buffer: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let value = buffer.value();
        Ok(match buffer.kind() {
            ATTR_ADDR => Self::Address(
                NlasIterator::new(value)
                    .map(|nla| AddressField::parse(&nla?))
                    .collect::<Result<_, _>>()?,
            ),
            ATTR_RCV_ADD_ADDRS => Self::AddAddrAccepted(parse_u32(value)?),
            ATTR_SUBFLOWS => Self::Subflows(parse_u32(value)?),
            _ => Self::Other(DefaultNla::parse(buffer)?),
        })
    }
}

/// One `mptcp_pm` message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Message {
    command: u8,
    attributes: Vec<Attribute>,
}

impl Message {
    fn new(command: u8, attributes: Vec<Attribute>) -> Self {
        Self {
            command,
            attributes,
        }
    }
}

impl GenlFamily for Message {
    fn family_name() -> &'static str {
        "mptcp_pm"
    }

    fn command(&self) -> u8 {
        self.command
    }

    fn version(&self) -> u8 {
        1
    }
}

impl Emitable for Message {
    fn buffer_len(&self) -> usize {
        self.attributes.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attributes.as_slice().emit(buffer);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for Message {
    fn parse_with_param(buffer: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(Self {
            command: header.cmd,
            attributes: NlasIterator::new(buffer)
                .map(|nla| Attribute::parse(&nla?))
                .collect::<Result<_, _>>()?,
        })
    }
}
