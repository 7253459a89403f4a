//! The verbs side of the pool: the receive queue it feeds, and the executor the state machine
//! drives (SGEs, posts, region allocation and registration).

use std::sync::Arc;

use gdrx_verbs::{Access, Device, DmabufSupport, Error, Pd, PostError, QueuePair, RecvBatch, Srq};

use crate::lease::{RegionEntry, Shared};
use crate::state::{ConfigError, Geometry, Placement, RecvTarget};
use crate::{
    metrics, AllocError, Attempt, PoolError, Provider, Region, RegistrationPath,
    RegistrationPolicy, Result,
};

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
    pub(crate) fn pd(&self) -> &Arc<Pd> {
        match self {
            RecvQueue::Srq(s) => s.pd(),
            RecvQueue::Qp(q) => q.pd(),
        }
    }

    pub(crate) fn max_wr(&self) -> u32 {
        match self {
            RecvQueue::Srq(s) => s.max_wr(),
            RecvQueue::Qp(q) => q.caps().max_recv_wr,
        }
    }

    pub(crate) fn max_sge(&self) -> u32 {
        match self {
            RecvQueue::Srq(s) => s.max_sge(),
            RecvQueue::Qp(q) => q.caps().max_recv_sge,
        }
    }

    pub(crate) fn what(&self) -> &'static str {
        match self {
            RecvQueue::Srq(_) => "SRQ",
            RecvQueue::Qp(_) => "QP receive queue",
        }
    }

    /// True when something besides the pool holds the queue.
    pub(crate) fn is_shared(&self) -> bool {
        match self {
            RecvQueue::Srq(s) => Arc::strong_count(s) > 1,
            RecvQueue::Qp(q) => Arc::strong_count(q) > 1,
        }
    }

    /// # Safety
    /// As [`Srq::post_recv`].
    pub(crate) unsafe fn post(&self, batch: &mut RecvBatch) -> Result<(), PostError> {
        match self {
            // SAFETY: forwarded from the caller.
            RecvQueue::Srq(s) => unsafe { s.post_recv(batch) },
            // SAFETY: forwarded from the caller.
            RecvQueue::Qp(q) => unsafe { q.post_recv(batch) },
        }
    }
}

/// One payload region and, with header split, its header region: allocated, not yet
/// registered.
pub(crate) struct RegionPair {
    pub(crate) payload: Arc<dyn Region>,
    pub(crate) header: Option<Arc<dyn Region>>,
}

/// The verbs side of the pool: builds SGEs, posts, allocates and registers regions. It is the
/// [`RecvTarget`] the state machine drives.
pub(crate) struct Exec {
    pub(crate) shared: Arc<Shared>,
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) header_provider: Option<Arc<dyn Provider>>,
    pub(crate) dmabuf: DmabufSupport,
    pub(crate) access: Access,
    pub(crate) policy: RegistrationPolicy,
    pub(crate) geo: Geometry,
    pub(crate) batch: RecvBatch,
    /// The first region, allocated before the pool exists to check its readability.
    pub(crate) pending: Option<RegionPair>,
    pub(crate) metrics: metrics::PollerMetrics,
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
    pub(crate) fn device(&self) -> &Arc<Device> {
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
pub(crate) fn alloc_region(
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

pub(crate) fn cpu_addr(r: &dyn Region) -> usize {
    let d = r.desc();
    match (d.cpu_readable, d.addr) {
        (true, Some(a)) => a.as_ptr() as usize,
        _ => 0,
    }
}
