//! Type 2 memory windows: a remote key for one range of an MR, valid on one QP only.
//!
//! An MR registered with remote write access gives every QP of its PD that knows (or guesses)
//! its rkey the whole region. A receiver that advertises write windows to several peers out of
//! one MR registers it *without* remote access and binds a [`MemoryWindow`] per connection
//! instead ([`QueuePair::bind_window`]): the window's rkey covers only that connection's range,
//! and only that connection's QP may use it (IBTA type 2 windows are bound to a QP). A write
//! with another connection's rkey fails at the sender with a remote access error, and nothing
//! is written. A write outside the window's range fails the same way on hardware; soft-RoCE
//! (rxe, Linux 6.12) checks a window's accesses against its MR's range only, so a receiver that
//! must be strict there registers an MR per peer and binds each window over a whole MR.
//!
//! A [`MemoryWindow`] deallocates on drop, before it releases the MR and the QP it is bound to
//! (an MR with bound windows cannot be deregistered, and a bound type 2 window holds its QP).

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys::{
    bind_mw_t, bind_mw_tso_union_t, ibv_access_flags, ibv_mw, ibv_mw_bind_info, ibv_mw_type,
    ibv_send_flags, ibv_send_wr, ibv_wr_opcode,
};

use crate::cq::WorkCompletion;
use crate::error::{Error, Result};
use crate::mr::{Access, Mr};
use crate::pd::Pd;
use crate::qp::QueuePair;

/// A type 2 memory window, allocated on a PD and bound to at most one MR range and QP.
pub struct MemoryWindow {
    raw: NonNull<ibv_mw>,
    // Dropped after Drop::drop deallocated the window.
    pd: Arc<Pd>,
    /// The MR and QP of a bind that was posted (whether or not it succeeded): kept until the
    /// window is deallocated.
    holds: Option<(Arc<Mr>, Arc<QueuePair>)>,
    /// The window, once a bind completed successfully.
    bound: Option<gdrx_wire::RemoteWindow>,
}

// SAFETY: the window is only read through `raw` in Drop and in bind_window (which takes it by
// `&mut`); libibverbs' MW calls are thread-safe.
unsafe impl Send for MemoryWindow {}
// SAFETY: `&MemoryWindow` exposes only plain data (the bound window).
unsafe impl Sync for MemoryWindow {}

impl fmt::Debug for MemoryWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryWindow")
            .field("device", &self.pd.device().name())
            .field("window", &self.bound)
            .finish()
    }
}

impl Pd {
    /// Allocates a type 2 memory window (`ibv_alloc_mw`).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the device has no type 2 windows; [`Error::Verbs`] otherwise.
    pub fn alloc_mw(self: &Arc<Self>) -> Result<MemoryWindow> {
        // SAFETY: a live PD; ibv_alloc_mw returns NULL (errno set) when it fails.
        let raw = unsafe { rdma_mummy_sys::ibv_alloc_mw(self.raw(), ibv_mw_type::IBV_MW_TYPE_2) };
        match NonNull::new(raw) {
            Some(raw) => Ok(MemoryWindow {
                raw,
                pd: Arc::clone(self),
                holds: None,
                bound: None,
            }),
            None => {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) {
                    return Err(Error::Unsupported {
                        what: "type 2 memory windows",
                        device: self.device().name().to_owned(),
                        reason: "the driver does not allocate them".into(),
                        hint: "isolate peers with an MR per peer instead",
                        source: Some(e),
                    });
                }
                Err(Error::verb("ibv_alloc_mw", self.device().name(), e))
            }
        }
    }
}

impl MemoryWindow {
    /// The window it is bound to, once [`QueuePair::bind_window`] succeeded.
    pub fn window(&self) -> Option<gdrx_wire::RemoteWindow> {
        self.bound
    }
}

impl Drop for MemoryWindow {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_mw and deallocated only here.
        let ret = unsafe { rdma_mummy_sys::ibv_dealloc_mw(self.raw.as_ptr()) };
        if ret != 0 {
            tracing::warn!(ret, "ibv_dealloc_mw failed");
        }
    }
}

/// The work request id of a bind, recognisable on the send CQ.
const BIND_WR_ID: u64 = 0x6d77_6269_6e64; // "mwbind"

impl QueuePair {
    /// Binds `mw` to `len` bytes at `offset` of `mr` for remote writes **by this QP's peer
    /// only**, and waits up to `timeout` for the bind to complete on this QP's send CQ. Returns
    /// the window to advertise (its address, length and the window's new rkey).
    ///
    /// The QP must be ready to send (RTS): a passive side binds between bringing the QP up and
    /// accepting, so the window is valid before the peer can write (see
    /// [`crate::ConnectRequest::accept_with`]). `mr` needs [`Access::MW_BIND`] and LOCAL_WRITE,
    /// and should not itself have REMOTE_WRITE, or its own rkey would open the whole region.
    /// `mw` keeps the MR and this QP alive until it is dropped. On soft-RoCE the range is not
    /// enforced beyond the MR's (see the module docs).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a range outside `mr`, a window already bound, or an MR
    /// without MW_BIND; [`Error::Completion`] when the bind fails (e.g. `MwBind`);
    /// [`Error::Timeout`]; [`Error::InvalidConfig`] when the send CQ delivers a completion that
    /// is not the bind's (bind before anything else is sent on that CQ).
    pub fn bind_window(
        self: &Arc<Self>,
        mw: &mut MemoryWindow,
        mr: &Arc<Mr>,
        offset: u64,
        len: u64,
        timeout: Duration,
    ) -> Result<gdrx_wire::RemoteWindow> {
        if mw.holds.is_some() {
            return Err(Error::InvalidConfig(
                "a bind was already posted on this memory window (type 2 windows are bound \
                 once; allocate another)"
                    .into(),
            ));
        }
        if !mr.access().contains(Access::MW_BIND | Access::LOCAL_WRITE) {
            return Err(Error::InvalidConfig(format!(
                "binding a memory window needs an MR registered with MW_BIND and LOCAL_WRITE, \
                 not {:?}",
                mr.access()
            )));
        }
        let end = offset.checked_add(len);
        if len == 0 || end.is_none_or(|e| e > mr.len() as u64) {
            return Err(Error::InvalidConfig(format!(
                "window of {len} B at offset {offset} is outside the {} B MR",
                mr.len()
            )));
        }
        let addr = mr.iova() + offset;
        // SAFETY: `mw.raw` is a live window; reading its current rkey.
        let rkey = unsafe { rdma_mummy_sys::ibv_inc_rkey(mw.raw.as_ref().rkey) };
        // SAFETY: ibv_send_wr is a plain C struct of integers, pointers and unions of them; all
        // zeroes is a valid value for every field.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = BIND_WR_ID;
        wr.opcode = ibv_wr_opcode::IBV_WR_BIND_MW;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.bind_mw_tso_union = bind_mw_tso_union_t {
            bind_mw: bind_mw_t {
                mw: mw.raw.as_ptr(),
                rkey,
                bind_info: ibv_mw_bind_info {
                    mr: mr.raw(),
                    addr,
                    length: len,
                    mw_access_flags: ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0,
                },
            },
        };
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // From here the MR and this QP must outlive the window, whatever happens to the bind.
        mw.holds = Some((Arc::clone(mr), Arc::clone(self)));
        // SAFETY: this live QP, one well-formed work request without SGEs naming the live
        // window `mw` and the live MR `mr`; `mw` holds Arcs of both the MR and this QP (set
        // above), and deallocates itself before releasing them, so the binding never outlives
        // either.
        let ret = unsafe { rdma_mummy_sys::ibv_post_send(self.raw_ptr(), &mut wr, &mut bad) };
        if ret != 0 {
            return Err(Error::verb_ret(
                "ibv_post_send(BIND_MW)",
                self.pd().device().name(),
                ret,
            ));
        }
        let window = gdrx_wire::RemoteWindow { addr, len, rkey };
        let deadline = Instant::now() + timeout;
        let mut wcs = WorkCompletion::buffer(1);
        loop {
            if self.send_cq().poll(&mut wcs)? == 1 {
                let wc = &wcs[0];
                if wc.wr_id() != BIND_WR_ID {
                    return Err(Error::InvalidConfig(format!(
                        "the send CQ delivered work request {:#x} while waiting for a memory \
                         window bind: bind windows before sending on that CQ",
                        wc.wr_id()
                    )));
                }
                wc.result()?;
                mw.bound = Some(window);
                return Ok(window);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "a memory window bind",
                    after: timeout,
                });
            }
            std::thread::yield_now();
        }
    }
}
