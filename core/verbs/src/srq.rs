//! Shared receive queues: one pool of receive work requests that many RC QPs consume from.
//!
//! An [`Srq`] owns its `ibv_srq` and holds an `Arc<Pd>`; QPs attached to it hold an `Arc<Srq>`,
//! so it is destroyed only after them. Receive work requests are posted in chained batches
//! ([`RecvBatch`]), each with 1..N SGEs.
//!
//! Work requests still posted when the SRQ is destroyed are discarded by the device: unlike a
//! QP's own receive queue, an SRQ is not flushed when a QP attached to it goes to the error
//! state, and no completion is generated for them. Their buffers are free again once the SRQ is
//! gone.

use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_mummy_sys::{ibv_srq, ibv_srq_attr, ibv_srq_attr_mask, ibv_srq_init_attr};

use crate::error::{Error, PostError, Result};
use crate::pd::Pd;
use crate::sys::check_limit;
use crate::wr::RecvBatch;

/// SRQ sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SrqConfig {
    /// Receive work requests the SRQ can hold.
    pub max_wr: u32,
    /// SGEs per work request.
    pub max_sge: u32,
    /// Low-watermark: when fewer than this many WRs remain, the device raises
    /// IBV_EVENT_SRQ_LIMIT_REACHED once (0 = off).
    pub limit: u32,
}

impl Default for SrqConfig {
    fn default() -> Self {
        SrqConfig::new(1024, 1)
    }
}

impl SrqConfig {
    /// An SRQ of `max_wr` receives of `max_sge` SGEs each, with no limit event.
    pub fn new(max_wr: u32, max_sge: u32) -> SrqConfig {
        SrqConfig {
            max_wr,
            max_sge,
            limit: 0,
        }
    }

    /// Raise `IBV_EVENT_SRQ_LIMIT_REACHED` once fewer than `limit` receives remain (0: off).
    #[must_use]
    pub fn limit(mut self, limit: u32) -> SrqConfig {
        self.limit = limit;
        self
    }
}

/// A shared receive queue.
pub struct Srq {
    raw: NonNull<ibv_srq>,
    pd: Arc<Pd>,
    max_wr: u32,
    max_sge: u32,
}

// SAFETY: ibv_post_srq_recv and ibv_modify_srq are thread-safe per the verbs API (providers
// serialize internally); the struct holds no unsynchronized state of its own.
unsafe impl Send for Srq {}
// SAFETY: as above.
unsafe impl Sync for Srq {}

impl fmt::Debug for Srq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srq")
            .field("device", &self.pd.device().name())
            .field("max_wr", &self.max_wr)
            .field("max_sge", &self.max_sge)
            .finish()
    }
}

impl Srq {
    /// Creates an SRQ on `pd`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the sizes exceed the device's `max_srq_wr` /
    /// `max_srq_sge`; [`Error::Verbs`] when `ibv_create_srq` fails.
    pub fn new(pd: &Arc<Pd>, cfg: SrqConfig) -> Result<Arc<Srq>> {
        let dev = pd.device();
        let lim = dev.limits();
        check_limit(
            "SRQ depth",
            cfg.max_wr,
            lim.max_srq_wr,
            "max_srq_wr",
            dev.name(),
        )?;
        check_limit(
            "SGEs per SRQ work request",
            cfg.max_sge,
            lim.max_srq_sge,
            "max_srq_sge",
            dev.name(),
        )?;
        if cfg.limit >= cfg.max_wr {
            return Err(Error::InvalidConfig(format!(
                "SRQ limit {} must be below its depth {}",
                cfg.limit, cfg.max_wr
            )));
        }
        let mut init = ibv_srq_init_attr {
            srq_context: ptr::null_mut(),
            attr: ibv_srq_attr {
                max_wr: cfg.max_wr,
                max_sge: cfg.max_sge,
                srq_limit: cfg.limit,
            },
        };
        // SAFETY: the PD is alive; `init` is a valid attribute struct the provider may update.
        let raw = unsafe { rdma_mummy_sys::ibv_create_srq(pd.raw(), &mut init) };
        let raw =
            NonNull::new(raw).ok_or_else(|| Error::last_verb("ibv_create_srq", dev.name()))?;
        Ok(Arc::new(Srq {
            raw,
            pd: Arc::clone(pd),
            // The provider writes back the sizes it actually allocated.
            max_wr: init.attr.max_wr.max(cfg.max_wr),
            max_sge: init.attr.max_sge.max(cfg.max_sge),
        }))
    }

    pub(crate) fn raw(&self) -> *mut ibv_srq {
        self.raw.as_ptr()
    }

    /// The PD.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The id async events use for this SRQ ([`crate::AsyncEvent::SrqLimitReached`]).
    pub fn object_id(&self) -> crate::event::ObjectId {
        crate::event::ObjectId(self.raw.as_ptr() as usize)
    }

    /// Work requests the SRQ holds.
    pub fn max_wr(&self) -> u32 {
        self.max_wr
    }

    /// SGEs per work request.
    pub fn max_sge(&self) -> u32 {
        self.max_sge
    }

    /// Posts every work request of `batch` with one `ibv_post_srq_recv` call. On success the batch
    /// is emptied. On failure the work requests that were accepted are removed from the batch and
    /// the rest stay in it; [`PostError::posted`] says how many were accepted.
    ///
    /// # Safety
    /// Every SGE of every work request must lie inside an MR registered on this SRQ's PD with
    /// LOCAL_WRITE access; that MR must stay registered, and its memory mapped, until the work
    /// request completes or this SRQ is destroyed; and no Rust reference to those bytes may be
    /// used until then (the NIC writes them at any time).
    ///
    /// # Errors
    /// [`PostError`] (no allocation) when the provider refuses a work request: queue full
    /// (ENOMEM), or too many SGEs (EINVAL).
    pub unsafe fn post_recv(&self, batch: &mut RecvBatch) -> Result<(), PostError> {
        // SAFETY: ibv_post_srq_recv on our live SRQ with the batch's well-formed chain; the
        // memory obligations are the caller's.
        unsafe {
            batch.post("ibv_post_srq_recv", |head, bad| {
                rdma_mummy_sys::ibv_post_srq_recv(self.raw(), head, bad)
            })
        }
    }

    /// Arms the low-watermark event: when fewer than `limit` work requests remain, the device
    /// raises [`crate::AsyncEvent::SrqLimitReached`] once (read it with
    /// [`crate::Device::take_async_event`]); arm again to get another.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_modify_srq` fails (rxe supports it).
    pub fn set_limit(&self, limit: u32) -> Result<()> {
        let mut attr = ibv_srq_attr {
            max_wr: 0,
            max_sge: 0,
            srq_limit: limit,
        };
        // SAFETY: the SRQ is alive; attr is valid for the call.
        let ret = unsafe {
            rdma_mummy_sys::ibv_modify_srq(
                self.raw(),
                &mut attr,
                ibv_srq_attr_mask::IBV_SRQ_LIMIT.0 as i32,
            )
        };
        if ret != 0 {
            return Err(Error::verb_ret(
                "ibv_modify_srq",
                self.pd.device().name(),
                ret,
            ));
        }
        Ok(())
    }

    /// The SRQ's attributes as the device reports them now (its `max_wr` and `max_sge` may be
    /// larger than asked for; `limit` is 0 once a limit event fired).
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_query_srq` fails.
    pub fn query(&self) -> Result<SrqConfig> {
        let mut attr = ibv_srq_attr {
            max_wr: 0,
            max_sge: 0,
            srq_limit: 0,
        };
        // SAFETY: the SRQ is alive; attr is valid for the call.
        let ret = unsafe { rdma_mummy_sys::ibv_query_srq(self.raw(), &mut attr) };
        if ret != 0 {
            return Err(Error::verb_ret(
                "ibv_query_srq",
                self.pd.device().name(),
                ret,
            ));
        }
        Ok(SrqConfig {
            max_wr: attr.max_wr,
            max_sge: attr.max_sge,
            limit: attr.srq_limit,
        })
    }
}

impl Drop for Srq {
    fn drop(&mut self) {
        // SAFETY: every QP attached to the SRQ holds an Arc of it and is gone.
        let ret = unsafe { rdma_mummy_sys::ibv_destroy_srq(self.raw()) };
        if ret != 0 {
            tracing::error!(
                device = self.pd.device().name(),
                err = %std::io::Error::from_raw_os_error(ret.abs()),
                "ibv_destroy_srq failed"
            );
        }
    }
}
