//! One inbound flow: the converter handed a connection on offer an outside client's
//! connection; the gateway connects to the forward's LAN host, from the client's
//! address unless the forward says otherwise, and relays both ways as for an outbound
//! flow.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use log::{debug, info, warn};
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use super::{ForwardConfig, Source};
use crate::{
    gateway::{
        Gateway,
        flows::{Carried, Intercepted},
        relay_flow,
    },
    limited,
    log_limit::LogLimit,
    net::socket,
    protocol::forward::Inbound,
};

/// Inbound connections refused by a forward's `allow` or by the LAN host: what
/// strangers cause.
static REFUSED: LogLimit = LogLimit::new(10, Duration::from_secs(10));

/// Carries the inbound flow `inbound` announced on `reverse` (the connection on
/// offer), whose client's first bytes `early` came with the announcement.
pub async fn serve(
    gateway: Arc<Gateway>,
    mut reverse: TcpStream,
    inbound: Inbound,
    early: Vec<u8>,
) {
    let client = inbound.client;
    let Some(forward) = gateway.forwarding.find(inbound.port) else {
        info!(
            "{client}: the converter handed an inbound flow to port {}, which is not forwarded",
            inbound.port
        );
        socket::reset_on_close(&reverse);
        return;
    };
    let to = forward.to;
    if !forward.admits(client.ip()) {
        limited!(
            REFUSED,
            info,
            "{client} -> {to} (port {}): refused, not in the forward's allow list",
            forward.public
        );
        socket::reset_on_close(&reverse);
        return;
    }
    let _admitted = gateway.flows.admit();
    let lan = tokio::time::timeout(gateway.connect_timeout, connect_lan(forward, client)).await;
    let mut lan = match lan {
        Ok(Ok(lan)) => lan,
        Ok(Err(error)) => {
            limited!(REFUSED, info, "{client} -> {to}: the LAN host: {error}");
            socket::reset_on_close(&reverse);
            return;
        }
        Err(_) => {
            limited!(
                REFUSED,
                info,
                "{client} -> {to}: the LAN host did not answer within {:?}",
                gateway.connect_timeout
            );
            socket::reset_on_close(&reverse);
            return;
        }
    };
    let flow_key = match socket::cookie(&lan) {
        Ok(flow_key) => flow_key,
        Err(error) => {
            warn!("{client} -> {to}: cannot identify the LAN connection: {error}");
            socket::reset_on_close(&reverse);
            return;
        }
    };
    // Its subflows are filed under the flow from now on, as a warm connection's are.
    if let Err(error) = gateway.flows.label(&reverse, flow_key) {
        debug!("{client} -> {to}: cannot label the connection: {error}");
    }
    let _counted = gateway
        .metrics
        .flow_started(Intercepted::Inbound, Carried::Converter);
    let _listed = gateway.flows.register(
        flow_key,
        client,
        to,
        Intercepted::Inbound,
        Carried::Converter,
    );
    if let Err(error) = lan.write_all(&early).await {
        debug!("{client} -> {to}: {error}");
        return;
    }
    // As for an outbound flow, "up" is what the LAN host sends out over the uplinks.
    relay_flow(
        &mut lan,
        &mut reverse,
        Carried::Converter,
        &gateway,
        (client, to),
        early.len(),
    )
    .await;
}

/// Connects to the forward's LAN host: from the client's address with a transparent
/// socket (the LAN host's replies come to the gateway, its router, and the LAN program
/// delivers them to this socket), or from the gateway's own address.
async fn connect_lan(forward: &ForwardConfig, client: SocketAddr) -> std::io::Result<TcpStream> {
    let transparent = forward.source == Source::Client && client.is_ipv4() == forward.to.is_ipv4();
    socket::connect(forward.to, false, |socket| {
        if transparent {
            if client.is_ipv4() {
                socket.set_ip_transparent_v4(true)?;
            } else {
                socket.set_ip_transparent_v6(true)?;
            }
            socket.bind(&SocketAddr::new(client.ip(), 0).into())?;
        }
        Ok(())
    })
    .await
}
