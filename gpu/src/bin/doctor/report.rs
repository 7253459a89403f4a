//! The report: what was probed, the path a GPU pool would take from each RDMA device into each
//! GPU under each policy, and a summary of findings with what to do. One serializable value:
//! `--json` prints it, the text renderer reads it.
//!
//! Only [`RdmaSection::probe`] touches devices; everything else is built from its result and
//! the GPU probe's, and is unit-tested on made-up facts; [`crate::summary`] reads it.

use std::io;

use gdrx_core::{Device, DeviceKind, DmabufSupport, PortInfo};
use gdrx_gpu::peermem::Peermem;
use gdrx_gpu::{GpuError, GpuPolicy, GpuProbe, PathFacts, PathPlan, Visibility};
use serde::Serialize;

use crate::system::System;

/// What to say when there is no RDMA at all.
pub const SOFT_ROCE_HINT: &str = "for soft-RoCE run deploy/testbed.sh (VM) or deploy/rxe-setup.sh";

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
    /// The findings, each with what to do.
    pub summary: Vec<String>,
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
        let mut d = RdmaDev {
            name: name.to_owned(),
            kind: None,
            kind_text: None,
            hardware: None,
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
            Ok(c) => d.ports = c.ports.iter().map(Port::from).collect(),
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

/// The symbolic name of the errnos the probes return (`EOPNOTSUPP`), else `errno N`.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "none",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        _ => return format!("errno {e}"),
    };
    name.to_owned()
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
            error: None,
            ports: vec![Port {
                port: 1,
                state: "ACTIVE",
                active_mtu: 4096,
                link_layer: "Ethernet",
                netdev: Some("veth0".into()),
                roce_v2_ip: Some("10.77.0.1".into()),
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
        let mut r = Report {
            doctor: Doctor::new(policies),
            system: system(),
            rdma,
            peermem: None,
            gpus,
            paths,
            summary: Vec::new(),
        };
        r.summary = crate::summary::summarize(&r);
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
