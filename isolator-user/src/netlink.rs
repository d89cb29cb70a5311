//! The host's links, read with rtnetlink.

use anyhow::Context as _;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::LinkAttribute;

use crate::compile::Link;

/// Every link of the calling process's network namespace.
pub async fn list_links() -> anyhow::Result<Vec<Link>> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening a netlink socket")?;
    let task = tokio::spawn(connection);
    let mut stream = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(message) = stream
        .try_next()
        .await
        .context("listing links over netlink")?
    {
        let name = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        });
        if let Some(name) = name {
            links.push(Link {
                name,
                ifindex: message.header.index,
            });
        }
    }
    task.abort();
    Ok(links)
}
