//! # gdrx-gpu
//!
//! The GPU side of gdrx: RDMA receive buffers in GPU memory, with a reported fallback chain,
//! and `gdrx-doctor`, which says for each RDMA device and GPU which path a GPU pool would take
//! and why.
//!
//! - **Provider** ([`GpuProvider`], `cuda` feature): device memory from `cuMemAlloc`, sized to
//!   the allocation granularity, with `CU_POINTER_ATTRIBUTE_SYNC_MEMOPS` set, exported as a
//!   dma-buf with `cuMemGetHandleForAddressRange` (host-page aligned range, offset into it) and
//!   handed to the pool as an unreadable region (the pool must opt in with
//!   `allow_unreadable`).
//! - **Fallback chain** ([`plan()`], [`plan` module](mod@plan)): dma-buf MR, else `ibv_reg_mr` on the device pointer through
//!   nvidia-peermem (detected in sysfs, [`peermem`]), else host staging (pinned host slots, the
//!   payload copied into a GPU slot with `cuMemcpyHtoDAsync`, the lease handed out once the
//!   copy's event completed), under a [`GpuPolicy`]. [`GpuPool`] walks the chain, really trying
//!   each path it may take, and reports the one in effect: a log line, the
//!   `gdrx_gpu_pool_path` metric, and [`GpuPool::path`] / [`GpuPool::report`].
//! - **Visibility** ([`Visibility`]): the rule for when NIC-written GPU memory may be read by
//!   the consumer's kernels, and the flush the pool issues where the GPU needs it.
//! - **Consumer-stream safety** ([`GpuLease::release_after`]): a lease carries a CUDA event
//!   recorded on the consumer's stream; the slot is reposted only once that event completed.
//!
//! ## Quick start
//!
//! ```no_run
//! # #[cfg(feature = "cuda")]
//! # fn main() -> gdrx_gpu::Result<()> {
//! use gdrx_core::{Cq, Device, PoolConfig, Srq, SrqConfig};
//! use gdrx_gpu::{Gpu, GpuEvent, GpuPolicy, GpuPool, GpuPoolConfig};
//!
//! let gpu = Gpu::open(0)?; // a typed error, not a panic, without a driver or GPU
//! let dev = Device::open("mlx5_0")?;
//! let pd = dev.alloc_pd()?;
//! let cq = Cq::with_events(&dev, 4096)?;
//! let srq = Srq::new(&pd, SrqConfig::new(1024, 1))?;
//! let cfg = GpuPoolConfig { policy: GpuPolicy::AllowStaging, ..GpuPoolConfig::new(PoolConfig::default()) };
//! let mut pool = GpuPool::new(&srq, &cq, &gpu, cfg)?;
//! println!("{}", pool.report()); // the path in effect, and why the better ones were not taken
//! let stream = gpu.context().new_stream().map_err(gdrx_gpu::driver_error("cuStreamCreate"))?;
//! for ev in pool.poll_blocking(None)? {
//!     if let GpuEvent::Message(mut lease) = ev {
//!         // ... launch kernels reading lease.device_ptr() .. + lease.len() on `stream` ...
//!         lease.release_after(&stream)?; // reposted once those kernels are done
//!     }
//! }
//! # Ok(()) }
//! # #[cfg(not(feature = "cuda"))]
//! # fn main() {}
//! ```
//!
//! ## Features
//! - `cli` (on by default): the dependencies of the `gdrx-doctor` and `gdrx-gpu-check`
//!   binaries (anyhow, clap, serde_json, tracing-subscriber). A library user depends on
//!   gdrx-gpu with `default-features = false` (plus `cuda`) and gets none of them.
//! - `cuda` (off by default): the provider, staging, [`GpuPool`] and the GPU part of
//!   `gdrx-doctor`, on [cudarc](https://crates.io/crates/cudarc) 0.19 with dynamic loading and
//!   the CUDA 12.8 bindings: the crate builds without CUDA installed, and CUDA 12.x and 13
//!   drivers serve every call it makes. Without the feature, [`probe_gpus`] returns
//!   [`GpuError::NotBuilt`], and everything else in gdrx works.
//!
//! ## Without a driver or a GPU
//! cudarc panics on its first call when `libcuda.so` is missing. gdrx checks first
//! ([`driver_present`]) and returns [`GpuError::NoDriver`]; no GPU is [`GpuError::NoDevice`].
//!
//! ## Thread safety
//! [`Gpu`], [`GpuProvider`] and leases are `Send + Sync`; a [`GpuPool`] or [`Stager`] is used by
//! one poller thread. CUDA calls bind the GPU's primary context to the calling thread first.
//!
//! ## Resource cleanup
//! Device memory outlives its dma-buf fd, which outlives the MR that uses it (the pool's region
//! entry drops the MR first). A lease gated on an event that has not completed when it is
//! dropped is parked and reposted by the poller once the event completes; if the pool is gone,
//! the last owner waits for the event before the slot's memory can be reused or freed.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod error;
pub mod peermem;
pub mod plan;

#[cfg(feature = "cuda")]
mod cuda;

pub use error::{GpuError, Result};
pub use plan::{plan, GpuInfo, GpuPath, GpuPolicy, PathFacts, PathPlan, Visibility};

#[cfg(feature = "cuda")]
pub use cuda::{
    driver_error, DeviceMemory, DmabufExport, Gpu, GpuEvent, GpuLease, GpuPool, GpuPoolConfig,
    GpuPoolReport, GpuProvider, GpuRegion, MessageMeta, PinnedHostProvider, PinnedRegion,
    StageError, Stager, StagerStats, StagingSource, METRICS as GPU_POOL_METRICS,
};

/// True when this build includes the CUDA provider.
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");

/// What probing one GPU found: its attributes, and the result of actually exporting a small
/// allocation as a dma-buf (the exporter's name from `/proc/self/fdinfo`, or why it failed).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuProbe {
    /// The GPU's attributes.
    pub info: GpuInfo,
    /// `Ok(exporter)` or `Err(reason)`; `Err` too when the attribute says no export is possible.
    pub export: std::result::Result<String, String>,
}

/// Checks that the CUDA driver library can be loaded, without calling into it.
///
/// # Errors
/// [`GpuError::NoDriver`] when it cannot; [`GpuError::NotBuilt`] without the `cuda` feature.
pub fn driver_present() -> Result<()> {
    #[cfg(feature = "cuda")]
    {
        cuda::driver_present()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(GpuError::NotBuilt)
    }
}

/// Probes every GPU the driver sees: attributes and a real dma-buf export of one granule.
///
/// # Errors
/// [`GpuError::NotBuilt`] without the `cuda` feature, [`GpuError::NoDriver`] without
/// `libcuda`, [`GpuError::NoDevice`] when the driver sees no GPU, [`GpuError::Driver`] when a
/// query fails.
pub fn probe_gpus() -> Result<Vec<GpuProbe>> {
    #[cfg(feature = "cuda")]
    {
        cuda::probe_gpus()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err(GpuError::NotBuilt)
    }
}
