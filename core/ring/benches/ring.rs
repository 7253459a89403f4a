//! Push+pop throughput of gdrx's `RecycleRing` against crossbeam's `ArrayQueue` (MPMC) and rtrb
//! (SPSC), with 1 and 4 producer threads and one consumer thread, 1024 entries in total.
//!
//! Run with `cargo bench -p gdrx-ring --bench ring` (about a minute and a half). Threads are spawned
//! outside the timed region (`iter_custom`): the clock starts when the consumer leaves the
//! start barrier and stops when it has popped every element. A full or empty queue is waited
//! out with the same `Backoff` for every queue. rtrb is single-producer, so with 4 producers
//! each producer gets its own 256-entry rtrb ring and the consumer polls them round-robin.
//!
//! "push 64, drain 64" is gdrx's ring with `push_slice` (one CAS on the tail claims up to 64
//! positions) on the producer side and `drain` on the consumer side: the batch API that a
//! producer with many values at once would use. It is compared with rtrb's single-element push
//! and pop, and, like for like, with rtrb's own batch API ("chunks of 64":
//! `write_chunk_uninit` and `read_chunk`).
//!
//! Where the time goes (measured on the 2-core development VM, see the closing note of issue
//! 14): a cache line crossing between the two cores costs about 30 ns there, and each queue
//! moves as many elements per crossing as fit in a line. gdrx's entries are one `u64` (the lap
//! bit shares the value's word), eight per line like rtrb's. A single gdrx push also pays an
//! atomic read-modify-write on the tail (multi-producer), which on x86 waits for the previous
//! push's entry store to reach the line the consumer is reading: one crossing per push, the
//! same bound as crossbeam's ArrayQueue. rtrb's single producer stores its tail with a plain
//! buffered write and runs ahead; batches are how gdrx gets there too.
//!
//! At the end the benchmark prints the rates it measured (criterion's point estimates,
//! recomputed from the recorded samples) and the gdrx/ArrayQueue and gdrx/rtrb ratios.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use crossbeam_utils::Backoff;
use gdrx_ring::RecycleRing;

/// Total entries of every queue under test (rtrb with 4 producers: 4 rings of a quarter each).
const CAPACITY: usize = 1024;
const PRODUCER_COUNTS: [usize; 2] = [1, 4];

const GDRX_POP: &str = "gdrx RecycleRing (pop)";
const GDRX_DRAIN: &str = "gdrx RecycleRing (drain 64)";
const GDRX_BATCH: &str = "gdrx RecycleRing (push 64, drain 64)";
const ARRAY_QUEUE: &str = "crossbeam ArrayQueue";
const RTRB: &str = "rtrb";
const RTRB_CHUNKS: &str = "rtrb (chunks of 64)";

/// (queue name, producer count).
type Key = (&'static str, usize);
/// Every timed run in call order: (elements moved, time taken). Criterion's warm-up calls come
/// first, then one call per sample.
static MEASURED: Mutex<BTreeMap<Key, Vec<(u64, Duration)>>> = Mutex::new(BTreeMap::new());
/// Samples per benchmark (criterion's minimum); `--sample-size` on the command line overrides.
const SAMPLE_SIZE: usize = 10;

fn record(queue: &'static str, producers: usize, elements: u64, time: Duration) {
    let mut measured = MEASURED.lock().unwrap();
    measured
        .entry((queue, producers))
        .or_default()
        .push((elements, time));
}

/// Splits `iters` elements over `producers` threads.
fn shares(iters: u64, producers: usize) -> impl Iterator<Item = u64> {
    let n = producers as u64;
    (0..n).map(move |i| iters / n + u64::from(i < iters % n))
}

/// Spawns the producers (untimed), releases them together with the consumer, and times the
/// consumer popping all `iters` elements.
fn run<P>(
    producers: usize,
    iters: u64,
    mut make_producer: impl FnMut(usize, u64) -> P,
    consume: impl FnOnce(u64),
) -> Duration
where
    P: FnOnce() + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(producers + 1));
    let handles: Vec<_> = shares(iters, producers)
        .enumerate()
        .map(|(i, share)| {
            let work = make_producer(i, share);
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                work();
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    consume(iters);
    let elapsed = start.elapsed();
    for h in handles {
        h.join().unwrap();
    }
    elapsed
}

fn gdrx(producers: usize, iters: u64, batch: bool, push_batch: bool) -> Duration {
    let (ring, mut consumer) = RecycleRing::with_capacity(CAPACITY);
    let make = |_, share: u64| {
        let ring = Arc::clone(&ring);
        move || {
            let backoff = Backoff::new();
            if push_batch {
                let mut buf = [0u64; 64];
                let mut v = 0;
                while v < share {
                    let n = (share - v).min(64) as usize;
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = v + i as u64;
                    }
                    let mut done = 0;
                    while done < n {
                        let k = ring.push_slice(&buf[done..n]);
                        if k == 0 {
                            backoff.snooze();
                        } else {
                            backoff.reset();
                        }
                        done += k;
                    }
                    v += n as u64;
                }
                return;
            }
            for v in 0..share {
                while ring.push(v).is_err() {
                    backoff.snooze();
                }
                backoff.reset();
            }
        }
    };
    run(producers, iters, make, |total| {
        let (mut got, mut sum) = (0, 0u64);
        let backoff = Backoff::new();
        while got < total {
            let n = if batch {
                consumer.drain(64, |v| sum = sum.wrapping_add(v)) as u64
            } else {
                consumer.pop().map_or(0, |v| {
                    sum = sum.wrapping_add(v);
                    1
                })
            };
            if n == 0 {
                backoff.snooze();
            } else {
                got += n;
                backoff.reset();
            }
        }
        black_box(sum);
    })
}

fn array_queue(producers: usize, iters: u64) -> Duration {
    let queue = Arc::new(ArrayQueue::<u64>::new(CAPACITY));
    let make = |_, share: u64| {
        let queue = Arc::clone(&queue);
        move || {
            let backoff = Backoff::new();
            for v in 0..share {
                let mut v = v;
                while let Err(back) = queue.push(v) {
                    v = back;
                    backoff.snooze();
                }
                backoff.reset();
            }
        }
    };
    run(producers, iters, make, |total| {
        let (mut got, mut sum) = (0, 0u64);
        let backoff = Backoff::new();
        while got < total {
            match queue.pop() {
                Some(v) => {
                    sum = sum.wrapping_add(v);
                    got += 1;
                    backoff.reset();
                }
                None => backoff.snooze(),
            }
        }
        black_box(sum);
    })
}

/// rtrb: one SPSC ring per producer, polled round-robin by the consumer (one ring when there
/// is one producer), moving at most `chunk` elements per operation: single-element `push` and
/// `pop` when `chunk` is 1, otherwise its batch API (`write_chunk_uninit`, `read_chunk`).
fn rtrb_rings(producers: usize, iters: u64, chunk: usize) -> Duration {
    let (mut ends, mut consumers): (Vec<_>, Vec<_>) = (0..producers)
        .map(|_| {
            let (p, c) = rtrb::RingBuffer::<u64>::new(CAPACITY / producers);
            (Some(p), c)
        })
        .unzip();
    let make = |i: usize, share: u64| {
        let mut producer = ends[i].take().unwrap();
        move || {
            let backoff = Backoff::new();
            let mut v = 0;
            while v < share {
                let pushed = if chunk == 1 {
                    u64::from(producer.push(v).is_ok())
                } else {
                    // Whatever is free, up to a chunk (rtrb refuses a chunk larger than the
                    // room).
                    let room = producer.slots().min(chunk).min((share - v) as usize);
                    match room {
                        0 => 0,
                        _ => producer
                            .write_chunk_uninit(room)
                            .expect("room checked")
                            .fill_from_iter(v..) as u64,
                    }
                };
                if pushed == 0 {
                    backoff.snooze();
                } else {
                    v += pushed;
                    backoff.reset();
                }
            }
        }
    };
    run(producers, iters, make, |total| {
        let (mut got, mut sum) = (0, 0u64);
        let backoff = Backoff::new();
        while got < total {
            let mut any = false;
            for c in consumers.iter_mut() {
                let popped = if chunk == 1 {
                    c.pop().map_or(0, |v| {
                        sum = sum.wrapping_add(v);
                        1
                    })
                } else {
                    let n = c.slots().min(chunk);
                    if n > 0 {
                        for v in c.read_chunk(n).expect("slots checked") {
                            sum = sum.wrapping_add(v);
                        }
                    }
                    n as u64
                };
                got += popped;
                any |= popped > 0;
            }
            if any {
                backoff.reset();
            } else {
                backoff.snooze();
            }
        }
        black_box(sum);
    })
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("push_pop");
    // One iteration moves one element from a producer to the consumer.
    group.throughput(Throughput::Elements(1));
    type Runner = fn(usize, u64) -> Duration;
    let queues: [(&'static str, Runner); 6] = [
        (GDRX_POP, |p, n| gdrx(p, n, false, false)),
        (GDRX_DRAIN, |p, n| gdrx(p, n, true, false)),
        (GDRX_BATCH, |p, n| gdrx(p, n, true, true)),
        (ARRAY_QUEUE, array_queue),
        (RTRB, |p, n| rtrb_rings(p, n, 1)),
        (RTRB_CHUNKS, |p, n| rtrb_rings(p, n, 64)),
    ];
    for producers in PRODUCER_COUNTS {
        for (name, runner) in queues {
            let id = BenchmarkId::new(name, format!("{producers} producer(s)"));
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let time = runner(producers, iters);
                    record(name, producers, iters, time);
                    time
                });
            });
        }
    }
    group.finish();
}

/// Elements per second as criterion estimates it from the samples (the last `SAMPLE_SIZE`
/// runs): the least-squares slope of time over iterations when the sample sizes grow linearly,
/// the mean time per element when they are all equal (flat sampling).
fn rate(queue: &str, producers: usize) -> Option<f64> {
    let measured = MEASURED.lock().unwrap();
    let runs = measured.get(&(queue, producers))?;
    let samples = &runs[runs.len().saturating_sub(SAMPLE_SIZE)..];
    let (mut xy, mut xx, mut y) = (0.0, 0.0, 0.0);
    for &(iters, time) in samples {
        let (x, t) = (iters as f64, time.as_secs_f64());
        xy += x * t;
        xx += x * x;
        y += t;
    }
    let flat = samples.windows(2).all(|w| w[0].0 == w[1].0);
    let secs_per_element = if flat {
        y / samples.iter().map(|&(i, _)| i as f64).sum::<f64>()
    } else {
        xy / xx
    };
    (secs_per_element > 0.0).then(|| 1.0 / secs_per_element)
}

fn print_summary() {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("push+pop throughput, one consumer thread, {CAPACITY} entries in total");
    println!("(Melem/s: criterion's point estimate, recomputed from this run's samples)");
    println!("{:<38}{:>14}{:>14}", "queue", "1 producer", "4 producers");
    let cell = |r: Option<f64>| r.map_or_else(|| "-".to_string(), |r| format!("{:.2}", r / 1e6));
    for queue in [
        GDRX_POP,
        GDRX_DRAIN,
        GDRX_BATCH,
        ARRAY_QUEUE,
        RTRB,
        RTRB_CHUNKS,
    ] {
        let [one, four] = PRODUCER_COUNTS.map(|p| cell(rate(queue, p)));
        println!("{queue:<38}{one:>14}{four:>14}");
    }
    let ratio = |gdrx: &str, other: &str, p| match (rate(gdrx, p), rate(other, p)) {
        (Some(g), Some(o)) => format!("{:.2}x", g / o),
        _ => "-".to_string(),
    };
    for (label, gdrx, other) in [
        ("gdrx (pop) / ArrayQueue", GDRX_POP, ARRAY_QUEUE),
        ("gdrx (pop) / rtrb", GDRX_POP, RTRB),
        ("gdrx (batches) / rtrb", GDRX_BATCH, RTRB),
        ("gdrx (batches) / rtrb (chunks)", GDRX_BATCH, RTRB_CHUNKS),
    ] {
        let [one, four] = PRODUCER_COUNTS.map(|p| ratio(gdrx, other, p));
        println!("{label:<38}{one:>14}{four:>14}");
    }
    println!(
        "notes: rtrb is SPSC; with 4 producers each has its own {}-entry rtrb ring, polled \
         round-robin by the consumer.",
        CAPACITY / 4
    );
    if cores < 5 {
        println!(
            "       this machine has {cores} core(s): 4 producers + 1 consumer = 5 busy threads \
             oversubscribe it, so the 4-producer rates measure scheduling as much as the queue."
        );
    }
}

fn main() {
    // Sized so the whole run (12 benchmarks) takes about a minute and a half; CLI flags still
    // override.
    let mut c = Criterion::default()
        .sample_size(SAMPLE_SIZE)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    push_pop(&mut c);
    c.final_summary();
    print_summary();
}
