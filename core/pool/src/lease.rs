//! Leases: owned, `Send` handles on received buffers, and the ways a buffer goes back.
//!
//! A [`Lease`] is made by the poller from a successful receive completion. Dropping it (on any
//! thread) returns its slot through the lock-free recycle ring; [`Lease::into_raw`] turns it
//! into a plain `(slot, generation)` pair for consumers that cannot hold Rust values (Python,
//! C), which later return it with [`Returner::give_back`], the analogue of an io_uring zcrx
//! refill entry. Every return is validated: a duplicate, stale, out-of-range return, or a raw
//! return of a slot a live `Lease` still holds, is rejected, counted and reported, and never
//! reposts anything.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use gdrx_ring::{Recycler, ReturnError, SlotState};

use gdrx_verbs::{Doorbell, Mr};

use crate::metrics::ReturnMetrics;
use crate::provider::{MemoryKind, Region};
use crate::{RecvQueue, RegistrationPath};

/// One registered region of the pool.
pub(crate) struct RegionEntry {
    // Field order is drop order: the MR is deregistered before the memory is released.
    pub(crate) mr: Mr,
    pub(crate) region: Arc<dyn Region>,
    /// CPU address of the region's first byte when the CPU may read it, else 0.
    pub(crate) cpu: usize,
    pub(crate) path: RegistrationPath,
}

impl fmt::Debug for RegionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionEntry")
            .field("mr", &self.mr)
            .field("region", &self.region)
            .field("path", &self.path)
            .finish()
    }
}

/// Slot geometry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) slot_size: u32,
    pub(crate) slots_per_region: u32,
    /// Header bytes per slot (header split), 0 without.
    pub(crate) header_bytes: u32,
}

/// What the pool, its returners and its leases share. It lives until the last of them is gone,
/// so a lease's memory stays valid after the pool itself was dropped.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) provider: String,
    pub(crate) kind: MemoryKind,
    pub(crate) readable: bool,
    pub(crate) layout: Layout,
    pub(crate) recycler: Arc<Recycler>,
    /// Per slot: the current generation was turned into a raw pair by `Lease::into_raw`.
    raw: Box<[AtomicBool]>,
    held_by_lease: AtomicU64,
    ret_metrics: ReturnMetrics,
    /// Wakes the poller when it sleeps with every slot lent (`None`: eventfd unavailable; the
    /// poller then naps and re-checks).
    pub(crate) doorbell: Option<Doorbell>,
    // Field order is drop order. The receive queue goes first: if this is its last reference,
    // it is destroyed (discarding the receives still posted) before the MRs they point into.
    pub(crate) queue: RecvQueue,
    pub(crate) regions: Box<[OnceLock<RegionEntry>]>,
    pub(crate) headers: Box<[OnceLock<RegionEntry>]>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        provider: String,
        kind: MemoryKind,
        readable: bool,
        layout: Layout,
        recycler: Arc<Recycler>,
        max_regions: u32,
        queue: RecvQueue,
        ret_metrics: ReturnMetrics,
    ) -> Shared {
        let max_slots = recycler.slots().len();
        Shared {
            name,
            provider,
            kind,
            readable,
            layout,
            recycler,
            raw: (0..max_slots).map(|_| AtomicBool::new(false)).collect(),
            held_by_lease: AtomicU64::new(0),
            ret_metrics,
            doorbell: match Doorbell::new() {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "no eventfd doorbell: an exhausted pool naps until leases return");
                    None
                }
            },
            queue,
            regions: (0..max_regions).map(|_| OnceLock::new()).collect(),
            headers: (0..max_regions).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Called by the poller before it lends a slot: the new generation starts as a `Lease`.
    pub(crate) fn clear_raw(&self, slot: u32) {
        // Relaxed: the lend that follows (a Release store in the slot table) publishes it.
        self.raw[slot as usize].store(false, Ordering::Relaxed);
    }

    pub(crate) fn held_by_lease(&self) -> u64 {
        self.held_by_lease.load(Ordering::Relaxed)
    }

    fn count_rejection(&self, e: &ReturnError) {
        match e {
            ReturnError::Duplicate { .. } => self.ret_metrics.duplicate.increment(1),
            ReturnError::Stale { .. } => self.ret_metrics.stale.increment(1),
            ReturnError::OutOfRange { .. } => self.ret_metrics.out_of_range.increment(1),
            _ => {}
        }
    }

    /// Returns a run of this pool's leases as one batch (see [`Lease::give_back_all`]).
    fn give_back_many(&self, pairs: &[(u32, u32)]) {
        let accepted = self.recycler.give_back_many(pairs.iter().copied(), |e| {
            self.count_rejection(&e);
            // As in Lease's Drop: only a forged raw return of the same pair gets here.
            tracing::error!(pool = %self.name, error = %e, "lease return rejected");
        });
        if accepted > 0 {
            if let Some(d) = &self.doorbell {
                d.ring();
            }
        }
    }

    fn give_back(&self, slot: u32, gen: u32) -> Result<(), ReturnError> {
        let r = self.recycler.give_back(slot, gen);
        match &r {
            Ok(()) => {
                if let Some(d) = &self.doorbell {
                    // One relaxed load unless the poller sleeps with every slot lent.
                    d.ring();
                }
            }
            Err(e) => self.count_rejection(e),
        }
        r
    }

    /// Where slot `slot`'s payload (and header) live: (region entry, byte offset).
    fn locate<'a>(
        &'a self,
        table: &'a [OnceLock<RegionEntry>],
        slot: u32,
        stride: u32,
    ) -> Option<(&'a RegionEntry, usize)> {
        let spr = self.layout.slots_per_region;
        let r = table.get((slot / spr) as usize)?.get()?;
        Some((r, (slot % spr) as usize * stride as usize))
    }
}

/// Hands `items` to `flush` in runs of consecutive items with the same key (by `same`), at most
/// `buf.len()` per run, keeping one key per run (the others are dropped as they are read). A
/// run read so far is flushed even when the iterator panics.
fn in_runs<K, V: Copy, F: FnMut(&K, &[V])>(
    items: impl IntoIterator<Item = (K, V)>,
    same: impl Fn(&K, &K) -> bool,
    buf: &mut [V],
    flush: F,
) {
    /// The run being gathered; flushed when dropped (a panicking iterator included).
    struct Run<'b, K, V, F: FnMut(&K, &[V])> {
        key: Option<K>,
        buf: &'b mut [V],
        n: usize,
        flush: F,
    }
    impl<K, V, F: FnMut(&K, &[V])> Run<'_, K, V, F> {
        fn flush(&mut self) {
            // Taken first, so a flush that panics is not repeated by the drop.
            let n = std::mem::take(&mut self.n);
            if let (Some(key), true) = (&self.key, n > 0) {
                (self.flush)(key, &self.buf[..n]);
            }
        }
    }
    impl<K, V, F: FnMut(&K, &[V])> Drop for Run<'_, K, V, F> {
        fn drop(&mut self) {
            self.flush();
        }
    }

    assert!(!buf.is_empty(), "in_runs: an empty run buffer");
    let mut run = Run {
        key: None,
        buf,
        n: 0,
        flush,
    };
    for (key, v) in items {
        let goes_on = run.n < run.buf.len() && run.key.as_ref().is_some_and(|k| same(k, &key));
        if !goes_on {
            run.flush();
            run.key = Some(key);
        }
        run.buf[run.n] = v;
        run.n += 1;
    }
    // The last run is flushed as `run` drops.
}

/// What a receive completion says about a message besides its bytes. [`Lease`] and gdrx-gpu's
/// `GpuLease` carry the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageMeta {
    /// Bytes received (header and payload together).
    pub len: u32,
    /// The immediate data, for SEND_WITH_IMM and RDMA WRITE_WITH_IMM.
    pub imm: Option<u32>,
    /// The local QP the message arrived on.
    pub qp_num: u32,
    /// The sender's QP number (meaningful for UD; RC reports the connected peer's).
    pub src_qp: u32,
}

/// A received buffer, lent to the consumer. `Send`: it may be handed to another thread.
/// Dropping it returns the slot to the pool (lock-free, no allocation).
pub struct Lease {
    shared: Arc<Shared>,
    slot: u32,
    gen: u32,
    meta: MessageMeta,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("pool", &self.shared.name)
            .field("slot", &self.slot)
            .field("gen", &self.gen)
            .field("len", &self.meta.len)
            .field("imm", &self.meta.imm)
            .field("qp_num", &format_args!("{:#x}", self.meta.qp_num))
            .finish()
    }
}

/// The payload of a lease lives in memory the CPU cannot read (device memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "slot {slot} lies in {kind} memory, which the CPU cannot read; read it on its device \
     (Lease::payload_addr) or use header split for the bytes the CPU needs"
)]
pub struct Unreadable {
    /// The slot.
    pub slot: u32,
    /// The kind of memory it lies in.
    pub kind: MemoryKind,
}

impl Lease {
    pub(crate) fn new(shared: Arc<Shared>, slot: u32, gen: u32, meta: MessageMeta) -> Lease {
        Lease {
            shared,
            slot,
            gen,
            meta,
        }
    }

    /// What the completion said: length, immediate data, QP numbers.
    pub fn meta(&self) -> MessageMeta {
        self.meta
    }

    /// The slot index.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The slot's generation: unique per lend of this slot.
    pub fn generation(&self) -> u32 {
        self.gen
    }

    /// Bytes received (header and payload together).
    pub fn len(&self) -> usize {
        self.meta.len as usize
    }

    /// True for a zero-byte message.
    pub fn is_empty(&self) -> bool {
        self.meta.len == 0
    }

    /// The immediate data, for SEND_WITH_IMM and RDMA WRITE_WITH_IMM.
    pub fn imm(&self) -> Option<u32> {
        self.meta.imm
    }

    /// The local QP the message arrived on.
    pub fn qp_num(&self) -> u32 {
        self.meta.qp_num
    }

    /// The sender's QP number (meaningful for UD; RC reports the connected peer's).
    pub fn src_qp(&self) -> u32 {
        self.meta.src_qp
    }

    /// The bytes that landed in the header buffer (header split), else an empty slice. Header
    /// memory is always CPU-readable.
    pub fn header(&self) -> &[u8] {
        let hb = self.shared.layout.header_bytes;
        if hb == 0 {
            return &[];
        }
        let n = self.meta.len.min(hb) as usize;
        let Some((r, off)) = self.shared.locate(&self.shared.headers, self.slot, hb) else {
            return &[];
        };
        // SAFETY: header regions are CPU-readable (checked when the pool was built); the slot
        // is Lent to this lease, so the pool does not repost it (and the NIC does not write it)
        // until the lease is dropped or turned raw, both of which end this borrow; `off + n`
        // lies inside the region (n <= header_bytes, off = index * header_bytes).
        unsafe { std::slice::from_raw_parts((r.cpu + off) as *const u8, n) }
    }

    /// Bytes received into the payload slot.
    pub fn payload_len(&self) -> usize {
        self.meta
            .len
            .saturating_sub(self.shared.layout.header_bytes) as usize
    }

    /// The payload bytes (all bytes, without header split).
    ///
    /// # Errors
    /// [`Unreadable`] when the pool's memory is device memory.
    pub fn payload(&self) -> Result<&[u8], Unreadable> {
        let (r, off) = self.payload_location();
        if !self.shared.readable || r.cpu == 0 {
            return Err(Unreadable {
                slot: self.slot,
                kind: self.shared.kind,
            });
        }
        // SAFETY: the region is CPU-readable (cpu != 0 only then); the slot is Lent to this
        // lease, so nothing writes it while `&self` is borrowed (see `header`); `off +
        // payload_len` <= `off + slot_size`, inside the region.
        Ok(unsafe { std::slice::from_raw_parts((r.cpu + off) as *const u8, self.payload_len()) })
    }

    /// The payload's address as registered with the NIC (the IOVA for dma-buf MRs, the device
    /// pointer for GPU memory), for consumers that read it on the device.
    pub fn payload_addr(&self) -> u64 {
        let (r, off) = self.payload_location();
        r.mr.iova() + off as u64
    }

    /// The region the payload lives in (downcast with `Region::as_any`).
    pub fn region(&self) -> &Arc<dyn Region> {
        &self.payload_location().0.region
    }

    fn payload_location(&self) -> (&RegionEntry, usize) {
        self.shared
            .locate(
                &self.shared.regions,
                self.slot,
                self.shared.layout.slot_size,
            )
            .expect("a lent slot lies in a registered region")
    }

    /// Returns many leases at once, as dropping each would, but with one claim on each pool's
    /// recycle ring per run of up to [`Recycler::BATCH`] (64) consecutive leases of that pool,
    /// instead of one per lease: for a consumer that is done with a whole poll batch. Leases of different pools
    /// may be mixed; each run of one pool's leases goes back together. Every return is
    /// validated as a drop's is. Never blocks, never allocates; should the iterator panic, the
    /// leases it yielded still go back. Leases taken from the iterator wait for their run to
    /// fill (or the iterator to end), so pass a batch that is complete, not an iterator that
    /// blocks (a channel's, say): it would hold those buffers back from the pool meanwhile.
    ///
    /// ```no_run
    /// # fn f(batch: Vec<gdrx_pool::Lease>) {
    /// // ... read every lease of the batch, then:
    /// gdrx_pool::Lease::give_back_all(batch);
    /// # }
    /// ```
    pub fn give_back_all(leases: impl IntoIterator<Item = Lease>) {
        let mut pairs = [(0u32, 0u32); Recycler::BATCH];
        in_runs(
            leases.into_iter().map(|l| {
                let (shared, slot, gen) = l.into_parts();
                (shared, (slot, gen))
            }),
            Arc::ptr_eq,
            &mut pairs,
            |shared, run| shared.give_back_many(run),
        );
    }

    /// Takes the lease apart without returning its slot: its pool reference, slot and
    /// generation. The caller returns the pair (or turns it raw).
    fn into_parts(self) -> (Arc<Shared>, u32, u32) {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used again and its Drop does not run, so the Arc read out here
        // is the only owner of that reference (dropped exactly once, by the caller).
        let shared = unsafe { std::ptr::read(&me.shared) };
        (shared, me.slot, me.gen)
    }

    /// A handle that can return raw slots to this lease's pool.
    pub fn returner(&self) -> Returner {
        Returner(Arc::clone(&self.shared))
    }

    /// Gives up the lease without returning the slot: the caller now owns `(slot, generation)`
    /// and must hand it back with [`Returner::give_back`] exactly once. The slot's memory stays
    /// valid as long as a [`Returner`] of the pool (or the pool) is alive.
    pub fn into_raw(self) -> RawLease {
        let raw = RawLease {
            slot: self.slot,
            gen: self.gen,
            len: self.meta.len,
        };
        // Release: a raw return that observes the flag also observes that the Lease is gone.
        self.shared.raw[self.slot as usize].store(true, Ordering::Release);
        // The pool reference goes; the pair is the caller's now.
        drop(self.into_parts());
        raw
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.shared.give_back(self.slot, self.gen) {
            // Cannot happen unless a raw return forged this lease's pair; never repost twice.
            tracing::error!(pool = %self.shared.name, error = %e, "lease return rejected");
        }
    }
}

/// A lease turned into plain numbers ([`Lease::into_raw`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawLease {
    /// The slot index.
    pub slot: u32,
    /// The generation.
    pub gen: u32,
    /// Bytes received.
    pub len: u32,
}

/// Returns raw `(slot, generation)` pairs to a pool from any thread; cheap to clone. Holding
/// one keeps the pool's memory valid.
#[derive(Clone)]
pub struct Returner(pub(crate) Arc<Shared>);

impl fmt::Debug for Returner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Returner").field(&self.0.name).finish()
    }
}

/// Why a raw return was refused. Nothing was reposted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RawReturnError {
    /// Rejected by the recycle protocol (duplicate, stale, out of range).
    #[error(transparent)]
    Rejected(#[from] ReturnError),
    /// The pair is held by a live [`Lease`]; only its drop returns it.
    #[error(
        "slot {slot} generation {gen} is held by a live Lease: it is returned when that lease is \
         dropped, not by a raw return (nothing was reposted)"
    )]
    HeldByLease {
        /// The slot.
        slot: u32,
        /// The generation.
        gen: u32,
    },
}

impl Returner {
    /// Returns a raw pair made by [`Lease::into_raw`]. Exactly one return per pair succeeds;
    /// duplicates, stale generations, out-of-range slots and pairs still held by a `Lease` are
    /// rejected and counted (`gdrx_pool_rejected_returns_total`).
    ///
    /// # Errors
    /// [`RawReturnError`], saying which rule the return broke.
    pub fn give_back(&self, slot: u32, gen: u32) -> Result<(), RawReturnError> {
        let s = &self.0;
        if let Some((SlotState::Lent, cur)) = s.recycler.slots().state(slot) {
            // Acquire pairs with the Release in `into_raw`: if the flag is not set for the
            // generation the table shows as Lent, a Lease value still owns that generation.
            if cur == gen && !s.raw[slot as usize].load(Ordering::Acquire) {
                s.held_by_lease.fetch_add(1, Ordering::Relaxed);
                s.ret_metrics.held_by_lease.increment(1);
                return Err(RawReturnError::HeldByLease { slot, gen });
            }
        }
        Ok(s.give_back(slot, gen)?)
    }

    /// Returns a [`RawLease`].
    ///
    /// # Errors
    /// As [`Returner::give_back`].
    pub fn give_back_raw(&self, raw: RawLease) -> Result<(), RawReturnError> {
        self.give_back(raw.slot, raw.gen)
    }

    /// The payload bytes of a raw pair that is still out (not yet returned).
    ///
    /// # Safety
    /// The caller must hold `(slot, gen)` as a raw lease (from [`Lease::into_raw`]) and must not
    /// return it while the slice is alive.
    ///
    /// # Errors
    /// [`Unreadable`] for device memory; `None` inside when the pair is not out.
    pub unsafe fn raw_payload(&self, raw: RawLease) -> Result<Option<&[u8]>, Unreadable> {
        let s = &self.0;
        match s.recycler.slots().state(raw.slot) {
            Some((SlotState::Lent, cur)) if cur == raw.gen => {}
            _ => return Ok(None),
        }
        let Some((r, off)) = s.locate(&s.regions, raw.slot, s.layout.slot_size) else {
            return Ok(None);
        };
        if !s.readable || r.cpu == 0 {
            return Err(Unreadable {
                slot: raw.slot,
                kind: s.kind,
            });
        }
        let n = raw
            .len
            .saturating_sub(s.layout.header_bytes)
            .min(s.layout.slot_size) as usize;
        // SAFETY: readable region; the caller owns the pair and keeps it out while the slice
        // lives, so the slot is not reposted; the range is inside the slot.
        Ok(Some(unsafe {
            std::slice::from_raw_parts((r.cpu + off) as *const u8, n)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::in_runs;

    fn runs(items: &[(u8, u32)], max: usize) -> Vec<(u8, Vec<u32>)> {
        let mut buf = vec![0u32; max];
        let mut out = Vec::new();
        in_runs(
            items.iter().copied(),
            |a, b| a == b,
            &mut buf,
            |k, vs| out.push((*k, vs.to_vec())),
        );
        out
    }

    #[test]
    fn runs_split_where_the_key_changes_and_at_the_buffer_size() {
        let items = [
            (1, 10),
            (1, 11),
            (2, 20),
            (1, 12),
            (1, 13),
            (1, 14),
            (1, 15),
            (1, 16),
        ];
        assert_eq!(
            runs(&items, 3),
            [
                (1, vec![10, 11]),
                (2, vec![20]),
                (1, vec![12, 13, 14]),
                (1, vec![15, 16]),
            ]
        );
        assert_eq!(runs(&items[..1], 1), [(1, vec![10])]);
        assert!(runs(&[], 4).is_empty(), "nothing to flush, no empty run");
    }

    #[test]
    fn a_panicking_iterator_still_flushes_the_run_it_read() {
        let mut out = Vec::new();
        let mut buf = [0u32; 8];
        let items = (0..5u32).map(|i| {
            assert!(i < 3, "the caller's iterator fails");
            (7u8, i)
        });
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            in_runs(
                items,
                |a, b| a == b,
                &mut buf,
                |k, vs| out.push((*k, vs.to_vec())),
            );
        }));
        assert!(res.is_err());
        assert_eq!(out, [(7, vec![0, 1, 2])]);
    }

    #[test]
    fn every_key_but_the_runs_is_dropped_as_it_is_read_and_each_exactly_once() {
        use std::sync::Arc;
        let a = Arc::new(1u8);
        let b = Arc::new(2u8);
        let items: Vec<(Arc<u8>, u32)> = (0..10)
            .map(|i| (Arc::clone(if i % 4 == 3 { &b } else { &a }), i))
            .collect();
        let mut buf = [0u32; 2];
        let mut seen = Vec::new();
        in_runs(items, Arc::ptr_eq, &mut buf, |k, vs| {
            // The run's key is alive while its run is flushed.
            assert!(Arc::strong_count(k) >= 2);
            seen.push((**k, vs.to_vec()));
        });
        assert_eq!(Arc::strong_count(&a), 1, "every clone of a dropped once");
        assert_eq!(Arc::strong_count(&b), 1);
        let flat: Vec<u32> = seen.iter().flat_map(|(_, v)| v.clone()).collect();
        assert_eq!(flat, (0..10).collect::<Vec<_>>(), "in order, each once");
        assert_eq!(
            seen[1],
            (1, vec![2]),
            "a full run ends even when the key goes on"
        );
        assert_eq!(seen[2], (2, vec![3]));
    }
}
