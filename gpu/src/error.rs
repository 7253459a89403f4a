//! The crate's error type: one variant per failing step, each saying what failed and what to do.

/// What went wrong on the GPU side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GpuError {
    /// gdrx-gpu was built without the `cuda` feature.
    #[error(
        "this build of gdrx has no CUDA support: rebuild with `--features cuda` (crate gdrx-gpu)"
    )]
    NotBuilt,
    /// The CUDA driver library (`libcuda.so.1`) could not be loaded. Checked before any CUDA
    /// call, since cudarc panics when it is missing.
    #[error(
        "no CUDA driver: {tried} could not be loaded. Install the NVIDIA driver (it ships \
         libcuda.so.1; a CUDA toolkit alone does not), or feed the pool from host, hugepage or \
         udmabuf memory instead"
    )]
    NoDriver {
        /// The library names tried.
        tried: String,
    },
    /// The driver loaded but there is no such GPU.
    #[error(
        "no CUDA device {ordinal}: the driver sees {count} GPU(s){}",
        if *count == 0 { " (check `nvidia-smi`, and CUDA_VISIBLE_DEVICES)" } else { "" }
    )]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// GPUs the driver sees.
        count: usize,
    },
    /// A CUDA driver call failed.
    #[error("{op} failed: {name} ({code}){}", if hint.is_empty() { String::new() } else { format!(": {hint}") })]
    Driver {
        /// The driver call, with what it was doing (`cuMemAlloc(64 MiB)`).
        op: String,
        /// The CUresult as a number.
        code: u32,
        /// The CUresult's name (`CUDA_ERROR_OUT_OF_MEMORY`).
        name: String,
        /// What to do about it, when known.
        hint: String,
    },
    /// The GPU, driver or kernel cannot do something asked for.
    #[error("{what} is not supported: {hint}")]
    Unsupported {
        /// What is not supported.
        what: String,
        /// Why, and what to do.
        hint: String,
    },
    /// No registration path for GPU memory is allowed and possible.
    #[error("no way to land RDMA data in {gpu} from {nic} under policy `{policy}`: {}", attempts.join("; "))]
    NoPath {
        /// The GPU (`cuda:0`).
        gpu: String,
        /// The RDMA device.
        nic: String,
        /// The policy's name.
        policy: &'static str,
        /// Every path considered and why it was refused.
        attempts: Vec<String>,
    },
    /// A configuration the GPU pool cannot take.
    #[error("invalid GPU pool configuration: {0}")]
    InvalidConfig(String),
    /// The verbs layer failed.
    #[error(transparent)]
    Core(#[from] gdrx_core::Error),
    /// The receive pool's error (configuration, provider, registration, or the verbs under it).
    #[error(transparent)]
    Pool(#[from] gdrx_core::PoolError),
}

/// `Result` with [`GpuError`].
pub type Result<T, E = GpuError> = std::result::Result<T, E>;

impl From<gdrx_core::AllocError> for GpuError {
    fn from(e: gdrx_core::AllocError) -> GpuError {
        GpuError::Pool(e.into())
    }
}
