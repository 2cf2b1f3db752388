//! NICs from `/sys/class/net`.
//!
//! Only interfaces backed by a device (those with a `device` link: PCI NICs, virtio-net, SR-IOV
//! functions) are listed. Loopback, bridges, veths, tunnels and ifb devices are software, come
//! and go with containers, and would make the digest change for no hardware reason.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{DetectError, NIC_MAX, NIC_QUEUE_MAX, Roots, read};

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Nic {
    /// Interface name (`eth0`, `enp59s0f0`).
    pub name: String,
    /// `address`: the MAC, lowercase, colon-separated, when it has one.
    pub mac: Option<String>,
    /// `mtu` in bytes.
    pub mtu: u32,
    /// `speed` in Mbit/s; unknown (virtio, link down, `-1`) is `None`.
    pub speed_mbps: Option<u32>,
    /// The driver bound to the device (`device/driver` link name: `ice`, `mlx5_core`, `virtio_net`).
    pub driver: Option<String>,
    /// Receive queues (`queues/rx-*`).
    pub rx_queues: u32,
    /// Transmit queues (`queues/tx-*`).
    pub tx_queues: u32,
    /// `device/numa_node`, when the device is attached to one (`-1` is `None`).
    pub numa_node: Option<u32>,
}

/// Reads the `nics` part.
pub(crate) fn detect(roots: &Roots) -> Result<Vec<Nic>, DetectError> {
    let net_dir = read::under(&roots.sys, "class/net");
    let mut nics = Vec::new();
    for name in read::names(&net_dir, "network interfaces", NIC_MAX)? {
        let dir = net_dir.join(&name);
        if read::exists(&dir.join("device"))? {
            nics.push(nic(&dir, name)?);
        }
    }
    Ok(nics)
}

fn nic(dir: &Path, name: String) -> Result<Nic, DetectError> {
    let queue_dir = dir.join("queues");
    let queues = if read::exists(&queue_dir)? {
        read::names(&queue_dir, "NIC queues", 2 * NIC_QUEUE_MAX)?
    } else {
        Vec::new()
    };
    let count = |prefix: &str| {
        let n = queues
            .iter()
            .filter(|queue| queue.starts_with(prefix))
            .count();
        u32::try_from(n).expect("bounded by NIC_QUEUE_MAX")
    };
    Ok(Nic {
        mac: read::optional_attribute(&dir.join("address")).map(|mac| mac.to_ascii_lowercase()),
        mtu: read::number(&dir.join("mtu"), "MTU")?,
        speed_mbps: read::optional_number(&dir.join("speed")),
        driver: read::link_name(&dir.join("device/driver")),
        rx_queues: count("rx-"),
        tx_queues: count("tx-"),
        numa_node: read::optional_number(&dir.join("device/numa_node")),
        name,
    })
}
