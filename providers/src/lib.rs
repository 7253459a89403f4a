//! # gdrx-providers
//!
//! Memory providers for gdrx's receive buffer pool, in the spirit of the Linux page_pool memory
//! providers behind devmem TCP and io_uring zero-copy receive: each provider implements
//! [`gdrx_core::Provider`], allocates [`gdrx_core::Region`]s of one kind of memory, and says in
//! each region's [`gdrx_core::RegionDesc`] how the NIC can register it and how it was obtained.
//!
//! ## Quick start
//!
//! ```no_run
//! use gdrx_core::{Provider, Region};
//! use gdrx_providers::{HugePageProvider, HugePageRegion, PageSize};
//!
//! # fn main() -> Result<(), gdrx_core::AllocError> {
//! // Huge pages, 1 GiB if reserved, else 2 MiB, never smaller.
//! let provider = HugePageProvider::new().smallest(PageSize::Huge2M);
//! // Check before allocating (Provider::check does the same given a device).
//! println!("{}", provider.check_here());
//! let region = provider.alloc(64 << 20)?;
//! let desc = region.desc();
//! println!("{} bytes in {} byte pages: {}", desc.len, desc.page_size, desc.origin);
//! // Back to the concrete type for the step-by-step report.
//! let huge = region.as_any().downcast_ref::<HugePageRegion>().unwrap();
//! for step in huge.steps() {
//!     println!("  {step}");
//! }
//! # Ok(()) }
//! ```
//!
//! ## Providers
//!
//! | Provider | Name | [`MemoryKind`](gdrx_core::MemoryKind) | CPU-readable | Registration | Reports |
//! |---|---|---|---|---|---|
//! | [`HostProvider`] | `host` | `Host` | yes | `ibv_reg_mr` on the mapping | base page size, NUMA node (pages faulted in at allocation) |
//! | [`HugePageProvider`] | `hugepage` | `HugePage` | yes | `ibv_reg_mr` on the mapping | page size obtained, every fallback step with its reason ([`HugePageRegion::steps`]), huge bytes verified in `/proc/self/smaps`, NUMA node |
//! | [`UdmabufProvider`] | `udmabuf` | `HostDmabuf` | yes | `ibv_reg_dmabuf_mr` (fd, offset 0, IOVA = CPU address), else `ibv_reg_mr` on the memfd mapping | dma-buf exporter ([`UdmabufRegion::exporter`]), udmabuf size limit, NUMA node |
//!
//! Every provider has a device-independent `check_here()` that [`gdrx_core::Provider::check`]
//! calls: what blocks the provider on this machine (no `/dev/udmabuf`; huge pages required but
//! none configured) and facts worth logging (free huge pages per size, THP mode, udmabuf size
//! limit, `RLIMIT_MEMLOCK`). Allocation failures are [`gdrx_core::AllocError`] saying what
//! failed, why, and what to do.
//!
//! The udmabuf provider makes the dma-buf registration path testable without a GPU. On
//! soft-RoCE, `ibv_reg_dmabuf_mr` returns EOPNOTSUPP, and `ibv_reg_mr` on an mmap of the dma-buf
//! fd fails with EFAULT (udmabuf maps it as PFN memory, which cannot be pinned), so the region's
//! CPU address is a mapping of the memfd behind the dma-buf: the same pages, registrable with
//! `ibv_reg_mr`, at the same address as the dma-buf IOVA.
//!
//! ## Features
//! None. The crate needs only libc; no RDMA library is touched until a region is registered.
//!
//! ## Thread safety
//! Providers hold only their options: `Send + Sync`, cheap to clone. Regions are `Send + Sync`:
//! they own their mapping and file descriptors and expose an immutable description, the
//! address, and borrowed fds. Reading or writing the memory is the pool's business (its slots
//! move by value between the NIC and its users).
//!
//! ## Resource cleanup
//! Dropping a region unmaps its memory (hugetlb pages go back to their pool) and closes its file
//! descriptors (the udmabuf's dma-buf fd, then its memfd). The pool keeps a region in an `Arc`
//! until its memory region is deregistered and the last lease on it is gone. `Drop` never
//! panics: a failing `munmap` or `close` is logged with `tracing`.
//!
//! ## Platform
//! Linux only. The huge page sizes are those of x86-64 and arm64 with 4 KiB base pages (2 MiB
//! and 1 GiB); other sizes fail their step with the reason that the kernel has no such pool.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod host;
pub mod hugepage;
mod sys;
pub mod udmabuf;

use std::sync::Arc;

use gdrx_core::Provider;

pub use host::{HostProvider, HostRegion};
pub use hugepage::{HugePageProvider, HugePageRegion, PageSize, Step, StepOutcome};
pub use udmabuf::{UdmabufProvider, UdmabufRegion};

/// The providers this crate offers, by the name [`by_name`] and command lines accept.
pub const PROVIDER_NAMES: &[&str] = &["host", "hugepage", "udmabuf"];

/// The provider called `name` (one of [`PROVIDER_NAMES`]) with its default options, or `None`
/// for an unknown name.
pub fn by_name(name: &str) -> Option<Arc<dyn Provider>> {
    match name {
        "host" => Some(Arc::new(HostProvider::new())),
        "hugepage" => Some(Arc::new(HugePageProvider::new())),
        "udmabuf" => Some(Arc::new(UdmabufProvider::new())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_gives_its_provider() {
        for &n in PROVIDER_NAMES {
            let p = by_name(n).unwrap();
            assert_eq!(p.name(), n);
            assert!(!format!("{p:?}").is_empty());
        }
        assert!(by_name("gpu").is_none());
    }
}
