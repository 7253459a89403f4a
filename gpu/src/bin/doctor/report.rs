//! The report: what was probed, the path a GPU pool would take from each RDMA device into each
//! GPU under each policy, and a summary of findings with what to do. One serializable value:
//! `--json` prints it, the text renderer reads it.
//!
//! Only [`RdmaSection::probe`] touches devices; everything else is built from its result and
//! the GPU probe's, and is unit-tested on made-up facts; [`crate::summary`] reads it.

use std::io;
use std::path::{Path, PathBuf};

use gdrx_core::{Device, DeviceKind, DmabufSupport, GidKind, PortInfo};
use gdrx_gpu::peermem::Peermem;
use gdrx_gpu::{GpuError, GpuPolicy, GpuProbe, PathFacts, PathPlan, Visibility};
use serde::Serialize;

use crate::system::System;

/// What to say when there is no RDMA at all.
pub const SOFT_ROCE_HINT: &str = "for soft-RoCE on an Ethernet interface: `modprobe rdma_rxe` and \
     `rdma link add rxe0 type rxe netdev IFACE` (in gdrx's repository deploy/rxe-host.sh does \
     this, and deploy/testbed.sh brings up a VM with it)";

/// Everything `gdrx-doctor` found.
#[derive(Debug, Serialize)]
pub struct Report {
    /// This build and what was asked.
    pub doctor: Doctor,
    /// The machine.
    pub system: System,
    /// RDMA devices.
    pub rdma: RdmaSection,
    /// The loaded peer-memory client, or `null`.
    pub peermem: Option<Peermem>,
    /// GPUs.
    pub gpus: GpuSection,
    /// One row per (RDMA device, GPU, policy).
    pub paths: Vec<PathRow>,
    /// The PCIe distance between each RDMA device and each GPU.
    pub affinity: Vec<Affinity>,
    /// The findings, each with what to do (the `text` of `findings`).
    pub summary: Vec<String>,
    /// The same findings with a stable machine-readable code each.
    pub findings: Vec<crate::summary::Finding>,
}

impl Report {
    /// Fills `summary` and `findings` from the rest of the report.
    pub fn summarize(&mut self) {
        self.findings = crate::summary::summarize(self);
        self.summary = self.findings.iter().map(|f| f.text.clone()).collect();
    }
}

/// The doctor's own build and options.
#[derive(Debug, Serialize)]
pub struct Doctor {
    /// The crate version.
    pub version: &'static str,
    /// Built with the `cuda` feature.
    pub cuda_built: bool,
    /// The policies reported (`--policy`, else all).
    pub policies: Vec<&'static str>,
    /// The default policy's name.
    pub default_policy: &'static str,
    /// The policy the summary speaks of: the one asked for, else the default.
    #[serde(skip)]
    pub summary_policy: GpuPolicy,
}

impl Doctor {
    /// For a report on `policies`.
    pub fn new(policies: &[GpuPolicy]) -> Doctor {
        Doctor {
            version: env!("CARGO_PKG_VERSION"),
            cuda_built: gdrx_gpu::CUDA_ENABLED,
            policies: policies.iter().map(|p| p.name()).collect(),
            default_policy: GpuPolicy::default().name(),
            summary_policy: match policies {
                [one] => *one,
                _ => GpuPolicy::default(),
            },
        }
    }
}

/// The RDMA devices.
#[derive(Debug, Serialize)]
pub struct RdmaSection {
    /// libibverbs loaded and listed devices.
    pub ok: bool,
    /// Why not, with what to do.
    pub error: Option<String>,
    /// The devices (only the one named with `--device`, when given).
    pub devices: Vec<RdmaDev>,
}

impl RdmaSection {
    /// Lists and probes the devices, or only `only`.
    ///
    /// # Errors
    /// The message to exit with when `only` names a device that does not exist.
    pub fn probe(only: Option<&str>) -> Result<RdmaSection, String> {
        let names = match gdrx_core::device_names() {
            Ok(n) => n,
            Err(e) => {
                if let Some(n) = only {
                    return Err(format!("RDMA device `{n}` not found: {e}"));
                }
                return Ok(RdmaSection {
                    ok: false,
                    error: Some(e.to_string()),
                    devices: Vec::new(),
                });
            }
        };
        let names = match only {
            Some(n) if !names.iter().any(|d| d == n) => {
                return Err(format!(
                    "RDMA device `{n}` not found (devices present: {}); run without --device \
                     to see them all",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ));
            }
            Some(n) => vec![n.to_owned()],
            None => names,
        };
        Ok(RdmaSection {
            ok: true,
            error: None,
            devices: names.iter().map(|n| RdmaDev::probe(n)).collect(),
        })
    }
}

/// One RDMA device.
#[derive(Debug, Serialize)]
pub struct RdmaDev {
    /// Its name.
    pub name: String,
    /// `soft-roce`, `soft-iwarp` or `hardware`; `null` when it could not be opened.
    pub kind: Option<&'static str>,
    /// The kind in words (`soft-RoCE (rxe)`).
    pub kind_text: Option<String>,
    /// True for a hardware NIC.
    pub hardware: Option<bool>,
    /// Node GUID (`ibv_devinfo`'s node_guid), from sysfs.
    pub node_guid: Option<String>,
    /// Firmware version, from sysfs (software devices report their own).
    pub firmware: Option<String>,
    /// PCI address of the NIC; `null` for a software device (rxe, siw), which has none.
    pub pci_address: Option<String>,
    /// The NIC's sysfs PCI path (`/sys/devices/pci0000:00/.../0000:01:00.0`), for the
    /// GPU-NIC affinity; `None` with `pci_address`.
    #[serde(skip)]
    pub pci_path: Option<PathBuf>,
    /// NUMA node of the NIC's PCI device; `null` when there is none or the kernel does not say.
    pub numa_node: Option<u32>,
    /// Why it could not be opened.
    pub error: Option<String>,
    /// Its ports.
    pub ports: Vec<Port>,
    /// Why the ports could not be queried.
    pub ports_error: Option<String>,
    /// The dma-buf MR probe.
    pub dmabuf: Option<DmabufJson>,
    /// Why the probe could not run (no PD).
    pub dmabuf_error: Option<String>,
    /// Kind and probe result, for the path decision (both known).
    #[serde(skip)]
    pub facts: Option<(DeviceKind, DmabufSupport)>,
}

impl RdmaDev {
    fn probe(name: &str) -> RdmaDev {
        let pci_path = pci_path(name);
        let mut d = RdmaDev {
            name: name.to_owned(),
            kind: None,
            kind_text: None,
            hardware: None,
            node_guid: sysfs(name, "node_guid"),
            firmware: sysfs(name, "fw_ver"),
            pci_address: pci_path
                .as_deref()
                .and_then(|p| p.file_name()?.to_str().map(str::to_owned)),
            pci_path,
            numa_node: sysfs(name, "device/numa_node").and_then(|n| n.parse().ok()),
            error: None,
            ports: Vec::new(),
            ports_error: None,
            dmabuf: None,
            dmabuf_error: None,
            facts: None,
        };
        let dev = match Device::open(name) {
            Ok(dev) => dev,
            Err(e) => {
                d.error = Some(format!("cannot be opened: {e}"));
                return d;
            }
        };
        let kind = dev.kind();
        d.kind = Some(kind_id(kind));
        d.kind_text = Some(kind_text(kind));
        d.hardware = Some(kind == DeviceKind::Hardware);
        match dev.capabilities() {
            Ok(c) => {
                d.ports = c
                    .ports
                    .iter()
                    .map(|p| Port::from(p).with_rate(name))
                    .collect();
            }
            Err(e) => d.ports_error = Some(e.to_string()),
        }
        match dev.alloc_pd() {
            Ok(pd) => {
                let s = pd.probe_dmabuf();
                d.dmabuf = Some(DmabufJson::from(&s));
                d.facts = Some((kind, s));
            }
            Err(e) => d.dmabuf_error = Some(format!("the dma-buf probe could not run: {e}")),
        }
        d
    }
}

/// The machine-readable kind.
pub fn kind_id(k: DeviceKind) -> &'static str {
    match k {
        DeviceKind::SoftRoce => "soft-roce",
        DeviceKind::SoftIwarp => "soft-iwarp",
        DeviceKind::Hardware => "hardware",
    }
}

/// The kind in words, saying whether it is software.
pub fn kind_text(k: DeviceKind) -> String {
    match k {
        DeviceKind::Hardware => "hardware".to_owned(),
        soft => format!("{soft}, software"),
    }
}

/// One port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// Port number (1-based).
    pub port: u8,
    /// `ACTIVE`, `DOWN`, ...
    pub state: &'static str,
    /// Active MTU in bytes.
    pub active_mtu: u32,
    /// `Ethernet` or `InfiniBand`.
    pub link_layer: &'static str,
    /// The network interface, when a GID names one.
    pub netdev: Option<String>,
    /// The address of the RoCE v2 GID gdrx would use.
    pub roce_v2_ip: Option<String>,
    /// The index of that GID (perftest's `-x`).
    pub roce_v2_gid_index: Option<u32>,
    /// Link rate, as sysfs words it (`100 Gb/sec (4X EDR)`).
    pub rate: Option<String>,
    /// The populated GID table.
    pub gids: Vec<GidJson>,
}

/// One GID table entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GidJson {
    /// Its index (perftest's `-x`, `gdrx-bench -x`).
    pub index: u32,
    /// The GID as an IPv6 address.
    pub gid: String,
    /// The IP address it stands for (IPv4 for mapped GIDs).
    pub ip: String,
    /// `RoCE v2`, `RoCE v1` or `IB`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Its network interface, when it has one.
    pub netdev: Option<String>,
}

impl Port {
    fn with_rate(mut self, dev: &str) -> Port {
        self.rate = sysfs(dev, &format!("ports/{}/rate", self.port));
        self
    }
}

/// A trimmed sysfs attribute of RDMA device `dev`, when it exists and is not empty.
fn sysfs(dev: &str, attr: &str) -> Option<String> {
    read_attr(Path::new(&format!("/sys/class/infiniband/{dev}/{attr}")))
}

/// A trimmed sysfs file, when it exists and is not empty.
fn read_attr(path: &Path) -> Option<String> {
    let v = std::fs::read_to_string(path).ok()?;
    let v = v.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

/// Where a device's sysfs `device` link leads, for a device on a PCI bus.
fn pci_path(dev: &str) -> Option<PathBuf> {
    let target = std::fs::canonicalize(format!("/sys/class/infiniband/{dev}/device")).ok()?;
    let under_pci = target
        .components()
        .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with("pci")));
    under_pci.then_some(target)
}

impl From<&PortInfo> for Port {
    fn from(p: &PortInfo) -> Self {
        Port {
            port: p.port,
            state: p.state.name(),
            active_mtu: p.active_mtu,
            link_layer: p.link_layer,
            netdev: p.gids.iter().find_map(|g| g.netdev.clone()),
            roce_v2_ip: p.select_roce_v2_gid(None).map(|g| g.ip().to_string()),
            roce_v2_gid_index: p.select_roce_v2_gid(None).map(|g| g.index),
            rate: None,
            gids: p
                .gids
                .iter()
                .map(|g| GidJson {
                    index: g.index,
                    gid: g.gid.to_string(),
                    ip: g.ip().to_string(),
                    kind: match g.kind {
                        GidKind::RoceV2 => "RoCE v2",
                        GidKind::RoceV1 => "RoCE v1",
                        GidKind::InfiniBand => "IB",
                    },
                    netdev: g.netdev.clone(),
                })
                .collect(),
        }
    }
}

/// [`DmabufSupport`] in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DmabufJson {
    /// [`DmabufSupport::is_supported`].
    pub supported: bool,
    /// The probe's errno (0 when the probe registered an MR).
    pub errno: i32,
    /// Its name (`EOPNOTSUPP`).
    pub errno_name: String,
    /// The `Display` text.
    pub text: String,
}

impl From<&DmabufSupport> for DmabufJson {
    fn from(s: &DmabufSupport) -> Self {
        let errno = match s {
            DmabufSupport::Supported { errno } | DmabufSupport::Unsupported { errno, .. } => *errno,
        };
        DmabufJson {
            supported: s.is_supported(),
            errno,
            errno_name: errno_name(errno),
            text: s.to_string(),
        }
    }
}

/// The symbolic name of an errno (`EOPNOTSUPP`), `none` for 0, else `errno N`.
pub fn errno_name(e: i32) -> String {
    match nix::errno::Errno::from_raw(e) {
        _ if e == 0 => "none".to_owned(),
        nix::errno::Errno::UnknownErrno => format!("errno {e}"),
        known => format!("{known:?}"),
    }
}

/// The GPUs.
#[derive(Debug, Serialize)]
pub struct GpuSection {
    /// The driver loaded and listed GPUs.
    pub ok: bool,
    /// Why not, with what to do (the error's text).
    pub error: Option<String>,
    /// `not-built`, `no-driver`, `no-device`, `driver` or `other`.
    pub error_kind: Option<&'static str>,
    /// Each GPU with its attributes and dma-buf export probe.
    pub devices: Vec<GpuProbe>,
}

impl GpuSection {
    /// From [`gdrx_gpu::probe_gpus`]'s result.
    pub fn new(r: Result<Vec<GpuProbe>, GpuError>) -> GpuSection {
        match r {
            Ok(devices) => GpuSection {
                ok: true,
                error: None,
                error_kind: None,
                devices,
            },
            Err(e) => GpuSection {
                ok: false,
                error_kind: Some(match &e {
                    GpuError::NotBuilt => "not-built",
                    GpuError::NoDriver { .. } => "no-driver",
                    GpuError::NoDevice { .. } => "no-device",
                    GpuError::Driver { .. } => "driver",
                    _ => "other",
                }),
                error: Some(e.to_string()),
                devices: Vec::new(),
            },
        }
    }
}

/// How far apart an RDMA device and a GPU sit on PCIe, in `nvidia-smi topo -m`'s terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Affinity {
    /// The RDMA device.
    pub nic: String,
    /// The GPU (`cuda:0`).
    pub gpu: String,
    /// `PIX` (one PCIe switch between them), `PXB` (several switches, no host bridge), `PHB`
    /// (through a host bridge), `NODE` (through the interconnect between host bridges of one
    /// NUMA node), `SYS` (across NUMA nodes), or `n/a` (a software device, or no PCI path).
    pub distance: &'static str,
    /// The same in words, with what it means for GPUDirect RDMA.
    pub text: String,
}

/// Classifies the PCIe distance between two devices from their sysfs paths
/// (`/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0`), and their NUMA nodes.
pub fn pcie_distance(a: &Path, b: &Path, numa: (Option<u32>, Option<u32>)) -> &'static str {
    let chain = |p: &Path| -> Vec<String> {
        p.components()
            .filter_map(|c| c.as_os_str().to_str().map(str::to_owned))
            .skip_while(|c| !c.starts_with("pci"))
            .collect()
    };
    let (a, b) = (chain(a), chain(b));
    let (Some(ra), Some(rb)) = (a.first(), b.first()) else {
        return "n/a";
    };
    if ra != rb {
        // An unknown node (sysfs says -1 on machines without NUMA) is taken as the same node.
        return match numa {
            (Some(x), Some(y)) if x != y => "SYS",
            _ => "NODE",
        };
    }
    // Bridges both paths go through below the host bridge (the endpoints themselves excluded).
    let (ba, bb) = (
        &a[1..a.len().saturating_sub(1)],
        &b[1..b.len().saturating_sub(1)],
    );
    let shared = ba.iter().zip(bb).take_while(|(x, y)| x == y).count();
    if shared == 0 {
        "PHB"
    } else if ba.len() - shared + bb.len() - shared <= 2 {
        "PIX"
    } else {
        "PXB"
    }
}

/// The words for a distance.
pub fn distance_text(d: &str) -> &'static str {
    match d {
        "PIX" => "one PCIe switch apart: the best case for GPUDirect RDMA",
        "PXB" => "several PCIe switches apart, no host bridge: good for GPUDirect RDMA",
        "PHB" => "through the CPU's host bridge: GPUDirect RDMA works, slower; prefer a NIC under the GPU's switch",
        "NODE" => "across host bridges of one NUMA node: GPUDirect RDMA is slow here; pick a closer NIC",
        "SYS" => "across NUMA nodes: avoid GPUDirect RDMA between these two; use a NIC on the GPU's node",
        _ => "no PCIe path (a software device such as rxe, or sysfs does not say)",
    }
}

/// The distance of every (RDMA device, GPU) pair.
pub fn affinity(rdma: &RdmaSection, gpus: &GpuSection) -> Vec<Affinity> {
    let mut out = Vec::new();
    for d in &rdma.devices {
        for g in &gpus.devices {
            let bdf = g.info.pci_bus_id.to_ascii_lowercase();
            let gpu = std::fs::canonicalize(format!("/sys/bus/pci/devices/{bdf}")).ok();
            let gnuma = read_attr(Path::new(&format!("/sys/bus/pci/devices/{bdf}/numa_node")))
                .and_then(|n| n.parse().ok());
            let distance = match (&d.pci_path, &gpu) {
                (Some(n), Some(g)) => pcie_distance(n, g, (d.numa_node, gnuma)),
                _ => "n/a",
            };
            out.push(Affinity {
                nic: d.name.clone(),
                gpu: format!("cuda:{}", g.info.ordinal),
                distance,
                text: distance_text(distance).to_owned(),
            });
        }
    }
    out
}

/// One (RDMA device, GPU, policy) decision.
#[derive(Debug, Serialize)]
pub struct PathRow {
    /// The RDMA device.
    pub nic: String,
    /// The GPU (`cuda:0`).
    pub gpu: String,
    /// The GPU's name.
    pub gpu_name: String,
    /// The policy's name.
    pub policy: &'static str,
    /// True for the default policy.
    pub default: bool,
    /// The path taken (`dmabuf`, `peermem`, `staging`), or `null`.
    pub path: Option<&'static str>,
    /// The plan, when a path is possible.
    pub plan: Option<PathPlan>,
    /// Every path considered and why it was refused, when none is.
    pub refused: Option<Vec<String>>,
    /// When the consumer may read what the NIC wrote, for the path taken.
    pub visibility: Option<String>,
    /// The same as a value.
    pub visibility_rule: Option<Visibility>,
}

/// The decision for every RDMA device that could be probed, every GPU and every policy.
pub fn paths(
    rdma: &RdmaSection,
    gpus: &GpuSection,
    peer: Option<&Peermem>,
    policies: &[GpuPolicy],
) -> Vec<PathRow> {
    let mut rows = Vec::new();
    for nic in &rdma.devices {
        let Some((kind, dmabuf)) = &nic.facts else {
            continue;
        };
        for g in &gpus.devices {
            let facts = PathFacts::new(&g.info, Some(&g.export), &nic.name, *kind, dmabuf, peer);
            for &policy in policies {
                let (plan, refused) = match gdrx_gpu::plan(policy, &facts) {
                    Ok(p) => (Some(p), None),
                    Err(why) => (None, Some(why)),
                };
                let rule = plan.as_ref().map(|p| {
                    Visibility::rule(
                        p.path,
                        g.info.rdma_writes_ordering,
                        g.info.rdma_flush_options,
                    )
                });
                rows.push(PathRow {
                    nic: nic.name.clone(),
                    gpu: facts.gpu.clone(),
                    gpu_name: g.info.name.clone(),
                    policy: policy.name(),
                    default: policy == GpuPolicy::default(),
                    path: plan.as_ref().map(|p| p.path.name()),
                    plan,
                    refused,
                    visibility: rule.as_ref().map(ToString::to_string),
                    visibility_rule: rule,
                });
            }
        }
    }
    rows
}

/// Serializes the report as one JSON object.
///
/// # Errors
/// When writing fails.
pub fn write_json(r: &Report, mut out: impl io::Write) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut out, r)?;
    writeln!(out)
}

#[cfg(test)]
pub mod tests {

    //! Fixtures (shared with the summary's and the text's tests) and tests of the probes' data.

    use super::*;
    use crate::system::{HugePool, Memlock, ProviderFacts, RdmaKernel};
    use gdrx_gpu::GpuInfo;

    #[test]
    fn pcie_distances_are_classified_as_nvidia_smi_topo_does() {
        use std::path::Path;
        let p = |s: &str| Path::new(s).to_path_buf();
        let gpu = p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:00.0/0000:19:00.0");
        // Under the same switch port.
        let pix = p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:00.0/0000:1a:00.0");
        assert_eq!(pcie_distance(&pix, &gpu, (Some(0), Some(0))), "PIX");
        // The same switch, another downstream port: still one switch.
        let pix2 = p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:01.0/0000:1b:00.0");
        assert_eq!(pcie_distance(&pix2, &gpu, (Some(0), Some(0))), "PIX");
        // A second switch below that port.
        let pxb = p("/sys/devices/pci0000:16/0000:16:01.0/0000:17:00.0/0000:18:01.0/0000:1c:00.0/0000:1d:00.0/0000:1e:00.0");
        assert_eq!(pcie_distance(&pxb, &gpu, (Some(0), Some(0))), "PXB");
        // Only the host bridge in common.
        let phb = p("/sys/devices/pci0000:16/0000:16:02.0/0000:30:00.0");
        assert_eq!(pcie_distance(&phb, &gpu, (Some(0), Some(0))), "PHB");
        // Other host bridges: the same NUMA node, or not.
        let other = p("/sys/devices/pci0000:80/0000:80:01.0/0000:81:00.0");
        assert_eq!(pcie_distance(&other, &gpu, (Some(0), Some(0))), "NODE");
        assert_eq!(pcie_distance(&other, &gpu, (Some(1), Some(0))), "SYS");
        assert_eq!(
            pcie_distance(&other, &gpu, (None, None)),
            "NODE",
            "no NUMA: one node"
        );
        // A software device has no PCI path.
        assert_eq!(
            pcie_distance(&p("/sys/devices/virtual/net/veth0"), &gpu, (None, Some(0))),
            "n/a"
        );
        assert!(distance_text("PIX").contains("best case"));
        assert!(distance_text("n/a").contains("software"));
    }

    pub fn system() -> System {
        System {
            kernel: "6.12.0-test".into(),
            machine: "x86_64".into(),
            memlock: Memlock::new(
                Some(gdrx_core::MemlockLimit {
                    soft: Some(8 << 20),
                    hard: Some(8 << 20),
                }),
                Some(false),
            ),
            hugepages: vec![HugePool {
                size_kib: 2048,
                size: "2 MiB".into(),
                nr: Some(64),
                free: Some(64),
            }],
            udmabuf: false,
            rdma_kernel: RdmaKernel {
                sysfs_class: true,
                class_devices: vec!["rxe0".into()],
                modules: Vec::new(),
                rxe_available: Some(true),
            },
            providers: vec![
                ProviderFacts {
                    provider: "host".into(),
                    usable: true,
                    blockers: vec![],
                    notes: vec![],
                },
                ProviderFacts {
                    provider: "udmabuf".into(),
                    usable: false,
                    blockers: vec!["/dev/udmabuf does not exist".into()],
                    notes: vec![],
                },
            ],
        }
    }

    pub fn rxe() -> RdmaDev {
        let s = DmabufSupport::Unsupported {
            errno: libc::EOPNOTSUPP,
            reason: "rxe0 is soft-RoCE, which has no dma-buf MRs".into(),
        };
        RdmaDev {
            name: "rxe0".into(),
            kind: Some(kind_id(DeviceKind::SoftRoce)),
            kind_text: Some(kind_text(DeviceKind::SoftRoce)),
            hardware: Some(false),
            node_guid: Some("2c2a:16ff:fe2e:3b06".into()),
            firmware: None,
            pci_address: None,
            pci_path: None,
            numa_node: None,
            error: None,
            ports: vec![Port {
                port: 1,
                state: "ACTIVE",
                active_mtu: 4096,
                link_layer: "Ethernet",
                netdev: Some("veth0".into()),
                roce_v2_ip: Some("10.77.0.1".into()),
                roce_v2_gid_index: Some(1),
                rate: Some("10 Gb/sec (1X QDR)".into()),
                gids: vec![
                    GidJson {
                        index: 0,
                        gid: "fe80::2c2a:16ff:fe2e:3b06".into(),
                        ip: "fe80::2c2a:16ff:fe2e:3b06".into(),
                        kind: "RoCE v2",
                        netdev: Some("veth0".into()),
                    },
                    GidJson {
                        index: 1,
                        gid: "::ffff:10.77.0.1".into(),
                        ip: "10.77.0.1".into(),
                        kind: "RoCE v2",
                        netdev: Some("veth0".into()),
                    },
                ],
            }],
            ports_error: None,
            dmabuf: Some(DmabufJson::from(&s)),
            dmabuf_error: None,
            facts: Some((DeviceKind::SoftRoce, s)),
        }
    }

    pub fn gpu() -> GpuProbe {
        GpuProbe {
            info: GpuInfo {
                ordinal: 0,
                name: "NVIDIA H200".into(),
                pci_bus_id: "0000:19:00.0".into(),
                compute_capability: (9, 0),
                total_mem: 140 << 30,
                driver_version: 13000,
                dmabuf_supported: true,
                gpudirect_rdma_supported: true,
                rdma_writes_ordering: 0,
                rdma_flush_options: 0,
                granularity: 2 << 20,
            },
            export: Ok("nvidia".into()),
        }
    }

    pub fn report(rdma: RdmaSection, gpus: GpuSection, policies: &[GpuPolicy]) -> Report {
        let paths = paths(&rdma, &gpus, None, policies);
        let affinity = affinity(&rdma, &gpus);
        let mut r = Report {
            doctor: Doctor::new(policies),
            system: system(),
            rdma,
            peermem: None,
            gpus,
            paths,
            affinity,
            summary: Vec::new(),
            findings: Vec::new(),
        };
        r.summarize();
        r
    }

    pub fn with_rxe() -> RdmaSection {
        RdmaSection {
            ok: true,
            error: None,
            devices: vec![rxe()],
        }
    }

    #[test]
    fn dmabuf_support_in_json() {
        let u = DmabufSupport::Unsupported {
            errno: libc::EOPNOTSUPP,
            reason: "no dma-buf MRs (Operation not supported)".into(),
        };
        let v = serde_json::to_value(DmabufJson::from(&u)).unwrap();
        assert_eq!(v["supported"], false);
        assert_eq!(v["errno"], libc::EOPNOTSUPP);
        assert_eq!(v["errno_name"], "EOPNOTSUPP");
        assert_eq!(v["text"], u.to_string());
        let s = DmabufSupport::Supported { errno: libc::EBADF };
        let v = serde_json::to_value(DmabufJson::from(&s)).unwrap();
        assert_eq!(
            (v["supported"].as_bool(), v["errno_name"].as_str()),
            (Some(true), Some("EBADF"))
        );
        assert!(v["text"].as_str().unwrap().starts_with("supported"));
        assert_eq!(errno_name(0), "none");
        assert_eq!(errno_name(12345), "errno 12345");
        assert_eq!(errno_name(libc::EPROTONOSUPPORT), "EPROTONOSUPPORT");
    }

    #[test]
    fn device_kinds_say_software_or_hardware() {
        assert_eq!(kind_id(DeviceKind::SoftRoce), "soft-roce");
        assert_eq!(kind_text(DeviceKind::SoftRoce), "soft-RoCE (rxe), software");
        assert_eq!(
            kind_text(DeviceKind::SoftIwarp),
            "soft-iWARP (siw), software"
        );
        assert_eq!(kind_text(DeviceKind::Hardware), "hardware");
    }

    #[test]
    fn gpu_errors_are_typed() {
        let g = GpuSection::new(Err(GpuError::NotBuilt));
        assert!(!g.ok && g.devices.is_empty());
        assert_eq!(g.error_kind, Some("not-built"));
        assert!(g.error.unwrap().contains("--features cuda"));
        let g = GpuSection::new(Err(GpuError::NoDriver {
            tried: "libcuda.so.1".into(),
        }));
        assert_eq!(g.error_kind, Some("no-driver"));
        assert!(g.error.unwrap().contains("libcuda.so.1"));
        let g = GpuSection::new(Err(GpuError::NoDevice {
            ordinal: 0,
            count: 0,
        }));
        assert_eq!(g.error_kind, Some("no-device"));
        let g = GpuSection::new(Ok(vec![gpu()]));
        assert!(g.ok && g.error.is_none() && g.devices.len() == 1);
    }
}
