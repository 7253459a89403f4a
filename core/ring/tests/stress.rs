//! Multi-threaded stress tests with real threads (no Miri or TSan on stable: these and the loom
//! models are the concurrency checks).
//!
//! The default sizes keep `cargo test` (debug) to a few seconds on a 2-core machine; set
//! `GDRX_STRESS_SCALE=N` to multiply every size by `N`.

#![cfg(not(loom))]

use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crossbeam_utils::Backoff;
use gdrx_ring::{RecycleRing, Recycler, ReturnError, SlotState};

fn scale() -> u64 {
    std::env::var("GDRX_STRESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// 4 producers push distinct values through a 1024-entry ring while one consumer drains it:
/// nothing lost, nothing duplicated (bitmap), each producer's values in order.
#[test]
fn ring_four_producers_one_consumer() {
    const PRODUCERS: u64 = 4;
    let per_producer = 1_000_000 * scale();
    let total = PRODUCERS * per_producer;
    let (ring, mut consumer) = RecycleRing::with_capacity(1024);
    let start = Instant::now();
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let ring = Arc::clone(&ring);
            thread::spawn(move || {
                let backoff = Backoff::new();
                let mut full = 0u64;
                for i in 0..per_producer {
                    let mut v = (p << 32) | i;
                    while let Err(back) = ring.push(v) {
                        v = back.into_inner();
                        full += 1;
                        backoff.snooze();
                    }
                    backoff.reset();
                }
                full
            })
        })
        .collect();

    let mut seen = vec![0u64; (total as usize).div_ceil(64)];
    let mut next = [0u64; PRODUCERS as usize];
    let mut received = 0u64;
    let mut check = |v: u64| {
        let (p, i) = (v >> 32, v & u64::from(u32::MAX));
        assert!(
            p < PRODUCERS && i < per_producer,
            "value {v:#x} was never pushed"
        );
        let bit = p * per_producer + i;
        let word = &mut seen[(bit / 64) as usize];
        assert_eq!(*word & (1 << (bit % 64)), 0, "value {v:#x} popped twice");
        *word |= 1 << (bit % 64);
        assert_eq!(i, next[p as usize], "producer {p} out of order");
        next[p as usize] += 1;
    };
    let backoff = Backoff::new();
    let mut round = 0u64;
    while received < total {
        // Alternate single pops and batches, as the poller might.
        let got = if round.is_multiple_of(2) {
            consumer.pop().map(&mut check).map_or(0, |()| 1)
        } else {
            consumer.drain(64, &mut check) as u64
        };
        round += 1;
        received += got;
        if got == 0 {
            backoff.snooze();
        } else {
            backoff.reset();
        }
    }
    let full: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    assert_eq!(consumer.pop(), None);
    let distinct: u64 = seen.iter().map(|w| u64::from(w.count_ones())).sum();
    assert_eq!(distinct, total);
    assert_eq!(next, [per_producer; PRODUCERS as usize]);
    assert_eq!(ring.total_pushed(), total);
    assert!(ring.is_empty());
    eprintln!(
        "ring stress: {PRODUCERS} x {per_producer} values through {} entries in {:?} ({full} \
         pushes found the ring full and retried)",
        ring.capacity(),
        start.elapsed()
    );
}

/// What a consumer thread saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    duplicate: u64,
    stale: u64,
    out_of_range: u64,
}

impl Tally {
    fn record(&mut self, result: Result<(), ReturnError>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(ReturnError::Duplicate { .. }) => self.duplicate += 1,
            Err(ReturnError::Stale { .. }) => self.stale += 1,
            Err(ReturnError::OutOfRange { .. }) => self.out_of_range += 1,
            Err(e) => panic!("unexpected rejection: {e}"),
        }
    }
}

/// A lease as the poller hands it out, and what the consumer should do with it.
#[derive(Debug, Clone, Copy)]
struct Lease {
    slot: u32,
    gen: u32,
    /// Return it a second time right away (a buggy consumer).
    twice: bool,
}

/// The full protocol: a poller lends slots and reposts what comes back; 4 consumer threads
/// return them, some twice, some leases are handed to two threads at once, and some returns
/// are forged. Every lent `(slot, gen)` must come back exactly once, and every bad return must
/// be rejected and counted.
#[test]
fn recycler_poller_and_four_returners() {
    const SLOTS: u32 = 256;
    const RETURNERS: usize = 4;
    let lends = 500_000 * scale();
    let (recycler, mut poller) = Recycler::new(SLOTS);
    let start = Instant::now();

    let (senders, returners): (Vec<_>, Vec<_>) = (0..RETURNERS)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Lease>();
            let r = Arc::clone(&recycler);
            let handle = thread::spawn(move || {
                let mut tally = Tally::default();
                for lease in rx {
                    tally.record(r.give_back(lease.slot, lease.gen));
                    if lease.twice {
                        tally.record(r.give_back(lease.slot, lease.gen));
                    }
                    if lease.gen % 97 == 0 {
                        tally.record(r.give_back(SLOTS + lease.slot, lease.gen));
                    }
                }
                tally
            });
            (tx, handle)
        })
        .unzip();

    let slots = recycler.slots();
    let mut posted: Vec<u32> = (0..SLOTS).collect();
    for &slot in &posted {
        slots.mark_posted(slot).unwrap();
    }
    let mut outstanding: Vec<Option<u32>> = vec![None; SLOTS as usize];
    let (mut lent, mut drained, mut extra_returns, mut shared) = (0u64, 0u64, 0u64, 0u64);
    let backoff = Backoff::new();
    while drained < lends {
        while lent < lends {
            let Some(slot) = posted.pop() else { break };
            let gen = slots.lend(slot).unwrap();
            assert!(outstanding[slot as usize].replace(gen).is_none());
            let twice = lent % 8 == 0;
            let to = (lent as usize) % RETURNERS;
            senders[to].send(Lease { slot, gen, twice }).unwrap();
            extra_returns += u64::from(twice) + u64::from(gen % 97 == 0);
            if lent % 16 == 1 {
                // The same lease to a second thread: the two returns race.
                senders[(to + 1) % RETURNERS]
                    .send(Lease {
                        slot,
                        gen,
                        twice: false,
                    })
                    .unwrap();
                extra_returns += 1 + u64::from(gen % 97 == 0);
                shared += 1;
            }
            lent += 1;
        }
        let n = poller.drain(64, |slot| {
            let gen = outstanding[slot as usize]
                .take()
                .unwrap_or_else(|| panic!("slot {slot} drained but not lent"));
            assert_eq!(slots.state(slot), Some((SlotState::Free, gen)));
            slots.mark_posted(slot).unwrap();
            posted.push(slot);
        });
        drained += n as u64;
        if n == 0 {
            backoff.snooze();
        } else {
            backoff.reset();
        }
    }
    drop(senders);
    let mut total = Tally::default();
    for handle in returners {
        let t = handle.join().unwrap();
        total.ok += t.ok;
        total.duplicate += t.duplicate;
        total.stale += t.stale;
        total.out_of_range += t.out_of_range;
    }

    assert_eq!(
        poller.drain(usize::MAX, |s| panic!("slot {s} returned again")),
        0
    );
    assert_eq!(total.ok, lends, "every lease returned exactly once");
    assert_eq!(drained, lends);
    assert_eq!(recycler.recycled(), lends);
    assert!(outstanding.iter().all(Option::is_none));
    let rejected = slots.rejected();
    assert_eq!(rejected.duplicate, total.duplicate);
    assert_eq!(rejected.stale, total.stale);
    assert_eq!(rejected.out_of_range, total.out_of_range);
    assert_eq!(
        rejected.total(),
        extra_returns,
        "every bad return rejected and counted"
    );
    assert_eq!(recycler.reclaim_failures(), 0);
    assert_eq!(slots.counts().posted, SLOTS);
    eprintln!(
        "recycler stress: {lends} leases over {SLOTS} slots, {RETURNERS} returner threads, \
         {shared} leases shared by two threads, {extra_returns} bad returns ({rejected:?}) in \
         {:?}",
        start.elapsed()
    );
}
