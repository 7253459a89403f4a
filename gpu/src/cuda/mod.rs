//! The CUDA side (feature `cuda`): the driver check, [`Gpu`] (a device and its primary
//! context), device memory and its dma-buf export, the providers, host staging, GPU leases and
//! the GPU pool.
//!
//! Owning types for everything CUDA hands out: [`DeviceMemory`] frees its allocation,
//! [`DmabufExport`] closes its fd, [`PinnedRegion`] unregisters its pages; cudarc's
//! `CudaContext`, `CudaStream` and `CudaEvent` own the rest. Raw driver calls (`cudarc`'s
//! `sys` module: the safe API has no dma-buf export, pointer attributes or host registration)
//! are kept in these types, each behind a `// SAFETY:` note.

mod lease;
mod mem;
mod pool;
mod provider;
mod staging;

use std::ffi::CStr;
use std::sync::Arc;

use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute as Attr};
use cudarc::driver::CudaContext;

use crate::error::{GpuError, Result};
use crate::plan::GpuInfo;
use crate::GpuProbe;

pub use gdrx_core::MessageMeta;
pub use lease::GpuLease;
pub use mem::{DeviceMemory, DmabufExport};
pub use pool::{GpuEvent, GpuPool, GpuPoolConfig, GpuPoolReport, METRICS};
pub use provider::{GpuProvider, GpuRegion, PinnedHostProvider, PinnedRegion};
pub use staging::{StageError, Stager, StagerStats, StagingSource};

/// Checks that libcuda can be loaded. cudarc panics on its first call when it cannot, so every
/// entry point of this crate calls this first.
pub(crate) fn driver_present() -> Result<()> {
    // SAFETY: only tries to dlopen the library names (libloading); nothing is called in it.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        let mut names = cudarc::get_lib_name_candidates("cuda");
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        // The names people look for first; the rest only as a count.
        names.sort_by_key(|n| match n.as_str() {
            "libcuda.so.1" => 0,
            "libcuda.so" => 1,
            _ => 2,
        });
        let shown = names.len().min(2);
        let mut tried = names[..shown].join(", ");
        if names.len() > shown {
            tried += &format!(" and {} other names", names.len() - shown);
        }
        Err(GpuError::NoDriver { tried })
    }
}

/// What to say about a driver error code.
fn hint(code: sys::CUresult) -> &'static str {
    use sys::CUresult as R;
    match code {
        R::CUDA_ERROR_OUT_OF_MEMORY => {
            "the GPU is out of memory: ask for fewer or smaller slots, or free GPU memory"
        }
        R::CUDA_ERROR_NO_DEVICE => {
            "the driver sees no GPU (check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        }
        R::CUDA_ERROR_INVALID_DEVICE => "no such GPU ordinal",
        R::CUDA_ERROR_NOT_SUPPORTED => "this GPU, driver or kernel does not support it",
        R::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => {
            "the NVIDIA kernel driver and libcuda versions differ: reinstall the driver or reboot"
        }
        R::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED => {
            "the host range is already registered with CUDA"
        }
        R::CUDA_ERROR_NOT_PERMITTED => {
            "not permitted here (a container without the right capabilities, or RLIMIT_MEMLOCK)"
        }
        _ => "",
    }
}

/// Turns a failed driver call into [`GpuError::Driver`] naming the call.
pub fn driver_error(op: impl Into<String>) -> impl FnOnce(DriverError) -> GpuError {
    let op = op.into();
    move |e| {
        // The enumerator's name, without cuGetErrorName: that would load libcuda, which may
        // be what is missing.
        let name = format!("{:?}", e.0);
        GpuError::Driver {
            op,
            code: e.0 as u32,
            name,
            hint: hint(e.0).to_owned(),
        }
    }
}

/// `CUresult` -> `Result`, naming the call.
pub(crate) fn check(r: sys::CUresult, op: impl FnOnce() -> String) -> Result<()> {
    r.result().map_err(|e| driver_error(op())(e))
}

/// One GPU: its primary context and its attributes.
#[derive(Debug)]
pub struct Gpu {
    ctx: Arc<CudaContext>,
    info: GpuInfo,
    name: String,
}

impl Gpu {
    /// Opens GPU `ordinal` (retains its primary context) and reads its attributes.
    ///
    /// # Errors
    /// [`GpuError::NoDriver`] without libcuda (checked before any CUDA call),
    /// [`GpuError::NoDevice`] when there is no such GPU, [`GpuError::Driver`] when a call fails.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(GpuError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver_error(format!(
            "retaining the primary context of cuda:{ordinal}"
        )))?;
        let info = query(&ctx, ordinal)?;
        Ok(Arc::new(Gpu {
            ctx,
            info,
            name: format!("cuda:{ordinal}"),
        }))
    }

    /// `cuda:N`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The attributes read when it was opened.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The primary context (for streams and events).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Makes the context current on the calling thread (raw driver calls need it).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver_error(format!(
            "binding the context of {}",
            self.name
        )))
    }

    /// Allocates one granule and exports it as a dma-buf: the exporter's name from fdinfo.
    ///
    /// # Errors
    /// [`GpuError::Unsupported`] when the attribute says no, the driver error when the export
    /// fails.
    pub fn probe_export(self: &Arc<Gpu>) -> Result<String> {
        if !self.info.dmabuf_supported {
            return Err(GpuError::Unsupported {
                what: format!("dma-buf export on {}", self.name),
                hint: "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED is 0 (needs driver >= 515 with the \
                       open kernel modules, kernel >= 5.12)"
                    .into(),
            });
        }
        let m = DeviceMemory::new(self, self.info.granularity.max(1))?;
        let e = m.export_dmabuf()?;
        Ok(e.exporter()
            .unwrap_or_else(|| "unknown (no exp_name in fdinfo)".into()))
    }
}

/// GPUs the driver sees.
pub(crate) fn device_count() -> Result<usize> {
    driver_present()?;
    match result::init() {
        Ok(()) => {}
        Err(DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => return Ok(0),
        Err(e) => return Err(driver_error("cuInit")(e)),
    }
    result::device::get_count()
        .map(|n| n.max(0) as usize)
        .map_err(driver_error("cuDeviceGetCount"))
}

fn query(ctx: &Arc<CudaContext>, ordinal: usize) -> Result<GpuInfo> {
    let attr = |a: Attr, what: &str| {
        ctx.attribute(a)
            .map_err(driver_error(format!("cuDeviceGetAttribute({what})")))
    };
    let mut bus = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer is 32 bytes and its length is passed; the driver NUL-terminates.
    let r =
        unsafe { sys::cuDeviceGetPCIBusId(bus.as_mut_ptr(), bus.len() as i32, ctx.cu_device()) };
    check(r, || "cuDeviceGetPCIBusId".into())?;
    // SAFETY: NUL-terminated by the driver within the buffer (checked call above).
    let pci_bus_id = unsafe { CStr::from_ptr(bus.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut driver_version = 0;
    // SAFETY: writes one int.
    let r = unsafe { sys::cuDriverGetVersion(&mut driver_version) };
    check(r, || "cuDriverGetVersion".into())?;
    // SAFETY: an all-zero CUmemAllocationProp is a valid value of the C struct (zero is a
    // valid enumerator or pointer for each field); the needed fields are set below.
    let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
    prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = ordinal as i32;
    let mut granularity = 0usize;
    // SAFETY: `prop` is initialised, `granularity` is written.
    let r = unsafe {
        sys::cuMemGetAllocationGranularity(
            &mut granularity,
            &prop,
            sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_RECOMMENDED,
        )
    };
    check(r, || "cuMemGetAllocationGranularity".into())?;
    Ok(GpuInfo {
        ordinal,
        name: ctx.name().map_err(driver_error("cuDeviceGetName"))?,
        pci_bus_id,
        compute_capability: ctx
            .compute_capability()
            .map_err(driver_error("compute capability"))?,
        total_mem: ctx.total_mem().map_err(driver_error("cuDeviceTotalMem"))?,
        driver_version,
        dmabuf_supported: attr(
            Attr::CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED,
            "DMA_BUF_SUPPORTED",
        )? != 0,
        gpudirect_rdma_supported: attr(
            Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_SUPPORTED,
            "GPU_DIRECT_RDMA_SUPPORTED",
        )? != 0,
        rdma_writes_ordering: attr(
            Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING,
            "GPU_DIRECT_RDMA_WRITES_ORDERING",
        )?,
        rdma_flush_options: attr(
            Attr::CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS,
            "GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS",
        )?,
        granularity: granularity.max(1),
    })
}

/// Probes every GPU (see [`crate::probe_gpus`]).
pub(crate) fn probe_gpus() -> Result<Vec<GpuProbe>> {
    let count = device_count()?;
    if count == 0 {
        return Err(GpuError::NoDevice { ordinal: 0, count });
    }
    (0..count)
        .map(|i| {
            let gpu = Gpu::open(i)?;
            let export = gpu.probe_export().map_err(|e| e.to_string());
            Ok(GpuProbe {
                info: gpu.info().clone(),
                export,
            })
        })
        .collect()
}

// Leases and GPU handles go to consumer threads; pools and stagers move to their poller.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<GpuLease>();
    send_sync::<Gpu>();
    send_sync::<GpuProvider>();
    send_sync::<PinnedHostProvider>();
    send::<Stager<gdrx_core::Lease>>();
    send::<GpuPool>();
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether libcuda loads, checked with dlopen directly rather than through cudarc.
    pub(crate) fn libcuda_loadable() -> bool {
        ["libcuda.so.1", "libcuda.so"].iter().any(|n| {
            let c = std::ffi::CString::new(*n).unwrap();
            // SAFETY: dlopen with a valid C string; the handle is closed right away.
            let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
            if h.is_null() {
                false
            } else {
                // SAFETY: `h` came from dlopen above.
                unsafe { libc::dlclose(h) };
                true
            }
        })
    }

    #[test]
    fn open_without_a_driver_is_a_typed_error_not_a_panic() {
        match Gpu::open(0) {
            Err(GpuError::NoDriver { tried }) => {
                assert!(
                    !libcuda_loadable(),
                    "libcuda loads, yet NoDriver was returned"
                );
                assert!(tried.contains("libcuda.so"), "{tried}");
                let msg = GpuError::NoDriver { tried }.to_string();
                assert!(msg.contains("Install the NVIDIA driver"), "{msg}");
                println!("typed error: {msg}");
            }
            Err(GpuError::NoDevice { count, .. }) => {
                assert!(libcuda_loadable());
                assert_eq!(count, 0);
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(g) => {
                assert!(libcuda_loadable());
                println!("GPU present: {:?}", g.info());
            }
        }
        // Every entry point checks first.
        if !libcuda_loadable() {
            assert!(matches!(
                crate::probe_gpus(),
                Err(GpuError::NoDriver { .. })
            ));
            assert!(matches!(
                GpuProvider::open(0, true, true),
                Err(GpuError::NoDriver { .. })
            ));
        }
    }

    #[test]
    fn driver_errors_name_the_call_and_the_code() {
        let e = driver_error("cuMemAlloc(64 MiB)")(DriverError(
            sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY,
        ));
        let msg = e.to_string();
        assert!(msg.contains("cuMemAlloc(64 MiB) failed"), "{msg}");
        assert!(msg.contains("(2)"), "{msg}");
        assert!(msg.contains("fewer or smaller slots"), "{msg}");
    }
}
