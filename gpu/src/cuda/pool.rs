//! The GPU pool: walks the fallback chain, builds the path it may take, and hands out
//! [`GpuLease`]s whatever the path.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::sys;
use cudarc::driver::CudaEvent;
use gdrx_core::wait::{wait_for, Waiter};
use gdrx_core::{
    Batch, Cq, Lease, Outbox, Pd, Pool, PoolConfig, PoolReport, Provider, QueuePair, RecvEvent,
    RegistrationPolicy, Srq, WcError,
};
use gdrx_providers::HostProvider;

use super::lease::{Gate, GpuLease, Slot};
use super::{check, Gpu, GpuProvider, PinnedHostProvider, StageError, Stager, StagerStats};
use crate::error::{GpuError, Result};
use crate::peermem;
use crate::plan::{GpuInfo, GpuPath, GpuPolicy, PathFacts, PathPlan, Visibility};

/// GPU pool configuration.
#[derive(Debug, Clone)]
pub struct GpuPoolConfig {
    /// How far down the chain the pool may go.
    pub policy: GpuPolicy,
    /// The receive pool's geometry (slot size, slots, depth, batches, header split). The GPU
    /// pool sets `allow_unreadable` and `registration` itself, per path.
    pub pool: PoolConfig,
    /// GPU slots for the staging path; 0 means as many as the host pool can have.
    pub staging_slots: u32,
    /// Where the staging path's host slots come from (pinned on top); `None` means host pages.
    pub staging_host: Option<Arc<dyn Provider>>,
}

impl GpuPoolConfig {
    /// The default policy (allow staging) and staging set-up around `pool`.
    pub fn new(pool: PoolConfig) -> GpuPoolConfig {
        GpuPoolConfig {
            policy: GpuPolicy::default(),
            pool,
            staging_slots: 0,
            staging_host: None,
        }
    }
}

/// What [`GpuPool::poll`] hands the consumer.
#[derive(Debug)]
pub enum GpuEvent {
    /// A message in GPU memory.
    Message(GpuLease),
    /// A receive completed with an error.
    Failed(WcError),
    /// A message arrived in host memory but could not be copied to the GPU: it is lost, and
    /// this says why.
    StagingFailed {
        /// Its length.
        len: usize,
        /// Why.
        error: String,
    },
    /// Every receive slot is lent out (see [`RecvEvent::Exhausted`]).
    Exhausted {
        /// Slots lent out.
        lent: u32,
    },
}

/// Which path is in effect and why, with the receive pool's own report.
#[derive(Debug, Clone)]
pub struct GpuPoolReport {
    /// Pool name.
    pub name: String,
    /// The GPU.
    pub gpu: GpuInfo,
    /// The path taken and the better ones passed over.
    pub plan: PathPlan,
    /// Paths the facts allowed but that failed when built, with the error.
    pub failed: Vec<(GpuPath, String)>,
    /// The visibility rule in effect.
    pub visibility: Visibility,
    /// `cuFlushGPUDirectRDMAWrites` calls made.
    pub flushes: u64,
    /// Returns gated on a consumer's event, how many of them had to wait, and how many wait
    /// now.
    pub gated: (u64, u64, u64),
    /// The receive pool (GPU memory, or the staging path's pinned host memory).
    pub pool: PoolReport,
    /// The staging path's counters.
    pub staging: Option<StagerStats>,
}

impl fmt::Display for GpuPoolReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "GPU pool `{}` into cuda:{} ({}): {}",
            self.name, self.gpu.ordinal, self.gpu.name, self.plan
        )?;
        for (p, e) in &self.failed {
            writeln!(f, "  {} was possible but failed: {e}", p.name())?;
        }
        writeln!(f, "  visibility: {}", self.visibility)?;
        writeln!(
            f,
            "  flushes {}, gated returns {} ({} had to wait, {} waiting now)",
            self.flushes, self.gated.0, self.gated.1, self.gated.2
        )?;
        if let Some(s) = &self.staging {
            writeln!(
                f,
                "  staging: {} GPU slots, {} copies ({} B), {} handed out, {} in flight, {} free, \
                 {} times busy",
                s.slots, s.staged, s.bytes, s.completed, s.in_flight, s.free, s.busy
            )?;
        }
        write!(f, "{}", self.pool)
    }
}

enum Mode {
    Direct(Pool),
    Staging {
        // Field order is drop order: the stager waits for its copies before the host pool goes.
        stager: Box<Stager<Lease>>,
        backlog: VecDeque<Lease>,
        pool: Pool,
    },
}

/// A receive pool whose messages end up in GPU memory, by the best path the policy allows.
pub struct GpuPool {
    mode: Mode,
    gpu: Arc<Gpu>,
    plan: PathPlan,
    failed: Vec<(GpuPath, String)>,
    visibility: Visibility,
    gate: Arc<Gate>,
    scratch: Vec<(Slot, Vec<CudaEvent>)>,
    /// What the receive pool handed out, before the visibility flush.
    recv: Vec<RecvEvent>,
    /// What the current poll hands out, and an error that came after it.
    out: Outbox<GpuEvent, GpuError>,
    flushes: u64,
    flush_counter: metrics::Counter,
}

impl fmt::Debug for GpuPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuPool")
            .field("gpu", &self.gpu.name())
            .field("path", &self.plan.path)
            .finish_non_exhaustive()
    }
}

/// `(name, kind, description)` of the metrics a GPU pool adds to the pool's own (labels `pool`,
/// `gpu`, and `path` on the first).
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "gdrx_gpu_pool_path",
        "gauge",
        "1 for the path the pool's data takes into GPU memory (dmabuf, peermem, staging), 0 for the others",
    ),
    (
        "gdrx_gpu_pool_flushes_total",
        "counter",
        "cuFlushGPUDirectRDMAWrites calls made before handing out a batch",
    ),
];

impl GpuPool {
    /// Builds a GPU pool feeding `srq` (completions on `cq`; see [`Pool::new`]).
    ///
    /// Probes the NIC (dma-buf MR support, kind), the GPU (attribute and a real dma-buf export)
    /// and nvidia-peermem, then tries each path of the chain the policy allows and the facts
    /// permit, in order, until one builds. The path taken is logged (info for dma-buf, warn
    /// otherwise, with every reason), set in the `gdrx_gpu_pool_path` gauge, and reported by
    /// [`GpuPool::path`] and [`GpuPool::report`].
    ///
    /// # Errors
    /// [`GpuError::NoPath`] with every path considered and why it was refused or failed.
    pub fn new(
        srq: &Arc<Srq>,
        cq: &Arc<Cq>,
        gpu: &Arc<Gpu>,
        cfg: GpuPoolConfig,
    ) -> Result<GpuPool> {
        GpuPool::build(srq.pd(), gpu, cfg, |p, c| Pool::new(srq, cq, p, c))
    }

    /// Builds a GPU pool feeding one QP's receive queue (see [`Pool::for_qp`]).
    ///
    /// # Errors
    /// As [`GpuPool::new`].
    pub fn for_qp(
        qp: &Arc<QueuePair>,
        cq: &Arc<Cq>,
        gpu: &Arc<Gpu>,
        cfg: GpuPoolConfig,
    ) -> Result<GpuPool> {
        GpuPool::build(qp.pd(), gpu, cfg, |p, c| Pool::for_qp(qp, cq, p, c))
    }

    fn build(
        pd: &Arc<Pd>,
        gpu: &Arc<Gpu>,
        cfg: GpuPoolConfig,
        make: impl Fn(Arc<dyn Provider>, PoolConfig) -> gdrx_core::pool::Result<Pool>,
    ) -> Result<GpuPool> {
        let dev = pd.device();
        let export = gpu.probe_export().map_err(|e| e.to_string());
        let facts = PathFacts::new(
            gpu.info(),
            Some(&export),
            dev.name(),
            dev.kind(),
            &pd.probe_dmabuf(),
            peermem::detect().as_ref(),
        );
        let policy = cfg.policy;
        // Every path passed over, with why: not allowed, impossible, or failed when built. Only
        // paths before the one taken can be in it (policies allow a prefix of the chain).
        let mut passed_over = Vec::new();
        let mut failed = Vec::new();
        let mut built = None;
        for path in GpuPath::CHAIN {
            if !policy.allows(path) {
                passed_over.push((path, format!("policy {policy} does not allow it")));
                continue;
            }
            if let Some(why) = facts.blocker(path) {
                passed_over.push((path, why));
                continue;
            }
            match GpuPool::build_path(path, gpu, &cfg, &make) {
                Ok(m) => {
                    built = Some((path, m));
                    break;
                }
                Err(e) => {
                    let e = e.to_string();
                    passed_over.push((path, format!("possible, but building it failed: {e}")));
                    failed.push((path, e));
                }
            }
        }
        let Some((path, mode)) = built else {
            return Err(GpuError::NoPath {
                gpu: gpu.name().to_owned(),
                nic: dev.name().to_owned(),
                policy: policy.name(),
                attempts: passed_over
                    .iter()
                    .map(|(p, why)| format!("{}: {why}", p.name()))
                    .collect(),
            });
        };
        let info = gpu.info();
        let visibility = Visibility::rule(path, info.rdma_writes_ordering, info.rdma_flush_options);
        let plan = PathPlan {
            path,
            policy,
            passed_over,
        };
        let name = cfg.pool.name.clone();
        for p in GpuPath::CHAIN {
            metrics::gauge!("gdrx_gpu_pool_path", "pool" => name.clone(), "gpu" => gpu.name().to_owned(), "path" => p.name())
                .set(if p == path { 1.0 } else { 0.0 });
        }
        let flush_counter = metrics::counter!("gdrx_gpu_pool_flushes_total", "pool" => name.clone(), "gpu" => gpu.name().to_owned());
        if path == GpuPath::Dmabuf {
            tracing::info!(pool = %name, gpu = gpu.name(), nic = dev.name(), path = path.name(), "RDMA into GPU memory: {plan}; visibility: {visibility}");
        } else {
            tracing::warn!(pool = %name, gpu = gpu.name(), nic = dev.name(), path = path.name(), "RDMA into GPU memory: {plan}; visibility: {visibility}");
        }
        if let Visibility::NotGuaranteed(why) = &visibility {
            tracing::warn!(pool = %name, "{why}");
        }
        Ok(GpuPool {
            mode,
            gpu: Arc::clone(gpu),
            plan,
            failed,
            visibility,
            gate: Gate::new(gpu.context()),
            scratch: Vec::new(),
            recv: Vec::with_capacity(cfg.pool.poll_batch as usize + 1),
            out: Outbox::with_capacity(cfg.pool.poll_batch as usize + 1),
            flushes: 0,
            flush_counter,
        })
    }

    fn build_path(
        path: GpuPath,
        gpu: &Arc<Gpu>,
        cfg: &GpuPoolConfig,
        make: &impl Fn(Arc<dyn Provider>, PoolConfig) -> gdrx_core::pool::Result<Pool>,
    ) -> Result<Mode> {
        let mut pc = cfg.pool.clone();
        match path {
            GpuPath::Dmabuf | GpuPath::Peermem => {
                let dmabuf = path == GpuPath::Dmabuf;
                pc.allow_unreadable = true;
                pc.registration = if dmabuf {
                    RegistrationPolicy::RequireDmabuf
                } else {
                    RegistrationPolicy::AddressOnly
                };
                let provider = GpuProvider::with_paths(gpu, dmabuf, !dmabuf);
                Ok(Mode::Direct(make(Arc::new(provider), pc)?))
            }
            GpuPath::Staging => {
                let host: Arc<dyn Provider> = match &cfg.staging_host {
                    Some(p) => Arc::clone(p),
                    None => Arc::new(HostProvider::new()),
                };
                if pc.header_split.is_some() {
                    return Err(GpuError::InvalidConfig(
                        "header split on the staging path is not supported: the headers would go \
                         back to the NIC with the host buffer once the payload is copied"
                            .into(),
                    ));
                }
                pc.allow_unreadable = false;
                let slots = match cfg.staging_slots {
                    0 => pc.slots_per_region.saturating_mul(pc.max_regions),
                    n => n,
                };
                // The GPU slots first: a GPU out of memory is found before anything is posted.
                let stager = Box::new(Stager::new(gpu, pc.slot_size as usize, slots)?);
                let pool = make(Arc::new(PinnedHostProvider::new(host, gpu)), pc)?;
                Ok(Mode::Staging {
                    stager,
                    backlog: VecDeque::new(),
                    pool,
                })
            }
        }
    }

    /// The path in effect.
    pub fn path(&self) -> GpuPath {
        self.plan.path
    }

    /// The path in effect and the better ones passed over, with reasons.
    pub fn plan(&self) -> &PathPlan {
        &self.plan
    }

    /// The visibility rule in effect.
    pub fn visibility(&self) -> &Visibility {
        &self.visibility
    }

    /// The GPU.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The receive pool (GPU memory on the zero-copy paths, pinned host memory for staging).
    pub fn recv_pool(&self) -> &Pool {
        match &self.mode {
            Mode::Direct(p) | Mode::Staging { pool: p, .. } => p,
        }
    }

    /// Which path is in effect and why, with counters.
    pub fn report(&mut self) -> GpuPoolReport {
        let staging = match &mut self.mode {
            Mode::Direct(_) => None,
            Mode::Staging { stager, .. } => Some(stager.stats()),
        };
        let gated = match &staging {
            // Staged leases are gated by the stager's own gate.
            Some(s) => (s.gated, s.parked, s.waiting),
            None => {
                let (g, p) = self.gate.gated();
                (g, p, self.gate.waiting())
            }
        };
        let pool = self.recv_pool().report();
        GpuPoolReport {
            name: pool.name.clone(),
            gpu: self.gpu.info().clone(),
            plan: self.plan.clone(),
            failed: self.failed.clone(),
            visibility: self.visibility.clone(),
            flushes: self.flushes,
            gated,
            pool,
            staging,
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.gpu.bind()?;
        // SAFETY: no pointers; flushes the NIC's writes for the bound context's GPU.
        let r = unsafe {
            sys::cuFlushGPUDirectRDMAWrites(
                sys::CUflushGPUDirectRDMAWritesTarget::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TARGET_CURRENT_CTX,
                sys::CUflushGPUDirectRDMAWritesScope::CU_FLUSH_GPU_DIRECT_RDMA_WRITES_TO_OWNER,
            )
        };
        check(r, || {
            "cuFlushGPUDirectRDMAWrites(CURRENT_CTX, TO_OWNER)".into()
        })?;
        self.flushes += 1;
        self.flush_counter.increment(1);
        Ok(())
    }

    /// Reposts returned slots (after their consumers' events), polls the receive queue and
    /// returns what arrived as a [`Batch`]: on the zero-copy paths after the visibility flush
    /// where the GPU needs one, on the staging path once each copy completed. Never blocks.
    ///
    /// # Errors
    /// The receive pool's errors ([`GpuError::Pool`]), a failed flush or event query. When the
    /// error comes after events were gathered, they are returned first and the error by the
    /// next call; messages waiting for a failed flush are handed out once a flush succeeds.
    pub fn poll(&mut self) -> Result<Batch<'_, GpuEvent>> {
        self.out.take_deferred()?;
        let r = self.poll_into();
        self.out.settle(r)?;
        Ok(self.out.batch())
    }

    /// Blocking poll (one meaning across gdrx, see [`gdrx_core::wait`]): like
    /// [`GpuPool::poll`], but waits up to `timeout` (forever for `None`) until the batch holds at
    /// least one event; an empty batch means the timeout passed.
    ///
    /// # Errors
    /// As [`GpuPool::poll`].
    pub fn poll_blocking(&mut self, timeout: Option<Duration>) -> Result<Batch<'_, GpuEvent>> {
        self.out.take_deferred()?;
        let r = wait_for(&mut GpuWaiter { pool: self }, timeout);
        self.out.settle(r)?;
        Ok(self.out.batch())
    }

    /// One non-blocking poll into `self.out`; returns the events added.
    fn poll_into(&mut self) -> Result<usize> {
        let before = self.out.len();
        self.gate.poll(&mut self.scratch);
        match &mut self.mode {
            Mode::Direct(pool) => {
                self.recv.extend(pool.poll()?);
                self.hand_out()?;
            }
            Mode::Staging {
                stager,
                backlog,
                pool,
            } => {
                let out = &mut self.out;
                stager.poll(&mut |l| out.push(GpuEvent::Message(l)))?;
                // Messages waiting for a GPU slot go first, in arrival order.
                while let Some(l) = backlog.pop_front() {
                    let meta = l.meta();
                    match stager.stage(l, meta) {
                        Ok(()) => {}
                        Err(StageError::Busy(l)) => {
                            backlog.push_front(l);
                            break;
                        }
                        Err(e) => out.push(staging_failed(e)),
                    }
                }
                if backlog.is_empty() {
                    // Only when nothing waits for a GPU slot: a consumer holding every GPU slot
                    // then backs the NIC up through the host pool (RNR), as in the zero-copy case.
                    for ev in pool.poll()? {
                        match ev {
                            RecvEvent::Message(l) => {
                                if !backlog.is_empty() {
                                    backlog.push_back(l);
                                    continue;
                                }
                                let meta = l.meta();
                                match stager.stage(l, meta) {
                                    Ok(()) => {}
                                    Err(StageError::Busy(l)) => backlog.push_back(l),
                                    Err(e) => out.push(staging_failed(e)),
                                }
                            }
                            RecvEvent::Failed(e) => out.push(GpuEvent::Failed(e)),
                            RecvEvent::Exhausted { lent } => {
                                out.push(GpuEvent::Exhausted { lent });
                            }
                        }
                    }
                    stager.poll(&mut |l| out.push(GpuEvent::Message(l)))?;
                }
            }
        }
        Ok(self.out.len() - before)
    }

    /// Zero-copy paths: the visibility flush where needed, then each polled event out as a GPU
    /// event. When the flush fails the events stay for the next call.
    fn hand_out(&mut self) -> Result<()> {
        if self.visibility == Visibility::FlushPerBatch
            && self.recv.iter().any(|e| matches!(e, RecvEvent::Message(_)))
        {
            self.flush()?;
        }
        for ev in self.recv.drain(..) {
            self.out.push(match ev {
                RecvEvent::Message(l) => {
                    let (ptr, len, meta) = (l.payload_addr(), l.payload_len(), l.meta());
                    GpuEvent::Message(GpuLease::new(
                        Slot::Direct(l),
                        &self.gate,
                        ptr,
                        len,
                        meta,
                        self.plan.path,
                    ))
                }
                RecvEvent::Failed(e) => GpuEvent::Failed(e),
                RecvEvent::Exhausted { lent } => GpuEvent::Exhausted { lent },
            });
        }
        Ok(())
    }
}

/// [`GpuPool::poll_blocking`]'s way of waiting between polls.
struct GpuWaiter<'a> {
    pool: &'a mut GpuPool,
}

impl Waiter for GpuWaiter<'_> {
    type Error = GpuError;

    fn attempt(&mut self) -> Result<usize> {
        self.pool.poll_into()
    }

    fn wait(&mut self, left: Option<Duration>) -> Result<usize> {
        let nap = left.unwrap_or(Duration::MAX).min(Duration::from_millis(1));
        let waiting = self.pool.gate.waiting() > 0;
        let pool = &mut *self.pool;
        match &mut pool.mode {
            // Parked returns need polling; otherwise wait on the CQ in short slices.
            Mode::Direct(p) if !waiting => {
                pool.recv.extend(p.poll_blocking(Some(nap))?);
                let before = pool.out.len();
                pool.hand_out()?;
                Ok(pool.out.len() - before)
            }
            Mode::Staging { stager, .. } if stager.in_flight() > 0 => {
                std::hint::spin_loop();
                Ok(0)
            }
            _ => {
                std::thread::sleep(nap.min(Duration::from_micros(50)));
                Ok(0)
            }
        }
    }
}

fn staging_failed(e: StageError<Lease>) -> GpuEvent {
    let error = e.to_string();
    let len = e.into_source().payload_len();
    tracing::error!(len, "message lost: {error}");
    GpuEvent::StagingFailed { len, error }
}
