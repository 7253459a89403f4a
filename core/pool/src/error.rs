//! The pool's errors: its own refusals and failures, and the verbs errors under them.

use std::fmt;
use std::io;

use gdrx_verbs::{DmabufSupport, MemoryKind};

use crate::state::ConfigError;

/// A result with the pool's error.
pub type Result<T, E = PoolError> = std::result::Result<T, E>;

/// A memory provider could not allocate a region (what [`crate::Provider::alloc`] returns).
#[derive(Debug, thiserror::Error)]
#[error("provider `{provider}` could not allocate {len} bytes: {what}{}; {hint}", source_suffix(.source))]
pub struct AllocError {
    /// The provider's name.
    pub provider: String,
    /// Bytes asked for.
    pub len: usize,
    /// What failed, e.g. `mmap(MAP_HUGETLB, 1 GiB pages)`.
    pub what: String,
    /// What to do about it.
    pub hint: String,
    /// The OS error, when there was one.
    #[source]
    pub source: Option<io::Error>,
}

/// One registration path tried for a region, and why it did not work.
#[derive(Debug)]
#[non_exhaustive]
pub enum Attempt {
    /// dma-buf registration was required, but the region has no dma-buf.
    NoDmabuf,
    /// The region has a dma-buf but the device cannot register one.
    DeviceLacksDmabuf(DmabufSupport),
    /// `ibv_reg_dmabuf_mr` failed.
    DmabufFailed(gdrx_verbs::Error),
    /// The region has no address `ibv_reg_mr` could register.
    NoAddress,
    /// `ibv_reg_mr` failed.
    AddressFailed(gdrx_verbs::Error),
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attempt::NoDmabuf => f.write_str("the region has no dma-buf"),
            Attempt::DeviceLacksDmabuf(d) => write!(f, "the device's dma-buf MR support is {d}"),
            Attempt::DmabufFailed(e) => write!(f, "ibv_reg_dmabuf_mr failed: {e}"),
            Attempt::NoAddress => f.write_str("the region has no address ibv_reg_mr can register"),
            Attempt::AddressFailed(e) => write!(f, "ibv_reg_mr failed: {e}"),
        }
    }
}

/// What went wrong building or running a pool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The configuration is refused; nothing was allocated or posted.
    #[error("invalid pool configuration: {0}")]
    Config(#[from] ConfigError),

    /// A provider could not allocate a region.
    #[error(transparent)]
    Alloc(#[from] AllocError),

    /// A memory provider cannot be used on this device; nothing was allocated or posted.
    #[error("memory provider `{provider}` cannot be used on `{device}`: {}", .blockers.join("; "))]
    ProviderUnusable {
        /// The provider's name.
        provider: String,
        /// Device name.
        device: String,
        /// Why not (from [`crate::Provider::check`]).
        blockers: Vec<String>,
    },

    /// The pool was given memory the CPU cannot read without opting in to it.
    #[error(
        "memory provider `{provider}` hands out memory the CPU cannot read ({kind}); set \
         PoolConfig::allow_unreadable if the consumer never reads payload bytes from the CPU, \
         and use header split for the bytes it does read"
    )]
    UnreadableMemory {
        /// The provider's name.
        provider: String,
        /// Its memory kind.
        kind: MemoryKind,
    },

    /// dma-buf registration is required but the device cannot do it; nothing was allocated.
    #[error(
        "dma-buf registration is required for `{provider}` memory, but the dma-buf MR support \
         of `{device}` is {support}; allow the address path (RegistrationPolicy::PreferDmabuf) \
         or use a NIC and kernel with ibv_reg_dmabuf_mr"
    )]
    DmabufRequired {
        /// The provider's name.
        provider: String,
        /// Device name.
        device: String,
        /// What the device's probe found.
        support: DmabufSupport,
    },

    /// No registration path worked for a region (every attempt is listed).
    #[error("could not register `{provider}` memory on `{device}`: {}", join(.attempts))]
    Registration {
        /// The provider's name.
        provider: String,
        /// Device name.
        device: String,
        /// Each path tried and why it failed, in order.
        attempts: Vec<Attempt>,
    },

    /// A verbs call failed (posting, polling, registering, memlock limits...).
    #[error(transparent)]
    Verbs(#[from] gdrx_verbs::Error),
}

impl PoolError {
    /// The errno behind this error, if it carries one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            PoolError::Alloc(a) => a.source.as_ref().and_then(io::Error::raw_os_error),
            PoolError::Verbs(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

impl From<gdrx_verbs::WcError> for PoolError {
    fn from(e: gdrx_verbs::WcError) -> PoolError {
        PoolError::Verbs(e.into())
    }
}

impl From<gdrx_verbs::PostError> for PoolError {
    fn from(e: gdrx_verbs::PostError) -> PoolError {
        PoolError::Verbs(e.into())
    }
}

fn join(attempts: &[Attempt]) -> String {
    let v: Vec<String> = attempts.iter().map(ToString::to_string).collect();
    v.join("; then ")
}

fn source_suffix(source: &Option<io::Error>) -> String {
    source
        .as_ref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}
