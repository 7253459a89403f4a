//! Memory providers: where the receive buffer pool gets its memory.
//!
//! A [`Provider`] allocates [`Region`]s; the pool ([`crate::Pool`]) carves each region into
//! fixed-size slots and registers it with the NIC once. This is the RDMA analogue of the Linux
//! page_pool memory providers behind devmem TCP and io_uring zero-copy receive: host pages, huge
//! pages, a udmabuf (a dma-buf made from a memfd) and GPU memory all feed the same pool, which
//! does not care which it got.
//!
//! A region describes itself with a [`RegionDesc`]:
//! - how the NIC can register it: a dma-buf (fd, offset, IOVA) for `ibv_reg_dmabuf_mr`, an
//!   address for `ibv_reg_mr`, or both (the pool tries dma-buf first and reports when it falls
//!   back, see [`crate::RegistrationPath`]);
//! - whether the CPU may read it ([`RegionDesc::cpu_readable`]): device memory is *unreadable*,
//!   and a pool only accepts unreadable memory when its user opts in (like drivers opting in
//!   with `PP_FLAG_ALLOW_UNREADABLE_NETMEM`);
//! - its page size, and its device and NUMA node where known;
//! - how it was obtained ([`RegionDesc::origin`]), e.g. which huge page size the kernel granted
//!   and why a larger one was refused.
//!
//! The trait is `unsafe` for the same reason as `GlobalAlloc`: the pool hands the memory to the
//! NIC and to safe readers on the strength of what the region says about itself.

use std::any::Any;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::Arc;

pub use gdrx_verbs::mem::MemoryKind;
use gdrx_verbs::Device;

use crate::AllocError;

/// A dma-buf view of a region: `ibv_reg_dmabuf_mr(pd, offset, len, iova, fd, access)`.
#[derive(Debug, Clone, Copy)]
pub struct DmabufView<'a> {
    /// The dma-buf file descriptor (the region owns it).
    pub fd: BorrowedFd<'a>,
    /// Offset of the region's first byte inside the dma-buf.
    pub offset: u64,
    /// The I/O virtual address the NIC should use for the region's first byte; work requests
    /// are posted with addresses based on it.
    pub iova: u64,
}

/// How a region looks to the NIC and to the CPU.
#[derive(Debug, Clone)]
pub struct RegionDesc {
    /// Usable bytes, starting at the region's first byte.
    pub len: usize,
    /// An address `ibv_reg_mr` can register: a CPU mapping for host memory, or a device pointer
    /// (GPU memory through nvidia-peermem). `None` when the region can only be registered as a
    /// dma-buf.
    pub addr: Option<NonNull<u8>>,
    /// True when `addr` is a CPU mapping the CPU may read (host, huge page and udmabuf memory).
    /// False for device memory: reading it from the CPU is undefined or a fault.
    pub cpu_readable: bool,
    /// The page size backing the region (4 KiB, 2 MiB, 1 GiB, or the GPU's page size).
    pub page_size: usize,
    /// NUMA node of the memory, when known.
    pub numa_node: Option<u32>,
    /// The device the memory lives on (`cuda:0`), when it is device memory.
    pub device: Option<String>,
    /// How the region was obtained, in words, including every fallback step and its reason
    /// (e.g. `MAP_HUGETLB 2 MiB (1 GiB refused: ENOMEM, 0 free 1 GiB pages)`).
    pub origin: String,
}

// SAFETY: the address is a plain value describing memory; it is only dereferenced under the
// `Provider` contract, by code that keeps the region alive. The rest are owned values.
unsafe impl Send for RegionDesc {}
// SAFETY: as above; `RegionDesc` has no interior mutability.
unsafe impl Sync for RegionDesc {}

/// Memory a provider allocated. Dropping it releases the memory; the pool keeps it (in an
/// `Arc`) until its MR is deregistered and the last lease on it is gone.
pub trait Region: Send + Sync + fmt::Debug {
    /// The region's description. It must not change during the region's life.
    fn desc(&self) -> &RegionDesc;

    /// The dma-buf view of the region, when it has one.
    fn dmabuf(&self) -> Option<DmabufView<'_>> {
        None
    }

    /// The region as `Any`, so a user can get back to the provider's concrete type.
    fn as_any(&self) -> &dyn Any;
}

/// What a provider can do on a given device, checked before anything is allocated or posted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCheck {
    /// Provider name.
    pub provider: String,
    /// Problems that make the provider unusable here (empty when it can be used).
    pub blockers: Vec<String>,
    /// Facts worth reporting (e.g. `1 GiB pages: 0 free, will fall back to 2 MiB`).
    pub notes: Vec<String>,
}

impl ProviderCheck {
    /// A check that found nothing wrong.
    pub fn ok(provider: impl Into<String>) -> ProviderCheck {
        ProviderCheck {
            provider: provider.into(),
            blockers: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// True when nothing blocks the provider.
    pub fn is_usable(&self) -> bool {
        self.blockers.is_empty()
    }
}

impl fmt::Display for ProviderCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.provider,
            if self.is_usable() {
                "usable"
            } else {
                "NOT usable"
            }
        )?;
        for b in &self.blockers {
            write!(f, "; blocked: {b}")?;
        }
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// A source of receive memory for the buffer pool.
///
/// # Safety
/// Implementors promise, for every region returned by [`Provider::alloc`] and for as long as
/// that region is alive:
/// - `desc().addr`, when `Some`, points to `desc().len` bytes that stay mapped at that address
///   (never remapped, never shrunk) and that the NIC may be given with `ibv_reg_mr`;
/// - `desc().cpu_readable` is true only if the CPU may read and write those bytes through `addr`;
/// - `dmabuf()`, when `Some`, names a dma-buf that covers `offset .. offset + len` and is the
///   same memory as `addr` when both are given;
/// - nothing else reads or writes the memory except through the pool (the pool hands slots to
///   the NIC and to leases and relies on being the only user).
pub unsafe trait Provider: Send + Sync + fmt::Debug {
    /// Short name, used in reports and metric labels (`host`, `hugepage`, `udmabuf`, `cuda:0`).
    fn name(&self) -> &str;

    /// The kind of memory handed out.
    fn kind(&self) -> MemoryKind;

    /// Checks, before anything is allocated or posted, whether the provider can feed a pool on
    /// `device` (e.g. `/dev/udmabuf` exists, huge pages are configured, the GPU can export
    /// dma-bufs). The default finds nothing wrong.
    fn check(&self, device: &Device) -> ProviderCheck {
        let _ = device;
        ProviderCheck::ok(self.name())
    }

    /// Allocates a region of at least `len` bytes.
    ///
    /// # Errors
    /// An [`AllocError`] saying what could not be allocated, why, and what to do.
    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError>;
}
