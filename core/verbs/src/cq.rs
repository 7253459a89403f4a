//! Completion queues: busy polling in caller-sized batches, and an event mode on a completion
//! channel whose file descriptor works with epoll/poll.
//!
//! A [`Cq`] owns its `ibv_cq` and, in event mode, its own `ibv_comp_channel` (one channel per CQ,
//! so every event read from the fd belongs to this CQ). Events are counted when read and
//! acknowledged in batches; [`Drop`] acknowledges the rest before `ibv_destroy_cq`, which would
//! otherwise fail (EBUSY). Queue pairs hold an `Arc<Cq>`, so a CQ is destroyed after them.
//!
//! # Event mode without lost wake-ups
//! [`Cq::poll_blocking`] implements the standard sequence: poll; when empty, arm
//! (`ibv_req_notify_cq`), poll again (a completion that arrived before the arm would raise no
//! event), and only then sleep on the fd; after a wake-up read the event
//! (`ibv_get_cq_event`), count it for acknowledgement and poll again. Users with their own epoll
//! loop do the same with [`Cq::arm`], [`Cq::take_event`] and [`Cq::poll`].

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdma_mummy_sys::{ibv_comp_channel, ibv_cq, ibv_wc, ibv_wc_flags};

use crate::device::Device;
use crate::error::{Error, Result, WcError, WcOpcode, WcStatus};
use crate::sys::{set_nonblocking, wait_readable};
use crate::wait::{wait_for, Waiter};

/// Events are acknowledged once this many have been read (ibv_ack_cq_events takes a mutex).
const ACK_BATCH: u32 = 64;

/// A work completion, laid out as `struct ibv_wc` so a slice of them is handed to
/// `ibv_poll_cq` directly.
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct WorkCompletion(ibv_wc);

impl WorkCompletion {
    /// An all-zero completion, to fill poll buffers with.
    // SAFETY: ibv_wc is plain integers and a union of integers: all zeroes is valid.
    pub const EMPTY: WorkCompletion = WorkCompletion(unsafe { std::mem::zeroed() });

    /// A buffer of `n` empty completions for [`Cq::poll`].
    pub fn buffer(n: usize) -> Vec<WorkCompletion> {
        vec![WorkCompletion::EMPTY; n]
    }

    /// The id of the work request that completed.
    pub fn wr_id(&self) -> u64 {
        self.0.wr_id
    }

    /// The status.
    pub fn status(&self) -> WcStatus {
        WcStatus::from_raw(self.0.status)
    }

    /// True when the work request succeeded.
    pub fn is_ok(&self) -> bool {
        self.0.status == rdma_mummy_sys::ibv_wc_status::IBV_WC_SUCCESS
    }

    /// The opcode (valid for successful completions).
    pub fn opcode(&self) -> WcOpcode {
        WcOpcode::from_raw(self.0.opcode)
    }

    /// Bytes received (receive completions).
    pub fn byte_len(&self) -> u32 {
        self.0.byte_len
    }

    /// Immediate data in host order, when the completion carries it.
    pub fn imm(&self) -> Option<u32> {
        if self.0.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0 {
            // SAFETY: with IBV_WC_WITH_IMM set, the union holds imm_data (network order).
            Some(u32::from_be(unsafe {
                self.0.imm_data_invalidated_rkey_union.imm_data
            }))
        } else {
            None
        }
    }

    /// The local QP number the completion belongs to.
    pub fn qp_num(&self) -> u32 {
        self.0.qp_num
    }

    /// The remote QP number (receive completions on UD; RC reports the peer too on most
    /// providers).
    pub fn src_qp(&self) -> u32 {
        self.0.src_qp
    }

    /// Vendor error syndrome.
    pub fn vendor_err(&self) -> u32 {
        self.0.vendor_err
    }

    /// `Ok(())` for success, the typed error otherwise.
    ///
    /// # Errors
    /// [`WcError`] when the status is not success.
    pub fn result(&self) -> Result<(), WcError> {
        if self.is_ok() {
            Ok(())
        } else {
            Err(WcError {
                wr_id: self.wr_id(),
                status: self.status(),
                vendor_err: self.vendor_err(),
                qp_num: self.qp_num(),
                opcode: self.opcode(),
            })
        }
    }
}

impl fmt::Debug for WorkCompletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkCompletion")
            .field("wr_id", &self.wr_id())
            .field("status", &self.status())
            .field("opcode", &self.opcode())
            .field("byte_len", &self.byte_len())
            .field("imm", &self.imm())
            .field("qp_num", &self.qp_num())
            .finish()
    }
}

/// A completion channel (one per event-mode CQ).
struct CompChannel {
    raw: NonNull<ibv_comp_channel>,
    device: Arc<Device>,
}

impl CompChannel {
    fn new(device: &Arc<Device>) -> Result<CompChannel> {
        // SAFETY: the context is alive (we hold the device).
        let raw = unsafe { rdma_mummy_sys::ibv_create_comp_channel(device.raw_context()) };
        let raw = NonNull::new(raw)
            .ok_or_else(|| Error::last_verb("ibv_create_comp_channel", device.name()))?;
        let ch = CompChannel {
            raw,
            device: Arc::clone(device),
        };
        // Non-blocking, so that reading the event after poll(2) never blocks and a spurious
        // wake-up is harmless.
        set_nonblocking(ch.fd(), "fcntl(O_NONBLOCK) on the completion channel")?;
        Ok(ch)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: raw is a live channel; fd is a plain field.
        unsafe { self.raw.as_ref().fd }
    }
}

impl Drop for CompChannel {
    fn drop(&mut self) {
        // SAFETY: the CQ that used this channel has been destroyed (Cq::drop runs first).
        let ret = unsafe { rdma_mummy_sys::ibv_destroy_comp_channel(self.raw.as_ptr()) };
        if ret != 0 {
            tracing::error!(
                device = self.device.name(),
                ret,
                "ibv_destroy_comp_channel failed"
            );
        }
    }
}

/// A completion queue.
pub struct Cq {
    raw: NonNull<ibv_cq>,
    // Dropped after `raw` is destroyed (in Cq::drop).
    channel: Option<CompChannel>,
    device: Arc<Device>,
    cqe: u32,
    unacked: AtomicU32,
    events: AtomicU64,
    destroyed: AtomicBool,
}

// SAFETY: libibverbs CQ operations (poll, notify, get/ack events) are thread-safe per the verbs
// API (providers lock internally); our own counters are atomics.
unsafe impl Send for Cq {}
// SAFETY: as above.
unsafe impl Sync for Cq {}

impl fmt::Debug for Cq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cq")
            .field("device", &self.device.name())
            .field("cqe", &self.cqe)
            .field("event_mode", &self.channel.is_some())
            .finish()
    }
}

impl Cq {
    /// A CQ of at least `cqe` entries for busy polling.
    ///
    /// Size it for every work request that can complete into it: SRQ depth plus the send queue
    /// depths of the QPs that use it, or it can overrun.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `cqe` exceeds the device's `max_cqe`; [`Error::Verbs`] when
    /// `ibv_create_cq` fails.
    pub fn new(device: &Arc<Device>, cqe: u32) -> Result<Arc<Cq>> {
        Self::create(device, cqe, false)
    }

    /// A CQ of at least `cqe` entries with its own completion channel, for event mode.
    ///
    /// # Errors
    /// As [`Cq::new`].
    pub fn with_events(device: &Arc<Device>, cqe: u32) -> Result<Arc<Cq>> {
        Self::create(device, cqe, true)
    }

    fn create(device: &Arc<Device>, cqe: u32, events: bool) -> Result<Arc<Cq>> {
        let max = device.limits().max_cqe;
        if cqe == 0 || cqe > max {
            return Err(Error::InvalidConfig(format!(
                "CQ of {cqe} entries: `{}` allows 1..={max}",
                device.name()
            )));
        }
        let channel = if events {
            Some(CompChannel::new(device)?)
        } else {
            None
        };
        let ch_ptr = channel.as_ref().map_or(ptr::null_mut(), |c| c.raw.as_ptr());
        // SAFETY: context and channel are alive; cq_context is unused (null).
        let raw = unsafe {
            rdma_mummy_sys::ibv_create_cq(
                device.raw_context(),
                cqe as i32,
                ptr::null_mut(),
                ch_ptr,
                0,
            )
        };
        let raw =
            NonNull::new(raw).ok_or_else(|| Error::last_verb("ibv_create_cq", device.name()))?;
        // SAFETY: raw is live; cqe is a plain field.
        let actual = unsafe { raw.as_ref().cqe }.max(0) as u32;
        Ok(Arc::new(Cq {
            raw,
            channel,
            device: Arc::clone(device),
            cqe: actual,
            unacked: AtomicU32::new(0),
            events: AtomicU64::new(0),
            destroyed: AtomicBool::new(false),
        }))
    }

    pub(crate) fn raw(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// Number of entries the provider actually allocated (at least what was asked).
    pub fn capacity(&self) -> u32 {
        self.cqe
    }

    /// True for a CQ made with [`Cq::with_events`].
    pub fn is_event_mode(&self) -> bool {
        self.channel.is_some()
    }

    /// Completion events read so far.
    pub fn events_read(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Polls up to `wcs.len()` completions into `wcs`; returns how many. Never blocks and never
    /// allocates.
    ///
    /// # Errors
    /// [`Error::Os`] (`ibv_poll_cq`) when the provider reports a CQ error (e.g. overrun).
    #[inline]
    pub fn poll(&self, wcs: &mut [WorkCompletion]) -> Result<usize> {
        let n = wcs.len().min(i32::MAX as usize) as i32;
        // SAFETY: WorkCompletion is repr(transparent) over ibv_wc, the buffer holds `n` entries,
        // and the CQ is alive.
        let ret = unsafe { rdma_mummy_sys::ibv_poll_cq(self.raw(), n, wcs.as_mut_ptr().cast()) };
        if ret < 0 {
            return Err(Error::Os {
                op: "ibv_poll_cq",
                source: io::Error::from_raw_os_error(-ret),
            });
        }
        Ok(ret as usize)
    }

    /// Requests an event for the next completion (`ibv_req_notify_cq`). Poll once more after
    /// arming before sleeping: completions that arrived earlier raise no event.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] on a busy-poll CQ; [`Error::Verbs`] when the verb fails.
    pub fn arm(&self) -> Result<()> {
        if self.channel.is_none() {
            return Err(Error::InvalidConfig(
                "arm() on a CQ without a completion channel: create it with Cq::with_events".into(),
            ));
        }
        // SAFETY: the CQ is alive.
        let ret = unsafe { rdma_mummy_sys::ibv_req_notify_cq(self.raw(), 0) };
        if ret != 0 {
            return Err(Error::verb_ret(
                "ibv_req_notify_cq",
                self.device.name(),
                ret,
            ));
        }
        Ok(())
    }

    /// Reads one pending event from the channel without blocking; returns whether there was one.
    /// The event is counted and acknowledged later in a batch (and on drop).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] on a busy-poll CQ; [`Error::Verbs`] when the read fails.
    pub fn take_event(&self) -> Result<bool> {
        let ch = self.channel.as_ref().ok_or_else(|| {
            Error::InvalidConfig("take_event() on a CQ without a completion channel".into())
        })?;
        let mut cq: *mut ibv_cq = ptr::null_mut();
        let mut ctx: *mut libc::c_void = ptr::null_mut();
        // SAFETY: the channel is alive; out-pointers are valid locals.
        let ret = unsafe { rdma_mummy_sys::ibv_get_cq_event(ch.raw.as_ptr(), &mut cq, &mut ctx) };
        if ret != 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(false);
            }
            return Err(Error::verb("ibv_get_cq_event", self.device.name(), err));
        }
        debug_assert_eq!(
            cq,
            self.raw(),
            "event for a foreign CQ on an exclusive channel"
        );
        self.events.fetch_add(1, Ordering::Relaxed);
        if self.unacked.fetch_add(1, Ordering::AcqRel) + 1 >= ACK_BATCH {
            self.ack_events();
        }
        Ok(true)
    }

    /// Acknowledges every event read so far.
    pub fn ack_events(&self) {
        let n = self.unacked.swap(0, Ordering::AcqRel);
        if n > 0 {
            // SAFETY: the CQ is alive and `n` events were read and not yet acknowledged.
            unsafe { rdma_mummy_sys::ibv_ack_cq_events(self.raw(), n) };
        }
    }

    /// Sleeps until the channel fd is readable (or `timeout`), then reads the event. Returns
    /// whether an event was read.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] on a busy-poll CQ; [`Error::Os`] when poll(2) fails.
    pub fn wait_event(&self, timeout: Option<Duration>) -> Result<bool> {
        let fd = self.event_fd().ok_or_else(|| {
            Error::InvalidConfig("wait_event() on a CQ without a completion channel".into())
        })?;
        if self.take_event()? {
            return Ok(true);
        }
        if !wait_readable(fd, timeout, "poll(completion channel)")? {
            return Ok(false);
        }
        self.take_event()
    }

    /// Blocking poll (the one meaning gdrx gives it, see [`crate::wait`]): waits up to
    /// `timeout` (forever for `None`) until at least one completion is available and returns
    /// how many (up to `wcs.len()`), or 0 once `timeout` has passed. In event mode it sleeps on
    /// the completion channel in between (see the module docs for the sequence); in busy mode it
    /// spins.
    ///
    /// # Errors
    /// As [`Cq::poll`], [`Cq::arm`] and [`Cq::wait_event`].
    pub fn poll_blocking(
        &self,
        wcs: &mut [WorkCompletion],
        timeout: Option<Duration>,
    ) -> Result<usize> {
        struct CqWaiter<'a> {
            cq: &'a Cq,
            wcs: &'a mut [WorkCompletion],
        }
        impl Waiter for CqWaiter<'_> {
            type Error = Error;
            fn attempt(&mut self) -> Result<usize> {
                self.cq.poll(self.wcs)
            }
            fn wait(&mut self, left: Option<Duration>) -> Result<usize> {
                if !self.cq.is_event_mode() {
                    std::hint::spin_loop();
                    return Ok(0);
                }
                self.cq.arm()?;
                let n = self.cq.poll(self.wcs)?;
                if n == 0 {
                    self.cq.wait_event(left)?;
                }
                Ok(n)
            }
        }
        wait_for(&mut CqWaiter { cq: self, wcs }, timeout)
    }

    /// The completion channel's fd, for epoll/poll (event-mode CQs only). It is non-blocking.
    pub fn event_fd(&self) -> Option<RawFd> {
        self.channel.as_ref().map(CompChannel::fd)
    }

    /// Destroys the CQ now and reports failure, instead of logging it in `Drop`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when other owners (QPs, SRQs) still hold the CQ;
    /// [`Error::Verbs`] when `ibv_destroy_cq` fails.
    pub fn close(self: Arc<Self>) -> Result<()> {
        let cq = Arc::try_unwrap(self).map_err(|a| {
            Error::InvalidConfig(format!(
                "CQ still has {} other owners (queue pairs?)",
                Arc::strong_count(&a) - 1
            ))
        })?;
        cq.destroy()
        // `cq` drops here; its Drop sees the CQ already destroyed.
    }

    fn destroy(&self) -> Result<()> {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.ack_events();
        // SAFETY: every QP/SRQ using the CQ holds an Arc of it and is gone; all read events are
        // acknowledged just above.
        let ret = unsafe { rdma_mummy_sys::ibv_destroy_cq(self.raw()) };
        if ret != 0 {
            return Err(Error::verb_ret("ibv_destroy_cq", self.device.name(), ret));
        }
        Ok(())
    }
}

impl AsRawFd for Cq {
    /// The completion channel fd; -1 for a busy-poll CQ.
    fn as_raw_fd(&self) -> RawFd {
        self.event_fd().unwrap_or(-1)
    }
}

impl Drop for Cq {
    fn drop(&mut self) {
        if let Err(e) = self.destroy() {
            tracing::error!(error = %e, "CQ teardown failed; its memory is leaked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_completion_accessors() {
        let mut wc = WorkCompletion::EMPTY;
        assert!(wc.is_ok());
        assert_eq!(wc.imm(), None);
        wc.0.wr_id = 42;
        wc.0.status = rdma_mummy_sys::ibv_wc_status::IBV_WC_LOC_LEN_ERR;
        wc.0.opcode = rdma_mummy_sys::ibv_wc_opcode::IBV_WC_RECV;
        wc.0.wc_flags = ibv_wc_flags::IBV_WC_WITH_IMM.0;
        wc.0.imm_data_invalidated_rkey_union.imm_data = 0xAABBCCDDu32.to_be();
        assert_eq!(wc.imm(), Some(0xAABBCCDD));
        let e = wc.result().unwrap_err();
        assert_eq!(e.status, WcStatus::LocalLength);
        assert_eq!(e.wr_id, 42);
        assert!(wc.opcode().is_recv());
    }
}
