//! GPU leases, and the gate that holds a returned slot back until the consumer's stream is done
//! with it.
//!
//! A lease's `Drop` runs when the consumer lets go of it on the CPU, which for a GPU buffer is
//! usually *before* the kernels it queued have read it. [`GpuLease::release_after`] records an
//! event on the consumer's stream; dropping the lease then parks the slot with its events, and
//! the poller reposts it once every event completed ([`Gate::poll`]). The lease itself never
//! blocks; if the pool is gone, the gate's last owner waits for the events before letting the
//! slots go.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_queue::SegQueue;
use cudarc::driver::{CudaContext, CudaEvent, CudaStream};
use gdrx_core::{Lease, MessageMeta};

use super::driver_error;
use super::staging::StageShared;
use crate::error::Result;
use crate::plan::GpuPath;

/// What a GPU lease holds on to.
pub(crate) enum Slot {
    /// A zero-copy pool's lease (dma-buf or peermem MR on GPU memory).
    Direct(Lease),
    /// A staging GPU slot.
    Staged {
        shared: Arc<StageShared>,
        slot: u32,
        gen: u32,
    },
}

impl Slot {
    /// Gives the slot back to its pool or stager.
    fn release(self) {
        match self {
            Slot::Direct(l) => drop(l),
            Slot::Staged { shared, slot, gen } => shared.give_back(slot, gen),
        }
    }
}

/// Parked returns of one pool or stager, and spare events.
pub(crate) struct Gate {
    ctx: Arc<CudaContext>,
    parked: SegQueue<(Slot, Vec<CudaEvent>)>,
    spare: SegQueue<CudaEvent>,
    /// Returns gated on at least one event, over the gate's life.
    gated: AtomicU64,
    /// Returns that had to be parked because an event had not completed, over the gate's life.
    parked_total: AtomicU64,
    /// Parked right now.
    waiting: AtomicU64,
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate")
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("gated", &self.gated.load(Ordering::Relaxed))
            .finish()
    }
}

impl Gate {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Arc<Gate> {
        Arc::new(Gate {
            ctx: Arc::clone(ctx),
            parked: SegQueue::new(),
            spare: SegQueue::new(),
            gated: AtomicU64::new(0),
            parked_total: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        })
    }

    fn event(&self) -> Result<CudaEvent> {
        match self.spare.pop() {
            Some(e) => Ok(e),
            None => self
                .ctx
                .new_event(None)
                .map_err(driver_error("cuEventCreate(DISABLE_TIMING)")),
        }
    }

    /// Slots parked behind events that have not completed yet.
    pub(crate) fn waiting(&self) -> u64 {
        // Relaxed: a statistic.
        self.waiting.load(Ordering::Relaxed)
    }

    /// Returns gated on events, and how many of them had to be parked, over the gate's life.
    pub(crate) fn gated(&self) -> (u64, u64) {
        // Relaxed: statistics.
        (
            self.gated.load(Ordering::Relaxed),
            self.parked_total.load(Ordering::Relaxed),
        )
    }

    fn park(&self, slot: Slot, events: Vec<CudaEvent>) {
        // Relaxed: statistics; the queue itself synchronises the entry.
        self.parked_total.fetch_add(1, Ordering::Relaxed);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.parked.push((slot, events));
    }

    /// The poller: releases every parked slot whose events all completed; returns how many.
    /// `scratch` is reused between calls.
    pub(crate) fn poll(&self, scratch: &mut Vec<(Slot, Vec<CudaEvent>)>) -> usize {
        if self.parked.is_empty() {
            return 0;
        }
        scratch.clear();
        while let Some(e) = self.parked.pop() {
            scratch.push(e);
        }
        let mut released = 0;
        for (slot, events) in scratch.drain(..) {
            match all_complete(&events) {
                Ok(true) => {
                    slot.release();
                    for e in events {
                        self.spare.push(e);
                    }
                    released += 1;
                }
                Ok(false) => self.parked.push((slot, events)),
                Err(e) => {
                    // The context is broken (a sticky error): the consumer's kernels may or may
                    // not have finished, so the slot is never reposted.
                    tracing::error!(error = %e, "cannot query a lease's event: slot withheld");
                    released += 1;
                }
            }
        }
        // Relaxed: a statistic.
        self.waiting.fetch_sub(released as u64, Ordering::Relaxed);
        released
    }
}

fn all_complete(events: &[CudaEvent]) -> Result<bool> {
    for e in events {
        if !e.try_is_complete().map_err(driver_error("cuEventQuery"))? {
            return Ok(false);
        }
    }
    Ok(true)
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Nobody polls any more: wait for the consumers' streams, then let the slots go.
        while let Some((slot, events)) = self.parked.pop() {
            match events.iter().try_for_each(|e| e.synchronize()) {
                Ok(()) => slot.release(),
                Err(e) => {
                    tracing::error!(error = ?e, "cannot wait for a lease's event: slot withheld")
                }
            }
        }
    }
}

/// A received buffer in GPU memory, lent to the consumer until dropped.
///
/// Read it on the GPU at [`GpuLease::device_ptr`] (`len` bytes). Before dropping it, call
/// [`GpuLease::release_after`] with every stream whose queued work reads it: the slot is then
/// reposted only once that work is done.
pub struct GpuLease {
    slot: Option<Slot>,
    events: Vec<CudaEvent>,
    gate: Arc<Gate>,
    ptr: u64,
    len: usize,
    meta: MessageMeta,
    path: GpuPath,
}

impl fmt::Debug for GpuLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuLease")
            .field("ptr", &format_args!("{:#x}", self.ptr))
            .field("len", &self.len)
            .field("imm", &self.meta.imm)
            .field("path", &self.path)
            .field("events", &self.events.len())
            .finish()
    }
}

impl GpuLease {
    pub(crate) fn new(
        slot: Slot,
        gate: &Arc<Gate>,
        ptr: u64,
        len: usize,
        meta: MessageMeta,
        path: GpuPath,
    ) -> GpuLease {
        GpuLease {
            slot: Some(slot),
            events: Vec::new(),
            gate: Arc::clone(gate),
            ptr,
            len,
            meta,
            path,
        }
    }

    /// The device pointer of the payload's first byte.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Payload bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for an empty message.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Immediate data, when the message carried some.
    pub fn imm(&self) -> Option<u32> {
        self.meta.imm
    }

    /// What the receive completion said (the same [`MessageMeta`] as a host [`gdrx_core::Lease`];
    /// its `len` counts the bytes received, header included).
    pub fn meta(&self) -> MessageMeta {
        self.meta
    }

    /// The local QP the message arrived on.
    pub fn qp_num(&self) -> u32 {
        self.meta.qp_num
    }

    /// The sender's QP number.
    pub fn src_qp(&self) -> u32 {
        self.meta.src_qp
    }

    /// The header bytes in host memory, with header split on a zero-copy path (empty otherwise:
    /// the staging path refuses header split).
    pub fn header(&self) -> &[u8] {
        match &self.slot {
            Some(Slot::Direct(l)) => l.header(),
            _ => &[],
        }
    }

    /// How the payload got here.
    pub fn path(&self) -> GpuPath {
        self.path
    }

    /// Events the lease waits for before its slot is reposted.
    pub fn events(&self) -> usize {
        self.events.len()
    }

    /// Records an event on `stream` (after the work queued on it so far): the slot is reposted
    /// only once that event completed. Call it for every stream that reads the buffer.
    ///
    /// # Errors
    /// The driver error of `cuEventCreate` / `cuEventRecord` (a stream of another context is
    /// `CUDA_ERROR_INVALID_CONTEXT`); the lease is unchanged then.
    pub fn release_after(&mut self, stream: &CudaStream) -> Result<()> {
        let e = self.gate.event()?;
        match e.record(stream) {
            Ok(()) => {
                self.events.push(e);
                Ok(())
            }
            Err(err) => {
                self.gate.spare.push(e);
                Err(driver_error("cuEventRecord on the consumer's stream")(err))
            }
        }
    }

    /// Gates the slot on an event the consumer recorded itself.
    pub fn release_after_event(&mut self, event: CudaEvent) {
        self.events.push(event);
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        let events = std::mem::take(&mut self.events);
        if !events.is_empty() {
            // Relaxed: a statistic.
            self.gate.gated.fetch_add(1, Ordering::Relaxed);
        }
        match all_complete(&events) {
            Ok(true) => {
                slot.release();
                for e in events {
                    self.gate.spare.push(e);
                }
            }
            Ok(false) => self.gate.park(slot, events),
            Err(e) => {
                tracing::error!(error = %e, "cannot query a lease's event: slot withheld");
            }
        }
    }
}
