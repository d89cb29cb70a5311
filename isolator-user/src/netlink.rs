//! The host's links and addresses, read with rtnetlink over one connection that is also
//! subscribed to their changes.

use std::net::IpAddr;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::sys::AsyncSocket as _;

use crate::compile::{HostView, Link};

mod dump;

/// rtnetlink multicast groups: link events and IPv4 and IPv6 address events (the host's
/// own addresses are part of a plan).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

type Events = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// The daemon's one netlink connection: it lists links and addresses, and delivers their
/// changes.
pub struct Netlink {
    handle: rtnetlink::Handle,
    events: Events,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// Opens the connection and subscribes to link and address events (before anything is
    /// listed, so that no change between the two is missed). `receive_buffer` is the
    /// socket's receive buffer in bytes (set with `SO_RCVBUFFORCE`, so that the host's
    /// `net.core.rmem_max` does not cap it): the events a burst of VM starts can bring
    /// before the daemon reads them. When it overflows, events are lost and the next read
    /// says so ([`Event::Overrun`]).
    pub fn open(receive_buffer: usize) -> anyhow::Result<Netlink> {
        let (mut connection, handle, events) =
            rtnetlink::new_connection().context("opening a netlink socket")?;
        let socket = connection.socket_mut().socket_mut();
        force_receive_buffer(socket, receive_buffer).with_context(|| {
            format!("setting the netlink socket's receive buffer to {receive_buffer} bytes")
        })?;
        socket
            .bind(&rtnetlink::sys::SocketAddr::new(
                0,
                RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
            ))
            .context("subscribing to link and address events")?;
        let task = tokio::spawn(connection);
        Ok(Netlink {
            handle,
            events,
            task,
        })
    }

    /// Waits for the next link or address event; `None` when the connection has ended
    /// (the caller opens a new one).
    pub async fn next_event(&mut self) -> Option<Event> {
        // Fault injection for the tests (only the rehearsal build has it): the stream ends.
        fail::fail_point!("netlink-stream-end", |_| None);
        loop {
            let (message, from) = self.events.next().await?;
            // Fault injection for the tests (rehearsal build only): events are lost.
            #[cfg(feature = "rehearsal")]
            if fail::eval("netlink-lose-events", |_| ()).is_some() {
                continue;
            }
            if let Some(event) = from_kernel(message, &from) {
                return Some(event);
            }
        }
    }

    /// Takes every event already queued, without waiting: the links they announce, and
    /// whether events were lost ([`Event::Overrun`]) among them.
    pub fn drain_events(&mut self) -> (Vec<Link>, bool) {
        let mut links = Vec::new();
        let mut overrun = false;
        while let Ok((message, from)) = self.events.try_recv() {
            match from_kernel(message, &from) {
                None => {}
                Some(Event::Overrun) => overrun = true,
                Some(Event::Changed(link)) => links.extend(link),
            }
        }
        (links, overrun)
    }

    /// Every link of the calling process's network namespace, and every address on them:
    /// what a plan is compiled from.
    pub async fn host_view(&self) -> anyhow::Result<HostView> {
        // A blocking read of the dump, short (about a millisecond for a few hundred links).
        let (links, xdp_modes) = tokio::task::spawn_blocking(dump::links)
            .await
            .context("listing links")?
            .context("listing links over netlink")?;
        let addresses = list_addresses(&self.handle).await?;
        Ok(HostView {
            links,
            addresses,
            xdp_modes,
        })
    }
}

/// What the kernel announced.
#[derive(Debug)]
pub enum Event {
    /// A link or an address changed; the link the event announces, if it announces one
    /// (a new link, or a change to one).
    Changed(Option<Link>),
    /// The socket's receive buffer overflowed: events were lost. Only a full listing
    /// catches up with what they said.
    Overrun,
}

/// `SO_RCVBUFFORCE` (needs `CAP_NET_ADMIN`, which the daemon has): unlike `SO_RCVBUF`,
/// not capped by `net.core.rmem_max`.
fn force_receive_buffer(socket: &rtnetlink::sys::Socket, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let value = libc::c_int::try_from(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "more than 2 GiB"))?;
    // SAFETY: the descriptor is the socket's own, open for as long as `socket`; the value
    // is a c_int whose size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every link, and how an XDP program is attached to those that have one, parsed whole by
/// `netlink-packet-route`: what [`dump::links`] is checked against.
#[cfg(test)]
async fn list_links_parsed(
    handle: &rtnetlink::Handle,
) -> anyhow::Result<(Vec<Link>, std::collections::BTreeMap<u32, &'static str>)> {
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    let mut xdp_modes = std::collections::BTreeMap::new();
    while let Some(message) = stream
        .try_next()
        .await
        .context("listing links over netlink")?
    {
        if let Some(mode) = xdp_mode_of(&message) {
            xdp_modes.insert(message.header.index, mode);
        }
        links.extend(link_of(&message));
    }
    Ok((links, xdp_modes))
}

/// How an XDP program is attached to the link (`IFLA_XDP_ATTACHED`), if one is.
#[cfg(test)]
fn xdp_mode_of(message: &LinkMessage) -> Option<&'static str> {
    use rtnetlink::packet_route::link::{LinkXdp, XdpAttached};
    message
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
                _ => None,
            }),
            _ => None,
        })
}

/// The event a message from the kernel announces; `None` for a message another process
/// sent to the daemon's socket (a process with `CAP_NET_ADMIN` can): only the kernel
/// says what links exist.
fn from_kernel(
    message: rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    from: &rtnetlink::sys::SocketAddr,
) -> Option<Event> {
    if from.port_number() != 0 {
        tracing::warn!(
            port = from.port_number(),
            "ignoring a netlink message another process sent to the daemon's socket"
        );
        return None;
    }
    Some(event_of(message.payload))
}

fn event_of(payload: NetlinkPayload<RouteNetlinkMessage>) -> Event {
    match payload {
        NetlinkPayload::Overrun(_) => Event::Overrun,
        payload => Event::Changed(announced(payload)),
    }
}

/// The link a netlink message announces (`RTM_NEWLINK`: a new link or a change to one).
fn announced(payload: NetlinkPayload<RouteNetlinkMessage>) -> Option<Link> {
    match payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(message)) => link_of(&message),
        _ => None,
    }
}

/// A link's name, index and kind (`IFLA_INFO_KIND`, empty for a physical device).
fn link_of(message: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut kind = String::new();
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        kind = k.to_string();
                    }
                }
            }
            _ => {}
        }
    }
    Some(Link {
        name: name?,
        ifindex: message.header.index,
        kind,
    })
}

async fn list_addresses(handle: &rtnetlink::Handle) -> anyhow::Result<Vec<IpAddr>> {
    let mut addresses: Vec<IpAddr> = list_addresses_on_links(handle)
        .await?
        .into_iter()
        .map(|(_, a, _)| a)
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// Every address of the namespace: (ifindex, address, prefix length).
async fn list_addresses_on_links(
    handle: &rtnetlink::Handle,
) -> anyhow::Result<Vec<(u32, IpAddr, u8)>> {
    let mut stream = handle.address().get().execute();
    let mut addresses = Vec::new();
    while let Some(message) = stream
        .try_next()
        .await
        .context("listing addresses over netlink")?
    {
        // IFA_LOCAL is the host's own address; on a point-to-point link IFA_ADDRESS is
        // the peer's, elsewhere the two are equal or only IFA_ADDRESS is sent.
        let mut local = None;
        let mut address = None;
        for attribute in &message.attributes {
            match attribute {
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Address(a) => address = Some(*a),
                _ => {}
            }
        }
        if let Some(a) = local.or(address) {
            addresses.push((message.header.index, a, message.header.prefix_len));
        }
    }
    Ok(addresses)
}

/// Every link of the calling process's network namespace in detail (kind, controller,
/// VLAN id, VNI, `IFLA_LINK` and its namespace, addresses, the XDP program) and the
/// host's own addresses, over a connection of its own: what `isolator verify`
/// inventories. The TCX programs are not netlink's to tell; they are left empty.
pub async fn link_details() -> anyhow::Result<(Vec<crate::verify::LinkDetails>, Vec<IpAddr>)> {
    use rtnetlink::packet_route::link::{InfoData, InfoVlan, InfoVxlan, LinkXdp};
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    let task = tokio::spawn(connection);
    let mut links = Vec::new();
    let mut stream = handle.link().get().execute();
    while let Some(message) = stream
        .try_next()
        .await
        .context("listing links over netlink")?
    {
        let Some(base) = link_of(&message) else {
            continue;
        };
        let mut details = crate::verify::LinkDetails {
            name: base.name,
            ifindex: base.ifindex,
            kind: base.kind,
            ..Default::default()
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Controller(i) => details.master = Some(*i),
                LinkAttribute::Link(i) => details.link = Some(*i),
                LinkAttribute::LinkNetNsId(i) => details.link_netnsid = Some(*i),
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        if let LinkXdp::ProgId(id) = x
                            && *id != 0
                        {
                            details.xdp = Some(*id);
                        }
                    }
                }
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Data(InfoData::Vlan(vlan)) => {
                                for v in vlan {
                                    if let InfoVlan::Id(id) = v {
                                        details.vlan_id = Some(*id);
                                    }
                                }
                            }
                            LinkInfo::Data(InfoData::Vxlan(vxlan)) => {
                                for v in vxlan {
                                    if let InfoVxlan::Id(id) = v {
                                        details.vni = Some(*id);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        links.push(details);
    }
    for link in &mut links {
        link.filters_ingress = bpf_filters(&handle, link.ifindex, true)
            .await
            .with_context(|| format!("listing the tc ingress filters of {}", link.name))?;
        link.filters_egress = bpf_filters(&handle, link.ifindex, false)
            .await
            .with_context(|| format!("listing the tc egress filters of {}", link.name))?;
    }
    let mut host = Vec::new();
    for (ifindex, a, len) in list_addresses_on_links(&handle).await? {
        host.push(a);
        if let Some(link) = links.iter_mut().find(|l| l.ifindex == ifindex) {
            link.addresses.push(format!("{a}/{len}"));
        }
    }
    task.abort();
    host.sort();
    host.dedup();
    Ok((links, host))
}

/// The programs of the `cls_bpf` filters on `ifindex`'s `clsact` hook (`ingress` or
/// egress), by id, in the order they run (after every TCX program of the hook). Empty
/// where the link has no `clsact` qdisc.
pub async fn bpf_filters(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    ingress: bool,
) -> anyhow::Result<Vec<u32>> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcFilterBpfOption, TcOption};
    let request = handle.traffic_filter(ifindex as i32).get();
    let request = if ingress {
        request.ingress()
    } else {
        request.egress()
    };
    let mut stream = request.execute();
    let mut ids = Vec::new();
    loop {
        let message = match stream.try_next().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            // No clsact qdisc (or the link went meanwhile): no filters.
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.is_some_and(|c| {
                    matches!(-c.get(), libc::EINVAL | libc::ENOENT | libc::ENODEV)
                }) =>
            {
                break;
            }
            Err(e) => return Err(e.into()),
        };
        for attribute in &message.attributes {
            if let TcAttribute::Options(options) = attribute {
                for option in options {
                    if let TcOption::Bpf(TcFilterBpfOption::ProgId(id)) = option {
                        ids.push(*id);
                    }
                }
            }
        }
    }
    Ok(ids)
}
