//! Protection domains, memory registration and the dma-buf support probe.
//!
//! A [`Pd`] owns sideway's `ProtectionDomain` and an `Arc` of its [`Device`]. MRs, SRQs and QPs
//! hold an `Arc<Pd>`, so the PD is deallocated only after them.
//!
//! # The dma-buf probe rule
//! [`Pd::probe_dmabuf`] calls `ibv_reg_dmabuf_mr(pd, 0, 0, 0, fd = -1, 0)`, as NCCL does. Only
//! `EOPNOTSUPP` and `EPROTONOSUPPORT` mean *unsupported* (the kernel, the driver or libibverbs has
//! no dma-buf MR path). Any other errno, typically `EBADF`, means the request reached a driver
//! that looked at the file descriptor, so the path exists. (UCX uses the inverse rule, EBADF =
//! supported and anything else unsupported; we chose NCCL's because an unexpected errno from a
//! driver that does implement the verb should not disable the GPU-direct path.)

use std::any::Any;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;

use sideway::ibverbs::protection_domain::ProtectionDomain;

use crate::device::Device;
use crate::error::{Error, MemlockLimit, Result};
use crate::mem::HostMemory;
use crate::mr::{Access, Mr, MrKind};
use crate::sys::sideway_io;

/// A protection domain.
pub struct Pd {
    inner: Arc<ProtectionDomain>,
    device: Arc<Device>,
}

impl fmt::Debug for Pd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pd")
            .field("device", &self.device.name())
            .finish()
    }
}

/// Result of [`Pd::probe_dmabuf`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmabufSupport {
    /// The dma-buf MR verb reached a driver that implements it (`errno` is what the fd = -1
    /// probe returned, normally EBADF).
    Supported {
        /// The errno of the probe.
        errno: i32,
    },
    /// No dma-buf MR path on this device, with the reason.
    Unsupported {
        /// The errno of the probe (EOPNOTSUPP or EPROTONOSUPPORT).
        errno: i32,
        /// Why, in words.
        reason: String,
    },
}

impl DmabufSupport {
    /// True for [`DmabufSupport::Supported`].
    pub fn is_supported(&self) -> bool {
        matches!(self, DmabufSupport::Supported { .. })
    }
}

impl fmt::Display for DmabufSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmabufSupport::Supported { errno } => write!(
                f,
                "supported (fd=-1 probe returned {})",
                io::Error::from_raw_os_error(*errno)
            ),
            DmabufSupport::Unsupported { reason, .. } => write!(f, "unsupported: {reason}"),
        }
    }
}

impl Pd {
    pub(crate) fn new(device: &Arc<Device>) -> Result<Arc<Pd>> {
        let inner = device.context().alloc_pd().map_err(|e| {
            let io = sideway_io!(
                e.0,
                sideway::ibverbs::device_context::AllocateProtectionDomainErrorKind::Ibverbs
            );
            Error::verb("ibv_alloc_pd", device.name(), io)
        })?;
        Ok(Arc::new(Pd {
            inner,
            device: Arc::clone(device),
        }))
    }

    /// The device this PD belongs to.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The raw `ibv_pd`, valid while `self` lives.
    pub(crate) fn raw(&self) -> *mut rdma_mummy_sys::ibv_pd {
        // SAFETY: sideway returns the pointer it owns; we use it only while `self` is alive.
        unsafe { self.inner.pd().as_ptr() }
    }

    /// Registers owned host memory. The MR keeps `mem` alive until it is deregistered.
    ///
    /// Receive buffers should use [`Access::LOCAL_WRITE`] only; add remote access only for
    /// memory a peer writes with RDMA WRITE.
    ///
    /// # Errors
    /// [`Error::MemoryLock`] when pinning fails (ENOMEM), with the RLIMIT_MEMLOCK in effect;
    /// [`Error::Verbs`] otherwise.
    pub fn register(self: &Arc<Self>, mem: Arc<HostMemory>, access: Access) -> Result<Mr> {
        let (addr, len) = (mem.as_ptr(), mem.len());
        // SAFETY: `mem` is a live mapping of `len` bytes and the MR keeps the Arc, so the memory
        // outlives the registration.
        unsafe { self.register_raw(addr, len, access, Some(mem)) }
    }

    /// Registers `len` bytes at `addr`.
    ///
    /// # Safety
    /// The range must be mapped memory that stays mapped (and is not remapped) until the returned
    /// MR is dropped; `keepalive`, when given, is held by the MR and may be what guarantees it.
    ///
    /// # Errors
    /// As [`Pd::register`].
    pub unsafe fn register_raw(
        self: &Arc<Self>,
        addr: *mut u8,
        len: usize,
        access: Access,
        keepalive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<Mr> {
        access.validate()?;
        // SAFETY: forwarded from the caller: the range stays mapped while the MR exists.
        let r = unsafe { self.inner.reg_mr(addr as usize, len, access.to_sideway()) };
        match r {
            Ok(mr) => Ok(Mr::new(
                mr,
                Arc::clone(self),
                addr as u64,
                len,
                access,
                MrKind::Virtual,
                keepalive,
            )),
            Err(e) => Err(self.reg_error("ibv_reg_mr", len, e)),
        }
    }

    /// Registers a dma-buf: `len` bytes at `offset` in the dma-buf `fd`, addressed by the NIC at
    /// `iova`. Post work requests with addresses from [`Mr::sge`], which are based on `iova`
    /// (rdma-core sets `ibv_mr.addr` to the dma-buf offset, not to the IOVA).
    ///
    /// The fd may be closed after this returns: the MR holds its own reference on the dma-buf.
    ///
    /// # Safety
    /// No Rust reference into a CPU mapping of the same dma-buf range may be alive while the NIC
    /// can write it (that is, while a receive on it is posted); `keepalive`, when given, is held
    /// by the MR (e.g. the GPU allocation behind the dma-buf).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the device has no dma-buf MR path (rxe, old kernels or
    /// drivers), with what to do; [`Error::MemoryLock`] / [`Error::Verbs`] otherwise.
    pub unsafe fn register_dmabuf(
        self: &Arc<Self>,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        iova: u64,
        access: Access,
        keepalive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Result<Mr> {
        access.validate()?;
        // SAFETY: `fd` is a live descriptor for the call; the kernel takes its own reference on
        // the dma-buf. Aliasing of CPU mappings is the caller's obligation.
        let r = unsafe {
            self.inner
                .reg_dmabuf_mr(offset, len, iova, fd.as_raw_fd(), access.to_sideway())
        };
        match r {
            Ok(mr) => Ok(Mr::new(
                mr,
                Arc::clone(self),
                iova,
                len,
                access,
                MrKind::DmaBuf { offset },
                keepalive,
            )),
            Err(e) => {
                let err = self.reg_error("ibv_reg_dmabuf_mr", len, e);
                match err {
                    Error::Unsupported { source, .. } => Err(Error::Unsupported {
                        what: "dma-buf memory registration (ibv_reg_dmabuf_mr)",
                        device: self.device.name().to_owned(),
                        reason: dmabuf_reason(&self.device),
                        hint: "register the buffer's CPU mapping with ibv_reg_mr instead, or \
                               stage through host memory; on hardware, use a NIC, kernel (>= \
                               5.12) and rdma-core (>= 34) with dma-buf support",
                        source,
                    }),
                    other => Err(other),
                }
            }
        }
    }

    /// Probes whether this device can register dma-bufs (see the module docs for the rule).
    pub fn probe_dmabuf(&self) -> DmabufSupport {
        // SAFETY: fd = -1 and length 0 cannot describe memory; the call either fails (expected)
        // or returns an MR that we deregister at once.
        let mr = unsafe { rdma_mummy_sys::ibv_reg_dmabuf_mr(self.raw(), 0, 0, 0, -1, 0) };
        if !mr.is_null() {
            // SAFETY: `mr` was just returned by ibv_reg_dmabuf_mr and is not shared.
            unsafe { rdma_mummy_sys::ibv_dereg_mr(mr) };
            return DmabufSupport::Supported { errno: 0 };
        }
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if errno == libc::EOPNOTSUPP || errno == libc::EPROTONOSUPPORT {
            DmabufSupport::Unsupported {
                errno,
                reason: format!(
                    "{} ({})",
                    dmabuf_reason(&self.device),
                    io::Error::from_raw_os_error(errno)
                ),
            }
        } else {
            DmabufSupport::Supported { errno }
        }
    }

    fn reg_error(
        &self,
        verb: &'static str,
        len: usize,
        e: sideway::ibverbs::memory_region::RegisterMemoryRegionError,
    ) -> Error {
        use sideway::ibverbs::memory_region::RegisterMemoryRegionErrorKind as K;
        let io = sideway_io!(e.0, K::Ibverbs);
        if io.raw_os_error() == Some(libc::ENOMEM) {
            if let Some(limit) = MemlockLimit::current() {
                return Error::MemoryLock {
                    verb,
                    device: self.device.name().to_owned(),
                    len,
                    limit,
                    source: io,
                };
            }
        }
        Error::verb(verb, self.device.name(), io)
    }
}

fn dmabuf_reason(dev: &Device) -> String {
    match dev.kind() {
        crate::device::DeviceKind::SoftRoce => {
            "soft-RoCE (rxe) implements no dma-buf MR registration in any released kernel".into()
        }
        _ => "the driver, kernel or rdma-core lacks ibv_reg_dmabuf_mr".into(),
    }
}
