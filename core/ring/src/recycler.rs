//! [`Recycler`]: the recycle protocol of the receive buffer pool, a [`SlotTable`] and a
//! [`RecycleRing`] composed.
//!
//! A return is validated against the slot table first (`Lent(gen) -> Returned(gen)`), and only
//! then queued as `slot << 32 | gen`; the poller's [`RecycleConsumer::drain`] pops entries and
//! moves each slot `Returned(gen) -> Free` before handing it to the caller to repost. Since the
//! ring is private and every entry stands for a slot in `Returned`, the ring (capacity at least
//! the slot count) can never be full when a validated return arrives.

use std::fmt;
use std::sync::Arc;

use crate::ring::{RecycleRing, RingConsumer};
use crate::slots::{ReturnError, SlotTable};
use crate::sync::{AtomicU64, Ordering};

fn encode(slot: u32, gen: u32) -> u64 {
    (u64::from(slot) << 32) | u64::from(gen)
}

fn decode(entry: u64) -> (u32, u32) {
    ((entry >> 32) as u32, entry as u32)
}

/// The pool's recycle protocol: validated returns from any thread, drained by the poller.
///
/// Shared through an `Arc` by the pool and every lease; `Send + Sync`. See the crate docs for
/// the state diagram and an example.
pub struct Recycler {
    slots: SlotTable,
    /// Private, so that only validated returns are ever queued.
    ring: Arc<RecycleRing>,
    /// Popped entries whose slot was not `Returned(gen)`; the protocol never produces any.
    reclaim_failures: AtomicU64,
}

impl Recycler {
    /// Most slots a recycler tracks: 2^31, so that a queued `slot << 32 | gen` stays within the
    /// ring's [`MAX_VALUE`](crate::MAX_VALUE).
    pub const MAX_SLOTS: u32 = 1 << 31;

    /// Returns [`give_back_many`](Self::give_back_many) queues with one claim on the ring.
    pub const BATCH: usize = 64;

    /// Creates the protocol state for `slots` slots (all `Free`), with a ring of at least
    /// `slots` entries (at least 2), and the poller's one consumer handle.
    ///
    /// # Panics
    ///
    /// If `slots` is above [`MAX_SLOTS`](Self::MAX_SLOTS), or if the ring cannot be allocated
    /// (see [`RecycleRing::with_capacity`]).
    pub fn new(slots: u32) -> (Arc<Recycler>, RecycleConsumer) {
        assert!(
            slots <= Self::MAX_SLOTS,
            "Recycler::new: {slots} slots exceed Recycler::MAX_SLOTS ({})",
            Self::MAX_SLOTS
        );
        // u32 -> usize is lossless on the 32- and 64-bit targets gdrx supports.
        let capacity = (slots as usize).max(1);
        let (ring, ring_consumer) = RecycleRing::with_capacity(capacity);
        let recycler = Arc::new(Recycler {
            slots: SlotTable::new(slots),
            ring,
            reclaim_failures: AtomicU64::new(0),
        });
        let consumer = RecycleConsumer {
            recycler: Arc::clone(&recycler),
            ring: ring_consumer,
        };
        (recycler, consumer)
    }

    /// The slot table: the poller's transitions (`mark_posted`, `unpost`, `lend`), states,
    /// counts and rejection counters.
    pub fn slots(&self) -> &SlotTable {
        &self.slots
    }

    /// Any thread: returns the lease `(slot, gen)` for reposting.
    ///
    /// Exactly one of any number of concurrent returns of one lease succeeds. Never blocks,
    /// never allocates.
    ///
    /// # Errors
    ///
    /// The [`SlotTable::give_back`] rejections ([`ReturnError::OutOfRange`],
    /// [`ReturnError::Stale`], [`ReturnError::Duplicate`]), counted in
    /// [`SlotTable::rejected`]; and [`ReturnError::RingFull`], which cannot happen (the slot is
    /// put back to `Lent` if it ever did). Nothing is reposted for a rejected return.
    pub fn give_back(&self, slot: u32, gen: u32) -> Result<(), ReturnError> {
        self.slots.give_back(slot, gen)?;
        match self.ring.push(encode(slot, gen)) {
            Ok(()) => Ok(()),
            Err(_) => {
                // Unreachable by construction: each queued entry is a distinct slot in
                // Returned, and the ring has at least one entry per slot (see SlotTable::lend
                // and RecycleRing::claim for the orderings that make this hold). Undo the state
                // change so no Returned slot is left without a ring entry.
                self.slots.revert_give_back(slot, gen);
                Err(ReturnError::RingFull { slot, gen })
            }
        }
    }

    /// Any thread: returns many leases at once, as [`give_back`](Self::give_back) returns
    /// each, but queues the accepted ones with one claim on the ring per
    /// [`BATCH`](Self::BATCH) (one contended read-modify-write instead of one per lease, and
    /// the entries fill whole cache lines).
    /// Returns how many were accepted; each rejected one is passed to `rejected` (and counted in
    /// [`SlotTable::rejected`] as usual), and nothing is reposted for it.
    ///
    /// Never blocks, never allocates.
    pub fn give_back_many(
        &self,
        leases: impl IntoIterator<Item = (u32, u32)>,
        mut rejected: impl FnMut(ReturnError),
    ) -> usize {
        let mut pending = Pending {
            recycler: self,
            entries: [0; Recycler::BATCH],
            n: 0,
        };
        let mut accepted = 0;
        for (slot, gen) in leases {
            match self.slots.give_back(slot, gen) {
                Ok(()) => {
                    pending.entries[pending.n] = encode(slot, gen);
                    pending.n += 1;
                    if pending.n == Recycler::BATCH {
                        accepted += pending.queue(&mut rejected);
                    }
                }
                Err(e) => rejected(e),
            }
        }
        accepted + pending.queue(&mut rejected)
    }

    /// Total accepted returns (queued, drained or not; modulo `usize`).
    pub fn recycled(&self) -> u64 {
        // The ring only ever receives accepted returns, so its push count is this total; no
        // extra shared counter on the return path.
        self.ring.total_pushed()
    }

    /// Accepted returns waiting for the poller (approximate, for metrics).
    pub fn pending(&self) -> usize {
        self.ring.len()
    }

    /// Popped entries that [`RecycleConsumer::drain`] could not reclaim because their slot was
    /// not `Returned(gen)`. Always 0 unless the slot table was driven outside the protocol
    /// (for example `slots().reclaim(..)` called directly); such slots are not reposted.
    pub fn reclaim_failures(&self) -> u64 {
        // Relaxed: a diagnostic counter.
        self.reclaim_failures.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Recycler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recycler")
            .field("slots", &self.slots)
            .field("ring", &self.ring)
            .field("recycled", &self.recycled())
            .field("reclaim_failures", &self.reclaim_failures())
            .finish()
    }
}

/// Returns [`Recycler::give_back_many`] has accepted (`Lent -> Returned`) and not queued yet.
/// Dropped with entries pending only when the caller's iterator or callback panicked: it queues
/// them then, so no slot is left `Returned` without a ring entry.
struct Pending<'a> {
    recycler: &'a Recycler,
    entries: [u64; Recycler::BATCH],
    n: usize,
}

impl Pending<'_> {
    /// Queues what is pending and returns how many went in; what did not fit (unreachable, as
    /// in `give_back`) is put back to `Lent` and passed to `not_queued`.
    fn queue(&mut self, mut not_queued: impl FnMut(ReturnError)) -> usize {
        let n = std::mem::take(&mut self.n);
        let pushed = self.recycler.ring.push_slice(&self.entries[..n]);
        for &entry in &self.entries[pushed..n] {
            let (slot, gen) = decode(entry);
            self.recycler.slots.revert_give_back(slot, gen);
            not_queued(ReturnError::RingFull { slot, gen });
        }
        pushed
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.queue(|_| ());
    }
}

/// The poller's handle on a [`Recycler`]: drains returned slots for reposting.
///
/// Exactly one per recycler, made with it ([`Recycler::new`]); `Send`, not `Sync` or `Clone`.
pub struct RecycleConsumer {
    recycler: Arc<Recycler>,
    ring: RingConsumer,
}

impl RecycleConsumer {
    /// The recycler this handle drains.
    pub fn recycler(&self) -> &Arc<Recycler> {
        &self.recycler
    }

    /// Pops up to `max` returned slots, moves each `Returned(gen) -> Free`, and calls `f(slot)`
    /// for each (typically: `mark_posted` and post it again). Returns the number of slots
    /// passed to `f`.
    ///
    /// An entry whose slot is not `Returned(gen)` (never, under the protocol) is dropped
    /// without calling `f` and counted in [`Recycler::reclaim_failures`].
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(u32)) -> usize {
        let recycler = &*self.recycler;
        let mut reclaimed = 0;
        self.ring.drain(max, |entry| {
            let (slot, gen) = decode(entry);
            if recycler.slots.reclaim(slot, gen) {
                reclaimed += 1;
                f(slot);
            } else {
                // Relaxed: a diagnostic counter.
                recycler.reclaim_failures.fetch_add(1, Ordering::Relaxed);
            }
        });
        reclaimed
    }
}

impl fmt::Debug for RecycleConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecycleConsumer")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::slots::SlotState;

    fn lend(r: &Recycler, slot: u32) -> u32 {
        r.slots().mark_posted(slot).unwrap();
        r.slots().lend(slot).unwrap()
    }

    #[test]
    #[should_panic(expected = "exceed Recycler::MAX_SLOTS")]
    fn more_slots_than_the_ring_can_encode_panic() {
        Recycler::new(Recycler::MAX_SLOTS + 1);
    }

    #[test]
    fn the_highest_slot_and_generation_encode_below_the_rings_max_value() {
        let top = encode(Recycler::MAX_SLOTS - 1, u32::MAX);
        assert!(top <= crate::MAX_VALUE);
        assert_eq!(decode(top), (Recycler::MAX_SLOTS - 1, u32::MAX));
    }

    #[test]
    fn many_returns_at_once_queue_the_valid_ones_and_report_each_rejection() {
        let (r, mut c) = Recycler::new(200);
        let leases: Vec<(u32, u32)> = (0..150).map(|s| (s, lend(&r, s))).collect();
        // 150 valid returns (more than one chunk), with a duplicate, a stale generation and an
        // out-of-range slot mixed in.
        let mut batch = leases.clone();
        batch.insert(10, leases[3]);
        batch.insert(70, (5, leases[5].1 + 7));
        batch.push((900, 1));
        let mut errors = Vec::new();
        assert_eq!(r.give_back_many(batch, |e| errors.push(e)), 150);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(matches!(errors[0], ReturnError::Duplicate { slot: 3, .. }));
        assert!(matches!(errors[1], ReturnError::Stale { slot: 5, .. }));
        assert!(matches!(
            errors[2],
            ReturnError::OutOfRange { slot: 900, .. }
        ));
        assert_eq!(r.recycled(), 150);
        assert_eq!(
            drained(&mut c),
            (0..150).collect::<Vec<u32>>(),
            "in order, once each"
        );
        // Every slot is Free again; giving the old leases back once more is rejected.
        assert_eq!(r.give_back_many(leases[..2].iter().copied(), |_| ()), 0);
        assert_eq!(r.give_back_many(std::iter::empty(), |_| ()), 0);
    }

    #[test]
    fn a_panic_in_the_middle_of_a_batch_still_queues_what_was_accepted() {
        let (r, mut c) = Recycler::new(8);
        let leases: Vec<(u32, u32)> = (0..4).map(|s| (s, lend(&r, s))).collect();
        let panicky = leases.iter().copied().enumerate().map(|(i, pair)| {
            assert!(i < 3, "the caller's iterator fails");
            pair
        });
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            r.give_back_many(panicky, |_| ())
        }));
        assert!(res.is_err());
        // The three accepted before the panic are queued, not stranded in Returned.
        assert_eq!(drained(&mut c), [0, 1, 2]);
        assert_eq!(r.slots().state(3), Some((SlotState::Lent, leases[3].1)));
    }

    fn drained(c: &mut RecycleConsumer) -> Vec<u32> {
        let mut out = Vec::new();
        c.drain(usize::MAX, |s| out.push(s));
        out
    }

    #[test]
    fn auto_traits() {
        fn assert_send_sync<T: Send + Sync>() {}
        fn assert_send<T: Send>() {}
        assert_send_sync::<Recycler>();
        assert_send::<RecycleConsumer>();
    }

    #[test]
    fn encoding_round_trips() {
        for (slot, gen) in [(0, 0), (1, 2), (u32::MAX, 1), (7, u32::MAX)] {
            assert_eq!(decode(encode(slot, gen)), (slot, gen));
        }
    }

    #[test]
    fn ring_holds_every_slot() {
        assert_eq!(Recycler::new(0).0.ring.capacity(), 2);
        assert_eq!(Recycler::new(1).0.ring.capacity(), 2);
        assert_eq!(Recycler::new(1000).0.ring.capacity(), 1024);
    }

    #[test]
    fn returns_are_validated_queued_and_reclaimed_in_order() {
        let (r, mut c) = Recycler::new(4);
        let gens: Vec<u32> = (0..4).map(|s| lend(&r, s)).collect();
        for slot in [2, 0, 3, 1] {
            r.give_back(slot, gens[slot as usize]).unwrap();
        }
        assert_eq!(
            r.give_back(2, gens[2]),
            Err(ReturnError::Duplicate { slot: 2, gen: 1 })
        );
        assert_eq!(r.pending(), 4);
        assert_eq!(r.slots().counts().returned, 4);
        let mut first = Vec::new();
        assert_eq!(c.drain(2, |s| first.push(s)), 2);
        assert_eq!(first, [2, 0]);
        assert_eq!(drained(&mut c), [3, 1]);
        assert_eq!(r.slots().counts().free, 4);
        assert_eq!(r.recycled(), 4);
        assert_eq!(r.pending(), 0);
        assert_eq!(r.slots().rejected().duplicate, 1);
        assert_eq!(r.reclaim_failures(), 0);
    }

    #[test]
    fn rejected_returns_queue_nothing() {
        let (r, mut c) = Recycler::new(2);
        let gen = lend(&r, 0);
        assert!(matches!(
            r.give_back(2, gen),
            Err(ReturnError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.give_back(u32::MAX, gen),
            Err(ReturnError::OutOfRange { .. })
        ));
        assert!(matches!(
            r.give_back(0, gen + 1),
            Err(ReturnError::Stale { .. })
        ));
        assert!(matches!(r.give_back(1, 0), Err(ReturnError::Stale { .. })));
        assert_eq!(r.pending(), 0);
        assert!(drained(&mut c).is_empty());
        assert_eq!(r.slots().rejected().total(), 4);
        assert_eq!(r.recycled(), 0);
        assert_eq!(r.slots().state(0), Some((SlotState::Lent, gen)));
    }

    #[test]
    fn stale_lease_after_relend() {
        let (r, mut c) = Recycler::new(1);
        let old = lend(&r, 0);
        r.give_back(0, old).unwrap();
        assert_eq!(drained(&mut c), [0]);
        let new = lend(&r, 0);
        assert_eq!(
            r.give_back(0, old),
            Err(ReturnError::Stale {
                slot: 0,
                gen: old,
                current: new
            })
        );
        r.give_back(0, new).unwrap();
        assert_eq!(drained(&mut c), [0]);
    }

    #[test]
    fn reclaim_failure_is_counted_not_reposted() {
        let (r, mut c) = Recycler::new(2);
        let gen = lend(&r, 1);
        r.give_back(1, gen).unwrap();
        // Outside the protocol: someone reclaims behind the consumer's back.
        assert!(r.slots().reclaim(1, gen));
        assert!(drained(&mut c).is_empty());
        assert_eq!(r.reclaim_failures(), 1);
    }

    #[test]
    fn many_laps_on_a_small_table() {
        let (r, mut c) = Recycler::new(3);
        for lap in 1..=1000u32 {
            for slot in 0..3 {
                assert_eq!(lend(&r, slot), lap);
                r.give_back(slot, lap).unwrap();
            }
            assert_eq!(c.drain(8, |_| ()), 3);
        }
        assert_eq!(r.recycled(), 3000);
        let d = format!("{r:?}");
        assert!(d.contains("recycled: 3000"), "{d}");
    }
}
