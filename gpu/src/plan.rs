//! Which path RDMA data takes into GPU memory, decided from probed facts (no FFI here, so the
//! whole decision is unit-tested).
//!
//! The chain, best first:
//! 1. **dma-buf**: CUDA exports the allocation as a dma-buf (`cuMemGetHandleForAddressRange`)
//!    and the NIC registers it with `ibv_reg_dmabuf_mr`. Needs the NIC's driver to implement
//!    dma-buf MRs and the GPU to export them (`CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`, kernel
//!    and driver new enough).
//! 2. **peermem**: `ibv_reg_mr` on the device pointer, which works when the `nvidia_peermem`
//!    peer-memory client is loaded, the GPU supports GPUDirect RDMA, and the NIC is hardware.
//! 3. **staging**: the NIC writes pinned host slots; each payload is copied into a GPU slot with
//!    `cuMemcpyHtoDAsync` and handed out once the copy's event completed. Always possible, costs
//!    a copy and host memory bandwidth.
//!
//! A [`GpuPolicy`] says how far down the chain a pool may go.

use std::fmt;

use gdrx_core::{DeviceKind, DmabufSupport};

use crate::peermem::{self, Peermem};

/// How far down the chain a GPU pool may fall back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum GpuPolicy {
    /// dma-buf only: the pool is not built otherwise.
    RequireDmabuf,
    /// Zero-copy only: dma-buf, else nvidia-peermem; never a copy through host memory.
    PreferDmabuf,
    /// The whole chain: dma-buf, else peermem, else host staging (the default; the path taken is
    /// logged at warn level when it is not dma-buf, recorded as a metric, and in the report).
    #[default]
    AllowStaging,
}

impl GpuPolicy {
    /// Every policy, strictest first.
    pub const ALL: [GpuPolicy; 3] = [
        GpuPolicy::RequireDmabuf,
        GpuPolicy::PreferDmabuf,
        GpuPolicy::AllowStaging,
    ];

    /// The name used on command lines and in reports.
    pub fn name(self) -> &'static str {
        match self {
            GpuPolicy::RequireDmabuf => "require-dmabuf",
            GpuPolicy::PreferDmabuf => "prefer-dmabuf",
            GpuPolicy::AllowStaging => "allow-staging",
        }
    }

    /// Parses [`GpuPolicy::name`].
    pub fn parse(s: &str) -> Option<GpuPolicy> {
        GpuPolicy::ALL.into_iter().find(|p| p.name() == s)
    }

    /// True when the policy allows `path`.
    pub fn allows(self, path: GpuPath) -> bool {
        match self {
            GpuPolicy::RequireDmabuf => path == GpuPath::Dmabuf,
            GpuPolicy::PreferDmabuf => path != GpuPath::Staging,
            GpuPolicy::AllowStaging => true,
        }
    }
}

impl fmt::Display for GpuPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The path RDMA data takes into GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum GpuPath {
    /// `ibv_reg_dmabuf_mr` on a CUDA-exported dma-buf: zero copy.
    Dmabuf,
    /// `ibv_reg_mr` on the device pointer through nvidia-peermem: zero copy.
    Peermem,
    /// Pinned host slots, copied into GPU slots by the copy engine.
    Staging,
}

impl GpuPath {
    /// The chain's order.
    pub const CHAIN: [GpuPath; 3] = [GpuPath::Dmabuf, GpuPath::Peermem, GpuPath::Staging];

    /// Short name (`dmabuf`, `peermem`, `staging`), used as the metric label.
    pub fn name(self) -> &'static str {
        match self {
            GpuPath::Dmabuf => "dmabuf",
            GpuPath::Peermem => "peermem",
            GpuPath::Staging => "staging",
        }
    }

    /// True for the paths where the NIC writes GPU memory itself.
    pub fn is_zero_copy(self) -> bool {
        self != GpuPath::Staging
    }
}

impl fmt::Display for GpuPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GpuPath::Dmabuf => "dma-buf (ibv_reg_dmabuf_mr on a CUDA dma-buf, zero copy)",
            GpuPath::Peermem => "nvidia-peermem (ibv_reg_mr on the device pointer, zero copy)",
            GpuPath::Staging => {
                "host staging (pinned host slots, cuMemcpyHtoDAsync into GPU slots: one copy)"
            }
        })
    }
}

/// What a GPU reports about itself (the attributes the paths depend on).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    /// CUDA ordinal.
    pub ordinal: usize,
    /// Marketing name (`NVIDIA H200`).
    pub name: String,
    /// PCI bus id (`0000:19:00.0`).
    pub pci_bus_id: String,
    /// Compute capability.
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_mem: usize,
    /// The driver's CUDA version (`12080` is 12.8).
    pub driver_version: i32,
    /// `CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED`.
    pub dmabuf_supported: bool,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED`.
    pub gpudirect_rdma_supported: bool,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING` (0 none, 100 owner, 200 all devices).
    pub rdma_writes_ordering: i32,
    /// `CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS` (bit 0: host
    /// `cuFlushGPUDirectRDMAWrites`, bit 1: memops).
    pub rdma_flush_options: i32,
    /// Allocation granularity (`cuMemGetAllocationGranularity`, recommended), in bytes.
    pub granularity: usize,
}

/// `CU_GPU_DIRECT_RDMA_WRITES_ORDERING_OWNER`.
pub const WRITES_ORDERING_OWNER: i32 = 100;
/// `CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST`.
pub const FLUSH_OPTION_HOST: i32 = 1;

/// How data the NIC wrote becomes visible to the consumer's kernels.
///
/// The rule implemented: a consumer kernel on the owning GPU may read a slot once
/// - **staging**: the slot's copy event completed (the copy engine wrote it: ordinary CUDA
///   stream ordering);
/// - **zero copy, `RDMA_WRITES_ORDERING >= OWNER`** (Hopper and later): the completion was
///   polled; the GPU orders the NIC's writes before the CQE for its own kernels;
/// - **zero copy, ordering `NONE` with the host flush option**: the pool calls
///   `cuFlushGPUDirectRDMAWrites(CURRENT_CTX, TO_OWNER)` once per polled batch, after the CQ poll
///   and before any lease of the batch is handed out;
/// - otherwise visibility is **not guaranteed**: reported, and the remedy named (NCCL's loopback
///   RDMA READ of one byte, which gdrx does not implement, or the staging path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Visibility {
    /// Staging: the copy event's completion.
    AfterCopy,
    /// The GPU orders RDMA writes for its own kernels: nothing to do.
    Ordered,
    /// `cuFlushGPUDirectRDMAWrites` once per polled batch.
    FlushPerBatch,
    /// No mechanism: why.
    NotGuaranteed(String),
}

impl Visibility {
    /// The rule for `path` on a GPU with these attributes.
    pub fn rule(path: GpuPath, ordering: i32, flush_options: i32) -> Visibility {
        if !path.is_zero_copy() {
            Visibility::AfterCopy
        } else if ordering >= WRITES_ORDERING_OWNER {
            Visibility::Ordered
        } else if flush_options & FLUSH_OPTION_HOST != 0 {
            Visibility::FlushPerBatch
        } else {
            Visibility::NotGuaranteed(format!(
                "the GPU neither orders RDMA writes (ordering {ordering}) nor offers \
                 cuFlushGPUDirectRDMAWrites (options {flush_options:#x}): a consumer may read \
                 stale data; use the staging path (policy allow-staging) on this GPU"
            ))
        }
    }
}

impl fmt::Display for Visibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Visibility::AfterCopy => f.write_str("after each slot's copy event completes"),
            Visibility::Ordered => f.write_str(
                "ordered by the GPU (RDMA writes ordering >= owner): readable once the completion is polled",
            ),
            Visibility::FlushPerBatch => {
                f.write_str("cuFlushGPUDirectRDMAWrites once per polled batch, before hand-out")
            }
            Visibility::NotGuaranteed(why) => write!(f, "NOT guaranteed: {why}"),
        }
    }
}

/// Everything the path decision depends on, probed beforehand.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathFacts {
    /// The GPU (`cuda:0`).
    pub gpu: String,
    /// The RDMA device (`mlx5_0`, `rxe0`).
    pub nic: String,
    /// The NIC can register dma-bufs, or why not.
    pub nic_dmabuf: Result<(), String>,
    /// The GPU can export dma-bufs, or why not (attribute, and the export itself when tried).
    pub gpu_dmabuf: Result<(), String>,
    /// `ibv_reg_mr` on a device pointer can work, or why not (peer-memory client, GPUDirect RDMA
    /// support, NIC kind).
    pub peermem: Result<(), String>,
}

impl PathFacts {
    /// Facts from the probes: the NIC's kind and dma-buf probe, the GPU's attributes and export
    /// probe (`Err` with the reason when the export was tried and failed, `None` when it was not
    /// tried), and the peer-memory client.
    pub fn new(
        gpu: &GpuInfo,
        export: Option<&Result<String, String>>,
        nic: &str,
        nic_kind: DeviceKind,
        nic_dmabuf: &DmabufSupport,
        peer: Option<&Peermem>,
    ) -> PathFacts {
        let soft = match nic_kind {
            DeviceKind::Hardware => None,
            k => Some(format!(
                "{nic} is {k}, which moves data with the CPU and cannot reach device memory"
            )),
        };
        let nic_dmabuf = match nic_dmabuf {
            DmabufSupport::Supported { .. } => Ok(()),
            u => Err(format!("{nic}: dma-buf MRs {u}")),
        };
        let gpu_dmabuf = if !gpu.dmabuf_supported {
            Err(format!(
                "cuda:{} reports CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0 (needs driver >= 515 \
                 with the open kernel modules, and kernel >= 5.12 with CONFIG_DMA_SHARED_BUFFER)",
                gpu.ordinal
            ))
        } else {
            match export {
                Some(Err(e)) => Err(format!("cuda:{}: dma-buf export failed: {e}", gpu.ordinal)),
                _ => Ok(()),
            }
        };
        let peermem = if let Some(s) = soft {
            Err(s)
        } else if !gpu.gpudirect_rdma_supported {
            Err(format!(
                "cuda:{} reports CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED = 0",
                gpu.ordinal
            ))
        } else if peer.is_none() {
            Err(peermem::HINT.to_owned())
        } else {
            Ok(())
        };
        PathFacts {
            gpu: format!("cuda:{}", gpu.ordinal),
            nic: nic.to_owned(),
            nic_dmabuf,
            gpu_dmabuf,
            peermem,
        }
    }

    /// Why `path` is impossible with these facts, or `None` when it is possible.
    pub fn blocker(&self, path: GpuPath) -> Option<String> {
        match path {
            GpuPath::Dmabuf => match (&self.nic_dmabuf, &self.gpu_dmabuf) {
                (Ok(()), Ok(())) => None,
                (Err(a), Ok(())) | (Ok(()), Err(a)) => Some(a.clone()),
                (Err(a), Err(b)) => Some(format!("{a}; {b}")),
            },
            GpuPath::Peermem => self.peermem.clone().err(),
            GpuPath::Staging => None,
        }
    }
}

/// The path a pool takes, and why each better one was passed over.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathPlan {
    /// The path.
    pub path: GpuPath,
    /// The policy it was chosen under.
    pub policy: GpuPolicy,
    /// Better paths passed over, with the reason.
    pub passed_over: Vec<(GpuPath, String)>,
}

impl fmt::Display for PathPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (policy {})", self.path, self.policy)?;
        for (p, why) in &self.passed_over {
            write!(f, "; not {}: {why}", p.name())?;
        }
        Ok(())
    }
}

/// Walks the chain: the first path the policy allows and the facts permit.
///
/// # Errors
/// Every path considered with the reason it was refused (not allowed by the policy, or
/// impossible), when none is left.
pub fn plan(policy: GpuPolicy, facts: &PathFacts) -> Result<PathPlan, Vec<String>> {
    let mut passed_over = Vec::new();
    for path in GpuPath::CHAIN {
        if !policy.allows(path) {
            passed_over.push((path, format!("policy {policy} does not allow it")));
            continue;
        }
        match facts.blocker(path) {
            None => {
                return Ok(PathPlan {
                    path,
                    policy,
                    passed_over,
                });
            }
            Some(why) => passed_over.push((path, why)),
        }
    }
    Err(passed_over
        .into_iter()
        .map(|(p, why)| format!("{}: {why}", p.name()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(dmabuf: bool, rdma: bool) -> GpuInfo {
        GpuInfo {
            ordinal: 0,
            name: "test".into(),
            pci_bus_id: "0000:01:00.0".into(),
            compute_capability: (9, 0),
            total_mem: 1 << 30,
            driver_version: 13000,
            dmabuf_supported: dmabuf,
            gpudirect_rdma_supported: rdma,
            rdma_writes_ordering: 100,
            rdma_flush_options: 1,
            granularity: 2 << 20,
        }
    }

    fn supported() -> DmabufSupport {
        DmabufSupport::Supported { errno: libc::EBADF }
    }

    fn unsupported() -> DmabufSupport {
        DmabufSupport::Unsupported {
            errno: libc::EOPNOTSUPP,
            reason: "the driver has no dma-buf MRs".into(),
        }
    }

    fn peer() -> Peermem {
        Peermem {
            module: "nvidia_peermem",
            version: None,
            path: "/sys/module/nvidia_peermem".into(),
        }
    }

    #[test]
    fn dmabuf_when_both_sides_can() {
        let f = PathFacts::new(
            &gpu(true, true),
            Some(&Ok("nvidia".into())),
            "mlx5_0",
            DeviceKind::Hardware,
            &supported(),
            None,
        );
        for p in GpuPolicy::ALL {
            let plan = plan(p, &f).unwrap();
            assert_eq!(plan.path, GpuPath::Dmabuf);
            assert!(plan.passed_over.is_empty());
        }
    }

    #[test]
    fn peermem_when_the_nic_has_no_dmabuf_and_the_module_is_loaded() {
        let f = PathFacts::new(
            &gpu(true, true),
            None,
            "mlx5_0",
            DeviceKind::Hardware,
            &unsupported(),
            Some(&peer()),
        );
        let p = plan(GpuPolicy::PreferDmabuf, &f).unwrap();
        assert_eq!(p.path, GpuPath::Peermem);
        assert_eq!(p.passed_over.len(), 1);
        assert!(p.passed_over[0].1.contains("mlx5_0"), "{p}");
        let e = plan(GpuPolicy::RequireDmabuf, &f).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("dmabuf: mlx5_0"), "{e:?}");
        assert!(e[1].contains("does not allow"), "{e:?}");
    }

    #[test]
    fn rxe_goes_to_staging_or_is_refused_with_every_reason() {
        let f = PathFacts::new(
            &gpu(true, true),
            Some(&Ok("nvidia".into())),
            "rxe0",
            DeviceKind::SoftRoce,
            &unsupported(),
            Some(&peer()),
        );
        let p = plan(GpuPolicy::AllowStaging, &f).unwrap();
        assert_eq!(p.path, GpuPath::Staging);
        let text = p.to_string();
        assert!(text.contains("not dmabuf: rxe0: dma-buf MRs"), "{text}");
        assert!(text.contains("cannot reach device memory"), "{text}");
        let e = plan(GpuPolicy::PreferDmabuf, &f).unwrap_err();
        assert_eq!(e.len(), 3);
        assert!(e[2].starts_with("staging: policy prefer-dmabuf"), "{e:?}");
    }

    #[test]
    fn gpu_side_reasons_are_named() {
        let f = PathFacts::new(
            &gpu(true, false),
            Some(&Err("CUDA_ERROR_NOT_SUPPORTED".into())),
            "mlx5_0",
            DeviceKind::Hardware,
            &supported(),
            Some(&peer()),
        );
        assert!(f
            .blocker(GpuPath::Dmabuf)
            .unwrap()
            .contains("export failed"));
        assert!(f
            .blocker(GpuPath::Peermem)
            .unwrap()
            .contains("GPU_DIRECT_RDMA_SUPPORTED = 0"));
        let f = PathFacts::new(
            &gpu(false, true),
            None,
            "mlx5_0",
            DeviceKind::Hardware,
            &unsupported(),
            None,
        );
        let b = f.blocker(GpuPath::Dmabuf).unwrap();
        assert!(
            b.contains("mlx5_0") && b.contains("DMA_BUF_SUPPORTED = 0"),
            "{b}"
        );
        assert!(f
            .blocker(GpuPath::Peermem)
            .unwrap()
            .contains("modprobe nvidia_peermem"));
    }

    #[test]
    fn policy_names_round_trip() {
        for p in GpuPolicy::ALL {
            assert_eq!(GpuPolicy::parse(p.name()), Some(p));
        }
        assert_eq!(GpuPolicy::parse("dmabuf"), None);
        assert_eq!(GpuPolicy::default(), GpuPolicy::AllowStaging);
    }

    #[test]
    fn visibility_rule() {
        assert_eq!(
            Visibility::rule(GpuPath::Staging, 0, 0),
            Visibility::AfterCopy
        );
        assert_eq!(
            Visibility::rule(GpuPath::Dmabuf, 100, 0),
            Visibility::Ordered
        );
        assert_eq!(
            Visibility::rule(GpuPath::Peermem, 200, 1),
            Visibility::Ordered
        );
        assert_eq!(
            Visibility::rule(GpuPath::Dmabuf, 0, 3),
            Visibility::FlushPerBatch
        );
        assert!(matches!(
            Visibility::rule(GpuPath::Dmabuf, 0, 2),
            Visibility::NotGuaranteed(w) if w.contains("staging")
        ));
    }
}
