//! [`HostProvider`]: ordinary page-aligned anonymous memory in base (4 KiB) pages.
//!
//! Each [`HostRegion`] owns one `mmap(MAP_PRIVATE | MAP_ANONYMOUS)` mapping, marked
//! `MADV_NOHUGEPAGE` so that the page size it reports is the page size it has even where
//! transparent huge pages are set to `always` (use [`crate::HugePageProvider`] for huge pages).
//! By default the pages are faulted in at allocation, which fixes their NUMA node (first touch:
//! the allocating thread's node) and lets the region report it.

use std::any::Any;
use std::fmt;
use std::io;
use std::sync::Arc;

use gdrx_core::{
    AllocError, Device, MemlockLimit, MemoryKind, Provider, ProviderCheck, Region, RegionDesc,
};

use crate::sys::{self, Mapping, Populated};

const NAME: &str = "host";

/// Hands out page-aligned anonymous host memory ([`MemoryKind::Host`]).
///
/// Cheap to construct and to clone; holds only its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProvider {
    populate: bool,
}

impl Default for HostProvider {
    fn default() -> Self {
        HostProvider::new()
    }
}

impl HostProvider {
    /// A provider that faults its regions in at allocation.
    pub fn new() -> HostProvider {
        HostProvider { populate: true }
    }

    /// Whether to fault every page in at allocation (default `true`). Without it the pages
    /// appear on first touch (at the latest when `ibv_reg_mr` pins them) and the region reports
    /// no NUMA node.
    pub fn populate(mut self, populate: bool) -> HostProvider {
        self.populate = populate;
        self
    }

    /// What [`Provider::check`] reports, without needing a device: the page size, whether pages
    /// are faulted in at allocation, and `RLIMIT_MEMLOCK` (registration pins the memory). Host
    /// memory has no blockers.
    pub fn check_here(&self) -> ProviderCheck {
        let mut c = ProviderCheck::ok(NAME);
        c.notes.push(format!(
            "anonymous mmap in {} pages (MADV_NOHUGEPAGE)",
            sys::human(gdrx_core::page_size())
        ));
        c.notes.push(if self.populate {
            "pages are faulted in at allocation (NUMA node of the allocating thread)".to_owned()
        } else {
            "pages are faulted in on first touch (populate off)".to_owned()
        });
        if let Some(l) = MemlockLimit::current() {
            c.notes.push(format!(
                "RLIMIT_MEMLOCK {l}: registering a region pins it against this limit"
            ));
        }
        c
    }

    /// Allocates a region of `len` bytes rounded up to whole pages, as a concrete
    /// [`HostRegion`] ([`Provider::alloc`] returns the same thing behind `Arc<dyn Region>`).
    ///
    /// # Errors
    /// [`AllocError`] when `len` is 0 or overflows when rounded up, when `mmap` fails (out of
    /// memory or address space, `ulimit -v`, overcommit policy), or when faulting the pages in
    /// fails (memory cgroup limit).
    pub fn alloc_region(&self, len: usize) -> Result<HostRegion, AllocError> {
        let page = gdrx_core::page_size();
        let rlen = checked_len(NAME, len, page)?;
        let map = Mapping::anonymous(rlen, 0).map_err(|e| {
            alloc_error(
                len,
                format!("mmap of {} of anonymous memory", sys::human(rlen)),
                "the kernel refused the memory: check free memory, `ulimit -v`, \
                 vm.overcommit_memory and the memory cgroup limit, or allocate less",
                e,
            )
        })?;
        // EINVAL means a kernel without THP: the pages are base pages anyway.
        let nohuge = map.madvise(libc::MADV_NOHUGEPAGE);
        if let Err(e) = &nohuge {
            tracing::debug!(err = %e, "madvise(MADV_NOHUGEPAGE) failed");
        }
        let populated = if self.populate {
            Some(map.populate(page).map_err(|e| {
                alloc_error(
                    len,
                    format!("faulting in {} of anonymous memory", sys::human(rlen)),
                    "the memory cgroup limit or free memory is too low: allocate less",
                    e,
                )
            })?)
        } else {
            None
        };
        let numa_node = populated.and_then(|_| sys::numa_node(map.addr(), rlen, page));
        let mut origin = format!("anonymous mmap, {} pages", sys::human(page));
        if nohuge.is_ok() {
            origin.push_str(" (MADV_NOHUGEPAGE)");
        }
        if rlen != len {
            origin.push_str(&format!(
                ", len {} rounded up to {}",
                sys::human(len),
                sys::human(rlen)
            ));
        }
        origin.push_str(match populated {
            Some(Populated::Madvise) => ", faulted in with MADV_POPULATE_WRITE",
            Some(Populated::Touched) => ", faulted in by touching each page",
            None => ", faulted in on first touch",
        });
        if let Some(n) = numa_node {
            origin.push_str(&format!(", NUMA node {n}"));
        }
        let desc = RegionDesc {
            len: rlen,
            addr: Some(map.addr()),
            cpu_readable: true,
            page_size: page,
            numa_node,
            device: None,
            origin,
        };
        tracing::debug!(provider = NAME, len = rlen, origin = %desc.origin, "region allocated");
        Ok(HostRegion { map, desc })
    }
}

/// `len` rounded up to a multiple of `page`, or the [`AllocError`] for 0 and overflow.
pub(crate) fn checked_len(provider: &str, len: usize, page: usize) -> Result<usize, AllocError> {
    if len == 0 {
        return Err(AllocError {
            provider: provider.to_owned(),
            len,
            what: "a region of 0 bytes".to_owned(),
            hint: "ask for at least one byte".to_owned(),
            source: None,
        });
    }
    len.checked_next_multiple_of(page)
        .ok_or_else(|| AllocError {
            provider: provider.to_owned(),
            len,
            what: format!(
                "{len} bytes rounded up to {} pages overflow",
                sys::human(page)
            ),
            hint: "ask for less".to_owned(),
            source: None,
        })
}

fn alloc_error(len: usize, what: String, hint: &str, e: io::Error) -> AllocError {
    AllocError {
        provider: NAME.to_owned(),
        len,
        what: format!("{what}: {}", sys::describe(&e)),
        hint: hint.to_owned(),
        source: Some(e),
    }
}

// SAFETY: every region comes from `alloc_region`, which maps `desc.len` bytes of private
// anonymous read/write memory at `desc.addr` and keeps them mapped (never remapped or shrunk)
// until the region is dropped; nothing else in the process knows the mapping, so the pool is its
// only user. There is no dma-buf view.
unsafe impl Provider for HostProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::Host
    }

    fn check(&self, _device: &Device) -> ProviderCheck {
        self.check_here()
    }

    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError> {
        Ok(Arc::new(self.alloc_region(len)?))
    }
}

/// A region of anonymous host memory; dropping it unmaps the memory.
pub struct HostRegion {
    map: Mapping,
    desc: RegionDesc,
}

// SAFETY: the region owns its mapping like a `Box<[u8]>` owns its bytes; it hands out only the
// address (in `desc`), and touching the bytes through it is up to the pool's own protocol.
// Nothing in it is tied to a thread, and `munmap` may be called from any thread.
unsafe impl Send for HostRegion {}
// SAFETY: `&HostRegion` only reads the immutable description.
unsafe impl Sync for HostRegion {}

impl fmt::Debug for HostRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostRegion")
            .field("map", &self.map)
            .field("desc", &self.desc)
            .finish()
    }
}

impl Region for HostRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn region_is_page_aligned_readable_and_writable() {
        assert_send_sync::<HostRegion>();
        assert_send_sync::<HostProvider>();
        let page = gdrx_core::page_size();
        let p = HostProvider::new();
        assert_eq!(p.name(), "host");
        assert_eq!(p.kind(), MemoryKind::Host);
        let r = p.alloc(10).unwrap();
        let d = r.desc();
        assert_eq!(d.len, page);
        assert_eq!(d.page_size, page);
        assert!(d.cpu_readable);
        assert!(d.device.is_none());
        assert!(r.dmabuf().is_none());
        let addr = d.addr.unwrap().as_ptr();
        assert_eq!(addr as usize % page, 0);
        assert!(d.origin.contains("anonymous mmap") && d.origin.contains("rounded up"));
        assert!(d.origin.contains("faulted in"), "{}", d.origin);
        // SAFETY: the region is ours, mapped read/write for `d.len` bytes, and no NIC has it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(addr, d.len) };
        assert!(bytes.iter().all(|&b| b == 0));
        bytes[page - 1] = 0xa5;
        assert_eq!(bytes[page - 1], 0xa5);
        let concrete = r.as_any().downcast_ref::<HostRegion>().unwrap();
        assert_eq!(concrete.desc().len, page);
        println!("host region: {d:?}");
    }

    #[test]
    fn numa_node_is_known_when_populated_and_the_kernel_has_numa() {
        let r = HostProvider::new().alloc_region(1 << 20).unwrap();
        let numa = std::path::Path::new("/sys/devices/system/node/node0").exists();
        if numa {
            assert!(r.desc().numa_node.is_some(), "{:?}", r.desc());
            assert!(r.desc().origin.contains("NUMA node"));
        } else {
            println!("skipped NUMA assertion: kernel without NUMA sysfs");
        }
        let lazy = HostProvider::new()
            .populate(false)
            .alloc_region(1 << 20)
            .unwrap();
        assert_eq!(lazy.desc().numa_node, None);
        assert!(lazy.desc().origin.contains("first touch"));
    }

    #[test]
    fn zero_and_overflowing_lengths_are_alloc_errors() {
        let p = HostProvider::default();
        let e = p.alloc(0).unwrap_err();
        assert_eq!(e.len, 0, "{e}");
        assert!(e.to_string().contains("0 bytes"), "{e}");
        let e = p.alloc(usize::MAX).unwrap_err();
        assert!(e.what.contains("overflow") && e.source.is_none(), "{e}");
        // Rounds fine but cannot be mapped: half the address space.
        let e = p.alloc(usize::MAX / 2).unwrap_err();
        assert!(e.what.contains("mmap") && e.source.is_some(), "{e}");
    }

    #[test]
    fn check_is_usable_and_reports_page_size() {
        let c = HostProvider::new().check_here();
        assert!(c.is_usable(), "{c}");
        assert_eq!(c.provider, "host");
        assert!(c.notes.iter().any(|n| n.contains("pages")), "{c}");
    }
}
