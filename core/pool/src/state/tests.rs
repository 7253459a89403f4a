//! The pool state machine against a fake receive queue: what it posts, when it grows, what a
//! completion means, exhausted episodes, flush, refused tails, header split, every config
//! refusal and teardown counts. The slot table and recycle ring are the real ones.

use std::sync::Arc;

use gdrx_ring::{RecycleConsumer, Recycler, ReturnError, SlotState};
use gdrx_verbs::Access;

use super::*;

const SRQ: QueueLimits = QueueLimits {
    max_wr: 64,
    max_sge: 2,
    what: "SRQ",
};

fn shape() -> Shape {
    Shape {
        slot_size: 4096,
        slots_per_region: 8,
        initial_regions: 1,
        max_regions: 1,
        depth: 0,
        low_watermark: 0,
        post_batch: 64,
        poll_batch: 16,
        header_bytes: None,
        access: Access::recv(),
    }
}

fn refused(s: Shape, q: QueueLimits) -> ConfigError {
    Geometry::new(&s, q).expect_err("the shape must be refused")
}

/// A receive queue that records what it is given and refuses on request.
#[derive(Default)]
struct FakeQueue {
    staged: Vec<Placement>,
    /// Each post call's placements, in order.
    posts: Vec<Vec<Placement>>,
    /// Posted and not yet completed, by slot.
    on_queue: Vec<u32>,
    /// The next post accepts only this many.
    refuse_after: Option<usize>,
    /// Region indices grown.
    grown: Vec<u32>,
    /// Growth fails from this region index on.
    fail_grow_from: Option<u32>,
    grow_attempts: u32,
    lending: Vec<u32>,
}

impl RecvTarget for FakeQueue {
    type Error = &'static str;

    fn stage(&mut self, at: Placement) {
        self.staged.push(at);
    }

    fn post(&mut self) -> Result<(), (usize, &'static str)> {
        let batch = std::mem::take(&mut self.staged);
        let ok = self
            .refuse_after
            .take()
            .unwrap_or(batch.len())
            .min(batch.len());
        self.on_queue.extend(batch[..ok].iter().map(|p| p.slot));
        self.posts.push(batch[..ok].to_vec());
        if ok < batch.len() {
            Err((ok, "queue full"))
        } else {
            Ok(())
        }
    }

    fn grow(&mut self, index: u32) -> Result<(), &'static str> {
        self.grow_attempts += 1;
        if self.fail_grow_from.is_some_and(|f| index >= f) {
            return Err("no memory");
        }
        self.grown.push(index);
        Ok(())
    }

    fn lending(&mut self, slot: u32) {
        self.lending.push(slot);
    }
}

/// A state machine with its initial regions installed, the real recycler, and the fake queue.
struct Rig {
    st: PoolState,
    rec: Arc<Recycler>,
    cons: RecycleConsumer,
    q: FakeQueue,
}

impl Rig {
    fn new(s: Shape, q: QueueLimits) -> Rig {
        Rig::with_queue(s, q, FakeQueue::default())
    }

    fn with_queue(s: Shape, limits: QueueLimits, mut q: FakeQueue) -> Rig {
        let geo = Geometry::new(&s, limits).unwrap();
        let (rec, cons) = Recycler::new(geo.max_slots);
        let mut st = PoolState::new(geo);
        for _ in 0..geo.initial_regions {
            st.grow(&mut q).unwrap();
        }
        Rig { st, rec, cons, q }
    }

    fn refill(&mut self, force: bool) -> Result<u32, RefillError<&'static str>> {
        self.st.refill(self.rec.slots(), &mut self.q, force)
    }

    /// Completes the oldest posted receive.
    fn complete_next(&mut self, outcome: Outcome) -> Verdict {
        let slot = self.q.on_queue.remove(0);
        self.st
            .complete(self.rec.slots(), &mut self.q, u64::from(slot), outcome)
    }

    fn recv(&mut self, len: u32) -> (u32, u32) {
        match self.complete_next(Outcome::Received { len }) {
            Verdict::Lend { slot, gen } => (slot, gen),
            v => panic!("expected a lending, got {v:?}"),
        }
    }

    fn give_back(&self, (slot, gen): (u32, u32)) {
        self.rec.give_back(slot, gen).unwrap();
    }

    fn drain(&mut self) -> u32 {
        self.st.drain(&mut self.cons)
    }

    fn counts(&self) -> SlotCounts {
        self.st.slot_counts(self.rec.slots())
    }
}

// ---- configuration refusals ----

#[test]
fn refuses_zero_slot_size() {
    let s = Shape {
        slot_size: 0,
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::ZeroSlotSize);
}

#[test]
fn refuses_zero_slots_per_region() {
    let s = Shape {
        slots_per_region: 0,
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::ZeroSlotsPerRegion);
}

#[test]
fn refuses_zero_initial_regions_and_more_than_max() {
    let s = Shape {
        initial_regions: 0,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::InitialRegions { initial: 0, max: 1 }
    );
    let s = Shape {
        initial_regions: 3,
        max_regions: 2,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::InitialRegions { initial: 3, max: 2 }
    );
}

#[test]
fn refuses_more_than_2_pow_30_slots_and_u32_overflow() {
    let s = Shape {
        slots_per_region: 1 << 20,
        max_regions: (1 << 10) + 1,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::TooManySlots {
            regions: (1 << 10) + 1,
            slots_per_region: 1 << 20
        }
    );
    let s = Shape {
        slots_per_region: u32::MAX,
        max_regions: 2,
        ..shape()
    };
    assert!(matches!(refused(s, SRQ), ConfigError::TooManySlots { .. }));
    // Exactly 2^30 is allowed.
    let s = Shape {
        slots_per_region: 1 << 20,
        max_regions: 1 << 10,
        ..shape()
    };
    assert_eq!(Geometry::new(&s, SRQ).unwrap().max_slots, MAX_SLOTS);
}

#[test]
fn refuses_access_without_local_write() {
    let s = Shape {
        access: Access::REMOTE_WRITE,
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::NoLocalWrite);
}

#[test]
fn refuses_header_split_on_a_one_sge_queue_and_zero_header_bytes() {
    let one_sge = QueueLimits {
        max_sge: 1,
        what: "QP receive queue",
        ..SRQ
    };
    let s = Shape {
        header_bytes: Some(64),
        ..shape()
    };
    assert_eq!(
        refused(s, one_sge),
        ConfigError::HeaderSplitSges {
            queue: "QP receive queue",
            max_sge: 1
        }
    );
    let s = Shape {
        header_bytes: Some(0),
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::ZeroHeaderBytes);
    // Without header split one SGE is enough.
    assert_eq!(Geometry::new(&shape(), one_sge).unwrap().sges(), 1);
}

#[test]
fn refuses_a_depth_above_the_queue_or_the_slots() {
    let s = Shape {
        depth: 65,
        slots_per_region: 128,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::Depth {
            depth: 65,
            queue: "SRQ",
            queue_depth: 64,
            slots: 128
        }
    );
    let s = Shape {
        depth: 9,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::Depth {
            depth: 9,
            queue: "SRQ",
            queue_depth: 64,
            slots: 8
        }
    );
}

#[test]
fn refuses_a_queue_with_no_room() {
    let q = QueueLimits { max_wr: 0, ..SRQ };
    assert_eq!(
        refused(shape(), q),
        ConfigError::EmptyQueue { queue: "SRQ" }
    );
}

#[test]
fn refuses_a_watermark_above_depth() {
    let s = Shape {
        depth: 4,
        low_watermark: 5,
        ..shape()
    };
    assert_eq!(
        refused(s, SRQ),
        ConfigError::Watermark {
            watermark: 5,
            depth: 4
        }
    );
}

#[test]
fn refuses_zero_batches() {
    let s = Shape {
        post_batch: 0,
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::ZeroPostBatch);
    let s = Shape {
        poll_batch: 0,
        ..shape()
    };
    assert_eq!(refused(s, SRQ), ConfigError::ZeroPollBatch);
}

#[test]
fn every_refusal_says_what_to_change() {
    let msgs = [
        ConfigError::ZeroSlotSize.to_string(),
        ConfigError::Depth {
            depth: 65,
            queue: "SRQ",
            queue_depth: 64,
            slots: 128,
        }
        .to_string(),
        ConfigError::QpOnSrq.to_string(),
    ];
    assert!(msgs[0].contains("slot_size"));
    assert!(msgs[1].contains("65") && msgs[1].contains("SRQ") && msgs[1].contains("64"));
    assert!(msgs[2].contains("Pool::new"));
}

#[test]
fn derives_depth_watermark_and_post_batch() {
    // Depth 0: every slot, up to the queue's depth.
    let g = Geometry::new(
        &Shape {
            slots_per_region: 100,
            ..shape()
        },
        SRQ,
    )
    .unwrap();
    assert_eq!((g.depth, g.low_watermark, g.post_batch), (64, 48, 64));
    let g = Geometry::new(&shape(), SRQ).unwrap();
    assert_eq!((g.depth, g.low_watermark, g.post_batch), (8, 6, 8));
    // A depth of 1 still has a watermark of 1.
    let g = Geometry::new(
        &Shape {
            depth: 1,
            ..shape()
        },
        SRQ,
    )
    .unwrap();
    assert_eq!((g.depth, g.low_watermark, g.post_batch), (1, 1, 1));
    assert_eq!(g.region_len(), 8 * 4096);
    // A deep queue refills once a post batch's worth is free, not at three quarters.
    let deep = QueueLimits {
        max_wr: 1024,
        ..SRQ
    };
    let g = Geometry::new(
        &Shape {
            slots_per_region: 2048,
            depth: 1024,
            post_batch: 64,
            ..shape()
        },
        deep,
    )
    .unwrap();
    assert_eq!((g.depth, g.low_watermark, g.post_batch), (1024, 960, 64));
}

// ---- posting, watermark and growth ----

#[test]
fn first_refill_posts_depth_in_batches_in_ascending_slots() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 10,
            post_batch: 4,
            ..shape()
        },
        SRQ,
    );
    assert_eq!(r.refill(true), Ok(10));
    let sizes: Vec<usize> = r.q.posts.iter().map(Vec::len).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(r.q.on_queue, (0..10).collect::<Vec<_>>());
    assert_eq!((r.st.posted(), r.st.free(), r.st.lent()), (10, 0, 0));
    let c = r.st.counters();
    assert_eq!((c.post_calls, c.posted_wrs, c.max_post_batch), (3, 10, 4));
    assert_eq!(r.counts().posted, 10);
}

#[test]
fn refills_only_below_the_low_watermark_unless_forced() {
    let mut r = Rig::new(
        Shape {
            depth: 8,
            low_watermark: 6,
            slots_per_region: 16,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    // Two completions leave 6 posted: not below the watermark.
    r.recv(10);
    r.recv(10);
    assert_eq!(r.refill(false), Ok(0));
    assert_eq!(r.st.posted(), 6);
    // A third leaves 5: refill back to depth in one batch.
    r.recv(10);
    assert_eq!(r.refill(false), Ok(3));
    assert_eq!(r.st.posted(), 8);
    // Forced: tops up even above the watermark.
    r.recv(10);
    assert_eq!(r.refill(true), Ok(1));
    assert_eq!(r.st.posted(), 8);
}

#[test]
fn grows_one_region_on_demand_up_to_max_regions() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 4,
            max_regions: 3,
            depth: 4,
            low_watermark: 2,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    assert_eq!(r.q.grown, [0]);
    let leases: Vec<_> = (0..3).map(|_| r.recv(1)).collect();
    // One posted, none free, below the watermark: the pool grows by one region.
    assert_eq!(r.refill(false), Ok(3));
    assert_eq!(r.q.grown, [0, 1]);
    assert_eq!((r.st.regions(), r.st.carved(), r.st.free()), (2, 8, 1));
    // Region 1's slots come out in ascending order.
    assert_eq!(r.q.on_queue, [3, 4, 5, 6]);
    for _ in 0..4 {
        r.recv(1);
    }
    // A slot is still free: it is posted, and nothing grows.
    assert_eq!(r.refill(false), Ok(1));
    assert_eq!(r.q.grown, [0, 1]);
    drop(leases);
    r.recv(1);
    assert_eq!(r.refill(false), Ok(4));
    assert_eq!(r.q.grown, [0, 1, 2]);
    // All regions in use: no further growth is attempted.
    while !r.q.on_queue.is_empty() {
        r.recv(1);
    }
    assert_eq!(r.refill(false), Ok(0));
    assert_eq!(r.q.grow_attempts, 3);
    assert_eq!(r.st.check_exhausted(), Some(12));
}

#[test]
fn does_not_grow_while_free_slots_remain() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 8,
            max_regions: 2,
            depth: 4,
            low_watermark: 4,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    r.recv(1);
    r.refill(false).unwrap();
    assert_eq!(r.q.grown, [0]);
    assert_eq!(r.st.free(), 3);
}

#[test]
fn a_failed_growth_is_reported_once_and_never_retried() {
    let q = FakeQueue {
        fail_grow_from: Some(1),
        ..FakeQueue::default()
    };
    let mut r = Rig::with_queue(
        Shape {
            slots_per_region: 2,
            max_regions: 4,
            ..shape()
        },
        SRQ,
        q,
    );
    r.refill(true).unwrap();
    r.recv(1);
    r.recv(1);
    assert_eq!(r.refill(false), Err(RefillError::Grow("no memory")));
    assert!(r.st.grow_failed());
    assert_eq!(r.refill(false), Ok(0));
    assert_eq!(r.q.grow_attempts, 2);
    assert_eq!((r.st.regions(), r.st.carved()), (1, 2));
    // It cannot grow any more, so running dry is an exhausted episode.
    assert_eq!(r.st.check_exhausted(), Some(2));
}

// ---- completions ----

#[test]
fn a_completion_lends_its_slot_and_a_return_frees_it() {
    let mut r = Rig::new(shape(), SRQ);
    r.refill(true).unwrap();
    let lease = r.recv(100);
    assert_eq!(lease.0, 0);
    assert_eq!(r.q.lending, [0]);
    assert_eq!((r.st.posted(), r.st.lent()), (7, 1));
    assert_eq!(r.rec.slots().state(0), Some((SlotState::Lent, lease.1)));
    r.give_back(lease);
    assert_eq!(r.drain(), 1);
    assert_eq!((r.st.lent(), r.st.free()), (0, 1));
    let c = r.st.counters();
    assert_eq!((c.completions, c.bytes, c.recycles), (1, 100, 1));
    assert_eq!(r.counts().free, 1);
}

#[test]
fn a_reposted_slot_gets_a_new_generation_and_the_old_lease_is_stale() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 1,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    let first = r.recv(1);
    r.give_back(first);
    r.drain();
    r.refill(true).unwrap();
    let second = r.recv(1);
    assert_eq!(first.0, second.0);
    assert_ne!(first.1, second.1);
    assert!(matches!(
        r.rec.give_back(first.0, first.1),
        Err(ReturnError::Stale { .. })
    ));
    r.give_back(second);
    assert!(matches!(
        r.rec.give_back(second.0, second.1),
        Err(ReturnError::Duplicate { .. })
    ));
}

#[test]
fn a_foreign_wr_id_is_refused_and_changes_nothing() {
    let mut r = Rig::new(shape(), SRQ);
    r.refill(true).unwrap();
    let before = (r.st.posted(), r.st.lent(), r.st.free());
    let v =
        r.st.complete(r.rec.slots(), &mut r.q, 8, Outcome::Received { len: 1 });
    assert_eq!(v, Verdict::Foreign);
    let v = r.st.complete(
        r.rec.slots(),
        &mut r.q,
        u64::MAX,
        Outcome::Failed { flush: false },
    );
    assert_eq!(v, Verdict::Foreign);
    assert_eq!((r.st.posted(), r.st.lent(), r.st.free()), before);
    assert_eq!(r.st.counters().foreign, 2);
    assert!(r.q.lending.is_empty());
}

#[test]
fn a_completion_for_a_slot_not_posted_is_refused() {
    let mut r = Rig::new(shape(), SRQ);
    r.refill(true).unwrap();
    let lease = r.recv(1);
    // The same wr_id again (a duplicate completion), successful and failed.
    let v = r.st.complete(
        r.rec.slots(),
        &mut r.q,
        u64::from(lease.0),
        Outcome::Received { len: 1 },
    );
    assert_eq!(v, Verdict::NotPosted);
    let v = r.st.complete(
        r.rec.slots(),
        &mut r.q,
        u64::from(lease.0),
        Outcome::Failed { flush: false },
    );
    assert_eq!(v, Verdict::NotPosted);
    assert_eq!((r.st.posted(), r.st.lent()), (7, 1));
    assert_eq!(r.st.counters().not_posted, 2);
    assert_eq!(r.q.lending, [lease.0]);
}

#[test]
fn a_failed_receive_frees_its_slot_and_is_reposted() {
    let mut r = Rig::new(
        Shape {
            depth: 4,
            low_watermark: 4,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    assert_eq!(
        r.complete_next(Outcome::Failed { flush: false }),
        Verdict::Failed
    );
    assert_eq!((r.st.posted(), r.st.free(), r.st.lent()), (3, 5, 0));
    assert!(!r.st.flushed());
    assert_eq!(r.refill(false), Ok(1));
    assert_eq!(r.st.counters().completion_errors, 1);
    assert!(r.q.lending.is_empty());
}

#[test]
fn a_flush_stops_posting_and_is_not_an_exhausted_episode() {
    let mut r = Rig::new(
        Shape {
            depth: 4,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    for _ in 0..4 {
        assert_eq!(
            r.complete_next(Outcome::Failed { flush: true }),
            Verdict::Failed
        );
    }
    assert!(r.st.flushed());
    assert_eq!(r.refill(true), Ok(0));
    assert_eq!(r.q.posts.len(), 1);
    assert_eq!((r.st.posted(), r.st.free()), (0, 8));
    assert_eq!(r.st.check_exhausted(), None);
}

// ---- exhausted episodes ----

#[test]
fn exhausted_is_reported_once_per_episode() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 3,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    assert_eq!(r.st.check_exhausted(), None);
    let leases: Vec<_> = (0..3).map(|_| r.recv(1)).collect();
    r.refill(false).unwrap();
    assert_eq!(r.st.check_exhausted(), Some(3));
    assert_eq!(r.st.check_exhausted(), None);
    assert!(r.st.exhausted());
    // One return ends the episode; running dry again starts a new one.
    r.give_back(leases[1]);
    assert_eq!(r.drain(), 1);
    assert!(!r.st.exhausted());
    r.refill(false).unwrap();
    assert_eq!(r.st.check_exhausted(), None);
    r.recv(1);
    assert_eq!(r.st.check_exhausted(), Some(3));
    assert_eq!(r.st.counters().empty_events, 2);
}

#[test]
fn not_exhausted_while_the_pool_can_still_grow() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 2,
            max_regions: 2,
            depth: 2,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    r.recv(1);
    r.recv(1);
    assert_eq!(r.st.check_exhausted(), None);
    assert_eq!(r.refill(false), Ok(2));
    assert_eq!(r.st.regions(), 2);
}

// ---- refused posts ----

#[test]
fn a_refused_tail_goes_back_to_the_free_list() {
    let q = FakeQueue {
        refuse_after: Some(3),
        ..FakeQueue::default()
    };
    let mut r = Rig::with_queue(shape(), SRQ, q);
    assert_eq!(r.refill(true), Err(RefillError::Post("queue full")));
    assert_eq!((r.st.posted(), r.st.free()), (3, 5));
    let c = r.counts();
    assert_eq!((c.posted, c.free), (3, 5));
    let c = r.st.counters();
    assert_eq!((c.post_calls, c.posted_wrs, c.max_post_batch), (1, 3, 3));
    // The refused slots are posted on the next refill, each exactly once.
    assert_eq!(r.refill(true), Ok(5));
    let mut all = r.q.on_queue.clone();
    all.sort_unstable();
    assert_eq!(all, (0..8).collect::<Vec<_>>());
}

#[test]
fn a_post_refused_outright_loses_no_slot() {
    let q = FakeQueue {
        refuse_after: Some(0),
        ..FakeQueue::default()
    };
    let mut r = Rig::with_queue(shape(), SRQ, q);
    assert!(matches!(r.refill(true), Err(RefillError::Post(_))));
    assert_eq!((r.st.posted(), r.st.free()), (0, 8));
    assert_eq!(r.counts().free, 8);
    assert_eq!(r.st.counters().max_post_batch, 0);
}

// ---- header split ----

#[test]
fn header_split_places_the_header_and_payload_of_each_slot() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 4,
            max_regions: 2,
            header_bytes: Some(64),
            ..shape()
        },
        SRQ,
    );
    let g = *r.st.geometry();
    assert_eq!((g.sges(), g.header_region_len()), (2, 256));
    r.refill(true).unwrap();
    let p = r.q.posts[0][2];
    assert_eq!(
        p,
        Placement {
            slot: 2,
            region: 0,
            payload: (2 * 4096, 4096),
            header: Some((128, 64)),
        }
    );
    // Slot 5 is the second slot of region 1.
    assert_eq!(g.place(5).region, 1);
    assert_eq!(g.place(5).payload, (4096, 4096));
    assert_eq!(g.place(5).header, Some((64, 64)));
    // Without header split there is no header range.
    let g = Geometry::new(&shape(), SRQ).unwrap();
    assert_eq!(g.place(3).header, None);
    assert_eq!(g.header_region_len(), 0);
}

// ---- teardown ----

#[test]
fn teardown_counts_what_is_still_out_and_stops_the_pool() {
    let mut r = Rig::new(
        Shape {
            slots_per_region: 8,
            max_regions: 2,
            depth: 6,
            ..shape()
        },
        SRQ,
    );
    r.refill(true).unwrap();
    let a = r.recv(1);
    let b = r.recv(1);
    let _held = r.recv(1);
    r.give_back(a);
    r.give_back(b);
    // Counted before the drain: two returned, one lent, three posted, two free.
    let c = r.counts();
    assert_eq!((c.returned, c.lent, c.posted, c.free), (2, 1, 3, 2));
    let t = r.st.teardown(r.rec.slots(), &mut r.cons);
    // The returns are drained at teardown; the region the pool may still grow to is not
    // counted as free.
    assert_eq!((t.returned, t.lent, t.posted, t.free), (0, 1, 3, 4));
    assert!(r.st.closed());
    assert_eq!(r.refill(true), Ok(0));
    assert_eq!(r.st.check_exhausted(), None);
    assert_eq!(r.q.grow_attempts, 1);
}

#[test]
fn teardown_with_nothing_out_counts_every_slot_free() {
    let mut r = Rig::new(
        Shape {
            max_regions: 3,
            ..shape()
        },
        SRQ,
    );
    let t = r.st.teardown(r.rec.slots(), &mut r.cons);
    assert_eq!((t.free, t.lent, t.posted, t.returned), (8, 0, 0, 0));
}
