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

mod lease;
pub mod metrics;
pub mod provider;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use gdrx_ring::{RejectCounts, ReturnError, SlotCounts, SlotState};
pub use lease::{Lease, RawLease, RawReturnError, Returner, Unreadable};

use gdrx_ring::RecycleConsumer;
use lease::{Layout, RegionEntry, Shared};

use gdrx_verbs::{
    Access, Cq, Device, DmabufSupport, Error, Pd, PostError, QueuePair, RecvBatch, Result, Srq,
    WcError, WorkCompletion,
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

/// Pool configuration.
#[derive(Debug, Clone)]
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
pub struct Pool {
    shared: Arc<Shared>,
    consumer: RecycleConsumer,
    cq: Arc<Cq>,
    provider: Arc<dyn Provider>,
    header_provider: Option<Arc<dyn Provider>>,
    check: ProviderCheck,
    dmabuf: DmabufSupport,
    access: Access,
    policy: RegistrationPolicy,
    max_regions: u32,
    depth: u32,
    low_watermark: u32,
    post_batch: u32,
    poll_batch: usize,
    regions: u32,
    carved: u32,
    free: Vec<u32>,
    posted: u32,
    lent: u32,
    batch: RecvBatch,
    wcs: Vec<WorkCompletion>,
    exhausted: bool,
    /// The QP's receive queue flushed (QP in the error state): stop posting.
    flushed: bool,
    grow_error: Option<String>,
    stats: PoolStats,
    metrics: metrics::PollerMetrics,
    closed: bool,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.name)
            .field("provider", &self.shared.provider)
            .field("carved", &self.carved)
            .field("posted", &self.posted)
            .field("lent", &self.lent)
            .field("free", &self.free.len())
            .finish()
    }
}

impl Pool {
    /// Builds a pool feeding `srq`, whose completions arrive on `cq` (the receive CQ of every QP
    /// on the SRQ; it must carry nothing else). Checks the provider and the configuration before
    /// anything is allocated, allocates and registers `initial_regions`, and posts `depth`
    /// receives.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a configuration the SRQ or device cannot take;
    /// [`Error::ProviderUnusable`] when the provider's check fails;
    /// [`Error::UnreadableMemory`] for device memory without `allow_unreadable`;
    /// [`Error::Alloc`] / [`Error::Registration`] / [`Error::MemoryLock`] when memory cannot be
    /// allocated or registered; [`Error::Post`] when the SRQ refuses the receives.
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
    /// As [`Pool::new`]; [`Error::InvalidConfig`] when the QP takes its receives from an SRQ.
    pub fn for_qp(
        qp: &Arc<QueuePair>,
        cq: &Arc<Cq>,
        provider: Arc<dyn Provider>,
        cfg: PoolConfig,
    ) -> Result<Pool> {
        if qp.srq().is_some() {
            return Err(Error::InvalidConfig(
                "the QP takes its receives from an SRQ: build the pool on the SRQ (Pool::new)"
                    .into(),
            ));
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
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if cfg.slot_size == 0 || cfg.slots_per_region == 0 {
            return bad("slot_size and slots_per_region must be at least 1".into());
        }
        if cfg.initial_regions == 0 || cfg.initial_regions > cfg.max_regions {
            return bad(format!(
                "initial_regions {} must be 1..=max_regions ({})",
                cfg.initial_regions, cfg.max_regions
            ));
        }
        let max_slots = cfg
            .slots_per_region
            .checked_mul(cfg.max_regions)
            .filter(|&n| n <= 1 << 30)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "{} regions x {} slots is more than 2^30 slots",
                    cfg.max_regions, cfg.slots_per_region
                ))
            })?;
        (cfg.slot_size as usize)
            .checked_mul(cfg.slots_per_region as usize)
            .ok_or_else(|| Error::InvalidConfig("region size overflows".into()))?;
        if !cfg.access.contains(Access::LOCAL_WRITE) {
            return bad("receive memory needs LOCAL_WRITE access".into());
        }
        let sges = if cfg.header_split.is_some() { 2 } else { 1 };
        if queue.max_sge() < sges {
            return bad(format!(
                "header split needs 2 SGEs per receive but the {} was created with max_sge {}",
                queue.what(),
                queue.max_sge()
            ));
        }
        if let Some(h) = &cfg.header_split {
            if h.bytes == 0 {
                return bad("header split with 0 header bytes".into());
            }
        }
        let depth = match cfg.depth {
            0 => max_slots.min(queue.max_wr()),
            d => d,
        };
        if depth > queue.max_wr() || depth > max_slots {
            return bad(format!(
                "depth {depth} exceeds the {} depth ({}) or the pool's slots ({max_slots})",
                queue.what(),
                queue.max_wr()
            ));
        }
        let low_watermark = match cfg.low_watermark {
            0 => (depth * 3 / 4).max(1),
            w if w <= depth => w,
            w => return bad(format!("low_watermark {w} above depth {depth}")),
        };
        if cfg.post_batch == 0 || cfg.poll_batch == 0 {
            return bad("post_batch and poll_batch must be at least 1".into());
        }

        // Capability before anything is allocated or posted.
        let check = provider.check(&device);
        if !check.is_usable() {
            return Err(Error::ProviderUnusable {
                provider: provider.name().to_owned(),
                device: device.name().to_owned(),
                blockers: check.blockers,
            });
        }
        if let Some(h) = &cfg.header_split {
            let hc = h.provider.check(&device);
            if !hc.is_usable() {
                return Err(Error::ProviderUnusable {
                    provider: h.provider.name().to_owned(),
                    device: device.name().to_owned(),
                    blockers: hc.blockers,
                });
            }
        }
        let dmabuf = queue.pd().probe_dmabuf();
        if cfg.registration == RegistrationPolicy::RequireDmabuf && !dmabuf.is_supported() {
            return Err(Error::Registration {
                provider: provider.name().to_owned(),
                device: device.name().to_owned(),
                attempts: vec![format!("dma-buf required, but the device's is {dmabuf}")],
            });
        }

        let (pm, rm) = metrics::register(&cfg.name, provider.name());
        let layout = Layout {
            slot_size: cfg.slot_size,
            slots_per_region: cfg.slots_per_region,
            header_bytes: cfg.header_split.as_ref().map_or(0, |h| h.bytes),
        };
        let shared = Arc::new(Shared::new(
            cfg.name.clone(),
            provider.name().to_owned(),
            provider.kind(),
            true,
            layout,
            max_slots,
            cfg.max_regions,
            queue,
            rm,
        ));
        let consumer = shared
            .recycler
            .consumer()
            .expect("a fresh recycler has no consumer yet");
        let post_batch = cfg.post_batch.min(depth);
        let mut pool = Pool {
            consumer,
            cq: Arc::clone(cq),
            provider,
            header_provider: cfg.header_split.as_ref().map(|h| Arc::clone(&h.provider)),
            check,
            dmabuf,
            access: cfg.access,
            policy: cfg.registration,
            max_regions: cfg.max_regions,
            depth,
            low_watermark,
            post_batch,
            poll_batch: cfg.poll_batch as usize,
            regions: 0,
            carved: 0,
            free: Vec::with_capacity(max_slots as usize),
            posted: 0,
            lent: 0,
            batch: RecvBatch::with_capacity(post_batch as usize, (post_batch * sges) as usize),
            wcs: WorkCompletion::buffer(cfg.poll_batch as usize),
            exhausted: false,
            flushed: false,
            grow_error: None,
            stats: PoolStats::default(),
            metrics: pm,
            closed: false,
            shared,
        };
        // Readability is only known once a region exists: check the first before posting.
        let first = pool.alloc_region()?;
        if !first.0.desc().cpu_readable && !cfg.allow_unreadable {
            return Err(Error::UnreadableMemory {
                provider: pool.provider.name().to_owned(),
                kind: pool.provider.kind(),
            });
        }
        Arc::get_mut(&mut pool.shared)
            .expect("nothing else holds the pool's shared state yet")
            .readable = first.0.desc().cpu_readable;
        pool.install_region(first)?;
        for _ in 1..cfg.initial_regions {
            let r = pool.alloc_region()?;
            pool.install_region(r)?;
        }
        pool.refill(true)?;
        tracing::info!("{}", pool.report());
        Ok(pool)
    }

    fn device(&self) -> &Arc<Device> {
        self.shared.queue.pd().device()
    }

    /// Allocates (and checks) one payload region and its header region; registers nothing yet.
    #[allow(clippy::type_complexity)]
    fn alloc_region(&self) -> Result<(Arc<dyn Region>, Option<Arc<dyn Region>>)> {
        let l = self.shared.layout;
        let len = l.slot_size as usize * l.slots_per_region as usize;
        let r = self.provider.alloc(len)?;
        if r.desc().len < len {
            return Err(Error::Alloc {
                provider: self.provider.name().to_owned(),
                len,
                what: format!("the provider returned only {} bytes", r.desc().len),
                hint: "a provider bug: regions must be at least the size asked for".into(),
                source: None,
            });
        }
        let h = match &self.header_provider {
            None => None,
            Some(hp) => {
                let hlen = l.header_bytes as usize * l.slots_per_region as usize;
                let h = hp.alloc(hlen)?;
                if !h.desc().cpu_readable || h.desc().addr.is_none() || h.desc().len < hlen {
                    return Err(Error::InvalidConfig(format!(
                        "header provider `{}` must hand out CPU-readable memory of at least \
                         {hlen} bytes",
                        hp.name()
                    )));
                }
                Some(h)
            }
        };
        Ok((r, h))
    }

    /// Registers a region (and its header region) and adds its slots to the free list.
    fn install_region(&mut self, (r, h): (Arc<dyn Region>, Option<Arc<dyn Region>>)) -> Result<()> {
        let l = self.shared.layout;
        let idx = self.regions as usize;
        let entry = self.register(r, l.slot_size as usize * l.slots_per_region as usize)?;
        let hentry = match h {
            None => None,
            Some(h) => Some(self.register_address(
                h,
                l.header_bytes as usize * l.slots_per_region as usize,
                None,
                Vec::new(),
            )?),
        };
        if self.shared.regions[idx].set(entry).is_err() {
            unreachable!("region {idx} installed twice");
        }
        if let Some(he) = hentry {
            if self.shared.headers[idx].set(he).is_err() {
                unreachable!("header region {idx} installed twice");
            }
        }
        let first = self.carved;
        self.carved += l.slots_per_region;
        // Push in reverse so the free list hands slots out in ascending order.
        self.free.extend((first..self.carved).rev());
        self.regions += 1;
        self.stats.regions = self.regions;
        self.metrics.regions.set(self.regions as f64);
        Ok(())
    }

    fn register(&self, r: Arc<dyn Region>, len: usize) -> Result<RegionEntry> {
        let mut attempts = Vec::new();
        if self.policy != RegistrationPolicy::AddressOnly {
            match r.dmabuf() {
                // Plain memory: the address is its only path, not a fallback.
                None if self.policy == RegistrationPolicy::PreferDmabuf => {}
                None => attempts.push("the region has no dma-buf".to_owned()),
                Some(_) if !self.dmabuf.is_supported() => attempts.push(format!(
                    "the device's dma-buf MR support is {}",
                    self.dmabuf
                )),
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
                        Err(e) => attempts.push(format!("ibv_reg_dmabuf_mr failed: {e}")),
                    }
                }
            }
            if self.policy == RegistrationPolicy::RequireDmabuf {
                return Err(Error::Registration {
                    provider: self.provider.name().to_owned(),
                    device: self.device().name().to_owned(),
                    attempts,
                });
            }
        }
        let why = (!attempts.is_empty()).then(|| attempts.join("; "));
        self.register_address(r, len, why, attempts)
    }

    fn register_address(
        &self,
        r: Arc<dyn Region>,
        len: usize,
        why: Option<String>,
        mut attempts: Vec<String>,
    ) -> Result<RegionEntry> {
        let Some(addr) = r.desc().addr else {
            attempts.push("the region has no address ibv_reg_mr can register".into());
            return Err(Error::Registration {
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
            Err(e @ Error::MemoryLock { .. }) => Err(e),
            Err(e) if attempts.is_empty() => Err(e),
            Err(e) => {
                attempts.push(format!("ibv_reg_mr failed: {e}"));
                Err(Error::Registration {
                    provider: self.provider.name().to_owned(),
                    device: self.device().name().to_owned(),
                    attempts,
                })
            }
        }
    }

    /// Posts receives from the free list until `depth` are posted, if fewer than the low
    /// watermark are (or always with `force`). Grows by one region when the free list is empty.
    fn refill(&mut self, force: bool) -> Result<()> {
        if self.flushed || (!force && self.posted >= self.low_watermark) {
            return Ok(());
        }
        if self.free.is_empty()
            && self.regions < self.max_regions
            && self.grow_error.is_none()
            && self.posted < self.low_watermark
        {
            if let Err(e) = self.alloc_region().and_then(|r| self.install_region(r)) {
                tracing::error!(pool = %self.shared.name, error = %e, "pool cannot grow");
                self.grow_error = Some(e.to_string());
                self.stats.grow_error = self.grow_error.clone();
                return Err(e);
            }
        }
        let l = self.shared.layout;
        while self.posted < self.depth && !self.free.is_empty() {
            self.batch.clear();
            let want = (self.depth - self.posted).min(self.post_batch);
            while (self.batch.len() as u32) < want {
                let Some(slot) = self.free.pop() else { break };
                let spr = l.slots_per_region;
                let region = (slot / spr) as usize;
                let idx = (slot % spr) as usize;
                let r = self.shared.regions[region]
                    .get()
                    .expect("carved slot has a region");
                let payload =
                    r.mr.sge(idx * l.slot_size as usize, l.slot_size as usize)
                        .expect("slot inside its MR");
                if let Err(e) = self.shared.recycler.slots().mark_posted(slot) {
                    tracing::error!(pool = %self.shared.name, error = %e, "slot not free; skipped");
                    continue;
                }
                let pushed = match self.shared.headers[region].get() {
                    None => self.batch.push(u64::from(slot), &[payload]),
                    Some(h) => {
                        let hb = l.header_bytes as usize;
                        let hs = h.mr.sge(idx * hb, hb).expect("header inside its MR");
                        self.batch.push(u64::from(slot), &[hs, payload])
                    }
                };
                pushed.expect("the batch holds post_batch work requests");
            }
            let n = self.batch.len();
            if n == 0 {
                break;
            }
            // SAFETY: every SGE lies in an MR of this pool whose memory lives as long as the
            // shared state (which outlives the SRQ's use of it: see `Shared`); each slot was
            // just moved Free -> Posted, so no lease or other post refers to it until its
            // completion is polled.
            let r = unsafe { self.shared.queue.post(&mut self.batch) };
            let posted = match r {
                Ok(()) => n,
                Err(e) => e.posted,
            };
            self.posted += posted as u32;
            self.stats.post_calls += 1;
            self.stats.posted_wrs += posted as u64;
            self.stats.max_post_batch = self.stats.max_post_batch.max(posted as u32);
            self.metrics.refill_batch.record(posted as f64);
            if let Err(e) = r {
                // The refused tail goes back to the free list.
                for i in e.posted..n {
                    let slot = self.batch.wr_id(i) as u32;
                    if self.shared.recycler.slots().unpost(slot).is_ok() {
                        self.free.push(slot);
                    }
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    fn drain_returns(&mut self) -> usize {
        let free = &mut self.free;
        let n = self.consumer.drain(usize::MAX, |slot| free.push(slot));
        if n > 0 {
            self.lent -= n as u32;
            self.stats.recycles += n as u64;
            self.metrics.recycles.increment(n as u64);
            self.exhausted = false;
        }
        n
    }

    /// Drains returned slots, refills, and polls up to `poll_batch` completions, handing each
    /// to `f`; returns how many completions were polled. Never blocks; allocates only when the
    /// pool grows by a region.
    ///
    /// # Errors
    /// A CQ error, a refused post, or a failed region allocation when growing (reported once;
    /// the pool goes on with the slots it has).
    pub fn poll(&mut self, f: &mut impl FnMut(RecvEvent)) -> Result<usize> {
        self.drain_returns();
        self.refill(false)?;
        let n = self.cq.poll(&mut self.wcs[..self.poll_batch])?;
        for i in 0..n {
            let wc = self.wcs[i];
            self.complete(&wc, f);
        }
        if n > 0 {
            // Leases the handler dropped are back already: only slots still out count as lent.
            self.drain_returns();
            self.refill(false)?;
        }
        if self.posted == 0 && self.free.is_empty() && !self.exhausted && !self.flushed {
            let can_grow = self.regions < self.max_regions && self.grow_error.is_none();
            if !can_grow {
                self.exhausted = true;
                self.stats.empty_events += 1;
                self.metrics.empty_events.increment(1);
                f(RecvEvent::Exhausted { lent: self.lent });
            }
        }
        self.metrics.free.set(self.free.len() as f64);
        self.metrics.posted.set(self.posted as f64);
        self.metrics.lent.set(self.lent as f64);
        Ok(n)
    }

    fn complete(&mut self, wc: &WorkCompletion, f: &mut impl FnMut(RecvEvent)) {
        let slot = wc.wr_id();
        if slot >= u64::from(self.carved) {
            tracing::error!(pool = %self.shared.name, wr_id = slot, "completion for a work request this pool did not post (is the CQ shared?)");
            return;
        }
        let slot = slot as u32;
        self.posted -= 1;
        let slots = self.shared.recycler.slots();
        if let Err(e) = wc.result() {
            if e.status == gdrx_verbs::WcStatus::WrFlush {
                // Only a QP's own receive queue flushes (SRQ receives are not flushed): the QP
                // is in the error state, so posting more would only flush them again.
                self.flushed = true;
            }
            self.stats.completion_errors += 1;
            self.metrics.completion_errors.increment(1);
            if slots.unpost(slot).is_ok() {
                self.free.push(slot);
            }
            f(RecvEvent::Failed(e));
            return;
        }
        self.shared.clear_raw(slot);
        let gen = match slots.lend(slot) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(pool = %self.shared.name, error = %e, "completion for a slot that was not posted");
                return;
            }
        };
        self.lent += 1;
        let len = wc.byte_len();
        self.stats.completions += 1;
        self.stats.bytes += u64::from(len);
        self.metrics.completions.increment(1);
        self.metrics.bytes.increment(u64::from(len));
        f(RecvEvent::Message(Lease::new(
            Arc::clone(&self.shared),
            slot,
            gen,
            len,
            wc.imm(),
            wc.qp_num(),
            wc.src_qp(),
        )));
    }

    /// Like [`Pool::poll`], but waits up to `timeout` (forever for `None`) for at least one
    /// completion: on the CQ's completion channel in event mode, spinning otherwise. While every
    /// slot is lent it waits for returns instead (checking the ring with a short back-off).
    /// Returns 0 when the timeout passes.
    ///
    /// # Errors
    /// As [`Pool::poll`], [`Cq::arm`] and [`Cq::wait_event`].
    pub fn poll_blocking(
        &mut self,
        f: &mut impl FnMut(RecvEvent),
        timeout: Option<Duration>,
    ) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut backoff = Duration::from_micros(20);
        loop {
            let n = self.poll(f)?;
            if n > 0 {
                return Ok(n);
            }
            let left = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Ok(0),
                },
                None => None,
            };
            if self.posted == 0 {
                // Nothing can complete until leases come back: wait for returns.
                let nap = left.map_or(backoff, |l| l.min(backoff));
                std::thread::sleep(nap);
                backoff = (backoff * 2).min(Duration::from_millis(1));
                continue;
            }
            backoff = Duration::from_micros(20);
            if self.cq.is_event_mode() {
                self.cq.arm()?;
                let n = self.poll(f)?;
                if n > 0 {
                    return Ok(n);
                }
                // Wake up now and then to repost returned slots while leases are out.
                let cap = if self.lent > 0 {
                    Duration::from_millis(1)
                } else {
                    Duration::from_millis(100)
                };
                self.cq.wait_event(Some(left.map_or(cap, |l| l.min(cap))))?;
            } else {
                std::hint::spin_loop();
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
        self.posted
    }

    /// Slots lent right now (poller view: includes returned slots not drained yet).
    pub fn lent(&self) -> u32 {
        self.lent
    }

    /// Free slots (not posted, not lent).
    pub fn free(&self) -> u32 {
        self.free.len() as u32
    }

    /// Slots carved so far.
    pub fn carved(&self) -> u32 {
        self.carved
    }

    /// Counters, with a scan of the slot table (not for the data path).
    pub fn stats(&self) -> PoolStats {
        let mut s = self.stats.clone();
        s.carved = self.carved;
        s.slots = self.slot_counts();
        s.rejected = self.shared.recycler.slots().rejected();
        s.held_by_lease = self.shared.held_by_lease();
        s
    }

    fn slot_counts(&self) -> SlotCounts {
        let mut c = self.shared.recycler.slots().counts();
        // Slots past the carved ones exist in the table but belong to no region yet.
        c.free -= self.shared.recycler.slots().len() - self.carved;
        c
    }

    /// Which provider, memory and registration paths are in effect.
    pub fn report(&self) -> PoolReport {
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
            provider: self.provider.name().to_owned(),
            kind: self.provider.kind(),
            check: self.check.clone(),
            dmabuf: self.dmabuf.clone(),
            slot_size: self.shared.layout.slot_size,
            slots: (self.carved, self.shared.recycler.slots().len()),
            depth: (self.depth, self.low_watermark),
            regions,
            headers,
        }
    }

    fn teardown(&mut self) -> TeardownReport {
        self.closed = true;
        self.drain_returns();
        let c = self.slot_counts();
        TeardownReport {
            name: self.shared.name.clone(),
            carved: self.carved,
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
