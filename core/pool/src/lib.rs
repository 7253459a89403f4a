//! # gdrx-pool
//!
//! The receive buffer pool of gdrx, one layer above the verbs (`gdrx-verbs`): the memory
//! provider traits ([`Provider`], [`Region`]), the [`Pool`] that keeps an SRQ (or one QP's
//! receive queue) fed from a provider's memory, the [`Lease`]s it lends, and the validated
//! returns of `gdrx-ring`. No verbs crate depends on it.
//!
//! The receive buffer pool: keeps an SRQ fed from a memory [`Provider`], lends each completed
//! buffer to the consumer as a [`Lease`], and takes it back through the lock-free recycle ring
//! of [`gdrx_ring`].
//!
//! ## How it works
//! - The pool allocates regions from its provider (`slot_size x slots_per_region` bytes each,
//!   growing one region at a time up to `max_regions`), registers each region once (one MR per
//!   region: dma-buf first where the region and NIC allow it, else its address, and it says which
//!   in [`PoolReport`]), and carves it into fixed-size slots.
//! - It keeps `depth` receives posted, refilling in chained batches of up to `post_batch` work
//!   requests once fewer than `low_watermark` are posted. Each work request's `wr_id` is its
//!   slot; with header split it carries two SGEs: `header_bytes` from a CPU-readable header
//!   region, then the payload slot.
//! - [`Pool::poll`] (the poller, one thread) drains returned slots from the recycle ring,
//!   refills, polls the CQ and turns each completion into a [`RecvEvent`]: a [`Lease`] for a
//!   message, the typed error for a failed completion, and [`RecvEvent::Exhausted`] when every
//!   slot is lent out and nothing is left to post (the senders then see RNR NAKs and retry; with
//!   the RNR retry count of 7, "forever", nothing is lost).
//! - Each slot has a state (free, posted, lent, returned) and a generation in the ring crate's
//!   [`gdrx_ring::SlotTable`]; a lease is `(slot, generation)`, so a stale or duplicate return is
//!   recognised, rejected, counted and never reposted.
//!
//! ## Teardown
//! [`Pool::close`] (or drop) reports what was still out ([`TeardownReport`]). Leases keep the
//! memory (and the MRs) alive: a lease dropped after its pool is gone is still valid, and its
//! return is simply discarded. Receives still posted are discarded with the SRQ (see
//! `gdrx_verbs::srq`); the SRQ is destroyed before the MRs its receives point into.

mod batch;
mod error;
mod lease;
pub mod metrics;
pub mod provider;
pub mod state;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use batch::Batch;
pub use gdrx_ring::{RejectCounts, ReturnError, SlotCounts, SlotState};
pub use lease::{Lease, MessageMeta, RawLease, RawReturnError, Returner, Unreadable};

use gdrx_ring::{RecycleConsumer, Recycler};
use lease::{Layout, RegionEntry, Shared};
use state::{
    Geometry, Outcome, Placement, PoolState, QueueLimits, RecvTarget, RefillError, Shape, Verdict,
};

pub use error::{AllocError, Attempt, PoolError, Result};
pub use state::ConfigError;

use gdrx_verbs::{
    wait_for, Access, Cq, Device, DmabufSupport, Error, Pd, PostError, QueuePair, RecvBatch, Srq,
    Waiter, WcError, WorkCompletion,
};

pub use provider::{DmabufView, MemoryKind, Provider, ProviderCheck, Region, RegionDesc};

/// The receive queue a pool keeps filled: an SRQ (any number of QPs) or one QP's own receive
/// queue.
#[derive(Debug, Clone)]
pub enum RecvQueue {
    /// A shared receive queue.
    Srq(Arc<Srq>),
    /// The receive queue of one QP (created without an SRQ).
    Qp(Arc<QueuePair>),
}

impl RecvQueue {
    fn pd(&self) -> &Arc<Pd> {
        match self {
            RecvQueue::Srq(s) => s.pd(),
            RecvQueue::Qp(q) => q.pd(),
        }
    }

    fn max_wr(&self) -> u32 {
        match self {
            RecvQueue::Srq(s) => s.max_wr(),
            RecvQueue::Qp(q) => q.caps().max_recv_wr,
        }
    }

    fn max_sge(&self) -> u32 {
        match self {
            RecvQueue::Srq(s) => s.max_sge(),
            RecvQueue::Qp(q) => q.caps().max_recv_sge,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            RecvQueue::Srq(_) => "SRQ",
            RecvQueue::Qp(_) => "QP receive queue",
        }
    }

    /// True when something besides the pool holds the queue.
    fn is_shared(&self) -> bool {
        match self {
            RecvQueue::Srq(s) => Arc::strong_count(s) > 1,
            RecvQueue::Qp(q) => Arc::strong_count(q) > 1,
        }
    }

    /// # Safety
    /// As [`Srq::post_recv`].
    unsafe fn post(&self, batch: &mut RecvBatch) -> Result<(), PostError> {
        match self {
            // SAFETY: forwarded from the caller.
            RecvQueue::Srq(s) => unsafe { s.post_recv(batch) },
            // SAFETY: forwarded from the caller.
            RecvQueue::Qp(q) => unsafe { q.post_recv(batch) },
        }
    }
}

/// Which registration paths the pool may use for its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegistrationPolicy {
    /// dma-buf (`ibv_reg_dmabuf_mr`) when the region has one and the NIC supports it, else the
    /// region's address (`ibv_reg_mr`); a fallback is reported with its reason.
    #[default]
    PreferDmabuf,
    /// dma-buf only: building the pool fails when it is not possible.
    RequireDmabuf,
    /// The region's address only (`ibv_reg_mr`).
    AddressOnly,
}

/// How a region was registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationPath {
    /// `ibv_reg_dmabuf_mr` on the region's dma-buf.
    Dmabuf,
    /// `ibv_reg_mr` on the region's address.
    Address {
        /// Why dma-buf was not used, when it was considered.
        fallback_from_dmabuf: Option<String>,
    },
}

impl RegistrationPath {
    /// Short name: `dmabuf` or `address`.
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationPath::Dmabuf => "dmabuf",
            RegistrationPath::Address { .. } => "address",
        }
    }
}

impl fmt::Display for RegistrationPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistrationPath::Dmabuf => f.write_str("dma-buf (ibv_reg_dmabuf_mr)"),
            RegistrationPath::Address {
                fallback_from_dmabuf: None,
            } => f.write_str("address (ibv_reg_mr)"),
            RegistrationPath::Address {
                fallback_from_dmabuf: Some(why),
            } => write!(f, "address (ibv_reg_mr), fallback from dma-buf: {why}"),
        }
    }
}

/// Header split: every receive scatters its first `bytes` bytes into a CPU-readable header slot
/// from `provider` and the rest into the payload slot (two SGEs), like devmem TCP's header split.
#[derive(Debug, Clone)]
pub struct HeaderSplit {
    /// Header bytes per receive.
    pub bytes: u32,
    /// Where header memory comes from; it must be CPU-readable.
    pub provider: Arc<dyn Provider>,
}

/// Pool configuration: [`PoolConfig::default`] and the setters, e.g.
/// `PoolConfig::default().slot_size(16384).slots_per_region(256).max_regions(4)`. Every value
/// is checked when the pool is built ([`ConfigError`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Name, used in reports and as the `pool` metric label.
    pub name: String,
    /// Bytes per payload slot: the largest payload accepted (with header split, the largest
    /// message is `header.bytes + slot_size`).
    pub slot_size: u32,
    /// Slots per region (one allocation and one MR).
    pub slots_per_region: u32,
    /// Regions allocated when the pool is built.
    pub initial_regions: u32,
    /// Regions the pool may grow to when it runs short of slots.
    pub max_regions: u32,
    /// Receives kept posted; 0 means every slot, up to the SRQ's depth.
    pub depth: u32,
    /// Refill once fewer than this many receives are posted; 0 means `depth * 3 / 4`.
    pub low_watermark: u32,
    /// Most work requests per post call.
    pub post_batch: u32,
    /// Most completions taken per CQ poll.
    pub poll_batch: u32,
    /// Accept memory the CPU cannot read (device memory). Leases then refuse
    /// [`Lease::payload`]; consumers read on the device.
    pub allow_unreadable: bool,
    /// Header split, off by default.
    pub header_split: Option<HeaderSplit>,
    /// MR access flags; must include LOCAL_WRITE.
    pub access: Access,
    /// Registration paths allowed.
    pub registration: RegistrationPolicy,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            name: "gdrx".into(),
            slot_size: 8192,
            slots_per_region: 1024,
            initial_regions: 1,
            max_regions: 1,
            depth: 0,
            low_watermark: 0,
            post_batch: 64,
            poll_batch: 64,
            allow_unreadable: false,
            header_split: None,
            access: Access::recv(),
            registration: RegistrationPolicy::PreferDmabuf,
        }
    }
}

/// What [`Pool::poll`] hands the consumer.
#[derive(Debug)]
pub enum RecvEvent {
    /// A message: the received buffer, lent until the lease is dropped.
    Message(Lease),
    /// A receive completed with an error (its slot went back to the pool).
    Failed(WcError),
    /// Every slot is lent out and nothing is posted: senders see RNR NAKs until leases come
    /// back. Reported once per episode.
    Exhausted {
        /// Slots lent out (or returned but not yet drained).
        lent: u32,
    },
}

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
    /// Times the pool ran out of slots ([`RecvEvent::Exhausted`]).
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

/// The receive buffer pool. It is `Send` (it can move to the poller thread) but used from one
/// thread; leases and [`Returner`]s work from any thread.
///
/// The decisions (what to post, when to grow, what a completion means) are
/// [`state::PoolState`]'s; the pool executes them on the verbs objects.
pub struct Pool {
    shared: Arc<Shared>,
    consumer: RecycleConsumer,
    cq: Arc<Cq>,
    check: ProviderCheck,
    state: PoolState,
    exec: Exec,
    wcs: Vec<WorkCompletion>,
    /// What the current poll hands out.
    events: Vec<RecvEvent>,
    /// An error that came after messages were polled, returned by the next poll.
    deferred: Option<PoolError>,
    grow_error: Option<String>,
    closed: bool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("provider", &self.shared.provider)
            .field("carved", &self.state.carved())
            .field("posted", &self.state.posted())
            .field("lent", &self.state.lent())
            .field("free", &self.state.free())
            .finish()
    }
}

/// One payload region and, with header split, its header region: allocated, not yet
/// registered.
struct RegionPair {
    payload: Arc<dyn Region>,
    header: Option<Arc<dyn Region>>,
}

/// The verbs side of the pool: builds SGEs, posts, allocates and registers regions. It is the
/// [`RecvTarget`] the state machine drives.
struct Exec {
    shared: Arc<Shared>,
    provider: Arc<dyn Provider>,
    header_provider: Option<Arc<dyn Provider>>,
    dmabuf: DmabufSupport,
    access: Access,
    policy: RegistrationPolicy,
    geo: Geometry,
    batch: RecvBatch,
    /// The first region, allocated before the pool exists to check its readability.
    pending: Option<RegionPair>,
    metrics: metrics::PollerMetrics,
}

impl RecvTarget for Exec {
    type Error = PoolError;

    fn stage(&mut self, at: Placement) {
        let r = self.shared.regions[at.region as usize]
            .get()
            .expect("carved slot has a region");
        let payload =
            r.mr.sge(at.payload.0, at.payload.1 as usize)
                .expect("slot inside its MR");
        let pushed = match at.header {
            None => self.batch.push(u64::from(at.slot), &[payload]),
            Some((off, len)) => {
                let h = self.shared.headers[at.region as usize]
                    .get()
                    .expect("header split slot has a header region");
                let hs = h.mr.sge(off, len as usize).expect("header inside its MR");
                self.batch.push(u64::from(at.slot), &[hs, payload])
            }
        };
        pushed.expect("the batch holds post_batch work requests");
    }

    fn post(&mut self) -> std::result::Result<(), (usize, PoolError)> {
        let n = self.batch.len();
        // SAFETY: every SGE lies in an MR of this pool whose memory lives as long as the
        // shared state (which outlives the queue's use of it: see `Shared`); the state machine
        // moved each staged slot Free -> Posted, so no lease or other post refers to it until
        // its completion is polled.
        let r = unsafe { self.shared.queue.post(&mut self.batch) };
        self.batch.clear();
        let accepted = r.as_ref().map_or_else(|e| e.posted, |()| n);
        self.metrics.refill_batch.record(accepted as f64);
        r.map_err(|e| (e.posted, PoolError::from(e)))
    }

    fn grow(&mut self, index: u32) -> Result<()> {
        let pair = match self.pending.take() {
            Some(p) => p,
            None => alloc_region(&*self.provider, self.header_provider.as_deref(), &self.geo)?,
        };
        self.install_region(index as usize, pair)?;
        self.metrics.regions.set(f64::from(index + 1));
        Ok(())
    }

    fn lending(&mut self, slot: u32) {
        self.shared.clear_raw(slot);
    }
}

impl Exec {
    fn device(&self) -> &Arc<Device> {
        self.shared.queue.pd().device()
    }

    /// Registers a region (and its header region) as region `idx`.
    fn install_region(&mut self, idx: usize, pair: RegionPair) -> Result<()> {
        let entry = self.register(pair.payload, self.geo.region_len())?;
        let hentry = match pair.header {
            None => None,
            Some(h) => {
                Some(self.register_address(h, self.geo.header_region_len(), None, Vec::new())?)
            }
        };
        if self.shared.regions[idx].set(entry).is_err() {
            unreachable!("region {idx} installed twice");
        }
        if let Some(he) = hentry {
            if self.shared.headers[idx].set(he).is_err() {
                unreachable!("header region {idx} installed twice");
            }
        }
        Ok(())
    }

    fn register(&self, r: Arc<dyn Region>, len: usize) -> Result<RegionEntry> {
        let mut attempts = Vec::new();
        if self.policy != RegistrationPolicy::AddressOnly {
            match r.dmabuf() {
                // Plain memory: the address is its only path, not a fallback.
                None if self.policy == RegistrationPolicy::PreferDmabuf => {}
                None => attempts.push(Attempt::NoDmabuf),
                Some(_) if !self.dmabuf.is_supported() => {
                    attempts.push(Attempt::DeviceLacksDmabuf(self.dmabuf.clone()));
                }
                Some(v) => {
                    // SAFETY: the region keeps the dma-buf alive and the entry keeps the region
                    // until after the MR is gone; no Rust reference into the memory exists while
                    // a slot is posted (the slot table guarantees it).
                    let mr = unsafe {
                        self.shared.queue.pd().register_dmabuf(
                            v.fd,
                            v.offset,
                            len,
                            v.iova,
                            self.access,
                            None,
                        )
                    };
                    match mr {
                        Ok(mr) => {
                            let cpu = cpu_addr(&*r);
                            return Ok(RegionEntry {
                                mr,
                                region: r,
                                cpu,
                                path: RegistrationPath::Dmabuf,
                            });
                        }
                        Err(e) => attempts.push(Attempt::DmabufFailed(e)),
                    }
                }
            }
            if self.policy == RegistrationPolicy::RequireDmabuf {
                return Err(PoolError::Registration {
                    provider: self.provider.name().to_owned(),
                    device: self.device().name().to_owned(),
                    attempts,
                });
            }
        }
        let why = (!attempts.is_empty()).then(|| {
            let v: Vec<String> = attempts.iter().map(ToString::to_string).collect();
            v.join("; ")
        });
        self.register_address(r, len, why, attempts)
    }

    fn register_address(
        &self,
        r: Arc<dyn Region>,
        len: usize,
        why: Option<String>,
        mut attempts: Vec<Attempt>,
    ) -> Result<RegionEntry> {
        let Some(addr) = r.desc().addr else {
            attempts.push(Attempt::NoAddress);
            return Err(PoolError::Registration {
                provider: self.provider.name().to_owned(),
                device: self.device().name().to_owned(),
                attempts,
            });
        };
        // SAFETY: the Provider contract: `addr` maps `desc().len >= len` bytes that stay mapped
        // while the region lives, and the entry keeps the region alive until the MR is gone.
        let mr = unsafe {
            self.shared
                .queue
                .pd()
                .register_raw(addr.as_ptr(), len, self.access, None)
        };
        match mr {
            Ok(mr) => {
                if let Some(w) = &why {
                    tracing::info!(pool = %self.shared.name, "registered by address: {w}");
                }
                let cpu = cpu_addr(&*r);
                Ok(RegionEntry {
                    mr,
                    region: r,
                    cpu,
                    path: RegistrationPath::Address {
                        fallback_from_dmabuf: why,
                    },
                })
            }
            Err(e @ Error::MemoryLock { .. }) => Err(e.into()),
            Err(e) if attempts.is_empty() => Err(e.into()),
            Err(e) => {
                attempts.push(Attempt::AddressFailed(e));
                Err(PoolError::Registration {
                    provider: self.provider.name().to_owned(),
                    device: self.device().name().to_owned(),
                    attempts,
                })
            }
        }
    }
}

/// Allocates (and checks) one payload region and its header region; registers nothing yet.
fn alloc_region(
    provider: &dyn Provider,
    header_provider: Option<&dyn Provider>,
    geo: &Geometry,
) -> Result<RegionPair> {
    let len = geo.region_len();
    let payload = provider.alloc(len)?;
    if payload.desc().len < len {
        return Err(AllocError {
            provider: provider.name().to_owned(),
            len,
            what: format!("the provider returned only {} bytes", payload.desc().len),
            hint: "a provider bug: regions must be at least the size asked for".into(),
            source: None,
        }
        .into());
    }
    let header = match header_provider {
        None => None,
        Some(hp) => {
            let hlen = geo.header_region_len();
            let h = hp.alloc(hlen)?;
            if !h.desc().cpu_readable || h.desc().addr.is_none() || h.desc().len < hlen {
                return Err(ConfigError::HeaderMemory {
                    provider: hp.name().to_owned(),
                    bytes: hlen,
                }
                .into());
            }
            Some(h)
        }
    };
    Ok(RegionPair { payload, header })
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, $name: $ty) -> Self {
                self.$name = $name;
                self
            }
        )*
    };
}

impl PoolConfig {
    /// The defaults under the name `name` (reports and the `pool` metric label).
    pub fn named(name: impl Into<String>) -> PoolConfig {
        PoolConfig {
            name: name.into(),
            ..PoolConfig::default()
        }
    }

    setters! {
        /// Bytes per payload slot.
        slot_size: u32;
        /// Slots per region (one allocation and one MR).
        slots_per_region: u32;
        /// Regions allocated when the pool is built.
        initial_regions: u32;
        /// Regions the pool may grow to.
        max_regions: u32;
        /// Receives kept posted (0: every slot, up to the queue's depth).
        depth: u32;
        /// Refill below this many posted (0: `depth * 3 / 4`).
        low_watermark: u32;
        /// Most work requests per post call.
        post_batch: u32;
        /// Most completions per CQ poll.
        poll_batch: u32;
        /// Accept memory the CPU cannot read.
        allow_unreadable: bool;
        /// MR access flags (must include LOCAL_WRITE).
        access: Access;
        /// Registration paths allowed.
        registration: RegistrationPolicy;
    }

    /// Header split: the first `bytes` of every receive land in CPU-readable memory from
    /// `provider`.
    #[must_use]
    pub fn header_split(mut self, bytes: u32, provider: Arc<dyn Provider>) -> Self {
        self.header_split = Some(HeaderSplit { bytes, provider });
        self
    }

    fn shape(&self) -> Shape {
        Shape {
            slot_size: self.slot_size,
            slots_per_region: self.slots_per_region,
            initial_regions: self.initial_regions,
            max_regions: self.max_regions,
            depth: self.depth,
            low_watermark: self.low_watermark,
            post_batch: self.post_batch,
            poll_batch: self.poll_batch,
            header_bytes: self.header_split.as_ref().map(|h| h.bytes),
            access: self.access,
        }
    }
}

impl Pool {
    /// Builds a pool feeding `srq`, whose completions arrive on `cq` (the receive CQ of every QP
    /// on the SRQ; it must carry nothing else). Checks the provider and the configuration before
    /// anything is allocated, allocates and registers `initial_regions`, and posts `depth`
    /// receives.
    ///
    /// # Errors
    /// [`PoolError::Config`] for a configuration the SRQ or device cannot take;
    /// [`PoolError::ProviderUnusable`] when the provider's check fails;
    /// [`PoolError::DmabufRequired`] when dma-buf registration is required but missing;
    /// [`PoolError::UnreadableMemory`] for device memory without `allow_unreadable`;
    /// [`PoolError::Alloc`] / [`PoolError::Registration`] when memory cannot be allocated or
    /// registered; [`PoolError::Verbs`] for the verbs' own failures ([`Error::MemoryLock`] when
    /// pinning hits `RLIMIT_MEMLOCK`, [`Error::Post`] when the SRQ refuses the receives).
    pub fn new(
        srq: &Arc<Srq>,
        cq: &Arc<Cq>,
        provider: Arc<dyn Provider>,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        Pool::build(RecvQueue::Srq(Arc::clone(srq)), cq, provider, cfg)
    }

    /// Builds a pool feeding the receive queue of one QP (created without an SRQ, e.g. through
    /// `gdrx_verbs::Connection::shared_qp`); `cq` is that QP's receive CQ. When the QP goes to the
    /// error state its posted receives complete with `WrFlush`: the pool hands those over as
    /// [`RecvEvent::Failed`] and stops posting.
    ///
    /// # Errors
    /// As [`Pool::new`]; [`ConfigError::QpOnSrq`] when the QP takes its receives from an SRQ.
    pub fn for_qp(
        qp: &Arc<QueuePair>,
        cq: &Arc<Cq>,
        provider: Arc<dyn Provider>,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        if qp.srq().is_some() {
            return Err(ConfigError::QpOnSrq.into());
        }
        Pool::build(RecvQueue::Qp(Arc::clone(qp)), cq, provider, cfg)
    }

    fn build(
        queue: RecvQueue,
        cq: &Arc<Cq>,
        provider: Arc<dyn Provider>,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        let device = Arc::clone(queue.pd().device());
        let limits = QueueLimits {
            max_wr: queue.max_wr(),
            max_sge: queue.max_sge(),
            what: queue.what(),
        };
        let geo = Geometry::new(&cfg.shape(), limits)?;

        // Capability before anything is allocated or posted.
        let check = provider.check(&device);
        if !check.is_usable() {
            return Err(PoolError::ProviderUnusable {
                provider: provider.name().to_owned(),
                device: device.name().to_owned(),
                blockers: check.blockers,
            });
        }
        let header_provider = cfg.header_split.as_ref().map(|h| Arc::clone(&h.provider));
        if let Some(hp) = &header_provider {
            let hc = hp.check(&device);
            if !hc.is_usable() {
                return Err(PoolError::ProviderUnusable {
                    provider: hp.name().to_owned(),
                    device: device.name().to_owned(),
                    blockers: hc.blockers,
                });
            }
        }
        let dmabuf = queue.pd().probe_dmabuf();
        if cfg.registration == RegistrationPolicy::RequireDmabuf && !dmabuf.is_supported() {
            return Err(PoolError::DmabufRequired {
                provider: provider.name().to_owned(),
                device: device.name().to_owned(),
                support: dmabuf,
            });
        }

        // Readability is only known once a region exists: check the first before posting.
        let first = alloc_region(&*provider, header_provider.as_deref(), &geo)?;
        let readable = first.payload.desc().cpu_readable;
        if !readable && !cfg.allow_unreadable {
            return Err(PoolError::UnreadableMemory {
                provider: provider.name().to_owned(),
                kind: provider.kind(),
            });
        }

        let (pm, rm) = metrics::register(&cfg.name, provider.name());
        let layout = Layout {
            slot_size: geo.slot_size,
            slots_per_region: geo.slots_per_region,
            header_bytes: geo.header_bytes,
        };
        let (recycler, consumer) = Recycler::new(geo.max_slots);
        let shared = Arc::new(Shared::new(
            cfg.name.clone(),
            provider.name().to_owned(),
            provider.kind(),
            readable,
            layout,
            recycler,
            geo.max_regions,
            queue,
            rm,
        ));
        let exec = Exec {
            shared: Arc::clone(&shared),
            provider,
            header_provider,
            dmabuf,
            access: cfg.access,
            policy: cfg.registration,
            geo,
            batch: RecvBatch::with_capacity(
                geo.post_batch as usize,
                (geo.post_batch * geo.sges()) as usize,
            ),
            pending: Some(first),
            metrics: pm,
        };
        let mut pool = Pool {
            shared,
            consumer,
            cq: Arc::clone(cq),
            check,
            state: PoolState::new(geo),
            exec,
            wcs: WorkCompletion::buffer(geo.poll_batch as usize),
            events: Vec::with_capacity(geo.poll_batch as usize + 1),
            deferred: None,
            grow_error: None,
            closed: false,
        };
        for _ in 0..geo.initial_regions {
            pool.state.grow(&mut pool.exec)?;
        }
        pool.refill(true)?;
        tracing::info!("{}", pool.report());
        Ok(pool)
    }

    fn device(&self) -> &Arc<Device> {
        self.exec.device()
    }

    /// Executes the state machine's refill; a failed growth is logged and kept for the stats.
    fn refill(&mut self, force: bool) -> Result<()> {
        match self
            .state
            .refill(self.shared.recycler.slots(), &mut self.exec, force)
        {
            Ok(_) => Ok(()),
            Err(RefillError::Grow(e)) => {
                tracing::error!(pool = %self.shared.name, error = %e, "pool cannot grow");
                self.grow_error = Some(e.to_string());
                Err(e)
            }
            Err(RefillError::Post(e)) => Err(e),
        }
    }

    fn drain_returns(&mut self) -> u32 {
        let n = self.state.drain(&mut self.consumer);
        if n > 0 {
            self.exec.metrics.recycles.increment(u64::from(n));
        }
        n
    }

    /// Drains returned slots, refills, and polls up to `poll_batch` completions; returns them
    /// as a [`Batch`] of events (empty when nothing arrived). Never blocks; allocates only when
    /// the pool grows by a region.
    ///
    /// An exhausted episode ([`RecvEvent::Exhausted`]) is reported once returns have been
    /// drained, so leases the consumer dropped after the previous batch never count as held.
    ///
    /// # Errors
    /// A CQ error, a refused post, or a failed region allocation when growing (reported once;
    /// the pool goes on with the slots it has). When the error comes after messages were
    /// polled, those messages are returned first and the error by the next call.
    pub fn poll(&mut self) -> Result<Batch<'_, RecvEvent>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let r = self.poll_into();
        self.finish(r)
    }

    /// Blocking poll (one meaning across gdrx, see [`gdrx_verbs::wait`]): like
    /// [`Pool::poll`], but waits up to `timeout` (forever for `None`) until the batch holds at
    /// least one event; an empty batch means the timeout passed. It sleeps on the CQ's
    /// completion channel in event mode and spins otherwise; while every slot is lent it waits
    /// for returns instead (checking the ring with a short back-off).
    ///
    /// # Errors
    /// As [`Pool::poll`], [`Cq::arm`] and [`Cq::wait_event`].
    pub fn poll_blocking(&mut self, timeout: Option<Duration>) -> Result<Batch<'_, RecvEvent>> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        let mut w = PoolWaiter {
            pool: self,
            backoff: MIN_RETURN_BACKOFF,
        };
        let r = wait_for(&mut w, timeout);
        self.finish(r)
    }

    /// Polls like [`Pool::poll`] but keeps what it found for the next [`Pool::take`] (or
    /// `poll`), and returns how many events wait there: for a caller that decides what to do
    /// before it borrows a batch (the `Receiver` of gdrx-core).
    ///
    /// # Errors
    /// As [`Pool::poll`] (an error after events is returned by the next call).
    pub fn gather(&mut self) -> Result<usize> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        match self.poll_into() {
            Ok(_) => Ok(self.events.len()),
            Err(e) if self.events.is_empty() => Err(e),
            Err(e) => {
                self.deferred = Some(e);
                Ok(self.events.len())
            }
        }
    }

    /// Hands out what [`Pool::gather`] collected (an empty batch when nothing waits).
    pub fn take(&mut self) -> Batch<'_, RecvEvent> {
        Batch::drain(&mut self.events)
    }

    /// The batch of what was polled; an error after events is kept for the next call, so no
    /// message is dropped on the way.
    fn finish(&mut self, r: Result<usize>) -> Result<Batch<'_, RecvEvent>> {
        if let Err(e) = r {
            if self.events.is_empty() {
                return Err(e);
            }
            self.deferred = Some(e);
        }
        Ok(Batch::drain(&mut self.events))
    }

    /// One non-blocking poll into `self.events`; returns the events added.
    fn poll_into(&mut self) -> Result<usize> {
        let before = self.events.len();
        self.drain_returns();
        self.refill(false)?;
        if let Some(lent) = self.state.check_exhausted() {
            self.exec.metrics.empty_events.increment(1);
            self.events.push(RecvEvent::Exhausted { lent });
        }
        let n = self.cq.poll(&mut self.wcs)?;
        for i in 0..n {
            let wc = self.wcs[i];
            self.complete(&wc);
        }
        if n > 0 {
            // Failed receives freed their slots: keep the queue fed.
            self.refill(false)?;
        }
        let m = &self.exec.metrics;
        m.free.set(f64::from(self.state.free()));
        m.posted.set(f64::from(self.state.posted()));
        m.lent.set(f64::from(self.state.lent()));
        Ok(self.events.len() - before)
    }

    fn complete(&mut self, wc: &WorkCompletion) {
        let result = wc.result();
        let outcome = match &result {
            Ok(()) => Outcome::Received { len: wc.byte_len() },
            Err(e) => Outcome::Failed {
                flush: e.status == gdrx_verbs::WcStatus::WrFlush,
            },
        };
        let slots = self.shared.recycler.slots();
        match (
            self.state
                .complete(slots, &mut self.exec, wc.wr_id(), outcome),
            result,
        ) {
            (Verdict::Lend { slot, gen }, _) => {
                let len = wc.byte_len();
                self.exec.metrics.completions.increment(1);
                self.exec.metrics.bytes.increment(u64::from(len));
                let meta = MessageMeta {
                    len,
                    imm: wc.imm(),
                    qp_num: wc.qp_num(),
                    src_qp: wc.src_qp(),
                };
                self.events.push(RecvEvent::Message(Lease::new(
                    Arc::clone(&self.shared),
                    slot,
                    gen,
                    meta,
                )));
            }
            (Verdict::Failed, Err(e)) => {
                self.exec.metrics.completion_errors.increment(1);
                self.events.push(RecvEvent::Failed(e));
            }
            (Verdict::Failed, Ok(())) => unreachable!("a successful completion never fails"),
            (Verdict::Foreign, _) => {
                tracing::error!(pool = %self.shared.name, wr_id = wc.wr_id(), "completion for a work request this pool did not post (is the CQ shared?)");
            }
            (Verdict::NotPosted, _) => {
                tracing::error!(pool = %self.shared.name, wr_id = wc.wr_id(), "completion for a slot that was not posted");
            }
        }
    }

    /// A handle for raw returns (see [`Returner`]).
    pub fn returner(&self) -> Returner {
        Returner(Arc::clone(&self.shared))
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Receives posted right now (poller view).
    pub fn posted(&self) -> u32 {
        self.state.posted()
    }

    /// Slots lent right now (poller view: includes returned slots not drained yet).
    pub fn lent(&self) -> u32 {
        self.state.lent()
    }

    /// Free slots (not posted, not lent).
    pub fn free(&self) -> u32 {
        self.state.free()
    }

    /// Slots carved so far.
    pub fn carved(&self) -> u32 {
        self.state.carved()
    }

    /// Counters, with a scan of the slot table (not for the data path).
    pub fn stats(&self) -> PoolStats {
        let c = self.state.counters();
        let slots = self.shared.recycler.slots();
        PoolStats {
            completions: c.completions,
            completion_errors: c.completion_errors,
            bytes: c.bytes,
            recycles: c.recycles,
            post_calls: c.post_calls,
            posted_wrs: c.posted_wrs,
            max_post_batch: c.max_post_batch,
            empty_events: c.empty_events,
            foreign_completions: c.foreign,
            unposted_completions: c.not_posted,
            regions: self.state.regions(),
            carved: self.state.carved(),
            slots: self.state.slot_counts(slots),
            rejected: slots.rejected(),
            held_by_lease: self.shared.held_by_lease(),
            grow_error: self.grow_error.clone(),
        }
    }

    /// Which provider, memory and registration paths are in effect.
    pub fn report(&self) -> PoolReport {
        let g = self.state.geometry();
        let rep = |e: &RegionEntry| {
            let d = e.region.desc();
            RegionReport {
                len: d.len,
                path: e.path.clone(),
                page_size: d.page_size,
                origin: d.origin.clone(),
                numa_node: d.numa_node,
                device: d.device.clone(),
                cpu_readable: d.cpu_readable,
            }
        };
        let regions = self
            .shared
            .regions
            .iter()
            .filter_map(|r| r.get().map(rep))
            .collect();
        let headers = (self.shared.layout.header_bytes > 0).then(|| {
            (
                self.shared.layout.header_bytes,
                self.shared
                    .headers
                    .iter()
                    .filter_map(|r| r.get().map(rep))
                    .collect(),
            )
        });
        PoolReport {
            name: self.shared.name.clone(),
            device: self.device().name().to_owned(),
            provider: self.exec.provider.name().to_owned(),
            kind: self.exec.provider.kind(),
            check: self.check.clone(),
            dmabuf: self.exec.dmabuf.clone(),
            slot_size: self.shared.layout.slot_size,
            slots: (self.state.carved(), self.shared.recycler.slots().len()),
            depth: (g.depth, g.low_watermark),
            regions,
            headers,
        }
    }

    fn teardown(&mut self) -> TeardownReport {
        self.closed = true;
        let c = self
            .state
            .teardown(self.shared.recycler.slots(), &mut self.consumer);
        TeardownReport {
            name: self.shared.name.clone(),
            carved: self.state.carved(),
            lent: c.lent,
            returned: c.returned,
            posted: c.posted,
            free: c.free,
            queue_shared: self.shared.queue.is_shared(),
            rejected: self.shared.recycler.slots().rejected(),
        }
    }

    /// Closes the pool and reports what was still out. Lent slots stay valid until their
    /// leases are dropped; posted receives are discarded with the SRQ.
    pub fn close(mut self) -> TeardownReport {
        self.teardown()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.closed {
            let r = self.teardown();
            if r.lent > 0 {
                tracing::warn!("{r}");
            } else {
                tracing::info!("{r}");
            }
        }
    }
}

/// First back-off while waiting for returns with every slot lent.
const MIN_RETURN_BACKOFF: Duration = Duration::from_micros(20);

/// [`Pool::poll_blocking`]'s way of waiting between polls.
struct PoolWaiter<'a> {
    pool: &'a mut Pool,
    backoff: Duration,
}

impl Waiter for PoolWaiter<'_> {
    type Error = PoolError;

    fn attempt(&mut self) -> Result<usize> {
        self.pool.poll_into()
    }

    fn wait(&mut self, left: Option<Duration>) -> Result<usize> {
        let pool = &mut *self.pool;
        if pool.state.posted() == 0 {
            // Nothing can complete until leases come back: wait for returns.
            let nap = left.map_or(self.backoff, |l| l.min(self.backoff));
            std::thread::sleep(nap);
            self.backoff = (self.backoff * 2).min(Duration::from_millis(1));
            return Ok(0);
        }
        self.backoff = MIN_RETURN_BACKOFF;
        if !pool.cq.is_event_mode() {
            std::hint::spin_loop();
            return Ok(0);
        }
        pool.cq.arm()?;
        let n = pool.poll_into()?;
        if n > 0 {
            return Ok(n);
        }
        // Wake up now and then to repost returned slots while leases are out.
        let cap = if pool.state.lent() > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        };
        pool.cq.wait_event(Some(left.map_or(cap, |l| l.min(cap))))?;
        Ok(0)
    }
}

fn cpu_addr(r: &dyn Region) -> usize {
    let d = r.desc();
    match (d.cpu_readable, d.addr) {
        (true, Some(a)) => a.as_ptr() as usize,
        _ => 0,
    }
}

// The pool moves to its poller thread; leases and returners go anywhere.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Pool>();
    send_sync::<Lease>();
    send_sync::<Returner>();
};
