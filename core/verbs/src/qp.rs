//! Reliable-connected queue pairs whose receive side is an SRQ (or their own receive queue).
//!
//! A [`QueuePair`] owns its `ibv_qp` and holds `Arc`s of its PD, CQs and SRQ, so those outlive
//! it. Connection set-up (the INIT -> RTR -> RTS transitions) is driven by [`crate::cm`] with
//! attributes from the RDMA CM; this module provides creation, posting, the error transition
//! that flushes outstanding work requests, and teardown.

use std::fmt;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_mummy_sys::{
    ibv_qp, ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_cap, ibv_qp_init_attr, ibv_qp_state, ibv_qp_type,
};

use crate::cq::Cq;
use crate::error::{Error, PostError, Result};
use crate::pd::Pd;
use crate::srq::Srq;
use crate::sys::check_limit;
use crate::wr::{RecvBatch, SendBatch};

/// Queue sizes of a QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpConfig {
    /// Send work requests outstanding at once.
    pub max_send_wr: u32,
    /// SGEs per send work request.
    pub max_send_sge: u32,
    /// Receive work requests (ignored when the QP uses an SRQ).
    pub max_recv_wr: u32,
    /// SGEs per receive work request (ignored with an SRQ).
    pub max_recv_sge: u32,
    /// Largest inline payload.
    pub max_inline_data: u32,
}

impl Default for QpConfig {
    fn default() -> Self {
        QpConfig {
            max_send_wr: 128,
            max_send_sge: 1,
            max_recv_wr: 128,
            max_recv_sge: 1,
            max_inline_data: 0,
        }
    }
}

/// The capabilities the provider actually gave a QP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QpCaps {
    /// Send work requests.
    pub max_send_wr: u32,
    /// SGEs per send work request.
    pub max_send_sge: u32,
    /// Receive work requests (0 with an SRQ).
    pub max_recv_wr: u32,
    /// SGEs per receive work request (0 with an SRQ).
    pub max_recv_sge: u32,
    /// Largest inline payload.
    pub max_inline_data: u32,
}

/// QP state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpState {
    /// Reset.
    Reset,
    /// Initialized.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error: every outstanding work request is flushed.
    Error,
    /// Unknown.
    Unknown,
}

impl QpState {
    fn from_raw(s: u32) -> QpState {
        match s {
            ibv_qp_state::IBV_QPS_RESET => QpState::Reset,
            ibv_qp_state::IBV_QPS_INIT => QpState::Init,
            ibv_qp_state::IBV_QPS_RTR => QpState::Rtr,
            ibv_qp_state::IBV_QPS_RTS => QpState::Rts,
            ibv_qp_state::IBV_QPS_SQD => QpState::Sqd,
            ibv_qp_state::IBV_QPS_SQE => QpState::Sqe,
            ibv_qp_state::IBV_QPS_ERR => QpState::Error,
            _ => QpState::Unknown,
        }
    }
}

/// An RC queue pair.
pub struct QueuePair {
    raw: NonNull<ibv_qp>,
    qp_num: u32,
    caps: QpCaps,
    // Held so they outlive the QP; dropped after Drop::drop destroyed it.
    srq: Option<Arc<Srq>>,
    send_cq: Arc<Cq>,
    recv_cq: Arc<Cq>,
    pd: Arc<Pd>,
}

// SAFETY: ibv_post_send/ibv_post_recv/ibv_modify_qp/ibv_query_qp are thread-safe per the verbs API
// (providers lock the queues); the struct has no unsynchronized state of its own.
unsafe impl Send for QueuePair {}
// SAFETY: as above.
unsafe impl Sync for QueuePair {}

impl fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueuePair")
            .field("qp_num", &format_args!("{:#x}", self.qp_num))
            .field("device", &self.pd.device().name())
            .field("srq", &self.srq.is_some())
            .field("caps", &self.caps)
            .finish()
    }
}

impl QueuePair {
    /// Creates an RC QP in the RESET state. With `srq`, receives are taken from the SRQ and the
    /// QP has no receive queue of its own.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when sizes exceed the device limits or the objects belong to
    /// different devices; [`Error::Verbs`] when `ibv_create_qp` fails.
    pub fn new_rc(
        pd: &Arc<Pd>,
        send_cq: &Arc<Cq>,
        recv_cq: &Arc<Cq>,
        srq: Option<&Arc<Srq>>,
        cfg: QpConfig,
    ) -> Result<QueuePair> {
        let dev = pd.device();
        let lim = dev.limits();
        for cq in [send_cq, recv_cq] {
            if !Arc::ptr_eq(cq.device(), dev) {
                return Err(Error::InvalidConfig(
                    "CQ and PD belong to different device contexts".into(),
                ));
            }
        }
        if let Some(s) = srq {
            if !Arc::ptr_eq(s.pd(), pd) {
                return Err(Error::InvalidConfig("SRQ belongs to another PD".into()));
            }
        }
        check_limit(
            "send queue depth",
            cfg.max_send_wr,
            lim.max_qp_wr,
            "max_qp_wr",
            dev.name(),
        )?;
        check_limit(
            "send SGEs",
            cfg.max_send_sge,
            lim.max_sge,
            "max_sge",
            dev.name(),
        )?;
        let (max_recv_wr, max_recv_sge) = if srq.is_some() {
            (0, 0)
        } else {
            check_limit(
                "receive queue depth",
                cfg.max_recv_wr,
                lim.max_qp_wr,
                "max_qp_wr",
                dev.name(),
            )?;
            check_limit(
                "receive SGEs",
                cfg.max_recv_sge.max(1),
                lim.max_sge,
                "max_sge",
                dev.name(),
            )?;
            (cfg.max_recv_wr, cfg.max_recv_sge.max(1))
        };
        let mut init = ibv_qp_init_attr {
            qp_context: ptr::null_mut(),
            send_cq: send_cq.raw(),
            recv_cq: recv_cq.raw(),
            srq: srq.map_or(ptr::null_mut(), |s| s.raw()),
            cap: ibv_qp_cap {
                max_send_wr: cfg.max_send_wr,
                max_recv_wr,
                max_send_sge: cfg.max_send_sge,
                max_recv_sge,
                max_inline_data: cfg.max_inline_data,
            },
            qp_type: ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
        };
        // SAFETY: PD, CQs and SRQ are alive (we hold Arcs); `init` is valid and may be updated.
        let raw = unsafe { rdma_mummy_sys::ibv_create_qp(pd.raw(), &mut init) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::last_verb("ibv_create_qp", dev.name()))?;
        // SAFETY: raw is a live QP; qp_num is a plain field.
        let qp_num = unsafe { raw.as_ref().qp_num };
        Ok(QueuePair {
            raw,
            qp_num,
            caps: QpCaps {
                max_send_wr: init.cap.max_send_wr,
                max_send_sge: init.cap.max_send_sge,
                max_recv_wr: init.cap.max_recv_wr,
                max_recv_sge: init.cap.max_recv_sge,
                max_inline_data: init.cap.max_inline_data,
            },
            srq: srq.cloned(),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
            pd: Arc::clone(pd),
        })
    }

    /// The QP number.
    pub fn qp_num(&self) -> u32 {
        self.qp_num
    }

    /// What the provider gave.
    pub fn caps(&self) -> QpCaps {
        self.caps
    }

    /// The SRQ, if the QP uses one.
    pub fn srq(&self) -> Option<&Arc<Srq>> {
        self.srq.as_ref()
    }

    /// The raw `ibv_qp`, valid while `self` lives.
    pub(crate) fn raw_ptr(&self) -> *mut ibv_qp {
        self.raw.as_ptr()
    }

    /// The send CQ.
    pub fn send_cq(&self) -> &Arc<Cq> {
        &self.send_cq
    }

    /// The receive CQ.
    pub fn recv_cq(&self) -> &Arc<Cq> {
        &self.recv_cq
    }

    /// The PD.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// Applies `attr` under `mask` (`ibv_modify_qp`).
    ///
    /// # Safety
    /// `attr` must be a fully initialized attribute set valid for `mask` (as returned by
    /// `rdma_init_qp_attr`, possibly adjusted).
    pub(crate) unsafe fn modify(
        &self,
        attr: &mut ibv_qp_attr,
        mask: i32,
        what: &'static str,
    ) -> Result<()> {
        // SAFETY: the QP is alive; attr validity is the caller's obligation.
        let ret = unsafe { rdma_mummy_sys::ibv_modify_qp(self.raw.as_ptr(), attr, mask) };
        if ret != 0 {
            return Err(Error::verb_ret(what, self.pd.device().name(), ret));
        }
        Ok(())
    }

    /// Moves the QP to the error state: every outstanding send (and own-receive-queue) work
    /// request completes with `WrFlush`, and no new work is accepted.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_modify_qp` fails.
    pub fn set_error(&self) -> Result<()> {
        // SAFETY: ibv_qp_attr is plain data; all zeroes is valid.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ibv_qp_state::IBV_QPS_ERR;
        // SAFETY: only the state is set, and the mask names only the state.
        unsafe {
            self.modify(
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                "ibv_modify_qp(ERR)",
            )
        }
    }

    /// The current state (`ibv_query_qp`).
    ///
    /// # Errors
    /// [`Error::Verbs`] when the query fails.
    pub fn state(&self) -> Result<QpState> {
        // SAFETY: plain data; zeroes valid.
        let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: plain data; zeroes valid.
        let mut init: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the QP is alive; out-structs are valid.
        let ret = unsafe {
            rdma_mummy_sys::ibv_query_qp(
                self.raw.as_ptr(),
                &mut attr,
                ibv_qp_attr_mask::IBV_QP_STATE.0 as i32,
                &mut init,
            )
        };
        if ret != 0 {
            return Err(Error::verb_ret(
                "ibv_query_qp",
                self.pd.device().name(),
                ret,
            ));
        }
        Ok(QpState::from_raw(attr.qp_state))
    }

    /// Posts every work request of `batch` with one `ibv_post_send` call. On success the batch is
    /// emptied; on failure the accepted ones are removed and [`PostError::posted`] counts them.
    ///
    /// # Safety
    /// Every SGE must lie inside an MR registered on this QP's PD (for inline sends, any readable
    /// memory); unless the work request is inline, the bytes must stay mapped and unmodified
    /// until its completion is polled (unsignaled work requests complete with the next signaled
    /// one on the same QP). For RDMA WRITE operations, `remote_addr`/`rkey` must describe memory
    /// the peer registered for remote write.
    ///
    /// # Errors
    /// [`PostError`] (no allocation) when the provider refuses a work request.
    pub unsafe fn post_send(&self, batch: &mut SendBatch) -> Result<(), PostError> {
        // SAFETY: ibv_post_send on our live QP with the batch's well-formed chain; the memory
        // obligations are the caller's.
        unsafe {
            batch.post("ibv_post_send", |head, bad| {
                rdma_mummy_sys::ibv_post_send(self.raw.as_ptr(), head, bad)
            })
        }
    }

    /// Posts receive work requests to the QP's own receive queue (QPs without an SRQ).
    ///
    /// # Safety
    /// As [`Srq::post_recv`].
    ///
    /// # Errors
    /// [`PostError`] with EINVAL when the QP uses an SRQ; otherwise as [`Srq::post_recv`].
    pub unsafe fn post_recv(&self, batch: &mut RecvBatch) -> Result<(), PostError> {
        if self.srq.is_some() {
            return Err(PostError {
                verb: "ibv_post_recv",
                posted: 0,
                errno: libc::EINVAL,
            });
        }
        // SAFETY: ibv_post_recv on our live QP with the batch's well-formed chain; the memory
        // obligations are the caller's.
        unsafe {
            batch.post("ibv_post_recv", |head, bad| {
                rdma_mummy_sys::ibv_post_recv(self.raw.as_ptr(), head, bad)
            })
        }
    }
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: the QP is ours and not used after this.
        let ret = unsafe { rdma_mummy_sys::ibv_destroy_qp(self.raw.as_ptr()) };
        if ret != 0 {
            tracing::error!(
                qp_num = self.qp_num,
                err = %std::io::Error::from_raw_os_error(ret.abs()),
                "ibv_destroy_qp failed"
            );
        }
    }
}
