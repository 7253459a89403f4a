//! [`RecycleRing`]: a bounded lock-free MPSC queue of `u64`, and its single [`RingConsumer`].
//!
//! The ring owns the hand-off of returned buffer ids from whichever thread dropped a lease (or
//! Python's raw return) to the one poller thread that reposts them. Producers claim positions
//! by CAS on `tail` and then store their value into the entry of that position; the value's top
//! bit is the parity of the position's lap (`(p / capacity) & 1`), so the consumer knows an
//! entry is filled for the lap it expects even when producers finish out of claim order. That
//! is Vyukov's per-entry sequence number cut down to one bit, which is enough because the
//! consumer only ever looks at the lap after the one it popped, and it keeps an entry to one
//! `u64`: eight per cache line, as in rtrb. The price is the value range: below 2^63
//! ([`MAX_VALUE`]).
//!
//! Room is decided from the consumer's index, rtrb-style, rather than from the entries: the
//! consumer publishes `head` (a store to a line only it writes) and never writes an entry, so
//! a filled entry's cache line goes one way only, producer to consumer. Producers keep a
//! *cached* copy of `head` beside `tail`, on the line their CAS owns anyway, and read the
//! consumer's line only when that copy says the ring is full. In the common case a push touches
//! the tail line and the entry, and a pop touches the entry and the consumer's own line.
//!
//! Values are kept in `AtomicU64`s rather than in `UnsafeCell`s: on x86-64 their Release stores
//! and Acquire loads compile to plain moves, the crate needs no `unsafe`, and loom checks the
//! value's hand-off.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// One entry of the ring: the value pushed at position `p` (entry `p & mask`) with the parity
/// of `p`'s lap in its top bit ([`LAP_BIT`]). Only producers write it; the consumer reads it as
/// filled for `p` when that bit matches, and otherwise (the previous lap's value, or the
/// initial [`LAP_BIT`], which reads as lap 1) as not yet filled.
type Entry = AtomicU64;

/// The top bit of an entry: its lap's parity.
const LAP_BIT: u64 = 1 << 63;

/// Largest value a [`RecycleRing`] carries: the top bit of an entry holds its lap's parity.
pub const MAX_VALUE: u64 = LAP_BIT - 1;

/// The producers' shared line: the claim counter and their cached copy of the consumer's head.
struct ProducerSide {
    /// Next position a producer claims (CAS).
    tail: AtomicUsize,
    /// A recent value of [`RecycleRing::head`], refreshed by a producer that found the ring
    /// full by it. Never ahead of the real head, so it can only make a push look more full
    /// than it is, and a push that looks full reads the real head before it gives up.
    head_cache: AtomicUsize,
}

/// Largest capacity [`RecycleRing::with_capacity`] accepts: 2^32 entries on 64-bit targets
/// (one per possible `u32` slot id), less where the entry array would not fit in `isize::MAX`
/// bytes.
pub const MAX_CAPACITY: usize = max_capacity();

const fn max_capacity() -> usize {
    // Largest power of two whose entry array fits Rust's allocation limit; at most 2^58 on
    // 64-bit, far below the 2^(usize::BITS - 1) that `claim`'s signed wrapping comparison of
    // positions needs.
    let fit = isize::MAX as usize / std::mem::size_of::<Entry>();
    let layout_max = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    // One entry per u32 id is as many as any user of a u64 queue of ids needs (gdrx's Recycler
    // caps its slots at 2^31; saturates to usize::MAX on 32-bit).
    let id_max = (u32::MAX as usize).saturating_add(1);
    if layout_max < id_max {
        layout_max
    } else {
        id_max
    }
}

/// A bounded lock-free multi-producer single-consumer queue of `u64`.
///
/// [`push`](Self::push) may be called from any number of threads; popping needs the one
/// [`RingConsumer`] handle that [`with_capacity`](Self::with_capacity) returns with the ring
/// (single consumer by construction: the handle is neither `Clone` nor `Sync`). Neither side locks or
/// allocates; the capacity is fixed at construction (rounded up to a power of two, at least 2).
///
/// Ordering: values from one producer come out in the order that producer pushed them. A
/// producer stalled between claiming a position and writing its value holds up the consumer at
/// that position (the consumer sees the ring as empty until the value lands), a property of
/// Vyukov's design; it never loses or reorders anything.
///
/// # Example
///
/// ```
/// use gdrx_ring::{Full, RecycleRing};
///
/// let (ring, mut consumer) = RecycleRing::with_capacity(2);
/// ring.push(7)?;
/// ring.push(8)?;
/// assert_eq!(ring.push(9), Err(Full(9))); // full: the value is handed back
/// assert_eq!(consumer.pop(), Some(7));
/// let mut out = Vec::new();
/// assert_eq!(consumer.drain(16, |v| out.push(v)), 1);
/// assert_eq!(out, [8]);
/// # Ok::<(), Full<u64>>(())
/// ```
pub struct RecycleRing {
    /// Written (CAS) by every producer, read by the consumer never: its own cache line.
    producers: CachePadded<ProducerSide>,
    /// The consumer's next position. Written only by the consumer (after it has read the
    /// entry below it); producers read it only when their cached copy says the ring is full.
    head: CachePadded<AtomicUsize>,
    /// `capacity - 1`; the capacity is a power of two.
    mask: usize,
    /// `log2(capacity)`: position `p` is in lap `p >> lap_shift`.
    lap_shift: u32,
    entries: Box<[Entry]>,
}

impl RecycleRing {
    /// Creates a ring holding at least `n` values (rounded up to a power of two, minimum 2),
    /// and its one consumer handle.
    ///
    /// # Panics
    ///
    /// If `n == 0`, if `n > MAX_CAPACITY`, or if the entry array cannot be allocated.
    pub fn with_capacity(n: usize) -> (Arc<RecycleRing>, RingConsumer) {
        assert!(
            n != 0,
            "RecycleRing::with_capacity: capacity must be at least 1, got 0"
        );
        assert!(
            n <= MAX_CAPACITY,
            "RecycleRing::with_capacity: capacity {n} exceeds MAX_CAPACITY ({MAX_CAPACITY})"
        );
        // Cannot overflow: MAX_CAPACITY is a power of two, so rounding up stays within it.
        let capacity = n.max(2).next_power_of_two();
        let mut entries = Vec::new();
        if entries.try_reserve_exact(capacity).is_err() {
            panic!("RecycleRing::with_capacity: cannot allocate {capacity} entries");
        }
        // Lap parity 1: not filled for the first lap (parity 0).
        entries.extend((0..capacity).map(|_| AtomicU64::new(LAP_BIT)));
        let ring = Arc::new(RecycleRing {
            producers: CachePadded::new(ProducerSide {
                tail: AtomicUsize::new(0),
                head_cache: AtomicUsize::new(0),
            }),
            head: CachePadded::new(AtomicUsize::new(0)),
            mask: capacity - 1,
            lap_shift: capacity.trailing_zeros(),
            entries: entries.into_boxed_slice(),
        });
        let consumer = RingConsumer {
            ring: Arc::clone(&ring),
            head: 0,
            _not_sync: PhantomData,
        };
        (ring, consumer)
    }

    /// The number of values the ring holds when full (a power of two).
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Approximate number of queued values, for metrics: exact when no push or pop runs
    /// concurrently, otherwise a value the ring held at some recent instant.
    pub fn len(&self) -> usize {
        // Acquire: pairs with the consumer's Release store of head. Every position below that
        // head was claimed on `tail` before it was popped, so the tail read below is at least
        // the head read here (the length never comes out negative).
        let head = self.head.load(Ordering::Acquire);
        // Relaxed: any recent tail will do for an approximate length.
        let tail = self.producers.tail.load(Ordering::Relaxed);
        // Claimed-but-unwritten positions count as queued; clamp in case of a racing burst.
        tail.wrapping_sub(head).min(self.capacity())
    }

    /// Whether [`len`](Self::len) is 0 (as approximate as `len`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total number of values ever pushed (modulo `usize`), including the ones still queued.
    pub fn total_pushed(&self) -> u64 {
        // Relaxed: a counter read for metrics; it orders nothing.
        self.producers.tail.load(Ordering::Relaxed) as u64
    }

    /// Pushes `v` from any thread.
    ///
    /// Lock-free: a producer only retries when another producer claimed the same position
    /// first. Never allocates.
    ///
    /// # Errors
    ///
    /// [`Full`] with `v` handed back when every entry holds a value the consumer has not popped
    /// yet (or a producer has claimed but not yet written).
    ///
    /// # Panics
    ///
    /// If `v > MAX_VALUE` (its top bit is the ring's).
    pub fn push(&self, v: u64) -> Result<(), Full<u64>> {
        assert!(
            v <= MAX_VALUE,
            "RecycleRing::push: {v:#x} exceeds MAX_VALUE"
        );
        let Some((pos, _)) = self.claim(1) else {
            return Err(Full(v));
        };
        self.fill(pos, v);
        Ok(())
    }

    /// Pushes a prefix of `vs` from any thread, claiming up to `vs.len()` consecutive
    /// positions with one CAS on the tail (so `k` values cost one contended RMW instead of
    /// `k`), and returns how many it pushed: all of them unless the ring filled up. Values
    /// of one call come out in order; they are consecutive when one claim took them all (when
    /// fewer positions were free, other producers' values may come between the claims).
    ///
    /// Lock-free and allocation-free, like [`push`](Self::push).
    ///
    /// # Panics
    ///
    /// If a value is above [`MAX_VALUE`]; then nothing is pushed.
    pub fn push_slice(&self, vs: &[u64]) -> usize {
        assert!(
            vs.iter().all(|&v| v <= MAX_VALUE),
            "RecycleRing::push_slice: a value exceeds MAX_VALUE"
        );
        let mut done = 0;
        while done < vs.len() {
            let Some((pos, k)) = self.claim(vs.len() - done) else {
                break;
            };
            for (i, &v) in vs[done..done + k].iter().enumerate() {
                self.fill(pos.wrapping_add(i), v);
            }
            done += k;
        }
        done
    }

    /// The lap-parity bit of position `pos`.
    fn lap_bit(&self, pos: usize) -> u64 {
        ((pos >> self.lap_shift) as u64 & 1) * LAP_BIT
    }

    /// Writes `v` into the entry of claimed position `pos`, marked with its lap.
    fn fill(&self, pos: usize, v: u64) {
        // Release: the consumer's Acquire load of the entry sees everything before the push.
        self.entries[pos & self.mask].store(v | self.lap_bit(pos), Ordering::Release);
    }

    /// Claims `k` (1 ..= `want`) consecutive free positions and returns the first; `None` when
    /// the ring is full.
    ///
    /// Position `p` is free once the consumer has popped `p - capacity`, that is once
    /// `p - head < capacity`. The consumer publishes `head` with a Release store after reading
    /// the entries below it, and every path by which a producer learns a head is an Acquire
    /// chain from that store (the real head directly, or `head_cache` stored with Release by a
    /// producer that read it with Acquire), so the consumer's reads of an entry's previous lap
    /// happen before the claimant overwrites it.
    fn claim(&self, want: usize) -> Option<(usize, usize)> {
        let side = &*self.producers;
        let cap = self.capacity();
        // Acquire (here, on the CAS and on its retries): the tail is a chain of RMWs, so
        // reading position `p` synchronises with every producer that claimed a position
        // before `p`, and with whatever happened before those claims. In gdrx that includes
        // the poller publishing the head past a slot's previous return before it re-lent the
        // slot, which is what makes the Recycler's "a validated return never finds the ring
        // full" hold in the memory model and not only on x86: the head this claim reads
        // (below, after this load) is at least that one. (Free on x86; one `ldar` on Arm.)
        let mut pos = side.tail.load(Ordering::Acquire);
        // Acquire: see above; never ahead of the real head.
        let mut head = side.head_cache.load(Ordering::Acquire);
        let mut refreshed = false;
        loop {
            // Signed: a head newer than our (stale) tail reads as negative use.
            let used = pos.wrapping_sub(head) as isize;
            if used < 0 {
                pos = side.tail.load(Ordering::Acquire);
                // The head in hand was read before this `pos`: it may not decide `Full` (in
                // between, a slot can be popped, re-lent and returned again, so `head..pos`
                // could hold one slot twice). Each retry needs the consumer to have advanced.
                refreshed = false;
                continue;
            }
            let free = cap.saturating_sub(used as usize);
            if free == 0 {
                if refreshed {
                    // Full by a head read after `pos` (`refreshed` is cleared whenever `pos`
                    // is reloaded): positions head..pos are all claimed and not popped, and
                    // there are `capacity` of them.
                    return None;
                }
                // Acquire: pairs with the consumer's Release store (see the method docs).
                head = self.head.load(Ordering::Acquire);
                // Release: hands the synchronisation on to producers that read the cache.
                // A racing producer may store an older head; that only costs a later refresh.
                side.head_cache.store(head, Ordering::Release);
                refreshed = true;
                continue;
            }
            let k = want.min(free);
            match side.tail.compare_exchange_weak(
                pos,
                pos.wrapping_add(k),
                // AcqRel on success: Release so the next producer's Acquire read of tail
                // continues the chain described above; Acquire as for the first load.
                // The claim itself is exclusive by RMW atomicity, whatever the ordering.
                Ordering::AcqRel,
                // Acquire on failure: we retry with the position read here.
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((pos, k)),
                Err(current) => {
                    // Another producer claimed first: its view of the head is as good as ours.
                    pos = current;
                    refreshed = false;
                }
            }
        }
    }
}

impl fmt::Debug for RecycleRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecycleRing")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

/// The single consumer of a [`RecycleRing`] (the poller thread).
///
/// `Send` (it can move to the poller thread) but neither `Sync` nor `Clone`: popping needs
/// `&mut self`, and [`RecycleRing::with_capacity`] makes exactly one per ring. Once it is
/// dropped nothing pops the ring again.
///
/// ```compile_fail
/// fn sync<T: Sync>() {}
/// sync::<gdrx_ring::RingConsumer>();
/// ```
///
/// ```compile_fail
/// fn clone<T: Clone>() {}
/// clone::<gdrx_ring::RingConsumer>();
/// ```
pub struct RingConsumer {
    ring: Arc<RecycleRing>,
    /// Next position to pop; owned here, published to `ring.head` after each pop.
    head: usize,
    /// Keeps the handle `!Sync` (a `Cell` is `Send` but not `Sync`).
    _not_sync: PhantomData<Cell<()>>,
}

impl RingConsumer {
    /// The ring this handle pops from.
    pub fn ring(&self) -> &Arc<RecycleRing> {
        &self.ring
    }

    /// Pops the oldest value, or `None` if the ring is empty (or the producer that claimed the
    /// next position has not written it yet).
    pub fn pop(&mut self) -> Option<u64> {
        let pos = self.head;
        let ring = &*self.ring;
        // Acquire: pairs with the producer's Release store of the entry.
        let entry = ring.entries[pos & ring.mask].load(Ordering::Acquire);
        // The entry holds the value of `pos` or of `pos - capacity`: the producer of
        // `pos - capacity` wrote before we popped it, and the producer of `pos` cannot claim
        // `pos + capacity` before we pop `pos`. The lap bit tells the two apart.
        if entry & LAP_BIT != ring.lap_bit(pos) {
            // Empty, or the producer that claimed `pos` is still writing.
            return None;
        }
        let v = entry & MAX_VALUE;
        self.head = pos.wrapping_add(1);
        // Release: frees the entry for the producer one lap ahead, after our read of it; pairs
        // with the Acquire loads in `claim`. A store to a line only this handle writes, which
        // producers read only when the ring looks full, so publishing per pop is cheap, and it
        // lets a `drain` callback push into the same ring.
        ring.head.store(self.head, Ordering::Release);
        Some(v)
    }

    /// Pops up to `max` values, calling `f` on each in order, and returns how many it popped.
    /// Stops early when the ring is empty.
    ///
    /// Each entry is freed for producers before `f` sees its value, so `f` may push to the same
    /// ring (as long as it is not full).
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(u64)) -> usize {
        let mut popped = 0;
        while popped < max {
            let Some(v) = self.pop() else { break };
            popped += 1;
            f(v);
        }
        popped
    }
}

impl fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConsumer")
            .field("head", &self.head)
            .field("ring", &self.ring)
            .finish()
    }
}

/// The error of a push onto a full ring; hands the value back (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Full<T>(pub T);

impl<T> Full<T> {
    /// The value that was not pushed.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Display for Full<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ring is full; the value was handed back to the caller")
    }
}

impl<T: fmt::Debug> std::error::Error for Full<T> {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>() {}

    #[test]
    fn batch_pushes_claim_what_fits_in_order_across_the_wrap() {
        let (ring, mut c) = RecycleRing::with_capacity(8);
        assert_eq!(ring.push_slice(&[1, 2, 3]), 3);
        assert_eq!(c.pop(), Some(1));
        assert_eq!(
            ring.push_slice(&[4, 5, 6, 7, 8, 9, 10]),
            6,
            "8 entries, 2 still held"
        );
        let mut out = Vec::new();
        c.drain(usize::MAX, |v| out.push(v));
        assert_eq!(out, [2, 3, 4, 5, 6, 7, 8, 9]);
        // Across the wrap, after laps of single and batch pushes.
        for lap in 0..5u64 {
            assert_eq!(ring.push_slice(&[lap, lap + 100, lap + 200]), 3);
            ring.push(lap + 300).unwrap();
            let mut got = Vec::new();
            c.drain(usize::MAX, |v| got.push(v));
            assert_eq!(got, [lap, lap + 100, lap + 200, lap + 300]);
        }
        assert_eq!(ring.push_slice(&[]), 0);
        assert_eq!(ring.total_pushed(), 3 + 6 + 5 * 4);
        assert!(ring.is_empty());
    }

    #[test]
    fn a_batch_into_a_full_ring_pushes_nothing() {
        let (ring, mut c) = RecycleRing::with_capacity(2);
        assert_eq!(ring.push_slice(&[1, 2, 3]), 2);
        assert_eq!(ring.push_slice(&[4]), 0);
        assert_eq!(c.pop(), Some(1));
        assert_eq!(ring.push_slice(&[5, 6]), 1, "one entry was free");
        let mut out = Vec::new();
        c.drain(usize::MAX, |v| out.push(v));
        assert_eq!(out, [2, 5]);
    }

    #[test]
    fn auto_traits() {
        assert_send_sync::<RecycleRing>();
        assert_send::<RingConsumer>();
        assert_send_sync::<Full<u64>>();
    }

    #[test]
    fn capacity_rounds_up_to_power_of_two_at_least_two() {
        for (n, cap) in [
            (1, 2),
            (2, 2),
            (3, 4),
            (4, 4),
            (5, 8),
            (1000, 1024),
            (1024, 1024),
        ] {
            assert_eq!(RecycleRing::with_capacity(n).0.capacity(), cap, "n = {n}");
        }
    }

    #[test]
    #[should_panic(expected = "capacity must be at least 1")]
    fn zero_capacity_panics() {
        RecycleRing::with_capacity(0);
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_CAPACITY")]
    fn huge_capacity_panics() {
        RecycleRing::with_capacity(MAX_CAPACITY + 1);
    }

    #[test]
    fn max_capacity_is_a_power_of_two_covering_u32_ids() {
        assert!(MAX_CAPACITY.is_power_of_two());
        if usize::BITS == 64 {
            assert_eq!(MAX_CAPACITY, 1 << 32);
        }
    }

    #[test]
    fn fifo_full_and_len() {
        let (ring, mut c) = RecycleRing::with_capacity(4);
        assert!(ring.is_empty());
        assert_eq!(c.pop(), None);
        for v in 10..14 {
            ring.push(v).unwrap();
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.push(99), Err(Full(99)));
        assert_eq!(ring.push(99).unwrap_err().into_inner(), 99);
        assert_eq!(c.pop(), Some(10));
        assert_eq!(ring.len(), 3);
        ring.push(14).unwrap();
        let mut got = Vec::new();
        assert_eq!(c.drain(usize::MAX, |v| got.push(v)), 4);
        assert_eq!(got, [11, 12, 13, 14]);
        assert!(ring.is_empty());
        assert_eq!(ring.total_pushed(), 5);
    }

    #[test]
    fn wraps_around_many_laps() {
        let (ring, mut c) = RecycleRing::with_capacity(2);
        for lap in 0..1000u64 {
            ring.push(2 * lap).unwrap();
            ring.push(2 * lap + 1).unwrap();
            assert_eq!(ring.push(MAX_VALUE), Err(Full(MAX_VALUE)));
            assert_eq!(c.pop(), Some(2 * lap));
            assert_eq!(c.pop(), Some(2 * lap + 1));
            assert_eq!(c.pop(), None);
        }
    }

    #[test]
    fn the_full_value_range_survives_every_lap_parity() {
        // The top bit is the ring's: values with every other bit set come out unchanged on
        // even and odd laps, through single and batch pushes.
        let (ring, mut c) = RecycleRing::with_capacity(2);
        for lap in 0..6u64 {
            ring.push(MAX_VALUE).unwrap();
            assert_eq!(ring.push_slice(&[lap]), 1);
            assert_eq!(c.pop(), Some(MAX_VALUE), "lap {lap}");
            assert_eq!(c.pop(), Some(lap));
            assert_eq!(c.pop(), None);
        }
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_VALUE")]
    fn a_value_with_the_lap_bit_set_panics() {
        let (ring, _c) = RecycleRing::with_capacity(2);
        let _ = ring.push(MAX_VALUE + 1);
    }

    #[test]
    #[should_panic(expected = "exceeds MAX_VALUE")]
    fn a_batch_with_a_value_above_max_panics_before_pushing() {
        let (ring, _c) = RecycleRing::with_capacity(2);
        ring.push_slice(&[1, u64::MAX]);
    }

    #[test]
    fn drain_respects_max() {
        let (ring, mut c) = RecycleRing::with_capacity(8);
        for v in 0..6 {
            ring.push(v).unwrap();
        }
        let mut got = Vec::new();
        assert_eq!(c.drain(4, |v| got.push(v)), 4);
        assert_eq!(c.drain(0, |v| got.push(v)), 0);
        assert_eq!(ring.len(), 2);
        assert_eq!(c.drain(4, |v| got.push(v)), 2);
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_panicking_drain_callback_leaves_what_it_popped_popped() {
        let (ring, mut c) = RecycleRing::with_capacity(4);
        ring.push(1).unwrap();
        ring.push(2).unwrap();
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            c.drain(2, |v| assert_eq!(v, 2, "boom"));
        }));
        assert!(res.is_err());
        // The value popped before the panic is accounted for: one left.
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn debug_and_display() {
        let (_ring, c) = RecycleRing::with_capacity(2);
        let d = format!("{c:?}");
        assert!(d.contains("capacity: 2") && d.contains("len: 0"), "{d}");
        assert_eq!(
            Full(3u64).to_string(),
            "ring is full; the value was handed back to the caller"
        );
    }
}
