//! [`RecycleRing`]: a bounded lock-free MPSC queue of `u64`, and its single [`RingConsumer`].
//!
//! The ring owns the hand-off of returned buffer ids from whichever thread dropped a lease (or
//! Python's raw return) to the one poller thread that reposts them. It is Dmitry Vyukov's bounded
//! queue specialised for one consumer: every entry carries a sequence number that says whether it
//! is free for the producer of position `p` (`seq == p`) or holds that producer's value
//! (`seq == p + 1`). Producers claim a position by CAS on `tail`; the consumer owns `head` in its
//! handle and publishes it only so that [`RecycleRing::len`] can report a depth.
//!
//! Why the handles cache no index of the other side (the rtrb pattern): in rtrb a producer reads
//! the consumer's `head` to see whether there is room, so caching it saves a cache-line transfer
//! per push. Here the per-entry sequence number answers both questions (room for a producer, data
//! for the consumer) from the entry the caller touches anyway, so producers never read `head`
//! and the consumer never reads `tail`; there is nothing to cache. The consumer's own index lives
//! in [`RingConsumer`] (not shared), and is published with one store per pop or per batch.
//!
//! Values are kept in `AtomicU64`s accessed with `Relaxed` rather than in `UnsafeCell`s: on
//! 64-bit targets those compile to plain loads and stores, the crate needs no `unsafe`, and loom
//! checks the value's hand-off along with the sequence numbers.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// One entry of the ring.
struct Entry {
    /// Vyukov sequence number. For position `p` (entry `p & mask`): `p` means free for the
    /// producer of `p`, `p + 1` means it holds the value pushed at `p`; the consumer frees it
    /// for the next lap by storing `p + capacity`.
    seq: AtomicUsize,
    /// The value pushed at the position `seq` names; ordered by `seq`, so always `Relaxed`.
    value: AtomicU64,
}

/// Largest capacity [`RecycleRing::with_capacity`] accepts: 2^32 entries on 64-bit targets
/// (one per possible `u32` slot id), less where the entry array would not fit in `isize::MAX`
/// bytes.
pub const MAX_CAPACITY: usize = max_capacity();

const fn max_capacity() -> usize {
    // Largest power of two whose entry array fits Rust's allocation limit; at most 2^58 on
    // 64-bit, far below the 2^(usize::BITS - 1) that the wrapping sequence comparison needs.
    let fit = isize::MAX as usize / std::mem::size_of::<Entry>();
    let layout_max = 1usize << (usize::BITS - 1 - fit.leading_zeros());
    // One entry per u32 slot id is all gdrx can use (saturates to usize::MAX on 32-bit).
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
    /// Next position a producer claims. Written (CAS) by every producer, so it gets its own
    /// cache line.
    tail: CachePadded<AtomicUsize>,
    /// The consumer's next position, published for `len()`.
    /// Written only by the consumer; own cache line so producers' CAS traffic never hits it.
    head: CachePadded<AtomicUsize>,
    /// `capacity - 1`; the capacity is a power of two.
    mask: usize,
    entries: Box<[Entry]>,
}

impl RecycleRing {
    /// Creates a ring holding at least `n` values (rounded up to a power of two, minimum 2:
    /// Vyukov's sequence numbers need two states per lap), and its one consumer handle.
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
        entries.extend((0..capacity).map(|i| Entry {
            seq: AtomicUsize::new(i),
            value: AtomicU64::new(0),
        }));
        let ring = Arc::new(RecycleRing {
            tail: CachePadded::new(AtomicUsize::new(0)),
            head: CachePadded::new(AtomicUsize::new(0)),
            mask: capacity - 1,
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
        let tail = self.tail.load(Ordering::Relaxed);
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
        self.tail.load(Ordering::Relaxed) as u64
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
    pub fn push(&self, v: u64) -> Result<(), Full<u64>> {
        // Acquire (here and on the CAS below): the tail is a chain of RMWs, so reading position
        // `p` synchronises with every producer that claimed a position before `p`, and with
        // whatever happened before those claims. In gdrx that includes the poller freeing the
        // entry one lap back before it re-lent a slot, which is what makes the Recycler's
        // "a validated return never finds the ring full" hold in the memory model and not
        // only on x86. (Free on x86; one `ldar` on Arm.)
        let mut pos = self.tail.load(Ordering::Acquire);
        loop {
            let entry = &self.entries[pos & self.mask];
            // Acquire: pairs with the consumer's Release store that freed this entry, so its
            // read of the previous lap's value happens before our store overwrites it.
            let seq = entry.seq.load(Ordering::Acquire);
            // Wrapping difference read as signed: positions wrap around usize, and the
            // capacity is far below usize::MAX / 2, so the sign is never ambiguous.
            let lag = seq.wrapping_sub(pos) as isize;
            if lag == 0 {
                // The entry is free for position `pos`: claim it.
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    // AcqRel on success: Release so the next producer's Acquire read of tail
                    // continues the chain described above; Acquire as for the first load.
                    // The claim itself is exclusive by RMW atomicity, whatever the ordering.
                    Ordering::AcqRel,
                    // Acquire on failure: we retry with the position read here.
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // Relaxed: published by the Release store of `seq` just below.
                        entry.value.store(v, Ordering::Relaxed);
                        // Release: makes the value visible to the consumer's Acquire load of
                        // `seq`; `pos + 1` marks the entry full for position `pos`.
                        entry.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => pos = current,
                }
            } else if lag < 0 {
                // The entry still holds (or is being filled with) the value from one lap
                // back that the consumer has not popped: the ring is full.
                return Err(Full(v));
            } else {
                // Another producer claimed and filled `pos` since we read tail: catch up.
                // Acquire: as for the first load of tail.
                pos = self.tail.load(Ordering::Acquire);
            }
        }
    }
}

impl RecycleRing {
    /// Pushes a prefix of `vs` from any thread, claiming up to `vs.len()` consecutive
    /// positions with one CAS on the tail (so `k` values cost one contended RMW instead of
    /// `k`), and returns how many it pushed: all of them unless the ring filled up. Values
    /// of one call come out in order; they are consecutive when one claim took them all (when
    /// fewer positions were free, other producers' values may come between the claims).
    ///
    /// Lock-free and allocation-free, like [`push`](Self::push).
    pub fn push_slice(&self, vs: &[u64]) -> usize {
        let mut done = 0;
        while done < vs.len() {
            let Some((pos, k)) = self.claim(vs.len() - done) else {
                break;
            };
            for (i, &v) in vs[done..done + k].iter().enumerate() {
                let p = pos.wrapping_add(i);
                let entry = &self.entries[p & self.mask];
                // As in `push`: the value is published by the Release store of `seq`.
                entry.value.store(v, Ordering::Relaxed);
                entry.seq.store(p.wrapping_add(1), Ordering::Release);
            }
            done += k;
        }
        done
    }

    /// Claims `k` (1 ..= `want`) consecutive free positions; `None` when the ring is full.
    ///
    /// The consumer frees entries in position order, so when the entry of position
    /// `pos + k - 1` is free for it, every entry from `pos` is free too; the Acquire load of
    /// that last entry's `seq` synchronises with the consumer's Release store that freed it,
    /// which follows (in its program order) the frees of the earlier ones.
    fn claim(&self, want: usize) -> Option<(usize, usize)> {
        // Acquire: as in `push`.
        let mut pos = self.tail.load(Ordering::Acquire);
        let mut k = want.min(self.capacity());
        loop {
            let last = pos.wrapping_add(k - 1);
            let seq = self.entries[last & self.mask].seq.load(Ordering::Acquire);
            let lag = seq.wrapping_sub(last) as isize;
            if lag == 0 {
                match self.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(k),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some((pos, k)),
                    Err(current) => pos = current,
                }
            } else if lag < 0 {
                // Fewer than `k` free: try fewer; none free is a full ring.
                if k == 1 {
                    return None;
                }
                k /= 2;
            } else {
                // Another producer claimed past `pos`: catch up.
                pos = self.tail.load(Ordering::Acquire);
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
    /// Next position to pop; owned here, published to `ring.head` for `len()`.
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
        let v = self.take()?;
        self.publish_head();
        Some(v)
    }

    /// Pops up to `max` values, calling `f` on each in order, and returns how many it popped.
    /// Stops early when the ring is empty. The head is published once for the whole batch.
    ///
    /// Each entry is freed for producers before `f` sees its value, so `f` may push to the same
    /// ring (as long as it is not full).
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(u64)) -> usize {
        let mut popped = 0;
        while popped < max {
            let Some(v) = self.take() else { break };
            popped += 1;
            f(v);
        }
        if popped > 0 {
            self.publish_head();
        }
        popped
    }

    /// Pops one value without publishing the head.
    fn take(&mut self) -> Option<u64> {
        let pos = self.head;
        let ring = &*self.ring;
        let entry = &ring.entries[pos & ring.mask];
        // Acquire: pairs with the producer's Release store of `seq`, making its value visible.
        let seq = entry.seq.load(Ordering::Acquire);
        if seq != pos.wrapping_add(1) {
            // We popped every earlier lap, so the entry is free for `pos` (`seq == pos`):
            // empty, or the producer that claimed `pos` is still writing.
            debug_assert_eq!(seq, pos, "RecycleRing: entry sequence out of step");
            return None;
        }
        // Relaxed: ordered by the Acquire load of `seq` above.
        let v = entry.value.load(Ordering::Relaxed);
        // Release: frees the entry for the producer one lap ahead; pairs with its Acquire load
        // of `seq`, so our value load happens before its overwrite.
        entry
            .seq
            .store(pos.wrapping_add(ring.capacity()), Ordering::Release);
        self.head = pos.wrapping_add(1);
        Some(v)
    }

    fn publish_head(&self) {
        // Release: pairs with len()'s Acquire load (see there).
        self.ring.head.store(self.head, Ordering::Release);
    }
}

impl Drop for RingConsumer {
    fn drop(&mut self) {
        // Published already unless `drain`'s callback panicked; cheap to repeat, and keeps
        // `len()` exact for the producers that outlive the handle.
        self.publish_head();
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
            assert!(ring.push(u64::MAX).is_err());
            assert_eq!(c.pop(), Some(2 * lap));
            assert_eq!(c.pop(), Some(2 * lap + 1));
            assert_eq!(c.pop(), None);
        }
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
    fn consumer_drop_after_panicking_callback_publishes_head() {
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
