//! The pool's FFI-free core, natively, with no device: the state machine (`gdrx_pool::state`)
//! driving a fake receive queue through complete -> lend -> return -> drain -> refill, in ns
//! per message, beside a bare loop that does only the slot-table and ring operations of the
//! same cycle (`mark_posted`, `lend`, `give_back`, `drain`), so that the state machine's own
//! cost is a ratio.
//!
//! Run with `cargo bench -p gdrx-pool --bench pool_core` (about a minute). Consumers:
//! - inline: the polling thread returns each slot itself at once (the pool's cost alone);
//! - 1 and 4 threads: the poller hands each poll batch of lent slots to a consumer thread over a
//!   channel (one send per batch, as `gdrx-bench server` does), and the consumers return each
//!   batch through the recycler from their own threads with one `give_back_many`, as
//!   `Lease::give_back_all` does for `gdrx-bench server`'s consumers (one claim on the ring per
//!   up to 64 returns; each slot is still validated on its own). Until 2026-12-08 the consumers
//!   returned each slot with its own `give_back`.
//!
//! The fake queue completes receives in the order they were posted, up to `poll_batch` per
//! poll; nothing else runs, so the figures are the core's upper bound, not a receive rate.

use std::collections::{BTreeMap, VecDeque};
use std::hint::black_box;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use gdrx_pool::state::{
    Geometry, Outcome, Placement, PoolState, QueueLimits, RecvTarget, Shape, Verdict,
};
use gdrx_ring::Recycler;
use gdrx_verbs::Access;

/// Pool slots, posted depth and completions per poll (gdrx-bench's defaults: 1024 slots, 512
/// posted, batches of 16).
const SLOTS: u32 = 1024;
const DEPTH: u32 = 512;
const POLL_BATCH: usize = 16;

/// A receive queue that completes what was posted, in order.
#[derive(Default)]
struct FakeQueue {
    staged: Vec<u32>,
    posted: VecDeque<u32>,
}

impl RecvTarget for FakeQueue {
    type Error = ();

    fn stage(&mut self, at: Placement) {
        self.staged.push(at.slot);
    }

    fn post(&mut self) -> Result<(), (usize, ())> {
        self.posted.extend(self.staged.drain(..));
        Ok(())
    }

    fn grow(&mut self, _index: u32) -> Result<(), ()> {
        Ok(())
    }
}

fn shape() -> Shape {
    Shape {
        slot_size: 4096,
        slots_per_region: SLOTS,
        initial_regions: 1,
        max_regions: 1,
        depth: DEPTH,
        low_watermark: 0,
        post_batch: 64,
        poll_batch: POLL_BATCH as u32,
        header_bytes: None,
        access: Access::recv(),
    }
}

const LIMITS: QueueLimits = QueueLimits {
    max_wr: DEPTH,
    max_sge: 1,
    what: "SRQ",
};

/// How lent slots come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Consumers {
    /// The poller returns each at once.
    Inline,
    /// This many consumer threads, one channel send per poll batch.
    Threads(usize),
}

impl Consumers {
    fn label(self) -> String {
        match self {
            Consumers::Inline => "inline".into(),
            Consumers::Threads(n) => format!("{n} consumer thread(s)"),
        }
    }
}

/// Moves `messages` messages through the state machine; returns the time taken.
fn pool_core(messages: u64, consumers: Consumers) -> Duration {
    let geo = Geometry::new(&shape(), LIMITS).expect("a valid shape");
    let (rec, mut cons) = Recycler::new(geo.max_slots);
    let mut st = PoolState::new(geo);
    let mut q = FakeQueue::default();
    st.grow(&mut q).expect("fake growth");
    st.refill(rec.slots(), &mut q, true).expect("fake post");
    let (tx, workers) = spawn_consumers(consumers, &rec);
    let start = Instant::now();
    let mut done = 0u64;
    let mut batch: Vec<(u32, u32)> = Vec::with_capacity(POLL_BATCH);
    while done < messages {
        st.drain(&mut cons);
        st.refill(rec.slots(), &mut q, false).expect("fake post");
        let want = (POLL_BATCH as u64).min(messages - done) as usize;
        for _ in 0..want {
            let Some(slot) = q.posted.pop_front() else {
                break;
            };
            match st.complete(
                rec.slots(),
                &mut q,
                u64::from(slot),
                Outcome::Received { len: 4096 },
            ) {
                Verdict::Lend { slot, gen } => batch.push((slot, gen)),
                v => panic!("unexpected verdict {v:?}"),
            }
        }
        done += batch.len() as u64;
        hand_back(&rec, &tx, &mut batch);
    }
    let elapsed = start.elapsed();
    join(tx, workers);
    black_box(st.counters().completions);
    elapsed
}

/// The same cycle with only the slot table and the ring: no accounting, no refill decisions,
/// no verdicts.
fn bare(messages: u64, consumers: Consumers) -> Duration {
    let (rec, mut cons) = Recycler::new(SLOTS);
    let slots = rec.slots();
    let mut free: Vec<u32> = (0..SLOTS).rev().collect();
    let mut posted: VecDeque<u32> = VecDeque::with_capacity(SLOTS as usize);
    let (tx, workers) = spawn_consumers(consumers, &rec);
    let start = Instant::now();
    let mut done = 0u64;
    let mut batch: Vec<(u32, u32)> = Vec::with_capacity(POLL_BATCH);
    while done < messages {
        cons.drain(usize::MAX, |s| free.push(s));
        while posted.len() < DEPTH as usize {
            let Some(s) = free.pop() else { break };
            slots.mark_posted(s).expect("free");
            posted.push_back(s);
        }
        let want = (POLL_BATCH as u64).min(messages - done) as usize;
        for _ in 0..want {
            let Some(s) = posted.pop_front() else { break };
            let gen = slots.lend(s).expect("posted");
            batch.push((s, gen));
        }
        done += batch.len() as u64;
        hand_back(&rec, &tx, &mut batch);
    }
    let elapsed = start.elapsed();
    join(tx, workers);
    elapsed
}

type Workers = Vec<thread::JoinHandle<()>>;
/// The poller's side of the hand-off to consumer threads: one batch of `(slot, gen)` per send.
type Handoff = Option<crossbeam_channel::Sender<Vec<(u32, u32)>>>;

fn spawn_consumers(consumers: Consumers, rec: &std::sync::Arc<Recycler>) -> (Handoff, Workers) {
    let Consumers::Threads(n) = consumers else {
        return (None, Vec::new());
    };
    let (tx, rx) = crossbeam_channel::bounded::<Vec<(u32, u32)>>(64);
    let workers = (0..n)
        .map(|_| {
            let (rx, rec) = (rx.clone(), std::sync::Arc::clone(rec));
            thread::spawn(move || {
                while let Ok(batch) = rx.recv() {
                    let n = batch.len();
                    let ok = rec.give_back_many(batch, |e| panic!("{e}"));
                    assert_eq!(ok, n);
                }
            })
        })
        .collect();
    (Some(tx), workers)
}

/// Returns the batch inline, or sends it to a consumer thread.
fn hand_back(rec: &Recycler, tx: &Handoff, batch: &mut Vec<(u32, u32)>) {
    match tx {
        None => {
            for (slot, gen) in batch.drain(..) {
                rec.give_back(slot, gen).expect("a valid return");
            }
        }
        Some(tx) => {
            if !batch.is_empty() {
                let full = std::mem::replace(batch, Vec::with_capacity(POLL_BATCH));
                tx.send(full).expect("consumers alive");
            }
        }
    }
}

fn join(tx: Handoff, workers: Workers) {
    drop(tx);
    for w in workers {
        w.join().expect("a consumer thread");
    }
}

const CORE: &str = "pool core";
const BARE: &str = "slot table + ring only";
const CONSUMERS: [Consumers; 3] = [
    Consumers::Inline,
    Consumers::Threads(1),
    Consumers::Threads(4),
];

/// Every timed run per (loop, consumers): (messages, time).
type Runs = BTreeMap<(&'static str, Consumers), Vec<(u64, Duration)>>;
static MEASURED: Mutex<Runs> = Mutex::new(BTreeMap::new());
const SAMPLE_SIZE: usize = 10;

fn cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("complete_lend_return_drain_refill");
    group.throughput(Throughput::Elements(1));
    type Runner = fn(u64, Consumers) -> Duration;
    for consumers in CONSUMERS {
        for (name, runner) in [(CORE, pool_core as Runner), (BARE, bare as Runner)] {
            let id = BenchmarkId::new(name, consumers.label());
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let t = runner(iters, consumers);
                    MEASURED
                        .lock()
                        .unwrap()
                        .entry((name, consumers))
                        .or_default()
                        .push((iters, t));
                    t
                });
            });
        }
    }
    group.finish();
}

/// ns per message over the last `SAMPLE_SIZE` runs (total time / total messages).
fn ns_per_msg(name: &'static str, consumers: Consumers) -> Option<f64> {
    let m = MEASURED.lock().unwrap();
    let runs = m.get(&(name, consumers))?;
    let last = &runs[runs.len().saturating_sub(SAMPLE_SIZE)..];
    let (n, t) = last
        .iter()
        .fold((0u64, 0f64), |(n, t), &(i, d)| (n + i, t + d.as_secs_f64()));
    (n > 0).then(|| t * 1e9 / n as f64)
}

fn print_summary() {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "pool core, natively: complete -> lend -> return -> drain -> refill, {SLOTS} slots, \
         {DEPTH} posted, {POLL_BATCH} completions per poll ({cores} cores)"
    );
    println!(
        "{:<24}{:>16}{:>16}{:>10}{:>12}",
        "consumers", "core [ns/msg]", "bare [ns/msg]", "core/bare", "<= 50 ns"
    );
    for consumers in CONSUMERS {
        let (c, b) = (ns_per_msg(CORE, consumers), ns_per_msg(BARE, consumers));
        let show = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.1}"));
        let ratio = match (c, b) {
            (Some(c), Some(b)) if b > 0.0 => format!("{:.2}x", c / b),
            _ => "-".into(),
        };
        let target = c.map_or("-", |c| if c <= 50.0 { "met" } else { "MISSED" });
        println!(
            "{:<24}{:>16}{:>16}{:>10}{:>12}",
            consumers.label(),
            show(c),
            show(b),
            ratio,
            target
        );
    }
    if cores < 6 {
        println!(
            "note: {cores} core(s): with consumer threads the poller and its consumers share \
             them, so those rows measure scheduling and cache-line transfers as much as the core"
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    cycle(&mut c);
    c.final_summary();
    print_summary();
}
