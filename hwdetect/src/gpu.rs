//! GPUs through NVML, loaded at run time (`libnvidia-ml.so.1`, by `nvml-wrapper`).
//!
//! No library, no driver, or no permission is not an error: it is "no NVIDIA GPU visible",
//! recorded as an empty list with the reason. Only a query failing after NVML came up fails the
//! part. The NUMA node comes from NVML, or else from the PCI device's `numa_node` in sysfs.

use std::path::Path;

use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

use crate::{DetectError, GPU_MAX, Roots, read};

/// The GPUs NVML sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Gpus {
    /// GPUs by NVML index.
    pub devices: Vec<Gpu>,
    /// Why the list is empty without being known empty: NVML could not be loaded or initialized,
    /// or host probes were off. `None` when NVML answered.
    pub unavailable_reason: Option<String>,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Gpu {
    /// NVML index (not stable across reboots; the UUID is).
    pub index: u32,
    /// `GPU-xxxxxxxx-...`: the stable identity.
    pub uuid: String,
    /// Product name (`NVIDIA H100 80GB HBM3`), when NVML gives it.
    pub name: Option<String>,
    /// Framebuffer memory, when NVML gives it.
    pub memory_total_bytes: Option<u64>,
    /// PCI address in sysfs form (`0000:3b:00.0`), when NVML gives it.
    pub pci_bus_id: Option<String>,
    /// NUMA node of the GPU's PCI device, when known.
    pub numa_node: Option<u32>,
    /// Confidential-computing mode, when the driver can be asked.
    pub confidential_compute: Option<GpuCcMode>,
}

/// A GPU's confidential-computing mode (NVML's system CC settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum GpuCcMode {
    /// CC off.
    Off,
    /// CC on, production.
    On,
    /// CC on in developer-tools mode (not for production trust).
    Devtools,
}

impl GpuCcMode {
    /// The schema name: `off`, `on`, `devtools`.
    pub fn as_str(self) -> &'static str {
        match self {
            GpuCcMode::Off => "off",
            GpuCcMode::On => "on",
            GpuCcMode::Devtools => "devtools",
        }
    }
}

/// Reads the `gpus` part.
pub(crate) fn detect(roots: &Roots) -> Result<Gpus, DetectError> {
    if !roots.probe_host {
        return Ok(unavailable(
            "host probes are off for these roots; NVML not queried".into(),
        ));
    }
    match Nvml::init() {
        Ok(nvml) => Ok(Gpus {
            devices: devices(&nvml, &roots.sys)?,
            unavailable_reason: None,
        }),
        Err(error) => Ok(unavailable(format!("NVML unavailable: {error}"))),
    }
}

fn unavailable(reason: String) -> Gpus {
    Gpus {
        devices: Vec::new(),
        unavailable_reason: Some(reason),
    }
}

fn nvml_error(what: &'static str) -> impl Fn(nvml_wrapper::error::NvmlError) -> DetectError {
    move |error| DetectError::Nvml {
        what,
        reason: error.to_string(),
    }
}

fn devices(nvml: &Nvml, sys: &Path) -> Result<Vec<Gpu>, DetectError> {
    let count = checked_count(nvml.device_count().map_err(nvml_error("device count"))?)?;
    let confidential_compute = cc_mode(nvml);
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let device = nvml
            .device_by_index(index)
            .map_err(nvml_error("device by index"))?;
        let pci_bus_id = device
            .pci_info()
            .ok()
            .and_then(|pci| sysfs_bus_id(&pci.bus_id));
        let numa_node = device.numa_node_id().ok().or_else(|| {
            pci_bus_id
                .as_deref()
                .and_then(|bus_id| pci_numa_node(sys, bus_id))
        });
        gpus.push(Gpu {
            index,
            uuid: device.uuid().map_err(nvml_error("device UUID"))?,
            name: device.name().ok(),
            memory_total_bytes: device.memory_info().ok().map(|memory| memory.total),
            pci_bus_id,
            numa_node,
            confidential_compute,
        });
    }
    Ok(gpus)
}

/// NVML's device count, refused past [`GPU_MAX`] before any device is queried.
fn checked_count(count: u32) -> Result<u32, DetectError> {
    if count > GPU_MAX {
        return Err(DetectError::TooMany {
            path: "NVML".into(),
            what: "GPUs",
            max: GPU_MAX as usize,
        });
    }
    Ok(count)
}

/// NVML reports CC as a system setting (every GPU of a host is in the same mode).
fn cc_mode(nvml: &Nvml) -> Option<GpuCcMode> {
    let device = nvml.device_by_index(0).ok()?;
    match (
        device.is_cc_enabled().ok()?,
        device.is_cc_dev_mode_enabled().ok(),
    ) {
        (false, _) => Some(GpuCcMode::Off),
        (true, Some(true)) => Some(GpuCcMode::Devtools),
        (true, _) => Some(GpuCcMode::On),
    }
}

/// NVML's `00000000:3B:00.0` (32-bit domain, uppercase) to sysfs's `0000:3b:00.0`.
pub(crate) fn sysfs_bus_id(nvml_bus_id: &str) -> Option<String> {
    let (domain, rest) = nvml_bus_id.trim_end_matches('\0').split_once(':')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let (bus, device_function) = rest.split_once(':')?;
    let (device, function) = device_function.split_once('.')?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let device = u8::from_str_radix(device, 16).ok()?;
    let function = u8::from_str_radix(function, 16).ok()?;
    Some(format!("{domain:04x}:{bus:02x}:{device:02x}.{function:x}"))
}

/// `bus/pci/devices/<bus id>/numa_node` under the sysfs root; `-1` (no affinity) is `None`.
pub(crate) fn pci_numa_node(sys: &Path, bus_id: &str) -> Option<u32> {
    if bus_id.contains('/') {
        return None; // Not a bus id: never walk out of the devices directory.
    }
    read::optional_number(&read::under(
        sys,
        &format!("bus/pci/devices/{bus_id}/numa_node"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvml_bus_ids_become_sysfs_bus_ids() {
        assert_eq!(
            sysfs_bus_id("00000000:3B:00.0").as_deref(),
            Some("0000:3b:00.0")
        );
        assert_eq!(
            sysfs_bus_id("00000001:C1:1F.7\0").as_deref(),
            Some("0001:c1:1f.7")
        );
        assert_eq!(sysfs_bus_id("garbage"), None);
        assert_eq!(sysfs_bus_id("0000:zz:00.0"), None);
    }

    #[test]
    fn a_device_count_past_gpu_max_fails_the_part() {
        assert_eq!(checked_count(0).unwrap(), 0);
        assert_eq!(checked_count(GPU_MAX).unwrap(), GPU_MAX);
        let error = checked_count(GPU_MAX + 1).unwrap_err();
        assert!(
            matches!(error, DetectError::TooMany { what: "GPUs", max, .. } if max == GPU_MAX as usize),
            "{error:?}"
        );
        assert!(checked_count(u32::MAX).is_err());
    }

    #[test]
    fn numa_node_falls_back_to_the_pci_device() {
        let sys = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two-socket/sys");
        assert_eq!(pci_numa_node(&sys, "0000:3b:00.0"), Some(1));
        assert_eq!(
            pci_numa_node(&sys, "0000:86:00.0"),
            None,
            "-1 is no affinity"
        );
        assert_eq!(pci_numa_node(&sys, "0000:ff:00.0"), None, "absent device");
        assert_eq!(pci_numa_node(&sys, "../../../etc"), None);
    }
}
