//! Host staging: the last link of the fallback chain.
//!
//! The NIC writes pinned host slots (an ordinary host pool on [`super::PinnedHostProvider`]
//! memory). For each received message the [`Stager`] takes a free GPU slot, queues
//! `cuMemcpyHtoDAsync(gpu slot <- host payload)` and an event on its own stream, and, once the
//! event completed, lets the host buffer go (so the NIC can reuse it) and hands out a
//! [`GpuLease`] on the GPU slot. GPU slots come back through the same lock-free recycle ring
//! as the pool's (`gdrx_ring`), so double and foreign returns are rejected and counted, and they
//! can be gated on the consumer's stream like any GPU lease.
//!
//! The stager does not care where the host bytes come from ([`StagingSource`]): the GPU pool
//! feeds it pool leases, and the GPU checks feed it buffers they wrote themselves (the GPU
//! machine has no NIC).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{CudaEvent, CudaStream};
use gdrx_core::Lease;
use gdrx_ring::{RecycleConsumer, Recycler, RejectCounts};

use super::lease::{Gate, GpuLease, Slot};
use super::{check, driver_error, DeviceMemory, Gpu};
use crate::error::{GpuError, Result};
use crate::plan::GpuPath;
use gdrx_core::MessageMeta;

/// Host bytes the stager can copy.
///
/// # Safety
/// The slice `host_bytes` returns must stay valid, at the same address, and unmodified for as
/// long as the value lives (the copy engine reads it asynchronously after the borrow ends, until
/// the stager drops the value).
pub unsafe trait StagingSource: Send + 'static {
    /// The bytes to copy, or `None` when they are not CPU-readable.
    fn host_bytes(&self) -> Option<&[u8]>;
}

// SAFETY: a lease's payload is not written by the NIC (its slot is lent, not posted) and not
// reposted until the lease is dropped; the pool's memory stays mapped while the lease lives.
unsafe impl StagingSource for Lease {
    fn host_bytes(&self) -> Option<&[u8]> {
        self.payload().ok()
    }
}

// SAFETY: owned heap bytes, not reallocated or written while the Vec is held only by the stager.
unsafe impl StagingSource for Vec<u8> {
    fn host_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

// SAFETY: as for Vec.
unsafe impl StagingSource for Box<[u8]> {
    fn host_bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// Why a message could not be staged; the source comes back.
pub enum StageError<S> {
    /// Every GPU slot is in flight or lent: try again after polling (and after consumers
    /// returned leases).
    Busy(S),
    /// The payload is larger than a GPU slot.
    TooLarge {
        /// The source.
        src: S,
        /// Its length.
        len: usize,
        /// The slot size.
        slot_size: usize,
    },
    /// The source's bytes are not CPU-readable.
    Unreadable(S),
    /// The copy could not be queued.
    Driver {
        /// The source.
        src: S,
        /// The driver error.
        error: GpuError,
    },
}

impl<S> StageError<S> {
    /// The source back.
    pub fn into_source(self) -> S {
        match self {
            StageError::Busy(s)
            | StageError::Unreadable(s)
            | StageError::TooLarge { src: s, .. }
            | StageError::Driver { src: s, .. } => s,
        }
    }
}

impl<S> fmt::Display for StageError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::Busy(_) => f.write_str("every GPU staging slot is in flight or lent"),
            StageError::TooLarge { len, slot_size, .. } => {
                write!(f, "a {len} B payload does not fit a {slot_size} B GPU slot")
            }
            StageError::Unreadable(_) => f.write_str("the source is not CPU-readable"),
            StageError::Driver { error, .. } => write!(f, "queuing the copy failed: {error}"),
        }
    }
}

impl<S> fmt::Debug for StageError<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StageError({self})")
    }
}

/// Counters of a stager.
#[derive(Debug, Clone, Default)]
pub struct StagerStats {
    /// Copies queued.
    pub staged: u64,
    /// Bytes copied (queued).
    pub bytes: u64,
    /// Copies completed and handed out as leases.
    pub completed: u64,
    /// `stage` calls refused because no GPU slot was free.
    pub busy: u64,
    /// GPU slots returned and drained.
    pub recycled: u64,
    /// GPU slots.
    pub slots: u32,
    /// Free GPU slots.
    pub free: u32,
    /// Copies in flight.
    pub in_flight: u32,
    /// Returns gated on a consumer's event.
    pub gated: u64,
    /// Of those, returns whose event had not completed when the lease was dropped (parked
    /// until it did).
    pub parked: u64,
    /// Slots parked behind events right now.
    pub waiting: u64,
    /// Rejected returns (double, stale, out of range).
    pub rejected: RejectCounts,
}

/// What staged leases share with their stager: the GPU slots and their recycle ring.
pub(crate) struct StageShared {
    recycler: Arc<Recycler>,
    mem: DeviceMemory,
    stride: usize,
}

impl StageShared {
    pub(crate) fn give_back(&self, slot: u32, gen: u32) {
        if let Err(e) = self.recycler.give_back(slot, gen) {
            tracing::error!(error = %e, "GPU staging slot return rejected");
        }
    }
}

struct InFlight<S> {
    src: S,
    slot: u32,
    len: usize,
    meta: MessageMeta,
}

/// Copies host payloads into GPU slots (see the module docs). Used by one poller thread.
pub struct Stager<S> {
    shared: Arc<StageShared>,
    consumer: RecycleConsumer,
    gate: Arc<Gate>,
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
    done: Vec<CudaEvent>,
    free: Vec<u32>,
    inflight: VecDeque<InFlight<S>>,
    slot_size: usize,
    scratch: Vec<(Slot, Vec<CudaEvent>)>,
    stats: StagerStats,
}

impl<S> fmt::Debug for Stager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stager")
            .field("gpu", &self.gpu.name())
            .field("slot_size", &self.slot_size)
            .field("slots", &self.done.len())
            .field("free", &self.free.len())
            .field("in_flight", &self.inflight.len())
            .finish()
    }
}

/// GPU slots start on 256-byte boundaries (CUDA's allocation alignment), so kernels can read
/// them with wide loads.
const SLOT_ALIGN: usize = 256;

impl<S: StagingSource> Stager<S> {
    /// `slots` GPU slots of `slot_size` bytes on `gpu`, one copy stream, one event per slot.
    ///
    /// # Errors
    /// [`GpuError::InvalidConfig`] for 0 slots or bytes; the driver errors of the allocation,
    /// stream and events.
    pub fn new(gpu: &Arc<Gpu>, slot_size: usize, slots: u32) -> Result<Stager<S>> {
        if slot_size == 0 || slots == 0 {
            return Err(GpuError::InvalidConfig(
                "a stager needs at least one slot of at least one byte".into(),
            ));
        }
        let stride = slot_size.next_multiple_of(SLOT_ALIGN);
        let total = stride
            .checked_mul(slots as usize)
            .ok_or_else(|| GpuError::InvalidConfig("staging slots overflow".into()))?;
        let mem = DeviceMemory::new(gpu, total)?;
        let ctx = gpu.context();
        let stream = ctx
            .new_stream()
            .map_err(driver_error("cuStreamCreate (staging copies)"))?;
        let done = (0..slots)
            .map(|_| {
                ctx.new_event(None)
                    .map_err(driver_error("cuEventCreate(DISABLE_TIMING)"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (recycler, consumer) = Recycler::new(slots);
        Ok(Stager {
            shared: Arc::new(StageShared {
                recycler,
                mem,
                stride,
            }),
            consumer,
            gate: Gate::new(ctx),
            gpu: Arc::clone(gpu),
            stream,
            done,
            free: (0..slots).rev().collect(),
            inflight: VecDeque::with_capacity(slots as usize),
            slot_size,
            scratch: Vec::new(),
            stats: StagerStats {
                slots,
                ..StagerStats::default()
            },
        })
    }

    /// Bytes per GPU slot.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// The copy stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Copies in flight.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// GPU slots neither in flight nor lent (after draining returns).
    pub fn free_slots(&mut self) -> usize {
        self.drain();
        self.free.len()
    }

    /// The device address of GPU slot `slot`.
    pub fn slot_ptr(&self, slot: u32) -> u64 {
        self.shared.mem.device_ptr() + slot as u64 * self.shared.stride as u64
    }

    fn drain(&mut self) {
        self.gate.poll(&mut self.scratch);
        let free = &mut self.free;
        let n = self.consumer.drain(usize::MAX, |s| free.push(s));
        self.stats.recycled += n as u64;
    }

    /// Queues the copy of `src` into a free GPU slot.
    ///
    /// # Errors
    /// [`StageError`], with the source handed back.
    pub fn stage(&mut self, src: S, meta: MessageMeta) -> std::result::Result<(), StageError<S>> {
        let Some(bytes) = src.host_bytes() else {
            return Err(StageError::Unreadable(src));
        };
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        if len > self.slot_size {
            return Err(StageError::TooLarge {
                src,
                len,
                slot_size: self.slot_size,
            });
        }
        if self.free.is_empty() {
            self.drain();
        }
        let Some(slot) = self.free.pop() else {
            self.stats.busy += 1;
            return Err(StageError::Busy(src));
        };
        if let Err(e) = self.shared.recycler.slots().mark_posted(slot) {
            tracing::error!(error = %e, "staging slot not free; dropped from the free list");
            self.stats.busy += 1;
            return Err(StageError::Busy(src));
        }
        let queued = self.queue_copy(slot, ptr, len);
        if let Err(error) = queued {
            let _ = self.shared.recycler.slots().unpost(slot);
            self.free.push(slot);
            return Err(StageError::Driver { src, error });
        }
        self.stats.staged += 1;
        self.stats.bytes += len as u64;
        self.inflight.push_back(InFlight {
            src,
            slot,
            len,
            meta,
        });
        Ok(())
    }

    fn queue_copy(&self, slot: u32, src: *const u8, len: usize) -> Result<()> {
        self.gpu.bind()?;
        if len > 0 {
            // SAFETY: the destination is inside this stager's allocation (slot < slots, len <=
            // slot_size <= stride); the source stays valid and unchanged until the stager drops
            // it, which happens only after the event recorded below completed (StagingSource
            // contract); the stream belongs to the bound context.
            let r = unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    self.slot_ptr(slot),
                    src.cast(),
                    len,
                    self.stream.cu_stream(),
                )
            };
            check(r, || format!("cuMemcpyHtoDAsync({len} B)"))?;
        }
        self.done[slot as usize]
            .record(&self.stream)
            .map_err(driver_error("cuEventRecord (staging copy)"))
    }

    /// Hands out every message whose copy completed (in arrival order), after reposting GPU
    /// slots whose leases came back. Returns how many leases were handed out. Never blocks.
    ///
    /// # Errors
    /// The driver error of an event query (the context is broken; in-flight copies stay put).
    pub fn poll(&mut self, f: &mut impl FnMut(GpuLease)) -> Result<usize> {
        self.drain();
        let mut n = 0;
        while let Some(front) = self.inflight.front() {
            let ev = &self.done[front.slot as usize];
            if !ev
                .try_is_complete()
                .map_err(driver_error("cuEventQuery (staging copy)"))?
            {
                break;
            }
            let InFlight {
                src,
                slot,
                len,
                meta,
            } = self.inflight.pop_front().expect("front exists");
            // The copy is done: the host buffer can go back to the NIC.
            drop(src);
            let gen = match self.shared.recycler.slots().lend(slot) {
                Ok(g) => g,
                Err(e) => {
                    tracing::error!(error = %e, "staging slot was not in flight");
                    continue;
                }
            };
            self.stats.completed += 1;
            n += 1;
            f(GpuLease::new(
                Slot::Staged {
                    shared: Arc::clone(&self.shared),
                    slot,
                    gen,
                },
                &self.gate,
                self.slot_ptr(slot),
                len,
                meta,
                GpuPath::Staging,
            ));
        }
        Ok(n)
    }

    /// Waits for every queued copy and hands the messages out.
    ///
    /// # Errors
    /// As [`Stager::poll`], and the stream synchronisation's driver error.
    pub fn finish(&mut self, f: &mut impl FnMut(GpuLease)) -> Result<usize> {
        self.stream
            .synchronize()
            .map_err(driver_error("cuStreamSynchronize (staging copies)"))?;
        self.poll(f)
    }

    /// Counters.
    pub fn stats(&mut self) -> StagerStats {
        self.drain();
        let mut s = self.stats.clone();
        s.free = self.free.len() as u32;
        s.in_flight = self.inflight.len() as u32;
        (s.gated, s.parked) = self.gate.gated();
        s.waiting = self.gate.waiting();
        s.rejected = self.shared.recycler.slots().rejected();
        s
    }
}

impl<S> Drop for Stager<S> {
    fn drop(&mut self) {
        if self.inflight.is_empty() {
            return;
        }
        // The copy engine may still read the sources: wait before letting them go.
        if let Err(e) = self.stream.synchronize() {
            tracing::error!(error = ?e, in_flight = self.inflight.len(),
                "cannot wait for staging copies: their host buffers are leaked, not reused");
            for f in self.inflight.drain(..) {
                std::mem::forget(f.src);
            }
        }
    }
}
