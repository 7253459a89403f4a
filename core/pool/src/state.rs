//! The pool's decisions, with no FFI: geometry validated from a [`Shape`], the free list,
//! the posted/lent accounting, when to refill and by how much, when to grow, what a completion
//! means, exhausted episodes, the flushed state and teardown counts.
//!
//! [`PoolState`] decides and drives a [`RecvTarget`] (in the pool, the SRQ or QP and its MRs;
//! in the unit tests below, a fake receive queue) and the ring's [`SlotTable`] itself. The pool
//! in `lib.rs` only executes: it builds SGEs, posts, allocates and registers regions, polls the
//! CQ and wraps what this module lends in a `Lease`.

#![forbid(unsafe_code)]

use gdrx_ring::{RecycleConsumer, SlotCounts, SlotTable};
use gdrx_verbs::Access;

/// Most slots one pool may have (the slot index travels in the low bits of a `wr_id` and of a
/// raw lease).
pub const MAX_SLOTS: u32 = 1 << 30;

/// A configuration the pool refuses, before anything is allocated or posted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `slot_size` is 0.
    #[error("slot_size must be at least 1 byte")]
    ZeroSlotSize,
    /// `slots_per_region` is 0.
    #[error("slots_per_region must be at least 1")]
    ZeroSlotsPerRegion,
    /// `initial_regions` is 0 or above `max_regions`.
    #[error("initial_regions {initial} must be 1..=max_regions ({max})")]
    InitialRegions {
        /// `initial_regions`.
        initial: u32,
        /// `max_regions`.
        max: u32,
    },
    /// `slots_per_region x max_regions` is above [`MAX_SLOTS`].
    #[error("{regions} regions x {slots_per_region} slots is more than 2^30 slots")]
    TooManySlots {
        /// `max_regions`.
        regions: u32,
        /// `slots_per_region`.
        slots_per_region: u32,
    },
    /// `slot_size x slots_per_region` does not fit in the address space.
    #[error("a region of {slots_per_region} slots of {slot_size} bytes overflows")]
    RegionTooLarge {
        /// `slot_size`.
        slot_size: u32,
        /// `slots_per_region`.
        slots_per_region: u32,
    },
    /// The MR access flags lack `LOCAL_WRITE`, so the NIC could not write receives.
    #[error("receive memory needs LOCAL_WRITE access")]
    NoLocalWrite,
    /// Header split needs two SGEs per receive.
    #[error(
        "header split needs 2 SGEs per receive but the {queue} was created with max_sge {max_sge}"
    )]
    HeaderSplitSges {
        /// The receive queue ("SRQ" or "QP receive queue").
        queue: &'static str,
        /// Its `max_sge`.
        max_sge: u32,
    },
    /// Header split with no header bytes.
    #[error("header split with 0 header bytes")]
    ZeroHeaderBytes,
    /// `depth` is above the queue's depth or the pool's slots.
    #[error(
        "depth {depth} exceeds the {queue} depth ({queue_depth}) or the pool's slots ({slots})"
    )]
    Depth {
        /// The depth asked for (or derived).
        depth: u32,
        /// The receive queue.
        queue: &'static str,
        /// Its `max_wr`.
        queue_depth: u32,
        /// `slots_per_region x max_regions`.
        slots: u32,
    },
    /// The queue can hold no receive at all.
    #[error("the {queue} holds no receives (max_wr 0)")]
    EmptyQueue {
        /// The receive queue.
        queue: &'static str,
    },
    /// `low_watermark` above `depth`.
    #[error("low_watermark {watermark} above depth {depth}")]
    Watermark {
        /// `low_watermark`.
        watermark: u32,
        /// The effective depth.
        depth: u32,
    },
    /// `post_batch` is 0.
    #[error("post_batch must be at least 1")]
    ZeroPostBatch,
    /// `poll_batch` is 0.
    #[error("poll_batch must be at least 1")]
    ZeroPollBatch,
    /// `Pool::for_qp` on a QP that takes its receives from an SRQ.
    #[error("the QP takes its receives from an SRQ: build the pool on the SRQ (Pool::new)")]
    QpOnSrq,
    /// The header provider handed out memory the header split cannot use.
    #[error(
        "header provider `{provider}` must hand out CPU-readable memory of at least {bytes} bytes"
    )]
    HeaderMemory {
        /// The header provider's name.
        provider: String,
        /// Bytes per header region.
        bytes: usize,
    },
}

/// What the pool's receive queue can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Receives it holds (`max_wr`).
    pub max_wr: u32,
    /// SGEs per receive (`max_sge`).
    pub max_sge: u32,
    /// What it is, for messages: "SRQ" or "QP receive queue".
    pub what: &'static str,
}

/// The numbers of a `PoolConfig` that shape a pool, before validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Bytes per payload slot.
    pub slot_size: u32,
    /// Slots per region.
    pub slots_per_region: u32,
    /// Regions allocated up front.
    pub initial_regions: u32,
    /// Regions the pool may grow to.
    pub max_regions: u32,
    /// Receives kept posted; 0 means every slot, up to the queue's depth.
    pub depth: u32,
    /// Refill below this many posted; 0 means `depth * 3 / 4`.
    pub low_watermark: u32,
    /// Most work requests per post call.
    pub post_batch: u32,
    /// Most completions per CQ poll.
    pub poll_batch: u32,
    /// Header bytes per receive with header split.
    pub header_bytes: Option<u32>,
    /// MR access flags.
    pub access: Access,
}

/// The validated shape of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per payload slot.
    pub slot_size: u32,
    /// Slots per region.
    pub slots_per_region: u32,
    /// Regions allocated up front.
    pub initial_regions: u32,
    /// Regions the pool may grow to.
    pub max_regions: u32,
    /// `slots_per_region x max_regions`.
    pub max_slots: u32,
    /// Receives kept posted.
    pub depth: u32,
    /// Refill once fewer than this many are posted.
    pub low_watermark: u32,
    /// Most work requests per post call (at most `depth`).
    pub post_batch: u32,
    /// Most completions per CQ poll.
    pub poll_batch: u32,
    /// Header bytes per receive; 0 without header split.
    pub header_bytes: u32,
}

impl Geometry {
    /// Validates `cfg` against the receive queue; every refusal is a typed [`ConfigError`].
    pub fn new(cfg: &Shape, queue: QueueLimits) -> Result<Geometry, ConfigError> {
        if cfg.slot_size == 0 {
            return Err(ConfigError::ZeroSlotSize);
        }
        if cfg.slots_per_region == 0 {
            return Err(ConfigError::ZeroSlotsPerRegion);
        }
        if cfg.initial_regions == 0 || cfg.initial_regions > cfg.max_regions {
            return Err(ConfigError::InitialRegions {
                initial: cfg.initial_regions,
                max: cfg.max_regions,
            });
        }
        let max_slots = cfg
            .slots_per_region
            .checked_mul(cfg.max_regions)
            .filter(|&n| n <= MAX_SLOTS)
            .ok_or(ConfigError::TooManySlots {
                regions: cfg.max_regions,
                slots_per_region: cfg.slots_per_region,
            })?;
        let region_too_large = ConfigError::RegionTooLarge {
            slot_size: cfg.slot_size,
            slots_per_region: cfg.slots_per_region,
        };
        (cfg.slot_size as usize)
            .checked_mul(cfg.slots_per_region as usize)
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or(region_too_large)?;
        if !cfg.access.contains(Access::LOCAL_WRITE) {
            return Err(ConfigError::NoLocalWrite);
        }
        let header_bytes = match cfg.header_bytes {
            None => 0,
            Some(bytes) => {
                if queue.max_sge < 2 {
                    return Err(ConfigError::HeaderSplitSges {
                        queue: queue.what,
                        max_sge: queue.max_sge,
                    });
                }
                if bytes == 0 {
                    return Err(ConfigError::ZeroHeaderBytes);
                }
                bytes
            }
        };
        if queue.max_wr == 0 {
            return Err(ConfigError::EmptyQueue { queue: queue.what });
        }
        let depth = match cfg.depth {
            0 => max_slots.min(queue.max_wr),
            d => d,
        };
        if depth > queue.max_wr || depth > max_slots {
            return Err(ConfigError::Depth {
                depth,
                queue: queue.what,
                queue_depth: queue.max_wr,
                slots: max_slots,
            });
        }
        let low_watermark = match cfg.low_watermark {
            // Refill once a post batch's worth is free (at most a quarter of the depth): a
            // shallower watermark lets many QPs' senders drain an SRQ between refills (an RNR
            // storm), and posts stay batched.
            0 => depth
                .saturating_sub(cfg.post_batch.max(1).min(depth / 4))
                .max(1),
            w if w <= depth => w,
            w => {
                return Err(ConfigError::Watermark {
                    watermark: w,
                    depth,
                })
            }
        };
        if cfg.post_batch == 0 {
            return Err(ConfigError::ZeroPostBatch);
        }
        if cfg.poll_batch == 0 {
            return Err(ConfigError::ZeroPollBatch);
        }
        Ok(Geometry {
            slot_size: cfg.slot_size,
            slots_per_region: cfg.slots_per_region,
            initial_regions: cfg.initial_regions,
            max_regions: cfg.max_regions,
            max_slots,
            depth,
            low_watermark,
            post_batch: cfg.post_batch.min(depth),
            poll_batch: cfg.poll_batch,
            header_bytes,
        })
    }

    /// SGEs per receive: 2 with header split, else 1.
    pub fn sges(&self) -> u32 {
        if self.header_bytes > 0 {
            2
        } else {
            1
        }
    }

    /// Bytes of one payload region.
    pub fn region_len(&self) -> usize {
        self.slot_size as usize * self.slots_per_region as usize
    }

    /// Bytes of one header region (0 without header split).
    pub fn header_region_len(&self) -> usize {
        self.header_bytes as usize * self.slots_per_region as usize
    }

    /// Where `slot`'s receive lands.
    pub fn place(&self, slot: u32) -> Placement {
        let region = slot / self.slots_per_region;
        let idx = (slot % self.slots_per_region) as usize;
        Placement {
            slot,
            region,
            payload: (idx * self.slot_size as usize, self.slot_size),
            header: (self.header_bytes > 0)
                .then(|| (idx * self.header_bytes as usize, self.header_bytes)),
        }
    }
}

/// Where one receive lands: its region and the byte ranges in the payload (and header) region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The slot (the work request's `wr_id`).
    pub slot: u32,
    /// The region it belongs to.
    pub region: u32,
    /// `(offset, len)` in the payload region.
    pub payload: (usize, u32),
    /// `(offset, len)` in the header region, with header split.
    pub header: Option<(usize, u32)>,
}

/// What the state machine drives: a receive queue and the memory behind it.
pub trait RecvTarget {
    /// The executor's error.
    type Error;
    /// Adds one receive to the batch being built.
    fn stage(&mut self, at: Placement);
    /// Posts the staged batch and starts a new one. On a refusal, says how many of the staged
    /// receives (a prefix) were posted.
    fn post(&mut self) -> Result<(), (usize, Self::Error)>;
    /// Allocates and registers region `index`; its slots are carved once this returns `Ok`.
    fn grow(&mut self, index: u32) -> Result<(), Self::Error>;
    /// Called just before a completed slot is lent (the pool clears its raw-return flag).
    fn lending(&mut self, slot: u32) {
        let _ = slot;
    }
}

/// How a receive completed, as the CQ said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Success: `len` bytes arrived.
    Received {
        /// Bytes received.
        len: u32,
    },
    /// An error status; `flush` when it was `WrFlush` (the QP went to the error state).
    Failed {
        /// The status was `WrFlush`.
        flush: bool,
    },
}

/// What a completion means for the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Lend `slot` at generation `gen`.
    Lend {
        /// The slot.
        slot: u32,
        /// Its generation for this lending.
        gen: u32,
    },
    /// The receive failed; its slot went back to the free list.
    Failed,
    /// A `wr_id` this pool never posted (past its carved slots): the CQ carries something else.
    Foreign,
    /// A carved slot that was not posted: the slot table refused to lend it.
    NotPosted,
}

/// Counters kept by the state machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Successful receive completions.
    pub completions: u64,
    /// Receive completions with an error status.
    pub completion_errors: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Slots returned and drained.
    pub recycles: u64,
    /// Post calls.
    pub post_calls: u64,
    /// Work requests posted.
    pub posted_wrs: u64,
    /// Largest accepted post batch.
    pub max_post_batch: u32,
    /// Exhausted episodes.
    pub empty_events: u64,
    /// Completions for work requests the pool did not post.
    pub foreign: u64,
    /// Completions for carved slots that were not posted.
    pub not_posted: u64,
}

/// Why a refill stopped short.
#[derive(Debug, PartialEq, Eq)]
pub enum RefillError<E> {
    /// The pool could not grow; it goes on with the slots it has and will not try again.
    Grow(E),
    /// The queue refused a post; the refused tail is back on the free list.
    Post(E),
}

impl<E> RefillError<E> {
    /// The executor's error.
    pub fn into_inner(self) -> E {
        match self {
            RefillError::Grow(e) | RefillError::Post(e) => e,
        }
    }
}

/// Slot states at teardown, over the carved slots.
pub type TeardownCounts = SlotCounts;

/// The pool's accounting and decisions.
#[derive(Debug)]
pub struct PoolState {
    geo: Geometry,
    regions: u32,
    carved: u32,
    free: Vec<u32>,
    staged: Vec<u32>,
    posted: u32,
    lent: u32,
    exhausted: bool,
    flushed: bool,
    grow_failed: bool,
    closed: bool,
    counters: Counters,
}

impl PoolState {
    /// A pool of `geo` with no region yet.
    pub fn new(geo: Geometry) -> PoolState {
        PoolState {
            geo,
            regions: 0,
            carved: 0,
            free: Vec::with_capacity(geo.max_slots as usize),
            staged: Vec::with_capacity(geo.post_batch as usize),
            posted: 0,
            lent: 0,
            exhausted: false,
            flushed: false,
            grow_failed: false,
            closed: false,
            counters: Counters::default(),
        }
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Regions installed.
    pub fn regions(&self) -> u32 {
        self.regions
    }

    /// Slots carved.
    pub fn carved(&self) -> u32 {
        self.carved
    }

    /// Free slots.
    pub fn free(&self) -> u32 {
        self.free.len() as u32
    }

    /// Receives posted.
    pub fn posted(&self) -> u32 {
        self.posted
    }

    /// Slots lent (including returned ones not drained yet).
    pub fn lent(&self) -> u32 {
        self.lent
    }

    /// The receive queue flushed: nothing more is posted.
    pub fn flushed(&self) -> bool {
        self.flushed
    }

    /// A region allocation failed: the pool stopped growing.
    pub fn grow_failed(&self) -> bool {
        self.grow_failed
    }

    /// Inside an exhausted episode.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn can_grow(&self) -> bool {
        self.regions < self.geo.max_regions && !self.grow_failed && !self.closed
    }

    /// Adds one region through `t` and carves its slots onto the free list (handed out in
    /// ascending order). A failure here is the caller's to report; it does not stop later
    /// growth (see [`PoolState::refill`] for growth on demand).
    pub fn grow<T: RecvTarget>(&mut self, t: &mut T) -> Result<(), T::Error> {
        assert!(self.regions < self.geo.max_regions, "grow past max_regions");
        t.grow(self.regions)?;
        let first = self.carved;
        self.carved += self.geo.slots_per_region;
        self.free.extend((first..self.carved).rev());
        self.regions += 1;
        Ok(())
    }

    /// Posts receives from the free list until `depth` are posted, when fewer than the low
    /// watermark are (or always with `force`). Grows by one region on demand (free list empty,
    /// below the watermark); a failed growth is returned once and never retried. A refused post
    /// puts its tail back on the free list. Returns the work requests posted.
    pub fn refill<T: RecvTarget>(
        &mut self,
        slots: &SlotTable,
        t: &mut T,
        force: bool,
    ) -> Result<u32, RefillError<T::Error>> {
        if self.flushed || self.closed || (!force && self.posted >= self.geo.low_watermark) {
            return Ok(0);
        }
        if self.free.is_empty() && self.can_grow() && self.posted < self.geo.low_watermark {
            if let Err(e) = self.grow(t) {
                self.grow_failed = true;
                return Err(RefillError::Grow(e));
            }
        }
        let mut total = 0;
        while self.posted < self.geo.depth && !self.free.is_empty() {
            self.staged.clear();
            let want = (self.geo.depth - self.posted).min(self.geo.post_batch) as usize;
            while self.staged.len() < want {
                let Some(slot) = self.free.pop() else { break };
                if slots.mark_posted(slot).is_err() {
                    // Not free in the table: never post it twice. The protocol never gets here.
                    continue;
                }
                t.stage(self.geo.place(slot));
                self.staged.push(slot);
            }
            let n = self.staged.len();
            if n == 0 {
                break;
            }
            let r = t.post();
            let accepted = match &r {
                Ok(()) => n,
                Err((k, _)) => (*k).min(n),
            };
            self.posted += accepted as u32;
            total += accepted as u32;
            self.counters.post_calls += 1;
            self.counters.posted_wrs += accepted as u64;
            self.counters.max_post_batch = self.counters.max_post_batch.max(accepted as u32);
            if let Err((_, e)) = r {
                for &slot in &self.staged[accepted..] {
                    if slots.unpost(slot).is_ok() {
                        self.free.push(slot);
                    }
                }
                self.staged.clear();
                return Err(RefillError::Post(e));
            }
        }
        self.staged.clear();
        Ok(total)
    }

    /// Moves returned slots from the ring to the free list; ends an exhausted episode when any
    /// came back. Returns how many.
    pub fn drain(&mut self, consumer: &mut RecycleConsumer) -> u32 {
        let free = &mut self.free;
        let n = consumer.drain(usize::MAX, |slot| free.push(slot)) as u32;
        if n > 0 {
            self.lent -= n.min(self.lent);
            self.counters.recycles += u64::from(n);
            self.exhausted = false;
        }
        n
    }

    /// Decides what the completion of `wr_id` means, moving the slot in `slots`.
    pub fn complete<T: RecvTarget>(
        &mut self,
        slots: &SlotTable,
        t: &mut T,
        wr_id: u64,
        outcome: Outcome,
    ) -> Verdict {
        if wr_id >= u64::from(self.carved) {
            self.counters.foreign += 1;
            return Verdict::Foreign;
        }
        let slot = wr_id as u32;
        match outcome {
            Outcome::Failed { flush } => {
                if slots.unpost(slot).is_err() {
                    self.counters.not_posted += 1;
                    return Verdict::NotPosted;
                }
                self.posted -= 1;
                if flush {
                    // Only a QP's own receive queue flushes (SRQ receives are not flushed): the
                    // QP is in the error state, so posting more would only flush them again.
                    self.flushed = true;
                }
                self.counters.completion_errors += 1;
                self.free.push(slot);
                Verdict::Failed
            }
            Outcome::Received { len } => {
                if !matches!(slots.state(slot), Some((gdrx_ring::SlotState::Posted, _))) {
                    self.counters.not_posted += 1;
                    return Verdict::NotPosted;
                }
                t.lending(slot);
                let Ok(gen) = slots.lend(slot) else {
                    self.counters.not_posted += 1;
                    return Verdict::NotPosted;
                };
                self.posted -= 1;
                self.lent += 1;
                self.counters.completions += 1;
                self.counters.bytes += u64::from(len);
                Verdict::Lend { slot, gen }
            }
        }
    }

    /// Starts an exhausted episode when every slot is lent, nothing is posted or free, and the
    /// pool can neither grow nor is flushed. Returns the slots lent, once per episode; an
    /// episode ends when a slot comes back.
    pub fn check_exhausted(&mut self) -> Option<u32> {
        if self.posted == 0
            && self.free.is_empty()
            && !self.exhausted
            && !self.flushed
            && !self.can_grow()
        {
            self.exhausted = true;
            self.counters.empty_events += 1;
            return Some(self.lent);
        }
        None
    }

    /// Slot states over the carved slots (the table has room for every slot the pool may
    /// grow to).
    pub fn slot_counts(&self, slots: &SlotTable) -> SlotCounts {
        let mut c = slots.counts();
        c.free -= slots.len() - self.carved;
        c
    }

    /// Closes: drains what came back, posts and grows no more, and counts what is still out.
    pub fn teardown(
        &mut self,
        slots: &SlotTable,
        consumer: &mut RecycleConsumer,
    ) -> TeardownCounts {
        self.drain(consumer);
        self.closed = true;
        self.slot_counts(slots)
    }

    /// Closed by [`PoolState::teardown`].
    pub fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests;
