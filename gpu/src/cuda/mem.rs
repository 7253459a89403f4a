//! Device memory and its dma-buf export.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use cudarc::driver::sys;

use super::{check, Gpu};
use crate::error::{GpuError, Result};

/// An owned `cuMemAlloc` allocation, sized to whole allocation granules, with
/// `CU_POINTER_ATTRIBUTE_SYNC_MEMOPS` set (so synchronous memory operations on it, like the
/// NIC's writes under GPUDirect, are not reordered with CUDA's own copies). Freed on drop.
pub struct DeviceMemory {
    ptr: sys::CUdeviceptr,
    len: usize,
    gpu: Arc<Gpu>,
}

impl fmt::Debug for DeviceMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceMemory")
            .field("gpu", &self.gpu.name())
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .finish()
    }
}

impl DeviceMemory {
    /// Allocates at least `len` bytes (rounded up to the GPU's allocation granularity).
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] for 0 bytes; [`GpuError::Driver`] when the allocation or
    /// the attribute fails (`CUDA_ERROR_OUT_OF_MEMORY` says so and what to do).
    pub fn new(gpu: &Arc<Gpu>, len: usize) -> Result<DeviceMemory> {
        if len == 0 {
            return Err(GpuError::InvalidConfig("device memory of 0 bytes".into()));
        }
        let g = gpu.info().granularity;
        let len = len.checked_next_multiple_of(g).ok_or_else(|| {
            GpuError::InvalidConfig(format!("{len} bytes overflow when rounded to {g}"))
        })?;
        gpu.bind()?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: writes the new device pointer; the context is current.
        check(unsafe { sys::cuMemAlloc_v2(&mut ptr, len) }, || {
            format!("cuMemAlloc({len} B) on {}", gpu.name())
        })?;
        let mem = DeviceMemory {
            ptr,
            len,
            gpu: Arc::clone(gpu),
        };
        let one: u32 = 1;
        // SAFETY: the attribute takes a pointer to an unsigned int; `ptr` is a live allocation.
        let r = unsafe {
            sys::cuPointerSetAttribute(
                (&one as *const u32).cast(),
                sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_SYNC_MEMOPS,
                ptr,
            )
        };
        check(r, || "cuPointerSetAttribute(SYNC_MEMOPS)".into())?;
        Ok(mem)
    }

    /// The device pointer of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes allocated (whole granules).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: allocations have at least one granule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The GPU it lives on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Exports the whole allocation as a dma-buf with `cuMemGetHandleForAddressRange`: the range
    /// is rounded out to host pages, and [`DmabufExport::offset`] says where the allocation
    /// starts inside it (what `ibv_reg_dmabuf_mr` takes as its offset, with the device pointer
    /// as IOVA).
    ///
    /// # Errors
    /// The driver error (`CUDA_ERROR_NOT_SUPPORTED` on GPUs, drivers or kernels without
    /// dma-buf export).
    pub fn export_dmabuf(&self) -> Result<DmabufExport> {
        let page = gdrx_core::page_size() as u64;
        let base = self.ptr & !(page - 1);
        let offset = self.ptr - base;
        let size = (offset + self.len as u64).next_multiple_of(page) as usize;
        self.gpu.bind()?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: for DMA_BUF_FD the handle is an int the driver writes; the range lies in
        // (host pages around) a live allocation of this context.
        let r = unsafe {
            sys::cuMemGetHandleForAddressRange(
                (&mut fd as *mut std::ffi::c_int).cast(),
                base,
                size,
                sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
                0,
            )
        };
        check(r, || {
            format!(
                "cuMemGetHandleForAddressRange(DMA_BUF_FD, {base:#x}, {size} B) on {}",
                self.gpu.name()
            )
        })?;
        if fd < 0 {
            return Err(GpuError::Unsupported {
                what: "dma-buf export".into(),
                hint: format!("the driver returned fd {fd}"),
            });
        }
        Ok(DmabufExport {
            // SAFETY: the driver just created this fd for us; nothing else owns it.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            offset,
            size,
        })
    }
}

impl Drop for DeviceMemory {
    fn drop(&mut self) {
        if let Err(e) = self.gpu.bind() {
            tracing::error!(gpu = self.gpu.name(), error = %e, "cannot free device memory");
            return;
        }
        // SAFETY: we own the allocation; every MR, export and lease on it is gone (they hold an
        // Arc of the region that owns this).
        let r = unsafe { sys::cuMemFree_v2(self.ptr) };
        if let Err(e) = check(r, || "cuMemFree".into()) {
            tracing::error!(gpu = self.gpu.name(), error = %e, "cuMemFree failed");
        }
    }
}

/// A dma-buf fd exported by CUDA, closed on drop.
#[derive(Debug)]
pub struct DmabufExport {
    fd: OwnedFd,
    offset: u64,
    size: usize,
}

impl DmabufExport {
    /// The fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Where the allocation starts inside the dma-buf.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The dma-buf's size (whole host pages).
    pub fn size(&self) -> usize {
        self.size
    }

    /// The exporter `/proc/self/fdinfo/<fd>` names (`exp_name:`), which shows the fd is a
    /// dma-buf; `None` when fdinfo has no such line (not a dma-buf).
    pub fn exporter(&self) -> Option<String> {
        fdinfo(self.fd.as_fd()).and_then(|i| field(&i, "exp_name"))
    }

    /// `/proc/self/fdinfo/<fd>` as text.
    pub fn fdinfo(&self) -> Option<String> {
        fdinfo(self.fd.as_fd())
    }
}

fn fdinfo(fd: BorrowedFd<'_>) -> Option<String> {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()
}

/// The value of `name:` in fdinfo text.
pub(crate) fn field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fdinfo_fields() {
        let info = "pos:\t0\nflags:\t02\nsize:\t2097152\ncount:\t1\nexp_name:\tnvidia\n";
        assert_eq!(super::field(info, "exp_name").as_deref(), Some("nvidia"));
        assert_eq!(super::field(info, "size").as_deref(), Some("2097152"));
        assert_eq!(super::field(info, "exp"), None);
    }
}
