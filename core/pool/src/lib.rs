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
//!
//! ## Examples
//! [`examples/receiver.rs`](https://github.com/gdrx/gdrx/blob/main/examples/receiver.rs) runs a
//! pool through gdrx-core's `Receiver`; the rxe suite runs it against a real sender.

mod batch;
mod config;
mod error;
mod exec;
mod lease;
pub mod metrics;
pub mod provider;
mod report;
pub mod state;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use batch::{Batch, Outbox};
pub use config::{HeaderSplit, PoolConfig, RegistrationPath, RegistrationPolicy};
pub use exec::RecvQueue;
pub use gdrx_ring::{RejectCounts, ReturnError, SlotCounts, SlotState};
pub use lease::{Lease, MessageMeta, RawLease, RawReturnError, Returner, Unreadable};
pub use report::{PoolReport, PoolStats, RegionReport, TeardownReport};

use exec::{alloc_region, Exec};
use gdrx_ring::{RecycleConsumer, Recycler};
use lease::{Layout, RegionEntry, Shared};
use state::{Geometry, Outcome, PoolState, QueueLimits, RefillError, Verdict};

pub use error::{AllocError, Attempt, PoolError, Result};
pub use state::ConfigError;

use gdrx_verbs::{
    wait_for, Cq, Device, Doorbell, QueuePair, RecvBatch, Srq, Waiter, WcError, WorkCompletion,
};

pub use provider::{DmabufView, MemoryKind, Provider, ProviderCheck, Region, RegionDesc};

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
    /// What the current poll hands out, and an error that came after it.
    out: Outbox<RecvEvent, PoolError>,
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
    /// registered; [`PoolError::Verbs`] for the verbs' own failures ([`Error::MemoryLock`](gdrx_verbs::Error::MemoryLock) when
    /// pinning hits `RLIMIT_MEMLOCK`, [`Error::Post`](gdrx_verbs::Error::Post) when the SRQ refuses the receives).
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
            out: Outbox::with_capacity(geo.poll_batch as usize + 1),
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
        self.gather()?;
        Ok(self.out.batch())
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
        self.out.take_deferred()?;
        let mut w = PoolWaiter {
            pool: self,
            backoff: MIN_RETURN_BACKOFF,
        };
        let r = wait_for(&mut w, timeout);
        self.out.settle(r)?;
        Ok(self.out.batch())
    }

    /// Polls like [`Pool::poll`] but keeps what it found for the next [`Pool::take`] (or
    /// `poll`), and returns how many events wait there: for a caller that decides what to do
    /// before it borrows a batch (the `Receiver` of gdrx-core).
    ///
    /// # Errors
    /// As [`Pool::poll`] (an error after events is returned by the next call).
    pub fn gather(&mut self) -> Result<usize> {
        self.out.take_deferred()?;
        let r = self.poll_into();
        self.out.settle(r)
    }

    /// Hands out what [`Pool::gather`] collected (an empty batch when nothing waits).
    pub fn take(&mut self) -> Batch<'_, RecvEvent> {
        self.out.batch()
    }

    /// One non-blocking poll into `self.out`; returns the events added.
    fn poll_into(&mut self) -> Result<usize> {
        let before = self.out.len();
        self.drain_returns();
        self.refill(false)?;
        if let Some(lent) = self.state.check_exhausted() {
            self.exec.metrics.empty_events.increment(1);
            self.out.push(RecvEvent::Exhausted { lent });
        }
        let n = self.cq.poll(&mut self.wcs)?;
        let (mut msgs, mut bytes) = (0u64, 0u64);
        for i in 0..n {
            let wc = self.wcs[i];
            if let Some(len) = self.complete(&wc) {
                msgs += 1;
                bytes += u64::from(len);
            }
        }
        if msgs > 0 {
            // Once per polled batch, not per message.
            self.exec.metrics.completions.increment(msgs);
            self.exec.metrics.bytes.increment(bytes);
        }
        if n > 0 {
            // Failed receives freed their slots: keep the queue fed.
            self.refill(false)?;
        }
        let m = &self.exec.metrics;
        m.free.set(f64::from(self.state.free()));
        m.posted.set(f64::from(self.state.posted()));
        m.lent.set(f64::from(self.state.lent()));
        Ok(self.out.len() - before)
    }

    /// Handles one completion; returns the bytes of a message lent to the consumer.
    fn complete(&mut self, wc: &WorkCompletion) -> Option<u32> {
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
                let meta = MessageMeta {
                    len,
                    imm: wc.imm(),
                    qp_num: wc.qp_num(),
                    src_qp: wc.src_qp(),
                };
                self.out.push(RecvEvent::Message(Lease::new(
                    Arc::clone(&self.shared),
                    slot,
                    gen,
                    meta,
                )));
                return Some(len);
            }
            (Verdict::Failed, Err(e)) => {
                self.exec.metrics.completion_errors.increment(1);
                self.out.push(RecvEvent::Failed(e));
            }
            (Verdict::Failed, Ok(())) => unreachable!("a successful completion never fails"),
            (Verdict::Foreign, _) => {
                tracing::error!(pool = %self.shared.name, wr_id = wc.wr_id(), "completion for a work request this pool did not post (is the CQ shared?)");
            }
            (Verdict::NotPosted, _) => {
                tracing::error!(pool = %self.shared.name, wr_id = wc.wr_id(), "completion for a slot that was not posted");
            }
        }
        None
    }

    /// Drains returned slots and posts every free one now, instead of waiting for the low
    /// watermark (for a caller that needs the receives posted: credits granted from them).
    ///
    /// # Errors
    /// As [`Pool::poll`]'s refill: a refused post, a failed growth.
    pub fn top_up(&mut self) -> Result<()> {
        self.drain_returns();
        self.refill(true)
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
            doorbell_rings: self.shared.doorbell.as_ref().map_or(0, Doorbell::rings),
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
            // The pool is borrowed to poll below: hold the doorbell through its own Arc.
            let shared = Arc::clone(&pool.shared);
            if let Some(bell) = &shared.doorbell {
                // Arm, then look once more: a lease returned before arming is in the ring.
                bell.arm();
                let n = pool.poll_into()?;
                if n > 0 || pool.state.posted() > 0 {
                    bell.disarm();
                    return Ok(n);
                }
                // Bounded: a ring can be missed (see `Doorbell`), which costs at most this.
                let cap = Duration::from_millis(1);
                bell.wait(left.map_or(cap, |l| l.min(cap)))?;
                return Ok(0);
            }
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

// The pool moves to its poller thread; leases and returners go anywhere.
const _: () = {
    const fn send<T: Send>() {}
    const fn send_sync<T: Send + Sync>() {}
    send::<Pool>();
    send_sync::<Lease>();
    send_sync::<Returner>();
};
