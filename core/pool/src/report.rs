//! What a pool reports: its set-up, its counters, and what was out at teardown.

use std::fmt;

use gdrx_ring::{RejectCounts, SlotCounts};
use gdrx_verbs::DmabufSupport;

use crate::{MemoryKind, ProviderCheck, RegistrationPath};

/// One region as registered.
#[derive(Debug, Clone)]
pub struct RegionReport {
    /// Bytes.
    pub len: usize,
    /// Registration path.
    pub path: RegistrationPath,
    /// Page size backing it.
    pub page_size: usize,
    /// How the provider obtained it.
    pub origin: String,
    /// NUMA node, when known.
    pub numa_node: Option<u32>,
    /// Device the memory lives on, when device memory.
    pub device: Option<String>,
    /// CPU-readable.
    pub cpu_readable: bool,
}

/// Which provider and registration paths are in effect (after setup).
#[derive(Debug, Clone)]
pub struct PoolReport {
    /// Pool name.
    pub name: String,
    /// RDMA device.
    pub device: String,
    /// Provider name.
    pub provider: String,
    /// Memory kind.
    pub kind: MemoryKind,
    /// The provider's capability check.
    pub check: ProviderCheck,
    /// The device's dma-buf support, as probed.
    pub dmabuf: DmabufSupport,
    /// Bytes per payload slot.
    pub slot_size: u32,
    /// Slots carved so far, and the most the pool may grow to.
    pub slots: (u32, u32),
    /// Receives kept posted, and the refill watermark.
    pub depth: (u32, u32),
    /// Payload regions.
    pub regions: Vec<RegionReport>,
    /// Header regions (header split), with the header size.
    pub headers: Option<(u32, Vec<RegionReport>)>,
}

impl fmt::Display for PoolReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pool `{}` on {}: provider `{}` ({} memory), {} of at most {} slots of {} B, depth {} \
             (refill below {})",
            self.name,
            self.device,
            self.provider,
            self.kind,
            self.slots.0,
            self.slots.1,
            self.slot_size,
            self.depth.0,
            self.depth.1
        )?;
        writeln!(f, "  provider check: {}", self.check)?;
        writeln!(f, "  device dma-buf MRs: {}", self.dmabuf)?;
        for (i, r) in self.regions.iter().enumerate() {
            writeln!(
                f,
                "  region {i}: {} B, {} B pages, {}, registered by {}; {}",
                r.len,
                r.page_size,
                if r.cpu_readable {
                    "CPU-readable"
                } else {
                    "NOT CPU-readable"
                },
                r.path,
                r.origin
            )?;
        }
        if let Some((bytes, hs)) = &self.headers {
            for (i, r) in hs.iter().enumerate() {
                writeln!(
                    f,
                    "  header region {i}: {bytes} B per slot, registered by {}; {}",
                    r.path, r.origin
                )?;
            }
        }
        Ok(())
    }
}

/// Counters of a pool (poller-side counters plus a scan of the slot table).
#[derive(Debug, Clone, Default)]
pub struct PoolStats {
    /// Successful receive completions.
    pub completions: u64,
    /// Receive completions with an error status.
    pub completion_errors: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Slots returned and drained by the poller.
    pub recycles: u64,
    /// Post calls and the work requests they posted.
    pub post_calls: u64,
    /// Work requests posted.
    pub posted_wrs: u64,
    /// Largest post batch.
    pub max_post_batch: u32,
    /// Times the pool ran out of slots ([`RecvEvent::Exhausted`](crate::RecvEvent::Exhausted)).
    pub empty_events: u64,
    /// Completions for work requests the pool did not post (something else shares the CQ).
    pub foreign_completions: u64,
    /// Completions for slots that were not posted (a duplicate completion; never expected).
    pub unposted_completions: u64,
    /// Regions allocated.
    pub regions: u32,
    /// Slots carved.
    pub carved: u32,
    /// Slot states (over the carved slots).
    pub slots: SlotCounts,
    /// Rejected returns by reason.
    pub rejected: RejectCounts,
    /// Raw returns rejected because a live `Lease` holds the pair.
    pub held_by_lease: u64,
    /// Times a return woke the poller through its eventfd doorbell (it sleeps on it while
    /// every slot is lent).
    pub doorbell_rings: u64,
    /// Why the pool stopped growing, when a region allocation failed.
    pub grow_error: Option<String>,
}

/// What was still out when the pool was closed.
#[derive(Debug, Clone)]
pub struct TeardownReport {
    /// Pool name.
    pub name: String,
    /// Slots carved.
    pub carved: u32,
    /// Slots still lent (leases or raw pairs alive); their memory stays valid until returned.
    pub lent: u32,
    /// Slots returned but not drained yet.
    pub returned: u32,
    /// Receives still posted; discarded with the SRQ.
    pub posted: u32,
    /// Free slots.
    pub free: u32,
    /// True when something else (a QP, the caller) still holds the receive queue, so it
    /// outlives the pool.
    pub queue_shared: bool,
    /// Rejected returns over the pool's life.
    pub rejected: RejectCounts,
}

impl fmt::Display for TeardownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pool `{}` closed: {} slots; {} still lent (memory kept until they are returned), {} \
             returned, {} posted receives discarded with the receive queue{}, {} free; {} rejected returns",
            self.name,
            self.carved,
            self.lent,
            self.returned,
            self.posted,
            if self.queue_shared {
                " (the receive queue is still held elsewhere: messages arriving there fail once \
                 the last lease is gone and the MRs are deregistered)"
            } else {
                ""
            },
            self.free,
            self.rejected.total()
        )
    }
}
