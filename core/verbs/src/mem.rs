//! Page-aligned anonymous host memory, the simplest thing an MR can be registered on.
//!
//! [`HostMemory`] owns an `mmap(MAP_PRIVATE | MAP_ANONYMOUS)` mapping and unmaps it on drop. The
//! memory providers in `gdrx-providers` build on it; the verbs layer uses it for tests and small
//! control buffers.

use std::fmt;
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// The system page size in bytes.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v <= 0 {
        4096
    } else {
        v as usize
    }
}

/// An owned, page-aligned, zero-filled anonymous mapping.
///
/// The memory may be registered with the NIC and written by it. Rust references into it are
/// only handed out through `unsafe` accessors, whose contract is that the NIC is not writing the
/// bytes while the reference lives (no receive posted on them, or its completion already polled).
pub struct HostMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: HostMemory is an owned allocation like Box<[u8]>; all access to its bytes goes through
// `unsafe` accessors whose callers uphold exclusion, so moving or sharing the handle between
// threads is sound.
unsafe impl Send for HostMemory {}
// SAFETY: as above; `&HostMemory` only exposes the address and length safely.
unsafe impl Sync for HostMemory {}

impl fmt::Debug for HostMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostMemory")
            .field("addr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl HostMemory {
    /// Maps `len` bytes (rounded up to whole pages) of zeroed memory.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `len == 0`, [`Error::Os`] when mmap fails.
    pub fn new(len: usize) -> Result<HostMemory> {
        if len == 0 {
            return Err(Error::InvalidConfig("HostMemory of 0 bytes".into()));
        }
        let page = page_size();
        let len = len
            .checked_next_multiple_of(page)
            .ok_or_else(|| Error::InvalidConfig(format!("HostMemory of {len} bytes overflows")))?;
        // SAFETY: anonymous private mapping with no address hint; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::os("mmap"));
        }
        Ok(HostMemory {
            // SAFETY: mmap succeeded, so `p` is non-null.
            ptr: unsafe { NonNull::new_unchecked(p.cast()) },
            len,
        })
    }

    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Borrows `len` bytes at `offset`.
    ///
    /// # Safety
    /// No work request that lets the NIC write these bytes may be outstanding while the slice
    /// lives, and no `&mut` to them may exist.
    ///
    /// # Panics
    /// When the range is outside the mapping.
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "range out of bounds"
        );
        // SAFETY: in bounds (checked above); the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset), len) }
    }

    /// Mutably borrows `len` bytes at `offset`.
    ///
    /// # Safety
    /// No work request that lets the NIC read or write these bytes may be outstanding while the
    /// slice lives, and no other reference to them may exist.
    ///
    /// # Panics
    /// When the range is outside the mapping.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        assert!(
            offset.checked_add(len).is_some_and(|e| e <= self.len),
            "range out of bounds"
        );
        // SAFETY: in bounds (checked above); the caller guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(offset), len) }
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; every MR on it holds an Arc of us and is gone by now.
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if ret != 0 {
            tracing::error!(len = self.len, err = %std::io::Error::last_os_error(), "munmap failed");
        }
    }
}

/// What kind of memory a region is (what a memory provider hands out; named in errors and
/// reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemoryKind {
    /// Ordinary host pages.
    Host,
    /// Huge pages (hugetlbfs or transparent huge pages).
    HugePage,
    /// A dma-buf exported from host memory (udmabuf).
    HostDmabuf,
    /// GPU device memory.
    Gpu,
}

impl fmt::Display for MemoryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemoryKind::Host => "host",
            MemoryKind::HugePage => "hugepage",
            MemoryKind::HostDmabuf => "udmabuf",
            MemoryKind::Gpu => "gpu",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_pages_and_is_zeroed() {
        let m = HostMemory::new(10).unwrap();
        assert_eq!(m.len(), page_size());
        assert_eq!(m.as_ptr() as usize % page_size(), 0);
        // SAFETY: not registered with any NIC.
        let s = unsafe { m.slice(0, m.len()) };
        assert!(s.iter().all(|&b| b == 0));
        // SAFETY: not registered with any NIC, no other borrow.
        unsafe { m.slice_mut(5, 3) }.copy_from_slice(b"abc");
        // SAFETY: as above.
        assert_eq!(unsafe { m.slice(5, 3) }, b"abc");
        assert!(HostMemory::new(0).is_err());
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn slice_out_of_bounds_panics() {
        let m = HostMemory::new(4096).unwrap();
        // SAFETY: not registered; the call panics before borrowing.
        let _ = unsafe { m.slice(4000, 200) };
    }
}
