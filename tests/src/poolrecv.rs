//! The receiving side of the buffer-pool tests: an SRQ fed by a [`Pool`] from any memory
//! provider, the `gdrx-testpeer` sender in a second process, and consumers that verify every
//! lease (inline, on several threads holding leases for random times, or holding every slot
//! until the pool runs dry).
//!
//! Besides verifying each message against its frame (connection tag, sequence number, size,
//! checksum), the harness checks the lending rules directly: a slot is never lent twice at
//! once (a per-slot "held" flag set on lend and cleared just before the lease is dropped), and
//! each lease's bytes are verified again after it was held (a payload canary: a slot reposted
//! while lent would be overwritten by a later message).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gdrx_core::accept::admit_hello;
use gdrx_core::cm::Gather;
use gdrx_core::wire::Hello;
use gdrx_core::{
    ConnectionSpec, Cq, Error, Lease, Listener, Pool, PoolConfig, PoolReport, PoolStats, Provider,
    RecvEvent, Srq, SrqConfig, TeardownReport, WcError,
};

use crate::frame;
use crate::peer::{OpKind, Plan, Report};
use crate::recv::{drain, finish_peer, spawn_peer};
use crate::RxeEnv;

/// What the consumers do with leases.
#[derive(Debug, Clone, Copy)]
pub enum Consumers {
    /// Verify on the poller thread and drop at once.
    Inline,
    /// Hand leases over a crossbeam channel to `n` threads; each verifies a lease, holds it for
    /// a random time up to `max_hold`, verifies it again and drops it.
    Threads {
        /// Consumer threads.
        n: u32,
        /// Longest hold.
        max_hold: Duration,
    },
    /// Keep every lease until the pool reports it is exhausted, then hold them all for `hold`
    /// (the sender must stall on RNR NAKs, and nothing may arrive), verify them again and
    /// release them all. Repeats `episodes` times, then consumes inline.
    HoldAll {
        /// How long to hold every slot.
        hold: Duration,
        /// How many times.
        episodes: u32,
    },
    /// Every lease goes through the raw API (`into_raw`, then `Returner::give_back`). The first
    /// `rounds` leases are also returned adversarially, after liburing's zcrx tests: a raw
    /// return while the `Lease` is alive, the same pair returned 16 times, stale generations
    /// and out-of-range slot ids. Every rejection must be typed and counted.
    RawAdversarial {
        /// Leases abused.
        rounds: u32,
    },
}

/// Rejections the adversarial consumer provoked, by kind, and any return that was not answered
/// as expected.
#[derive(Debug, Clone, Default)]
pub struct Adversarial {
    /// Raw returns of a pair a live `Lease` holds.
    pub held_by_lease: u64,
    /// Duplicate returns.
    pub duplicate: u64,
    /// Stale generations.
    pub stale: u64,
    /// Out-of-range slot ids.
    pub out_of_range: u64,
    /// Returns whose answer was not the expected one.
    pub wrong: Vec<String>,
}

/// One buffer-pool run.
#[derive(Debug, Clone)]
pub struct PoolTest {
    /// Where the pool's memory comes from.
    pub provider: Arc<dyn Provider>,
    /// The pool's configuration.
    pub pool: PoolConfig,
    /// Sender connections.
    pub conns: u32,
    /// Messages per connection.
    pub messages: u32,
    /// SEND or SEND_WITH_IMM.
    pub op: OpKind,
    /// Event-mode CQ instead of busy polling.
    pub events: bool,
    /// Feed each connection's own receive queue (`Pool::for_qp`, one connection) instead of an
    /// SRQ.
    pub qp_mode: bool,
    /// What the consumers do.
    pub consumers: Consumers,
    /// Keep this many leases when every message has arrived and close the pool while they are
    /// out (and receives are still posted); they are verified again after the close.
    pub keep_at_close: u32,
    /// Give up after this long.
    pub timeout: Duration,
}

/// One hold-every-slot episode.
#[derive(Debug, Clone, Default)]
pub struct Stall {
    /// Leases held.
    pub held: u32,
    /// Completions that arrived while every slot was held (must be 0).
    pub arrived_while_held: u64,
    /// RNR NAKs the device sent (`send_rnr_err`) and received (`rcvd_rnr_err`) during the hold.
    pub rnr_sent: u64,
    /// As above, received by the requester.
    pub rnr_received: u64,
    /// Regions the pool had when it ran dry.
    pub regions: u32,
}

/// What a run verified.
#[derive(Debug, Default)]
pub struct PoolOutcome {
    /// Setup report: provider, memory, registration path.
    pub report: Option<PoolReport>,
    /// Messages verified per connection tag.
    pub received: BTreeMap<u32, u32>,
    /// Bytes verified per connection tag.
    pub bytes_by_tag: BTreeMap<u32, u64>,
    /// Verification failures (first 20) and their count.
    pub frame_errors: Vec<String>,
    /// Count of verification failures.
    pub frame_error_count: u64,
    /// Leases whose bytes changed while they were held.
    pub canary_failures: u64,
    /// Slots lent while already lent.
    pub double_lends: u64,
    /// Most leases out at once.
    pub max_out: u64,
    /// Error completions.
    pub wc_errors: Vec<WcError>,
    /// Hold-every-slot episodes.
    pub stalls: Vec<Stall>,
    /// What the adversarial consumer provoked.
    pub adversarial: Adversarial,
    /// Pool counters once every lease was back.
    pub stats: PoolStats,
    /// The report of the close, when leases were kept.
    pub teardown: Option<TeardownReport>,
    /// Kept leases that still verified after the pool was closed.
    pub kept_verified_after_close: u32,
    /// The sender's report.
    pub peer: Option<Report>,
    /// Seconds in the receive loop.
    pub secs: f64,
}

impl PoolOutcome {
    /// Messages verified.
    pub fn total(&self) -> u64 {
        self.received.values().map(|&v| u64::from(v)).sum()
    }
}

/// A received message and what it must contain.
struct Item {
    lease: Lease,
    tag: u32,
    seq: u32,
    want: u32,
}

/// Copies a lease's header and payload bytes into `out`.
pub fn lease_bytes(l: &Lease, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(l.header());
    out.extend_from_slice(l.payload().expect("host-readable pool memory"));
}

fn verify(item: &Item, has_imm: bool, scratch: &mut Vec<u8>) -> Result<(), frame::FrameError> {
    if item.lease.len() != item.want as usize {
        return Err(frame::FrameError::Length {
            want: item.want,
            got: item.lease.len() as u32,
        });
    }
    lease_bytes(&item.lease, scratch);
    frame::verify(
        scratch,
        item.tag,
        item.seq,
        item.want,
        item.lease.imm(),
        has_imm,
    )
}

/// Per-slot "a consumer holds it" flags.
struct Held(Vec<AtomicBool>);

impl Held {
    /// Marks a slot lent; false if it already was.
    fn lend(&self, slot: u32) -> bool {
        !self.0[slot as usize].swap(true, Ordering::AcqRel)
    }
    /// Called just before the lease goes back (dropped, or handed to `Lease::give_back_all`).
    fn release(&self, slot: u32) {
        self.0[slot as usize].store(false, Ordering::Release);
    }
}

/// Reads an rxe hardware counter of port 1 (`/sys/class/infiniband/DEV/ports/1/hw_counters`).
///
/// # Errors
/// When the counter file is missing or unreadable.
pub fn hw_counter(dev: &str, name: &str) -> anyhow::Result<u64> {
    let p = format!("/sys/class/infiniband/{dev}/ports/1/hw_counters/{name}");
    let s = std::fs::read_to_string(&p).with_context(|| format!("reading {p}"))?;
    Ok(s.trim().parse()?)
}

struct Tally {
    received: BTreeMap<u32, u32>,
    bytes: BTreeMap<u32, u64>,
    errors: Vec<String>,
    error_count: u64,
    canary: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            received: BTreeMap::new(),
            bytes: BTreeMap::new(),
            errors: Vec::new(),
            error_count: 0,
            canary: 0,
        }
    }

    fn record(&mut self, item: &Item, r: Result<(), frame::FrameError>) {
        match r {
            Ok(()) => {
                *self.received.entry(item.tag).or_insert(0) += 1;
                *self.bytes.entry(item.tag).or_insert(0) += u64::from(item.want);
            }
            Err(e) => {
                self.error_count += 1;
                if self.errors.len() < 20 {
                    self.errors
                        .push(format!("conn {} seq {}: {e}", item.tag, item.seq));
                }
            }
        }
    }

    fn merge(&mut self, o: Tally) {
        for (k, v) in o.received {
            *self.received.entry(k).or_insert(0) += v;
        }
        for (k, v) in o.bytes {
            *self.bytes.entry(k).or_insert(0) += v;
        }
        self.error_count += o.error_count;
        self.canary += o.canary;
        self.errors.extend(o.errors.into_iter().take(20));
    }
}

/// Runs a pool test: this process receives through the pool, a `gdrx-testpeer` process sends.
///
/// # Errors
/// Set-up failures (including the pool's own typed errors) and a sender that fails;
/// verification problems are returned in the outcome for the test to assert on.
pub fn run_pool(
    env: &RxeEnv,
    t: &PoolTest,
    peer_exe: &std::path::Path,
) -> anyhow::Result<PoolOutcome> {
    let dev = env.open();
    let mtu = dev.require_active_port(1)?.active_mtu;
    let pd = dev.alloc_pd()?;
    let max_slots = t.pool.slots_per_region * t.pool.max_regions;
    let depth = if t.pool.depth == 0 {
        max_slots
    } else {
        t.pool.depth
    };
    let cq = if t.events {
        Cq::with_events(&dev, depth + 64)?
    } else {
        Cq::new(&dev, depth + 64)?
    };
    let sges = if t.pool.header_split.is_some() { 2 } else { 1 };
    if t.qp_mode && t.conns != 1 {
        bail!("QP mode feeds one connection's receive queue: use conns = 1");
    }
    let srq = if t.qp_mode {
        None
    } else {
        Some(Srq::new(&pd, SrqConfig::new(depth, sges))?)
    };
    let mut pool = match &srq {
        Some(srq) => Some(Pool::new(
            srq,
            &cq,
            Arc::clone(&t.provider),
            t.pool.clone(),
        )?),
        None => None,
    };
    let header = t.pool.header_split.as_ref().map_or(0, |h| h.bytes);
    let max_msg = t.pool.slot_size + header;
    let mut out = PoolOutcome::default();

    let mut listener = Listener::bind(SocketAddr::new(env.ip, 0), 64)?;
    let plan = Plan {
        dev: env.dev.clone(),
        server: listener.local_addr(),
        conns: t.conns,
        messages: t.messages,
        mtu,
        max: max_msg,
        op: t.op,
        window: 16,
        oversize_after: None,
        bad_hello: false,
        first_tag: 0,
    };
    let mut child = spawn_peer(peer_exe, &plan)?;
    let mut spec = ConnectionSpec::new(&pd, &cq, &cq, srq.as_ref());
    if t.qp_mode {
        spec.qp.max_recv_wr = depth;
        spec.qp.max_recv_sge = sges;
    }
    let want = t.conns as usize;
    let mut gather: Gather<Hello> = Gather::new();
    let collected = gather.collect::<anyhow::Error>(
        &mut listener,
        &spec,
        Instant::now() + Duration::from_secs(120),
        |g| g.decided() >= want,
        |req, _| Ok(admit_hello(req.private_data(), max_msg, |_| Ok(None))),
        |_| match child.try_wait()? {
            Some(st) => bail!(
                "sender exited ({st}) while connecting: {}",
                drain(&mut child)
            ),
            None => Ok(()),
        },
    );
    if let Err(e) = collected {
        bail!(
            "only {} of {want} connections arrived: {e:#}; sender: {}",
            gather.accepted.len(),
            drain(&mut child)
        );
    }
    if let Some(r) = gather.refused.first() {
        bail!("the test sender's connection was refused: {}", r.reason);
    }
    let mut conns = Vec::new();
    let mut by_qp: HashMap<u32, (u32, u32)> = HashMap::new();
    for (conn, hello) in gather.accepted {
        by_qp.insert(conn.qp().qp_num(), (hello.conn_tag, 0));
        if pool.is_none() {
            // QP mode (one connection): the pool fills the connection's own receive queue (the
            // sender retries on RNR until it has).
            let qp = conn.shared_qp();
            pool = Some(Pool::for_qp(
                &qp,
                &cq,
                Arc::clone(&t.provider),
                t.pool.clone(),
            )?);
        }
        conns.push(conn);
    }
    let mut pool = pool.context("no pool")?;
    out.report = Some(pool.report());

    let has_imm = t.op.has_imm();
    let held = Arc::new(Held(
        (0..max_slots).map(|_| AtomicBool::new(false)).collect(),
    ));
    let out_now = Arc::new(AtomicU64::new(0));
    let max_out = Arc::new(AtomicU64::new(0));
    let mut tally = Tally::new();
    let mut scratch = Vec::with_capacity(max_msg as usize);
    let expected = u64::from(t.conns) * u64::from(t.messages);
    let mut assigned = 0u64;
    let mut double_lends = 0u64;
    let mut kept: Vec<Item> = Vec::new();
    let mut hold_list: Vec<Item> = Vec::new();
    let mut exhausted = false;
    let mut episodes_left = match t.consumers {
        Consumers::HoldAll { episodes, .. } => episodes,
        _ => 0,
    };

    // Consumer threads.
    let (tx, rx) = crossbeam_channel::unbounded::<Item>();
    let mut workers = Vec::new();
    if let Consumers::Threads { n, max_hold } = t.consumers {
        for w in 0..n {
            let rx = rx.clone();
            let held = Arc::clone(&held);
            let out_now = Arc::clone(&out_now);
            workers.push(std::thread::spawn(move || {
                let mut tally = Tally::new();
                let mut scratch = Vec::new();
                let mut rng = frame::splitmix(u64::from(w) + 1);
                for item in rx.iter() {
                    let r = verify(&item, has_imm, &mut scratch);
                    let ok = r.is_ok();
                    tally.record(&item, r);
                    rng = frame::splitmix(rng);
                    let hold = max_hold.mul_f64((rng % 1000) as f64 / 1000.0);
                    std::thread::sleep(hold);
                    if ok && verify(&item, has_imm, &mut scratch).is_err() {
                        tally.canary += 1;
                    }
                    held.release(item.lease.slot());
                    out_now.fetch_sub(1, Ordering::Relaxed);
                    drop(item);
                }
                tally
            }));
        }
    }
    drop(rx);

    let start = Instant::now();
    let deadline = start + t.timeout;
    let mut wc_errors = Vec::new();
    let mut adv = Adversarial::default();
    let mut adv_done = 0u32;
    while assigned < expected {
        if Instant::now() > deadline {
            let progress: Vec<_> = by_qp.values().collect();
            bail!(
                "timed out after {:?} with {assigned} of {expected} messages: (tag, next) = \
                 {progress:?}; pool {:?}; sender: {}",
                t.timeout,
                pool.stats(),
                drain(&mut child)
            );
        }
        let mut handler = |ev: RecvEvent| match ev {
            RecvEvent::Message(lease) => {
                let Some((tag, next)) = by_qp.get_mut(&lease.qp_num()) else {
                    tally
                        .errors
                        .push(format!("message on unknown QP {:#x}", lease.qp_num()));
                    tally.error_count += 1;
                    return;
                };
                let seq = *next;
                *next += 1;
                assigned += 1;
                if !held.lend(lease.slot()) {
                    double_lends += 1;
                }
                let n = out_now.fetch_add(1, Ordering::Relaxed) + 1;
                max_out.fetch_max(n, Ordering::Relaxed);
                let (want, _) = frame::size_for(*tag, seq, mtu, max_msg);
                let item = Item {
                    lease,
                    tag: *tag,
                    seq,
                    want,
                };
                if assigned + u64::from(t.keep_at_close) > expected {
                    let r = verify(&item, has_imm, &mut scratch);
                    tally.record(&item, r);
                    kept.push(item);
                    return;
                }
                match t.consumers {
                    Consumers::Threads { .. } => tx.send(item).expect("consumers alive"),
                    Consumers::RawAdversarial { rounds } => {
                        let r = verify(&item, has_imm, &mut scratch);
                        tally.record(&item, r);
                        let abuse = adv_done < rounds;
                        adv_done += 1;
                        abuse_and_return(item, abuse, max_slots, &held, &mut adv);
                        out_now.fetch_sub(1, Ordering::Relaxed);
                    }
                    Consumers::HoldAll { .. } if episodes_left > 0 => hold_list.push(item),
                    _ => {
                        let r = verify(&item, has_imm, &mut scratch);
                        tally.record(&item, r);
                        held.release(item.lease.slot());
                        out_now.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            RecvEvent::Failed(e) => wc_errors.push(e),
            RecvEvent::Exhausted { .. } => exhausted = true,
        };
        let batch = pool.poll_blocking(Some(Duration::from_millis(200)))?;
        let n = batch.len();
        batch.for_each(&mut handler);
        if n == 0 {
            if let Some(st) = child.try_wait()? {
                if !st.success() {
                    bail!("sender failed ({st}) mid-stream: {}", drain(&mut child));
                }
            }
        }
        if exhausted && !hold_list.is_empty() {
            exhausted = false;
            if let Consumers::HoldAll { hold, .. } = t.consumers {
                episodes_left -= 1;
                let mut st = Stall {
                    held: hold_list.len() as u32,
                    regions: pool.stats().regions,
                    ..Default::default()
                };
                let (s0, r0) = (
                    hw_counter(&env.dev, "send_rnr_err")?,
                    hw_counter(&env.dev, "rcvd_rnr_err")?,
                );
                let until = Instant::now() + hold;
                while Instant::now() < until {
                    for ev in pool.poll()? {
                        match ev {
                            RecvEvent::Message(l) => {
                                // Cannot happen: nothing is posted. Keep it out of the tally.
                                tracing::error!(
                                    slot = l.slot(),
                                    "message while every slot was held"
                                );
                                st.arrived_while_held += 1;
                            }
                            RecvEvent::Failed(e) => {
                                wc_errors.push(e);
                                st.arrived_while_held += 1;
                            }
                            RecvEvent::Exhausted { .. } => {}
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                st.rnr_sent = hw_counter(&env.dev, "send_rnr_err")? - s0;
                st.rnr_received = hw_counter(&env.dev, "rcvd_rnr_err")? - r0;
                // Every held slot goes back in one call (runs of up to 64 leases per claim on
                // the recycle ring), which the rest of the run depends on.
                let mut leases = Vec::with_capacity(hold_list.len());
                for item in hold_list.drain(..) {
                    let r = verify(&item, has_imm, &mut scratch);
                    tally.record(&item, r);
                    held.release(item.lease.slot());
                    out_now.fetch_sub(1, Ordering::Relaxed);
                    leases.push(item.lease);
                }
                Lease::give_back_all(leases);
                out.stalls.push(st);
            }
        }
    }
    // Inline leftovers of a hold episode that never ran dry.
    for item in hold_list.drain(..) {
        let r = verify(&item, has_imm, &mut scratch);
        tally.record(&item, r);
        held.release(item.lease.slot());
        out_now.fetch_sub(1, Ordering::Relaxed);
    }
    drop(tx);
    for w in workers {
        tally.merge(
            w.join()
                .map_err(|_| anyhow::anyhow!("a consumer thread panicked"))?,
        );
    }
    out.secs = start.elapsed().as_secs_f64();
    // Every lease except the kept ones is back: drain the ring so the counts settle.
    let settle = Instant::now() + Duration::from_secs(10);
    while pool.lent() > kept.len() as u32 && Instant::now() < settle {
        for ev in pool.poll()? {
            if let RecvEvent::Failed(e) = ev {
                wc_errors.push(e);
            }
        }
    }
    out.stats = pool.stats();

    // The sender finishes once its stdin closes.
    out.peer = Some(finish_peer(&mut child)?);

    if !kept.is_empty() {
        out.teardown = Some(pool.close());
        // The pool is gone; the kept leases' memory must still hold their messages.
        drop(conns);
        drop(srq);
        for item in kept.drain(..) {
            if verify(&item, has_imm, &mut scratch).is_ok() {
                out.kept_verified_after_close += 1;
            }
        }
    } else {
        drop(pool);
        drop(conns);
        drop(srq);
    }
    drop(spec);
    drop(cq);
    out.received = tally.received;
    out.bytes_by_tag = tally.bytes;
    out.frame_errors = tally.errors;
    out.frame_error_count = tally.error_count;
    out.canary_failures = tally.canary;
    out.double_lends = double_lends;
    out.max_out = max_out.load(Ordering::Relaxed);
    out.wc_errors = wc_errors;
    out.adversarial = adv;
    Ok(out)
}

/// Returns one lease through the raw API; with `abuse`, tries every wrong return first and
/// after, checking each is rejected with the right error.
fn abuse_and_return(item: Item, abuse: bool, max_slots: u32, held: &Held, adv: &mut Adversarial) {
    use gdrx_core::pool::{RawReturnError as E, ReturnError as R};
    let ret = item.lease.returner();
    let (slot, gen) = (item.lease.slot(), item.lease.generation());
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: Result<(), E>, good: fn(&Result<(), E>) -> bool| {
        let ok = good(&got);
        if !ok {
            wrong.push(format!("{what} (slot {slot} gen {gen}): got {got:?}"));
        }
        u64::from(ok)
    };
    if abuse {
        adv.held_by_lease += expect(
            "raw return while the Lease is alive",
            ret.give_back(slot, gen),
            |r| matches!(r, Err(E::HeldByLease { .. })),
        );
    }
    held.release(slot);
    let raw = item.lease.into_raw();
    expect("the raw return", ret.give_back_raw(raw), |r| r.is_ok());
    if abuse {
        for _ in 0..15 {
            adv.duplicate += expect("the same pair again", ret.give_back(slot, gen), |r| {
                matches!(r, Err(E::Rejected(R::Duplicate { .. })))
            });
        }
        for g in [gen.wrapping_add(1), gen.wrapping_sub(1)] {
            adv.stale += expect("a stale generation", ret.give_back(slot, g), |r| {
                matches!(r, Err(E::Rejected(R::Stale { .. })))
            });
        }
        for s in [max_slots, u32::MAX] {
            adv.out_of_range += expect("an out-of-range slot", ret.give_back(s, gen), |r| {
                matches!(r, Err(E::Rejected(R::OutOfRange { .. })))
            });
        }
    }
    adv.wrong.extend(wrong);
}

/// Asserts every message of every connection was verified exactly once, nothing was lent twice
/// or changed while held, and every slot is back (free + posted = carved).
///
/// # Panics
/// On any shortfall, with the outcome.
pub fn assert_pool_clean(o: &PoolOutcome, t: &PoolTest) {
    assert_eq!(
        o.frame_error_count, 0,
        "verification failures: {:?}",
        o.frame_errors
    );
    assert_eq!(o.canary_failures, 0, "lease bytes changed while held");
    assert_eq!(o.double_lends, 0, "a slot was lent while already lent");
    assert!(
        o.wc_errors.is_empty(),
        "error completions: {:?}",
        o.wc_errors
    );
    for tag in 0..t.conns {
        assert_eq!(
            o.received.get(&tag).copied(),
            Some(t.messages),
            "connection {tag}: messages verified"
        );
    }
    let peer = o.peer.as_ref().expect("sender report");
    for c in &peer.conns {
        assert!(
            c.errors.is_empty(),
            "sender errors on {}: {:?}",
            c.tag,
            c.errors
        );
        assert_eq!(
            Some(&c.sent),
            o.received.get(&c.tag),
            "sent == verified for {}",
            c.tag
        );
        assert_eq!(
            Some(&c.bytes),
            o.bytes_by_tag.get(&c.tag),
            "bytes for {}",
            c.tag
        );
    }
    let s = &o.stats;
    assert_eq!(
        s.completions,
        u64::from(t.conns) * u64::from(t.messages),
        "{s:?}"
    );
    assert_eq!(
        s.slots.free + s.slots.posted + s.slots.lent + s.slots.returned,
        s.carved,
        "every carved slot is in exactly one state: {s:?}"
    );
    assert_eq!(
        s.slots.free + s.slots.posted + t.keep_at_close,
        s.carved,
        "no slot lost: free + posted (+ kept leases) = total: {s:?}"
    );
    assert_eq!(
        s.recycles + u64::from(t.keep_at_close),
        s.completions,
        "every lease came back through the ring: {s:?}"
    );
    let a = &o.adversarial;
    assert!(
        a.wrong.is_empty(),
        "returns answered wrongly: {:?}",
        a.wrong
    );
    assert_eq!(
        (
            s.rejected.duplicate,
            s.rejected.stale,
            s.rejected.out_of_range,
            s.held_by_lease
        ),
        (a.duplicate, a.stale, a.out_of_range, a.held_by_lease),
        "the pool counted exactly the rejections that were provoked: {s:?}"
    );
}

/// `Error` from a pool run, when the run failed with one (for typed-error assertions).
pub fn pool_error(e: &anyhow::Error) -> Option<&Error> {
    e.downcast_ref::<Error>()
}
