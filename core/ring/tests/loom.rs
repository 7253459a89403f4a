//! Loom models of the recycle ring and the return protocol.
//!
//! Run with (see the crate docs):
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p gdrx-ring --release --target-dir target/loom --test loom
//! ```
//!
//! Each model is kept to a few threads and operations, with a preemption bound, so the whole file
//! finishes in seconds. `LOOM_MAX_PREEMPTIONS` overrides the bound for a deeper search.

#![cfg(loom)]

use std::sync::Arc;

use gdrx_ring::{Full, RecycleRing, Recycler, ReturnError, SlotState};
use loom::thread;

/// Explores every interleaving of `f` with at most `LOOM_MAX_PREEMPTIONS` (default 4)
/// preemptions per execution.
fn model(f: impl Fn() + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(4);
    }
    builder.check(f);
}

fn producer_of(v: u64) -> u64 {
    v >> 32
}

fn lend(r: &Recycler, slot: u32) -> u32 {
    r.slots().mark_posted(slot).unwrap();
    r.slots().lend(slot).unwrap()
}

#[test]
fn two_producers_one_consumer_no_loss_no_duplicate_fifo() {
    model(|| {
        let (ring, mut consumer) = RecycleRing::with_capacity(4);
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || {
                    for i in 0..2 {
                        ring.push((p << 32) | i).unwrap();
                    }
                })
            })
            .collect();
        // Pop while the producers run, then take what is left once they are done.
        let mut got = Vec::new();
        for _ in 0..2 {
            got.extend(consumer.pop());
        }
        for p in producers {
            p.join().unwrap();
        }
        consumer.drain(usize::MAX, |v| got.push(v));
        assert_eq!(got.len(), 4, "lost or duplicated values: {got:?}");
        for p in 0..2 {
            let mine: Vec<u64> = got
                .iter()
                .copied()
                .filter(|&v| producer_of(v) == p)
                .collect();
            assert_eq!(mine, [p << 32, (p << 32) | 1], "per-producer FIFO: {got:?}");
        }
        assert!(ring.is_empty());
    });
}

#[test]
fn a_batch_push_racing_a_single_push_and_the_consumer_loses_nothing() {
    model(|| {
        let (ring, mut consumer) = RecycleRing::with_capacity(4);
        // Fill one entry and pop it, so that the batch claims across the wrap.
        ring.push(99).unwrap();
        let mut got = Vec::new();
        got.extend(consumer.pop());
        let batch = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.push_slice(&[(1 << 32), (1 << 32) | 1, (1 << 32) | 2]))
        };
        let single = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.push(2 << 32).is_ok())
        };
        got.extend(consumer.pop());
        let pushed = batch.join().unwrap();
        let one = single.join().unwrap();
        consumer.drain(usize::MAX, |v| got.push(v));
        assert_eq!(got[0], 99);
        let rest = &got[1..];
        assert_eq!(rest.len(), pushed + usize::from(one), "{got:?}");
        let batch_vals: Vec<u64> = rest
            .iter()
            .copied()
            .filter(|&v| producer_of(v) == 1)
            .collect();
        assert_eq!(batch_vals.len(), pushed);
        for (i, v) in batch_vals.iter().enumerate() {
            assert_eq!(
                *v & 0xffff_ffff,
                i as u64,
                "a batch comes out in order: {got:?}"
            );
        }
        // Capacity 4, at most 4 queued at once: everything fits unless the ring was full.
        assert!(
            pushed >= 1,
            "a ring with room takes at least one of a batch"
        );
    });
}

#[test]
fn push_on_full_ring_hands_value_back_and_loses_nothing() {
    model(|| {
        let (ring, mut consumer) = RecycleRing::with_capacity(2);
        ring.push(0).unwrap();
        ring.push(1).unwrap();
        assert_eq!(ring.push(9), Err(Full(9)));
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || ring.push(2))
        };
        // Frees one entry while the producer may be looking at it.
        assert_eq!(consumer.pop(), Some(0));
        let pushed = producer.join().unwrap();
        let mut rest = Vec::new();
        consumer.drain(usize::MAX, |v| rest.push(v));
        match pushed {
            Ok(()) => assert_eq!(rest, [1, 2]),
            Err(Full(v)) => {
                assert_eq!(v, 2, "Full hands the same value back");
                assert_eq!(rest, [1]);
            }
        }
    });
}

#[test]
fn producers_refreshing_a_stale_head_cache_on_the_next_lap_lose_nothing() {
    // A full 2-entry ring: the producers' cached head says full, the consumer frees both
    // entries while two producers push once each (racing each other's refreshes of the cache
    // and their claims), and their values land one lap on, where only the lap bit tells them
    // from the old ones. A push that found the ring full is retried once the consumer is
    // done: by then the cache is stale, and the retry must refresh it and succeed.
    model(|| {
        let (ring, mut consumer) = RecycleRing::with_capacity(2);
        ring.push(0).unwrap();
        ring.push(1).unwrap();
        let producers: Vec<_> = (1..=2u64)
            .map(|p| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || ring.push(p << 32))
            })
            .collect();
        let mut got = Vec::new();
        got.extend(consumer.pop());
        got.extend(consumer.pop());
        assert_eq!(got, [0, 1], "the first lap, in order");
        for p in producers {
            if let Err(Full(v)) = p.join().unwrap() {
                ring.push(v).expect("two entries were freed for two pushes");
            }
        }
        let mut late = Vec::new();
        consumer.drain(usize::MAX, |v| late.push(v));
        late.sort_unstable();
        assert_eq!(
            late,
            [1 << 32, 2 << 32],
            "each producer's value exactly once"
        );
    });
}

#[test]
fn wrap_around_capacity_two_several_laps() {
    const N: u64 = 5; // two and a half laps of a 2-entry ring
    model(|| {
        let (ring, mut consumer) = RecycleRing::with_capacity(2);
        let producer = {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                for v in 0..N {
                    while ring.push(v).is_err() {
                        thread::yield_now();
                    }
                }
            })
        };
        let mut next = 0;
        while next < N {
            match consumer.pop() {
                Some(v) => {
                    assert_eq!(v, next, "FIFO across laps");
                    next += 1;
                }
                None => thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert_eq!(consumer.pop(), None);
        assert_eq!(ring.total_pushed(), N);
    });
}

#[test]
fn concurrent_double_return_exactly_one_wins() {
    model(|| {
        let (r, mut poller) = Recycler::new(2);
        let gen = lend(&r, 0);
        let returners: Vec<_> = (0..2)
            .map(|_| {
                let r = Arc::clone(&r);
                thread::spawn(move || r.give_back(0, gen))
            })
            .collect();
        // The poller drains while the returns race.
        let mut drained = Vec::new();
        poller.drain(usize::MAX, |s| drained.push(s));
        let results: Vec<_> = returners.into_iter().map(|t| t.join().unwrap()).collect();
        poller.drain(usize::MAX, |s| drained.push(s));
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        assert!(results.contains(&Err(ReturnError::Duplicate { slot: 0, gen })));
        assert_eq!(drained, [0], "exactly one entry queued");
        assert_eq!(r.slots().rejected().duplicate, 1);
        assert_eq!(r.slots().rejected().total(), 1);
        assert_eq!(r.slots().state(0), Some((SlotState::Free, gen)));
        assert_eq!(r.recycled(), 1);
    });
}

#[test]
fn return_races_reclaim_and_relend_stale_is_rejected() {
    model(|| {
        let (r, mut poller) = Recycler::new(1);
        let g1 = lend(&r, 0);
        // The lease holder and a buggy second return of the same lease.
        let returners: Vec<_> = (0..2)
            .map(|_| {
                let r = Arc::clone(&r);
                thread::spawn(move || r.give_back(0, g1))
            })
            .collect();
        // Poller: wait for the slot, reclaim it, repost it, and lend it again.
        while poller.drain(1, |s| assert_eq!(s, 0)) == 0 {
            thread::yield_now();
        }
        r.slots().mark_posted(0).unwrap();
        let g2 = r.slots().lend(0).unwrap();
        assert_eq!(g2, g1 + 1);
        let results: Vec<_> = returners.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        let rejected = results.iter().find_map(|r| r.err()).unwrap();
        assert!(
            rejected == ReturnError::Duplicate { slot: 0, gen: g1 }
                || rejected
                    == ReturnError::Stale {
                        slot: 0,
                        gen: g1,
                        current: g2
                    },
            "{rejected:?}"
        );
        // The new lease is unaffected and comes back exactly once.
        r.give_back(0, g2).unwrap();
        let mut drained = Vec::new();
        poller.drain(usize::MAX, |s| drained.push(s));
        assert_eq!(drained, [0]);
        assert_eq!(r.slots().rejected().total(), 1);
        assert_eq!(r.recycled(), 2);
        assert_eq!(r.reclaim_failures(), 0);
    });
}

#[test]
fn validated_return_never_finds_the_ring_full() {
    // Two slots, a 2-entry ring. Slot 0 is returned, reclaimed, re-lent and returned again
    // while slot 1's return is in flight, so slot 1's push can land one lap after slot 0's
    // first entry: it must see that entry freed (through the tail's Acquire/Release chain)
    // even though nothing else orders it after the poller.
    model(|| {
        let (r, mut poller) = Recycler::new(2);
        let a1 = lend(&r, 0);
        let b1 = lend(&r, 1);
        let ra = {
            let r = Arc::clone(&r);
            thread::spawn(move || r.give_back(0, a1))
        };
        let rb = {
            let r = Arc::clone(&r);
            thread::spawn(move || r.give_back(1, b1))
        };
        let mut drained = Vec::new();
        while !drained.contains(&0) {
            if poller.drain(1, |s| drained.push(s)) == 0 {
                thread::yield_now();
            }
        }
        r.slots().mark_posted(0).unwrap();
        let a2 = r.slots().lend(0).unwrap();
        assert_eq!(r.give_back(0, a2), Ok(()));
        assert_eq!(ra.join().unwrap(), Ok(()));
        assert_eq!(rb.join().unwrap(), Ok(()));
        poller.drain(usize::MAX, |s| drained.push(s));
        drained.sort_unstable();
        assert_eq!(drained, [0, 0, 1]);
        assert_eq!(r.slots().rejected().total(), 0);
        assert_eq!(r.slots().counts().free, 2);
    });
}

#[test]
fn a_return_whose_tail_went_stale_across_pops_never_finds_the_ring_full() {
    // Two slots, a 2-entry ring. Slot 1's return is in flight while slot 0 goes round five
    // times on the poller's thread (returned, drained, lent again), taking the tail from 0 to
    // 5. Slot 1's return may read the tail early (2), then a head newer than it (3), then the
    // tail again (5): from that head it would look full, yet positions 3 and 4 can both be
    // slot 0's, popped in between. It may only decide Full on a head read after its tail.
    model(|| {
        let (r, mut poller) = Recycler::new(2);
        let b = lend(&r, 1);
        let mut a = lend(&r, 0);
        let rb = {
            let r = Arc::clone(&r);
            thread::spawn(move || r.give_back(1, b))
        };
        let mut ones = 0;
        for _ in 0..5 {
            assert_eq!(r.give_back(0, a), Ok(()));
            let mut zero = false;
            while !zero {
                let n = poller.drain(1, |s| match s {
                    0 => zero = true,
                    _ => ones += 1,
                });
                if n == 0 {
                    thread::yield_now();
                }
            }
            a = lend(&r, 0);
        }
        assert_eq!(
            rb.join().unwrap(),
            Ok(()),
            "a validated return found the ring full"
        );
        poller.drain(usize::MAX, |s| {
            assert_eq!(s, 1);
            ones += 1;
        });
        assert_eq!(ones, 1);
        assert_eq!(r.slots().rejected().total(), 0);
    });
}

#[test]
fn lease_learned_without_synchronization_still_finds_room() {
    // The returner learns of each new lease only by retrying give_back until the slot word says
    // Lent(gen): no channel orders it after the poller. Its third return lands one lap after
    // its first and must see that entry freed by the poller, which only lend's Release (paired
    // with give_back's Acquire) guarantees.
    model(|| {
        let (r, mut poller) = Recycler::new(1);
        let g1 = lend(&r, 0);
        let returner = {
            let r = Arc::clone(&r);
            thread::spawn(move || {
                for gen in g1..g1 + 3 {
                    loop {
                        match r.give_back(0, gen) {
                            Ok(()) => break,
                            Err(ReturnError::Stale { .. }) => thread::yield_now(),
                            Err(e) => panic!("return of a live lease failed: {e}"),
                        }
                    }
                }
            })
        };
        for round in 0..3 {
            while poller.drain(1, |s| assert_eq!(s, 0)) == 0 {
                thread::yield_now();
            }
            if round < 2 {
                lend(&r, 0);
            }
        }
        returner.join().unwrap();
        assert_eq!(r.recycled(), 3);
        assert_eq!(r.slots().state(0), Some((SlotState::Free, g1 + 2)));
    });
}

// The raw-return flag hand-off of gdrx-pool's leases (core/pool/src/lease.rs), modelled on the
// real slot table with the same orderings. Per slot the pool keeps a flag "this generation was
// turned into a raw pair" next to the table:
// - the poller clears it (Relaxed) just before `lend` (Release) makes a new generation a `Lease`;
// - `Lease::into_raw` sets it (Release);
// - `Returner::give_back(slot, gen)` reads the state (Acquire) and, when it shows `Lent(gen)`,
//   refuses the return as "held by a live Lease" unless it sees the flag (Acquire).
// These helpers are line-for-line copies of those three steps.

/// `Returner::give_back`'s decision: `Err(None)` for "held by a live Lease", `Err(Some(_))`
/// for a protocol rejection.
fn raw_return(
    r: &Recycler,
    raw: &loom::sync::atomic::AtomicBool,
    slot: u32,
    gen: u32,
) -> Result<(), Option<ReturnError>> {
    use loom::sync::atomic::Ordering;
    if let Some((SlotState::Lent, cur)) = r.slots().state(slot) {
        if cur == gen && !raw.load(Ordering::Acquire) {
            return Err(None);
        }
    }
    r.give_back(slot, gen).map_err(Some)
}

/// The poller's lend of a slot as a `Lease` (`Pool::complete`).
fn lend_as_lease(r: &Recycler, raw: &loom::sync::atomic::AtomicBool, slot: u32) -> u32 {
    use loom::sync::atomic::Ordering;
    r.slots().mark_posted(slot).unwrap();
    raw.store(false, Ordering::Relaxed);
    r.slots().lend(slot).unwrap()
}

#[test]
fn raw_flag_of_an_old_generation_never_frees_a_new_lease() {
    use loom::sync::atomic::{AtomicBool, Ordering};
    model(|| {
        let (r, mut consumer) = Recycler::new(1);
        let raw = Arc::new(AtomicBool::new(false));
        // Generation g0: lent as a Lease, turned raw, returned raw, drained by the poller.
        let g0 = lend_as_lease(&r, &raw, 0);
        raw.store(true, Ordering::Release);
        raw_return(&r, &raw, 0, g0).unwrap();
        assert_eq!(consumer.drain(usize::MAX, |_| {}), 1);

        // The poller lends the slot again as a Lease while a forger, who guesses the new
        // generation from the table, tries to return it raw. The old generation's flag is still
        // set when the race starts.
        let (r2, raw2) = (Arc::clone(&r), Arc::clone(&raw));
        let poller = thread::spawn(move || lend_as_lease(&r2, &raw2, 0));
        // The forger runs on a thread of its own: with it on the model's main thread after the
        // setup, loom ran a single interleaving here. Checked: this model fails when the poller
        // clears the flag after `lend` instead of before.
        let (r3, raw3) = (Arc::clone(&r), Arc::clone(&raw));
        let forger = thread::spawn(move || match r3.slots().state(0) {
            Some((SlotState::Lent, cur)) => raw_return(&r3, &raw3, 0, cur),
            _ => raw_return(&r3, &raw3, 0, g0),
        });
        let g1 = poller.join().unwrap();
        let forged = forger.join().unwrap();
        assert!(
            forged.is_err(),
            "a raw return freed slot 0 while a Lease held generation {g1}"
        );
        // The Lease still owns the slot.
        assert_eq!(r.slots().state(0), Some((SlotState::Lent, g1)));
    });
}

#[test]
fn a_pair_handed_off_after_into_raw_is_always_accepted_once() {
    use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    model(|| {
        let (r, _poller) = Recycler::new(1);
        let raw = Arc::new(AtomicBool::new(false));
        let gen = lend_as_lease(&r, &raw, 0);
        // The consumer thread turns its Lease into a raw pair and hands it to another thread
        // (a Python deleter, a C caller) through a plain atomic.
        let mailbox = Arc::new(AtomicU32::new(u32::MAX));
        let (raw2, mb2) = (Arc::clone(&raw), Arc::clone(&mailbox));
        let consumer = thread::spawn(move || {
            raw2.store(true, Ordering::Release); // Lease::into_raw
            mb2.store(gen, Ordering::Release);
        });
        let got = loop {
            match mailbox.load(Ordering::Acquire) {
                u32::MAX => thread::yield_now(),
                g => break g,
            }
        };
        assert_eq!(raw_return(&r, &raw, 0, got), Ok(()));
        assert!(matches!(raw_return(&r, &raw, 0, got), Err(Some(_))));
        consumer.join().unwrap();
        assert_eq!(r.slots().state(0).map(|s| s.0), Some(SlotState::Returned));
    });
}
