//! The GPU memory provider, and the pinned host provider the staging path receives into.

use std::any::Any;
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use cudarc::driver::sys;
use gdrx_core::{
    AllocError, Device, DeviceKind, DmabufView, MemoryKind, PoolError, Provider, ProviderCheck,
    Region, RegionDesc,
};

use super::{check, DeviceMemory, DmabufExport, Gpu};
use crate::error::{GpuError, Result};
use crate::peermem;

/// The page size GPUDirect RDMA maps GPU memory in.
pub const GPU_PAGE: usize = 64 << 10;

/// GPU device memory for the buffer pool: each region is a [`DeviceMemory`] allocation,
/// exported as a dma-buf (for `ibv_reg_dmabuf_mr`) and/or offered by device pointer (for
/// `ibv_reg_mr` through nvidia-peermem). Regions are not CPU-readable: a pool must set
/// `allow_unreadable`, and consumers read the payload on the GPU at
/// [`gdrx_core::Lease::payload_addr`].
#[derive(Debug, Clone)]
pub struct GpuProvider {
    gpu: Arc<Gpu>,
    dmabuf: bool,
    peermem: bool,
}

impl GpuProvider {
    /// A provider on `gpu` offering every zero-copy path available: the dma-buf when the GPU
    /// can export one, the device pointer when nvidia-peermem is loaded.
    pub fn new(gpu: &Arc<Gpu>) -> GpuProvider {
        GpuProvider::with_paths(
            gpu,
            gpu.info().dmabuf_supported,
            peermem::detect().is_some(),
        )
    }

    /// A provider offering exactly these paths (a pool built on it tries dma-buf first).
    pub fn with_paths(gpu: &Arc<Gpu>, dmabuf: bool, peermem: bool) -> GpuProvider {
        GpuProvider {
            gpu: Arc::clone(gpu),
            dmabuf,
            peermem,
        }
    }

    /// Opens GPU `ordinal` and makes a provider offering these paths.
    ///
    /// # Errors
    /// As [`Gpu::open`]: a typed error, never a panic, without a driver or GPU.
    pub fn open(ordinal: usize, dmabuf: bool, peermem: bool) -> Result<GpuProvider> {
        Ok(GpuProvider::with_paths(
            &Gpu::open(ordinal)?,
            dmabuf,
            peermem,
        ))
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Allocates a region (the typed error; [`Provider::alloc`] wraps it for the pool).
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] when no path is offered; the allocation's or export's
    /// driver error (an export failure is only an error when peermem is not offered).
    pub fn alloc_region(&self, len: usize) -> Result<GpuRegion> {
        if !self.dmabuf && !self.peermem {
            return Err(GpuError::InvalidConfig(
                "a GPU provider needs the dma-buf or the peermem path (or use host staging)".into(),
            ));
        }
        let mem = DeviceMemory::new(&self.gpu, len)?;
        let info = self.gpu.info();
        let mut origin = format!(
            "cuMemAlloc {} B on {} ({}, {}), SYNC_MEMOPS set",
            mem.len(),
            self.gpu.name(),
            info.name,
            info.pci_bus_id
        );
        let export = if self.dmabuf {
            match mem.export_dmabuf() {
                Ok(e) => {
                    origin += &format!(
                        ", dma-buf exported (exporter {}, offset {})",
                        e.exporter().as_deref().unwrap_or("?"),
                        e.offset()
                    );
                    Some(e)
                }
                Err(e) if self.peermem => {
                    origin += &format!(", dma-buf export failed ({e}): device pointer only");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        if self.peermem {
            origin += ", device pointer offered for ibv_reg_mr (nvidia-peermem)";
        }
        let desc = RegionDesc {
            len: mem.len(),
            addr: if self.peermem {
                NonNull::new(mem.device_ptr() as *mut u8)
            } else {
                None
            },
            cpu_readable: false,
            page_size: GPU_PAGE,
            numa_node: None,
            device: Some(self.gpu.name().to_owned()),
            origin,
        };
        Ok(GpuRegion { desc, export, mem })
    }
}

// SAFETY: every region comes from `alloc_region`: `desc.addr`, when set, is the device pointer of
// a live cuMemAlloc allocation of `desc.len` bytes that is freed only when the region is dropped
// (it is handed to ibv_reg_mr, which pins it through nvidia-peermem); `cpu_readable` is false, so
// nothing dereferences it on the CPU. The dma-buf was exported from the same allocation, and
// covers `offset .. offset + len`. The allocation is never handed out except through the region.
unsafe impl Provider for GpuProvider {
    fn name(&self) -> &str {
        self.gpu.name()
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::Gpu
    }

    fn check(&self, device: &Device) -> ProviderCheck {
        let mut c = ProviderCheck::ok(self.gpu.name());
        let info = self.gpu.info();
        if device.kind() != DeviceKind::Hardware {
            c.blockers.push(format!(
                "{} is {}, which copies with the CPU and cannot reach GPU memory: use host \
                 staging (GpuPool with policy allow-staging)",
                device.name(),
                device.kind()
            ));
        }
        if !self.dmabuf && !self.peermem {
            c.blockers
                .push("neither the dma-buf nor the peermem path is offered".into());
        }
        if self.dmabuf && !info.dmabuf_supported {
            c.blockers.push(format!(
                "{} cannot export dma-bufs (CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0)",
                self.gpu.name()
            ));
        }
        if self.peermem {
            match peermem::detect() {
                None => c.blockers.push(peermem::HINT.into()),
                Some(p) => c.notes.push(format!("peer memory client {}", p.module)),
            }
        }
        c.notes.push(format!(
            "{} ({}), compute capability {}.{}, RDMA writes ordering {}, flush options {:#x}",
            info.name,
            info.pci_bus_id,
            info.compute_capability.0,
            info.compute_capability.1,
            info.rdma_writes_ordering,
            info.rdma_flush_options
        ));
        c
    }

    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError> {
        match self.alloc_region(len) {
            Ok(r) => Ok(Arc::new(r)),
            Err(e) => Err(AllocError {
                provider: self.gpu.name().to_owned(),
                len,
                what: e.to_string(),
                hint: "free GPU memory or ask for a smaller pool; `gdrx-doctor` shows what this \
                       GPU supports"
                    .into(),
                source: None,
            }),
        }
    }
}

/// A region of GPU memory (see [`GpuProvider`]).
pub struct GpuRegion {
    desc: RegionDesc,
    // Field order is drop order: the dma-buf fd is closed before the memory is freed.
    export: Option<DmabufExport>,
    mem: DeviceMemory,
}

impl fmt::Debug for GpuRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuRegion")
            .field("mem", &self.mem)
            .field("export", &self.export)
            .finish()
    }
}

impl GpuRegion {
    /// The allocation.
    pub fn memory(&self) -> &DeviceMemory {
        &self.mem
    }

    /// The dma-buf export, when there is one.
    pub fn export(&self) -> Option<&DmabufExport> {
        self.export.as_ref()
    }
}

impl Region for GpuRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    fn dmabuf(&self) -> Option<DmabufView<'_>> {
        self.export.as_ref().map(|e| DmabufView {
            fd: e.fd(),
            offset: e.offset(),
            // NCCL's convention: the IOVA is the device pointer, so work requests and
            // `Lease::payload_addr` carry device addresses.
            iova: self.mem.device_ptr(),
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Host memory from another provider, page-locked for CUDA with `cuMemHostRegister(PORTABLE)`
/// so `cuMemcpyHtoDAsync` from it is a real asynchronous DMA (pageable memory would be copied
/// through the driver's own bounce buffer). The staging path's receive memory.
#[derive(Debug, Clone)]
pub struct PinnedHostProvider {
    inner: Arc<dyn Provider>,
    gpu: Arc<Gpu>,
    name: String,
}

impl PinnedHostProvider {
    /// Pins what `inner` (host, hugepage or udmabuf) allocates, for `gpu`'s context.
    pub fn new(inner: Arc<dyn Provider>, gpu: &Arc<Gpu>) -> PinnedHostProvider {
        let name = format!("{}+pinned", inner.name());
        PinnedHostProvider {
            inner,
            gpu: Arc::clone(gpu),
            name,
        }
    }

    /// Allocates from the inner provider and pins the region.
    ///
    /// # Errors
    /// [`GpuError::Pool`] ([`PoolError::Alloc`]) for the inner allocation, [`GpuError::InvalidConfig`] when the inner
    /// memory is not CPU-addressable, [`GpuError::Driver`] when pinning fails.
    pub fn alloc_region(&self, len: usize) -> Result<PinnedRegion> {
        let inner = self.inner.alloc(len)?;
        let d = inner.desc();
        let (true, Some(addr)) = (d.cpu_readable, d.addr) else {
            return Err(GpuError::InvalidConfig(format!(
                "provider `{}` does not hand out CPU-readable host memory, which staging needs",
                self.inner.name()
            )));
        };
        self.gpu.bind()?;
        // SAFETY: `addr .. addr + len` is a live host mapping owned by `inner` (Provider
        // contract), which the PinnedRegion keeps until after it unregisters the range.
        let r = unsafe {
            sys::cuMemHostRegister_v2(
                addr.as_ptr().cast(),
                d.len,
                sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
        };
        check(r, || format!("cuMemHostRegister({} B, PORTABLE)", d.len))?;
        let mut desc = d.clone();
        desc.origin = format!(
            "{}; pinned for CUDA (cuMemHostRegister, portable)",
            d.origin
        );
        Ok(PinnedRegion {
            desc,
            inner,
            gpu: Arc::clone(&self.gpu),
        })
    }
}

// SAFETY: regions are the inner provider's (whose contract carries over unchanged: same address,
// length, readability and dma-buf), additionally page-locked, which only pins them further.
unsafe impl Provider for PinnedHostProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> MemoryKind {
        self.inner.kind()
    }

    fn check(&self, device: &Device) -> ProviderCheck {
        let mut c = self.inner.check(device);
        c.provider = self.name.clone();
        c
    }

    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError> {
        match self.alloc_region(len) {
            Ok(r) => Ok(Arc::new(r)),
            Err(GpuError::Pool(PoolError::Alloc(e))) => Err(e),
            Err(e) => Err(AllocError {
                provider: self.name.clone(),
                len,
                what: e.to_string(),
                hint: "pinning needs RLIMIT_MEMLOCK headroom (`ulimit -l`)".into(),
                source: None,
            }),
        }
    }
}

/// A pinned host region (see [`PinnedHostProvider`]).
pub struct PinnedRegion {
    desc: RegionDesc,
    inner: Arc<dyn Region>,
    gpu: Arc<Gpu>,
}

impl fmt::Debug for PinnedRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedRegion")
            .field("inner", &self.inner)
            .finish()
    }
}

impl PinnedRegion {
    /// The first byte (CPU address).
    pub fn as_ptr(&self) -> *mut u8 {
        self.desc
            .addr
            .expect("pinned regions have an address")
            .as_ptr()
    }
}

impl Region for PinnedRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    fn dmabuf(&self) -> Option<DmabufView<'_>> {
        self.inner.dmabuf()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for PinnedRegion {
    fn drop(&mut self) {
        if let Err(e) = self.gpu.bind() {
            tracing::error!(error = %e, "cannot unpin host memory");
            return;
        }
        // SAFETY: the range was registered by `alloc_region` and is still mapped (`inner` is
        // dropped after this).
        let r = unsafe { sys::cuMemHostUnregister(self.as_ptr().cast()) };
        if let Err(e) = check(r, || "cuMemHostUnregister".into()) {
            tracing::error!(error = %e, "cuMemHostUnregister failed");
        }
    }
}
