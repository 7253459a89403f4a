//! [`SlotTable`]: the state and generation of every receive buffer slot, and the validation of
//! returns.
//!
//! Each slot is one `AtomicU64` packing its generation (high 32 bits) and its [`SlotState`]
//! (low bits), so a state change and a generation check are one compare-and-swap. The poller
//! thread moves slots `Free -> Posted -> Lent` and `Returned -> Free`; any thread moves
//! `Lent(gen) -> Returned(gen)` through [`SlotTable::give_back`], which rejects out-of-range,
//! stale and duplicate returns and counts each kind. Nothing here allocates after
//! [`SlotTable::new`].
//!
//! Generations start at 0 and [`SlotTable::lend`] increments them, skipping 0 when it wraps,
//! so no lease ever carries generation 0 and a `(slot, gen)` pair matches at most one lease
//! (until 2^32 - 1 further lends of that slot).

use std::fmt;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, Ordering};

/// Where a slot is in its recycle cycle (see the state diagram in the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SlotState {
    /// Owned by the pool and not posted.
    Free,
    /// In a posted receive work request: the NIC owns the buffer.
    Posted,
    /// A consumer holds a lease on it, named by `(slot, generation)`.
    Lent,
    /// Given back and queued in the recycle ring, waiting for the poller to reclaim it.
    Returned,
}

impl SlotState {
    const fn bits(self) -> u64 {
        match self {
            SlotState::Free => 0,
            SlotState::Posted => 1,
            SlotState::Lent => 2,
            SlotState::Returned => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SlotState::Free => "Free",
            SlotState::Posted => "Posted",
            SlotState::Lent => "Lent",
            SlotState::Returned => "Returned",
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn pack(gen: u32, state: SlotState) -> u64 {
    ((gen as u64) << 32) | state.bits()
}

fn unpack(word: u64) -> (SlotState, u32) {
    let state = match word & 0b11 {
        0 => SlotState::Free,
        1 => SlotState::Posted,
        2 => SlotState::Lent,
        _ => SlotState::Returned,
    };
    (state, (word >> 32) as u32)
}

/// The generation after `gen`, skipping 0 (which marks a slot that was never lent).
fn next_gen(gen: u32) -> u32 {
    gen.checked_add(1).unwrap_or(1)
}

/// A poller-side transition found the slot in the wrong state; the slot was left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StateError {
    /// The slot the transition was asked for.
    pub slot: u32,
    /// The number of slots in the table.
    pub slots: u32,
    /// The state the transition starts from.
    pub expected: SlotState,
    /// The state and generation found, or `None` if `slot` is out of range.
    pub found: Option<(SlotState, u32)>,
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            slot,
            slots,
            expected,
            found,
        } = self;
        match found {
            Some((state, gen)) => write!(
                f,
                "slot {slot} is {state} (generation {gen}), expected {expected}; left unchanged"
            ),
            None => write!(
                f,
                "slot {slot} does not exist (the table has {slots} slots; expected a {expected} \
                 slot); nothing changed"
            ),
        }
    }
}

impl std::error::Error for StateError {}

/// Why a return was rejected. Nothing is reposted for a rejected return, and the slot's state
/// is left as it was. Never allocates (`Copy`), so rejecting a flood of bad returns stays cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReturnError {
    /// The slot id is not below the table's slot count.
    OutOfRange {
        /// The returned slot id.
        slot: u32,
        /// The number of slots in the table.
        slots: u32,
    },
    /// The generation does not name the slot's current lease: an old lease, a forged id, or
    /// generation 0, which no lease carries (a slot that was never lent).
    Stale {
        /// The returned slot id.
        slot: u32,
        /// The returned generation.
        gen: u32,
        /// The slot's current generation.
        current: u32,
    },
    /// The generation matches but the slot is no longer lent: the lease was already returned
    /// (it is `Returned`, or already reclaimed and `Free` or `Posted` again).
    Duplicate {
        /// The returned slot id.
        slot: u32,
        /// The returned generation.
        gen: u32,
    },
    /// The recycle ring had no room for a validated return. Cannot happen: the ring holds one
    /// entry per slot. The slot is put back to `Lent`.
    RingFull {
        /// The returned slot id.
        slot: u32,
        /// The returned generation.
        gen: u32,
    },
}

impl ReturnError {
    /// The slot id of the rejected return.
    pub fn slot(&self) -> u32 {
        match *self {
            ReturnError::OutOfRange { slot, .. }
            | ReturnError::Stale { slot, .. }
            | ReturnError::Duplicate { slot, .. }
            | ReturnError::RingFull { slot, .. } => slot,
        }
    }
}

impl fmt::Display for ReturnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ReturnError::OutOfRange { slot, slots } => write!(
                f,
                "returned slot {slot} is out of range (the pool has {slots} slots); nothing was \
                 reposted"
            ),
            ReturnError::Stale { slot, gen: 0, .. } => write!(
                f,
                "slot {slot} returned with generation 0, which no lease carries (never lent, or \
                 a forged id); nothing was reposted"
            ),
            ReturnError::Stale { slot, gen, current } => write!(
                f,
                "stale return of slot {slot}: generation {gen}, but the slot is at generation \
                 {current} (an old lease or a forged id); nothing was reposted"
            ),
            ReturnError::Duplicate { slot, gen } => write!(
                f,
                "slot {slot} generation {gen} was already returned (returned twice); nothing \
                 was reposted"
            ),
            ReturnError::RingFull { slot, gen } => write!(
                f,
                "recycle ring full returning slot {slot} generation {gen} (a bug: the ring has \
                 an entry per slot); the slot stays lent and nothing was reposted"
            ),
        }
    }
}

impl std::error::Error for ReturnError {}

/// How many slots are in each state ([`SlotTable::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SlotCounts {
    /// Slots in [`SlotState::Free`].
    pub free: u32,
    /// Slots in [`SlotState::Posted`].
    pub posted: u32,
    /// Slots in [`SlotState::Lent`].
    pub lent: u32,
    /// Slots in [`SlotState::Returned`].
    pub returned: u32,
}

/// How many returns were rejected, by kind ([`SlotTable::rejected`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RejectCounts {
    /// [`ReturnError::OutOfRange`] rejections.
    pub out_of_range: u64,
    /// [`ReturnError::Stale`] rejections.
    pub stale: u64,
    /// [`ReturnError::Duplicate`] rejections.
    pub duplicate: u64,
}

impl RejectCounts {
    /// All rejections together.
    pub fn total(&self) -> u64 {
        self.out_of_range + self.stale + self.duplicate
    }
}

/// Rejection counters, written only on the (cold) rejection path.
struct Rejections {
    out_of_range: AtomicU64,
    stale: AtomicU64,
    duplicate: AtomicU64,
}

/// The state and generation of every slot of a pool, and the validated return path.
///
/// Preallocated for the pool's maximum slot count; slots the pool has not carved yet simply
/// stay `Free`. `Send + Sync`: the poller calls the poller-side transitions, any thread calls
/// [`give_back`](Self::give_back).
///
/// Poller-side transitions ([`mark_posted`](Self::mark_posted), [`unpost`](Self::unpost),
/// [`lend`](Self::lend), [`reclaim`](Self::reclaim)) check the state they start from and leave
/// a slot in any other state untouched.
pub struct SlotTable {
    states: Box<[AtomicU64]>,
    /// Own cache line: bad-return floods bump these without slowing the state words down.
    rejections: CachePadded<Rejections>,
}

impl SlotTable {
    /// Creates a table of `slots` slots, all `Free` at generation 0.
    pub fn new(slots: u32) -> SlotTable {
        SlotTable {
            states: (0..slots)
                .map(|_| AtomicU64::new(pack(0, SlotState::Free)))
                .collect(),
            rejections: CachePadded::new(Rejections {
                out_of_range: AtomicU64::new(0),
                stale: AtomicU64::new(0),
                duplicate: AtomicU64::new(0),
            }),
        }
    }

    /// The number of slots.
    pub fn len(&self) -> u32 {
        // Cannot truncate: built from a u32 count.
        self.states.len() as u32
    }

    /// Whether the table has no slots.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The state and generation of `slot`, or `None` if out of range. A snapshot: other
    /// threads may change it right after.
    ///
    /// A thread that reads `Lent(gen)` here also sees everything the poller did before that
    /// `lend` (and one that reads `Returned(gen)`, everything the returner did before its
    /// `give_back`).
    pub fn state(&self, slot: u32) -> Option<(SlotState, u32)> {
        // Acquire: pairs with lend's and give_back's Release, for the guarantee above (free on
        // x86, and this is not a hot path).
        self.word(slot).map(|w| unpack(w.load(Ordering::Acquire)))
    }

    /// Counts the slots in each state (a scan of the table, for metrics; not for the hot path).
    pub fn counts(&self) -> SlotCounts {
        let mut counts = SlotCounts::default();
        for word in self.states.iter() {
            // Relaxed: a snapshot for metrics.
            let count = match unpack(word.load(Ordering::Relaxed)).0 {
                SlotState::Free => &mut counts.free,
                SlotState::Posted => &mut counts.posted,
                SlotState::Lent => &mut counts.lent,
                SlotState::Returned => &mut counts.returned,
            };
            *count += 1;
        }
        counts
    }

    /// The number of rejected returns, by kind.
    pub fn rejected(&self) -> RejectCounts {
        let r = &*self.rejections;
        // Relaxed: counters for metrics; they order nothing.
        RejectCounts {
            out_of_range: r.out_of_range.load(Ordering::Relaxed),
            stale: r.stale.load(Ordering::Relaxed),
            duplicate: r.duplicate.load(Ordering::Relaxed),
        }
    }

    /// Poller: `Free -> Posted`, before the slot's buffer goes into a receive work request.
    ///
    /// # Errors
    ///
    /// [`StateError`] if the slot is out of range or not `Free`; nothing changes.
    pub fn mark_posted(&self, slot: u32) -> Result<(), StateError> {
        // Relaxed: the poller's own step; whatever made the slot Free was already acquired by
        // reclaim (or happened on this thread), and posting to the NIC is ordered by the
        // verbs doorbell, not by this word.
        self.step(
            slot,
            SlotState::Free,
            SlotState::Posted,
            false,
            Ordering::Relaxed,
        )
        .map(drop)
    }

    /// Poller: `Posted -> Free`, when a receive completes with an error or flush status, or
    /// the shared receive queue is destroyed, so the buffer was never filled.
    ///
    /// # Errors
    ///
    /// [`StateError`] if the slot is out of range or not `Posted`; nothing changes.
    pub fn unpost(&self, slot: u32) -> Result<(), StateError> {
        // Relaxed: as for mark_posted, a poller-only step.
        self.step(
            slot,
            SlotState::Posted,
            SlotState::Free,
            false,
            Ordering::Relaxed,
        )
        .map(drop)
    }

    /// Poller: `Posted -> Lent`, when a receive completes and the buffer goes to a consumer.
    /// Increments the generation (skipping 0) and returns the new one, which names the lease:
    /// a `(slot, gen)` of any earlier lease never matches again.
    ///
    /// # Errors
    ///
    /// [`StateError`] if the slot is out of range or not `Posted`; nothing changes.
    pub fn lend(&self, slot: u32) -> Result<u32, StateError> {
        // Release: pairs with the Acquire of the give_back that returns this lease, so the
        // poller's earlier work (freeing the slot's previous ring entry, reclaiming it) is
        // visible to the returning thread however the lease reached it. The Recycler relies on
        // this for "a validated return never finds the ring full".
        self.step(
            slot,
            SlotState::Posted,
            SlotState::Lent,
            true,
            Ordering::Release,
        )
    }

    /// Poller: `Returned(gen) -> Free`, after popping `(slot, gen)` from the recycle ring.
    ///
    /// Returns `false` and changes nothing if the slot is not `Returned(gen)` (or out of range),
    /// which the protocol never produces; the caller should log it.
    pub fn reclaim(&self, slot: u32, gen: u32) -> bool {
        let Some(word) = self.word(slot) else {
            return false;
        };
        word.compare_exchange(
            pack(gen, SlotState::Returned),
            pack(gen, SlotState::Free),
            // Acquire: pairs with give_back's Release, so the consumer's last reads of the
            // buffer happen before the poller reposts it and the NIC overwrites it. Through the
            // Recycler the ring's own Release/Acquire already orders this; the Acquire here keeps
            // the table correct when used on its own (and costs nothing on x86).
            Ordering::Acquire,
            // Relaxed: a failed reclaim touches nothing.
            Ordering::Relaxed,
        )
        .is_ok()
    }

    /// Any thread: gives back the lease `(slot, gen)`, moving `Lent(gen) -> Returned(gen)`.
    ///
    /// Exactly one of any number of concurrent returns of the same lease succeeds.
    ///
    /// # Errors
    ///
    /// A rejected return changes no state, is counted in [`rejected`](Self::rejected), and is
    /// reported as [`ReturnError::OutOfRange`], [`ReturnError::Stale`] (wrong generation, or
    /// generation 0) or [`ReturnError::Duplicate`] (right generation, but no longer lent).
    pub fn give_back(&self, slot: u32, gen: u32) -> Result<(), ReturnError> {
        let Some(word) = self.word(slot) else {
            return Err(self.reject(ReturnError::OutOfRange {
                slot,
                slots: self.len(),
            }));
        };
        let lent = pack(gen, SlotState::Lent);
        // Relaxed: a pre-check so that floods of bad returns only read the word (a failed CAS
        // would still take the cache line exclusively); the CAS below decides.
        let seen = word.load(Ordering::Relaxed);
        if seen != lent {
            return Err(self.reject(self.classify(slot, gen, seen)));
        }
        // AcqRel on success: Release publishes the lease holder's reads of the buffer to the
        // poller's Acquire in reclaim; Acquire pairs with lend's Release (see there).
        // Relaxed on failure: a rejected return touches nothing.
        match word.compare_exchange(
            lent,
            pack(gen, SlotState::Returned),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(actual) => Err(self.reject(self.classify(slot, gen, actual))),
        }
    }

    /// Undoes a successful `give_back` (`Returned(gen) -> Lent(gen)`) when the return could not
    /// be queued. Only the thread whose give_back succeeded may call it.
    pub(crate) fn revert_give_back(&self, slot: u32, gen: u32) -> bool {
        self.word(slot).is_some_and(|word| {
            word.compare_exchange(
                pack(gen, SlotState::Returned),
                pack(gen, SlotState::Lent),
                // Relaxed: the slot goes back to the state this thread just saw; nothing to
                // publish (the lease holder's reads were never handed over).
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        })
    }

    fn word(&self, slot: u32) -> Option<&AtomicU64> {
        self.states.get(slot as usize)
    }

    /// Why `(slot, gen)` does not match the state word `seen` (which is not `Lent(gen)`).
    fn classify(&self, slot: u32, gen: u32, seen: u64) -> ReturnError {
        let (_, current) = unpack(seen);
        if current != gen || gen == 0 {
            ReturnError::Stale { slot, gen, current }
        } else {
            ReturnError::Duplicate { slot, gen }
        }
    }

    /// Counts a rejection and hands it back.
    fn reject(&self, err: ReturnError) -> ReturnError {
        let r = &*self.rejections;
        let counter = match err {
            ReturnError::OutOfRange { .. } => &r.out_of_range,
            ReturnError::Stale { .. } => &r.stale,
            ReturnError::Duplicate { .. } => &r.duplicate,
            // Not a judgement on the caller's id, and never raised here.
            ReturnError::RingFull { .. } => return err,
        };
        // Relaxed: a statistics counter.
        counter.fetch_add(1, Ordering::Relaxed);
        err
    }

    /// One poller-side transition `from -> to` (bumping the generation if `bump`), checked.
    fn step(
        &self,
        slot: u32,
        from: SlotState,
        to: SlotState,
        bump: bool,
        success: Ordering,
    ) -> Result<u32, StateError> {
        let error = |found| StateError {
            slot,
            slots: self.len(),
            expected: from,
            found,
        };
        let word = self.word(slot).ok_or_else(|| error(None))?;
        // Relaxed: only read to build the new word; the CAS validates it.
        let seen = word.load(Ordering::Relaxed);
        let (state, gen) = unpack(seen);
        if state != from {
            return Err(error(Some((state, gen))));
        }
        let new_gen = if bump { next_gen(gen) } else { gen };
        // One attempt: give_back only changes Lent slots and the other transitions belong to
        // the poller, so a Free or Posted word can only change under us if two threads drive
        // the poller side at once; report that instead of retrying.
        // Relaxed on failure: nothing changes.
        word.compare_exchange(seen, pack(new_gen, to), success, Ordering::Relaxed)
            .map(|_| new_gen)
            .map_err(|actual| error(Some(unpack(actual))))
    }
}

impl fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlotTable")
            .field("slots", &self.len())
            .field("rejected", &self.rejected())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn lent(table: &SlotTable, slot: u32) -> u32 {
        table.mark_posted(slot).unwrap();
        table.lend(slot).unwrap()
    }

    #[test]
    fn auto_traits() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SlotTable>();
        assert_send_sync::<ReturnError>();
        assert_send_sync::<StateError>();
    }

    #[test]
    fn pack_round_trips() {
        for state in [
            SlotState::Free,
            SlotState::Posted,
            SlotState::Lent,
            SlotState::Returned,
        ] {
            for gen in [0, 1, 7, u32::MAX] {
                assert_eq!(unpack(pack(gen, state)), (state, gen));
            }
        }
    }

    #[test]
    fn new_table_is_all_free_at_generation_zero() {
        let t = SlotTable::new(3);
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty() && SlotTable::new(0).is_empty());
        assert_eq!(t.state(2), Some((SlotState::Free, 0)));
        assert_eq!(t.state(3), None);
        let expected = SlotCounts {
            free: 3,
            ..SlotCounts::default()
        };
        assert_eq!(t.counts(), expected);
        assert_eq!(t.rejected(), RejectCounts::default());
    }

    #[test]
    fn full_cycle_and_generations() {
        let t = SlotTable::new(2);
        t.mark_posted(0).unwrap();
        assert_eq!(t.state(0), Some((SlotState::Posted, 0)));
        assert_eq!(t.lend(0), Ok(1));
        assert_eq!(t.state(0), Some((SlotState::Lent, 1)));
        t.give_back(0, 1).unwrap();
        assert_eq!(t.state(0), Some((SlotState::Returned, 1)));
        assert!(!t.reclaim(0, 2), "wrong generation");
        assert!(t.reclaim(0, 1));
        assert!(!t.reclaim(0, 1), "already Free");
        assert_eq!(t.state(0), Some((SlotState::Free, 1)));
        assert_eq!(lent(&t, 0), 2);
        let c = t.counts();
        assert_eq!((c.free, c.posted, c.lent, c.returned), (1, 0, 1, 0));
        t.mark_posted(1).unwrap();
        t.unpost(1).unwrap();
        assert_eq!(t.state(1), Some((SlotState::Free, 0)));
        assert_eq!(t.rejected().total(), 0);
    }

    #[test]
    fn generation_wraps_skipping_zero() {
        assert_eq!(next_gen(0), 1);
        assert_eq!(next_gen(41), 42);
        assert_eq!(next_gen(u32::MAX), 1);
    }

    #[test]
    fn poller_transitions_from_wrong_state_change_nothing() {
        let t = SlotTable::new(2);
        let err = t.unpost(0).unwrap_err();
        assert_eq!(
            (err.slot, err.expected, err.found),
            (0, SlotState::Posted, Some((SlotState::Free, 0)))
        );
        assert_eq!(
            err.to_string(),
            "slot 0 is Free (generation 0), expected Posted; left unchanged"
        );
        assert_eq!(t.lend(0).unwrap_err().expected, SlotState::Posted);
        let gen = lent(&t, 0);
        assert_eq!(
            t.mark_posted(0).unwrap_err().found,
            Some((SlotState::Lent, gen))
        );
        assert!(t.unpost(0).is_err() && t.lend(0).is_err());
        assert_eq!(t.state(0), Some((SlotState::Lent, gen)));
        t.give_back(0, gen).unwrap();
        assert!(t.mark_posted(0).is_err() && t.unpost(0).is_err() && t.lend(0).is_err());
        assert_eq!(t.state(0), Some((SlotState::Returned, gen)));
        let err = t.lend(7).unwrap_err();
        assert_eq!(err.found, None);
        assert!(err
            .to_string()
            .contains("does not exist (the table has 2 slots"));
        assert!(t.mark_posted(u32::MAX).is_err() && !t.reclaim(u32::MAX, 0));
    }

    #[test]
    fn one_slot_returned_sixteen_times() {
        let t = SlotTable::new(4);
        let gen = lent(&t, 2);
        let results: Vec<_> = (0..16).map(|_| t.give_back(2, gen)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(results[1..]
            .iter()
            .all(|r| *r == Err(ReturnError::Duplicate { slot: 2, gen })));
        assert_eq!(
            t.rejected(),
            RejectCounts {
                duplicate: 15,
                ..RejectCounts::default()
            }
        );
        // Still duplicates after the poller reclaimed and even reposted it.
        assert!(t.reclaim(2, gen));
        assert_eq!(
            t.give_back(2, gen),
            Err(ReturnError::Duplicate { slot: 2, gen })
        );
        t.mark_posted(2).unwrap();
        assert_eq!(
            t.give_back(2, gen),
            Err(ReturnError::Duplicate { slot: 2, gen })
        );
        assert_eq!(t.rejected().duplicate, 17);
        assert_eq!(t.state(2), Some((SlotState::Posted, gen)));
    }

    #[test]
    fn out_of_range_ids_are_rejected_and_counted() {
        let t = SlotTable::new(4);
        for slot in [4, 5, 1 << 31, u32::MAX] {
            assert_eq!(
                t.give_back(slot, 1),
                Err(ReturnError::OutOfRange { slot, slots: 4 })
            );
        }
        assert_eq!(t.rejected().out_of_range, 4);
        assert_eq!(t.rejected().total(), 4);
        assert!(SlotTable::new(0).give_back(0, 0).is_err());
    }

    #[test]
    fn stale_generations_are_rejected_and_counted() {
        let t = SlotTable::new(1);
        let old = lent(&t, 0);
        t.give_back(0, old).unwrap();
        assert!(t.reclaim(0, old));
        let new = lent(&t, 0);
        assert_eq!(new, old + 1);
        for gen in [old, new + 1, u32::MAX] {
            assert_eq!(
                t.give_back(0, gen),
                Err(ReturnError::Stale {
                    slot: 0,
                    gen,
                    current: new
                })
            );
        }
        assert_eq!(t.rejected().stale, 3);
        assert_eq!(
            t.state(0),
            Some((SlotState::Lent, new)),
            "the live lease is untouched"
        );
        t.give_back(0, new).unwrap();
    }

    #[test]
    fn return_of_a_slot_never_lent() {
        let t = SlotTable::new(2);
        // Free and Posted slots at generation 0: no lease ever named them.
        t.mark_posted(1).unwrap();
        for slot in [0, 1] {
            for gen in [0, 1] {
                let err = t.give_back(slot, gen).unwrap_err();
                assert_eq!(
                    err,
                    ReturnError::Stale {
                        slot,
                        gen,
                        current: 0
                    }
                );
            }
        }
        assert_eq!(
            t.give_back(0, 0).unwrap_err().to_string(),
            "slot 0 returned with generation 0, which no lease carries (never lent, or a \
             forged id); nothing was reposted"
        );
        assert_eq!(t.rejected().stale, 5);
        assert_eq!(t.state(0), Some((SlotState::Free, 0)));
        assert_eq!(t.state(1), Some((SlotState::Posted, 0)));
    }

    #[test]
    fn revert_give_back_restores_the_lease() {
        let t = SlotTable::new(1);
        let gen = lent(&t, 0);
        t.give_back(0, gen).unwrap();
        assert!(t.revert_give_back(0, gen));
        assert!(!t.revert_give_back(0, gen));
        assert_eq!(t.state(0), Some((SlotState::Lent, gen)));
    }

    #[test]
    fn error_messages_say_nothing_was_reposted() {
        let errors = [
            ReturnError::OutOfRange { slot: 9, slots: 4 },
            ReturnError::Stale {
                slot: 1,
                gen: 3,
                current: 4,
            },
            ReturnError::Duplicate { slot: 1, gen: 3 },
            ReturnError::RingFull { slot: 1, gen: 3 },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(msg.ends_with("nothing was reposted"), "{msg}");
            assert_eq!(e.slot(), if e == errors[0] { 9 } else { 1 });
        }
        assert!(errors[1]
            .to_string()
            .contains("generation 3, but the slot is at generation 4"));
    }
}
