//! The buffer pool on real rxe: each memory provider, consumer threads holding leases, a
//! consumer holding every slot (RNR stall), adversarial raw returns with the metrics they
//! record, teardown with leases out, and the typed refusals of a pool that cannot be built.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gdrx_core::pool::RegistrationPath;
use gdrx_core::{
    ConfigError, Cq, HeaderSplit, MemoryKind, PoolConfig, PoolError, Provider, ProviderCheck,
    Region, RegionDesc, RegistrationPolicy, Srq, SrqConfig,
};
use gdrx_providers::{HostProvider, HugePageProvider, PageSize, UdmabufProvider};
use gdrx_tests::peer::OpKind;
use gdrx_tests::poolrecv::{assert_pool_clean, run_pool, Consumers, PoolOutcome, PoolTest};
use gdrx_tests::res;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::{env, PEER};

fn host() -> Arc<dyn Provider> {
    Arc::new(HostProvider::new())
}

fn base(name: &str, provider: Arc<dyn Provider>, consumers: Consumers) -> PoolTest {
    PoolTest {
        provider,
        pool: PoolConfig::named(name)
            .slot_size(16384)
            .slots_per_region(256)
            .post_batch(32),
        conns: 4,
        messages: 2500,
        op: OpKind::SendImm,
        events: false,
        qp_mode: false,
        consumers,
        keep_at_close: 0,
        timeout: Duration::from_secs(240),
    }
}

fn show(name: &str, t: &PoolTest, o: &PoolOutcome) {
    let bytes: u64 = o.bytes_by_tag.values().sum();
    println!(
        "rxe suite [{name}] {} messages ({:.1} MiB) into `{}` memory in {:.1} s ({:.1} MiB/s); \
         most leases out at once {}; stats {:?}",
        o.total(),
        bytes as f64 / (1 << 20) as f64,
        t.provider.name(),
        o.secs,
        bytes as f64 / (1 << 20) as f64 / o.secs.max(1e-9),
        o.max_out,
        o.stats
    );
    if let Some(r) = &o.report {
        print!("{r}");
    }
}

/// One global `metrics` recorder for the suite (installed on first use; pools built before it
/// record into the no-op recorder).
fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let r = DebuggingRecorder::new();
        let s = r.snapshotter();
        r.install().expect("no other metrics recorder in the suite");
        s
    })
}

/// One snapshot of every metric (a snapshot resets the debugging recorder's counters, so take
/// one and query it).
type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

/// The value of metric `name` with label `pool` = `pool` (and `reason` when given).
fn metric<'a>(s: &'a Snap, name: &str, pool: &str, reason: Option<&str>) -> Option<&'a DebugValue> {
    s.iter().find_map(|(k, _, _, v)| {
        let key = k.key();
        let has = |l: &str, want: &str| key.labels().any(|x| x.key() == l && x.value() == want);
        (key.name() == name && has("pool", pool) && reason.is_none_or(|r| has("reason", r)))
            .then_some(v)
    })
}

fn counter(s: &Snap, name: &str, pool: &str, reason: Option<&str>) -> u64 {
    match metric(s, name, pool, reason) {
        Some(DebugValue::Counter(v)) => *v,
        other => panic!("metric {name} (pool {pool}, reason {reason:?}): {other:?}"),
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_host_provider_10k_messages() {
    let env = env();
    let t = base("host10k", host(), Consumers::Inline);
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show("pool_host_provider_10k_messages", &t, &o);
    assert_pool_clean(&o, &t);
    let r = o.report.as_ref().unwrap();
    assert_eq!(r.kind, MemoryKind::Host);
    assert!(r
        .regions
        .iter()
        .all(|g| g.cpu_readable && g.page_size == 4096));
    // Host memory has no dma-buf: its address is its path, not a fallback.
    assert_eq!(
        r.regions[0].path,
        RegistrationPath::Address {
            fallback_from_dmabuf: None
        }
    );
    assert!(
        o.stats.recycles >= 10_000 && o.stats.max_post_batch > 1,
        "{:?}",
        o.stats
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_hugepage_provider_10k_messages() {
    let env = env();
    let mut t = base(
        "huge10k",
        Arc::new(HugePageProvider::new()),
        Consumers::Inline,
    );
    t.events = true;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show("pool_hugepage_provider_10k_messages", &t, &o);
    assert_pool_clean(&o, &t);
    let r = o.report.as_ref().unwrap();
    let page = r.regions[0].page_size;
    println!(
        "hugepage provider: got {} KiB pages: {}",
        page / 1024,
        r.regions[0].origin
    );
    // The testbed reserves 2 MiB huge pages (deploy/rxe-setup.sh); no 1 GiB pages.
    assert!(
        page >= 2 << 20,
        "huge pages in the testbed, got {page} B pages"
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_udmabuf_provider_10k_messages_with_header_split() {
    let env = env();
    let mut t = base(
        "udmabuf10k",
        Arc::new(UdmabufProvider::new()),
        Consumers::Inline,
    );
    t.pool.header_split = Some(HeaderSplit {
        bytes: 64,
        provider: host(),
    });
    t.op = OpKind::Send;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show(
        "pool_udmabuf_provider_10k_messages_with_header_split",
        &t,
        &o,
    );
    assert_pool_clean(&o, &t);
    let r = o.report.as_ref().unwrap();
    let path = &r.regions[0].path;
    println!("udmabuf provider on rxe: registration path = {path}");
    // rxe has no dma-buf MRs: the pool must fall back to the memfd's CPU mapping and say why.
    match path {
        RegistrationPath::Address {
            fallback_from_dmabuf: Some(why),
        } => assert!(why.contains("dma-buf"), "{why}"),
        other => panic!("expected the reported address fallback on rxe, got {other:?}"),
    }
    assert_eq!(r.kind, MemoryKind::HostDmabuf);
    // The memory behind such a region is a real dma-buf exported by udmabuf.
    let region = UdmabufProvider::new()
        .alloc_region(1 << 20)
        .expect("udmabuf");
    assert_eq!(region.exporter().as_deref(), Some("udmabuf"));
    assert!(region.dmabuf().is_some() && region.desc().cpu_readable);
    let (hb, hs) = r.headers.as_ref().expect("header regions");
    assert_eq!(*hb, 64);
    assert!(hs.iter().all(|h| h.cpu_readable));
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_feeds_one_qps_own_receive_queue() {
    let env = env();
    let mut t = base("qpmode", host(), Consumers::Inline);
    t.qp_mode = true;
    t.conns = 1;
    t.messages = 3000;
    t.pool.slots_per_region = 64;
    t.events = true;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show("pool_feeds_one_qps_own_receive_queue", &t, &o);
    assert_pool_clean(&o, &t);
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_four_consumer_threads_hold_leases_for_random_times() {
    let env = env();
    let mut t = base(
        "threads4",
        host(),
        Consumers::Threads {
            n: 4,
            max_hold: Duration::from_millis(2),
        },
    );
    t.pool.slots_per_region = 128;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show(
        "pool_four_consumer_threads_hold_leases_for_random_times",
        &t,
        &o,
    );
    assert_pool_clean(&o, &t);
    assert!(
        o.max_out >= 4,
        "consumers held leases concurrently: {}",
        o.max_out
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_consumer_holding_every_slot_stalls_senders_on_rnr() {
    let env = env();
    let mut t = base(
        "holdall",
        host(),
        Consumers::HoldAll {
            hold: Duration::from_millis(1500),
            episodes: 2,
        },
    );
    // Starts with one region of 32 slots and may grow to two.
    t.pool.slots_per_region = 32;
    t.pool.max_regions = 2;
    t.messages = 500;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show(
        "pool_consumer_holding_every_slot_stalls_senders_on_rnr",
        &t,
        &o,
    );
    println!("stalls: {:?}", o.stalls);
    assert_pool_clean(&o, &t);
    assert_eq!(o.stalls.len(), 2, "two hold-everything episodes");
    for s in &o.stalls {
        assert_eq!(
            s.regions, 2,
            "the pool grew to its limit before running dry"
        );
        assert_eq!(s.held, 64, "every slot was held");
        assert_eq!(
            s.arrived_while_held, 0,
            "nothing arrives with nothing posted"
        );
        assert!(
            s.rnr_sent > 0 && s.rnr_received > 0,
            "senders got RNR NAKs: {s:?}"
        );
    }
    assert!(o.stats.empty_events >= 2, "{:?}", o.stats);
    assert_eq!(o.stats.regions, 2);
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_exhausted_by_a_slow_consumer_thread_is_woken_by_its_doorbell() {
    let env = env();
    // 8 slots, one consumer thread holding each lease up to 20 ms: the sender lends every
    // slot at once, and the poller waits in poll_blocking with nothing posted.
    let mut t = base(
        "doorbell",
        host(),
        Consumers::Threads {
            n: 1,
            max_hold: Duration::from_millis(20),
        },
    );
    t.pool.slots_per_region = 8;
    t.conns = 1;
    t.messages = 150;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show(
        "pool_exhausted_by_a_slow_consumer_thread_is_woken_by_its_doorbell",
        &t,
        &o,
    );
    assert_pool_clean(&o, &t);
    assert!(o.stats.empty_events >= 1, "the pool ran dry: {:?}", o.stats);
    // Returns from the consumer thread rang the poller's eventfd while it slept with every
    // slot lent (rather than the poller napping and re-checking).
    assert!(o.stats.doorbell_rings >= 1, "{:?}", o.stats);
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_adversarial_raw_returns_are_rejected_counted_and_in_metrics() {
    let env = env();
    let snap = snapshotter();
    let mut t = base(
        "adversarial",
        host(),
        Consumers::RawAdversarial { rounds: 32 },
    );
    t.conns = 2;
    t.messages = 1000;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show("pool_adversarial_raw_returns", &t, &o);
    println!("adversarial: {:?}", o.adversarial);
    assert_pool_clean(&o, &t);
    let a = &o.adversarial;
    assert_eq!(
        (a.held_by_lease, a.duplicate, a.stale, a.out_of_range),
        (32, 32 * 15, 32 * 2, 32 * 2)
    );
    // The same rejections, and the data path, through the metrics facade.
    let snap = snap.snapshot().into_vec();
    let snap = &snap;
    let c = |name: &str, reason: Option<&str>| counter(snap, name, "adversarial", reason);
    assert_eq!(
        c("gdrx_pool_rejected_returns_total", Some("duplicate")),
        32 * 15
    );
    assert_eq!(c("gdrx_pool_rejected_returns_total", Some("stale")), 64);
    assert_eq!(
        c("gdrx_pool_rejected_returns_total", Some("out_of_range")),
        64
    );
    assert_eq!(
        c("gdrx_pool_rejected_returns_total", Some("held_by_lease")),
        32
    );
    assert_eq!(c("gdrx_pool_completions_total", None), 2000);
    let bytes: u64 = o.bytes_by_tag.values().sum();
    assert_eq!(c("gdrx_pool_bytes_received_total", None), bytes);
    assert_eq!(c("gdrx_pool_recycles_total", None), 2000);
    match metric(snap, "gdrx_pool_refill_batch_size", "adversarial", None) {
        Some(DebugValue::Histogram(v)) => assert!(!v.is_empty()),
        other => panic!("refill batch histogram: {other:?}"),
    }
    match metric(snap, "gdrx_pool_slots_posted", "adversarial", None) {
        Some(DebugValue::Gauge(v)) => assert!(v.0 > 0.0),
        other => panic!("posted gauge: {other:?}"),
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_teardown_with_leases_out_and_receives_posted() {
    let env = env();
    let before = res::counts(&env.dev).expect("rdma resource counts");
    let mut t = base("teardown", host(), Consumers::Inline);
    t.conns = 2;
    t.messages = 500;
    t.keep_at_close = 10;
    let o = run_pool(&env, &t, PEER.as_ref()).expect("pool run");
    show("pool_teardown_with_leases_out_and_receives_posted", &t, &o);
    assert_pool_clean(&o, &t);
    let td = o.teardown.as_ref().expect("teardown report");
    println!("{td}");
    assert_eq!(td.lent, 10, "the report names the leases still out");
    assert!(td.posted > 0, "receives were still posted at close: {td:?}");
    assert_eq!(td.lent + td.posted + td.free + td.returned, td.carved);
    assert_eq!(
        o.kept_verified_after_close, 10,
        "leases stay valid after the pool is gone"
    );
    let after = res::counts(&env.dev).expect("rdma resource counts");
    assert_eq!(
        before, after,
        "every verbs object is gone once the last lease is dropped"
    );
}

/// Host memory that claims to be unreadable, to exercise the opt-in (never read from the CPU).
#[derive(Debug)]
struct PretendDevice(HostProvider);

#[derive(Debug)]
struct PretendRegion {
    /// Keeps the host memory alive.
    _inner: Arc<dyn Region>,
    desc: RegionDesc,
}

impl Region for PretendRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

// SAFETY: forwards a host region (which meets the contract) and only narrows what it claims:
// `cpu_readable` false is always allowed.
unsafe impl Provider for PretendDevice {
    fn name(&self) -> &str {
        "pretend-device"
    }
    fn kind(&self) -> MemoryKind {
        MemoryKind::Gpu
    }
    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, gdrx_core::AllocError> {
        let r = self.0.alloc(len)?;
        let mut d = r.desc().clone();
        d.cpu_readable = false;
        Ok(Arc::new(PretendRegion { _inner: r, desc: d }))
    }
}

/// A provider whose check fails.
#[derive(Debug)]
struct Blocked;

// SAFETY: never allocates.
unsafe impl Provider for Blocked {
    fn name(&self) -> &str {
        "blocked"
    }
    fn kind(&self) -> MemoryKind {
        MemoryKind::Host
    }
    fn check(&self, _: &gdrx_core::Device) -> ProviderCheck {
        ProviderCheck {
            provider: "blocked".into(),
            blockers: vec!["no such memory here".into()],
            notes: vec![],
        }
    }
    fn alloc(&self, _: usize) -> Result<Arc<dyn Region>, gdrx_core::AllocError> {
        panic!("alloc called although the check failed")
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn pool_refuses_what_it_cannot_use_before_posting_anything() {
    let env = env();
    let dev = env.open();
    let pd = dev.alloc_pd().unwrap();
    let cq = Cq::new(&dev, 256).unwrap();
    let srq = Srq::new(&pd, SrqConfig::new(128, 1)).unwrap();
    let before = res::counts(&env.dev).unwrap();
    let cfg = |name: &str| {
        PoolConfig::named(name)
            .slot_size(4096)
            .slots_per_region(128)
    };
    let p = |pr: Arc<dyn Provider>, c: PoolConfig| gdrx_core::Pool::new(&srq, &cq, pr, c);

    // 1 GiB pages required, none reserved in the testbed: every step named, with the fix.
    let e = expect_err!(
        p(
            Arc::new(
                HugePageProvider::new()
                    .require(PageSize::Huge1G)
                    .forbid_fallback()
            ),
            cfg("need1g")
        ),
        PoolError::Alloc(_) | PoolError::ProviderUnusable { .. },
        "1 GiB"
    );
    println!("1 GiB pages required: {e}");
    // dma-buf required on rxe: the probe's reason.
    let e = expect_err!(
        p(
            Arc::new(UdmabufProvider::new()),
            cfg("needdmabuf").registration(RegistrationPolicy::RequireDmabuf)
        ),
        PoolError::DmabufRequired { .. },
        "dma-buf",
        "rxe"
    );
    println!("dma-buf required: {e}");
    // Unreadable memory without the opt-in.
    let e = expect_err!(
        p(
            Arc::new(PretendDevice(HostProvider::new())),
            cfg("unreadable")
        ),
        PoolError::UnreadableMemory { .. },
        "allow_unreadable"
    );
    println!("unreadable: {e}");
    // A provider whose check fails is never asked to allocate.
    expect_err!(
        p(Arc::new(Blocked), cfg("blocked")),
        PoolError::ProviderUnusable { .. },
        "no such memory here"
    );
    // Header split on an SRQ with one SGE; a depth beyond the SRQ.
    expect_err!(
        p(host(), cfg("split1sge").header_split(64, host())),
        PoolError::Config(ConfigError::HeaderSplitSges { max_sge: 1, .. }),
        "max_sge"
    );
    expect_err!(
        p(host(), cfg("deep").depth(4096)),
        PoolError::Config(ConfigError::Depth { depth: 4096, .. }),
        "depth"
    );
    assert_eq!(
        before,
        res::counts(&env.dev).unwrap(),
        "failed pools leave no MR behind"
    );

    // With the opt-in, unreadable memory is accepted and reported as such.
    let pool = p(
        Arc::new(PretendDevice(HostProvider::new())),
        cfg("optin").allow_unreadable(true),
    )
    .expect("unreadable memory with allow_unreadable");
    let r = pool.report();
    print!("{r}");
    assert!(!r.regions[0].cpu_readable);
    assert_eq!(pool.posted(), 128);
    let td = pool.close();
    assert_eq!((td.posted, td.lent), (128, 0), "{td}");
}
