//! The pool's metrics, through the [`metrics`] facade. Handles are registered once when the pool
//! is built, so recording on the data path only touches the handles (no key building, no
//! allocation in gdrx; what the installed recorder does is up to it).
//!
//! Every metric carries the labels `pool` (the pool's name) and `provider` (the provider's
//! name). The names are listed in [`NAMES`] and in the README.

use metrics::{Counter, Gauge, Histogram, Unit};

/// `(name, kind, unit, description)` of every metric a pool records.
pub const NAMES: &[(&str, &str, &str, &str)] = &[
    (
        "gdrx_pool_slots_free",
        "gauge",
        "slots",
        "slots owned by the pool and not posted",
    ),
    (
        "gdrx_pool_slots_posted",
        "gauge",
        "slots",
        "slots in posted receive work requests",
    ),
    (
        "gdrx_pool_slots_lent",
        "gauge",
        "slots",
        "slots lent to consumers (including returned ones the poller has not drained yet)",
    ),
    (
        "gdrx_pool_regions",
        "gauge",
        "regions",
        "memory regions allocated and registered",
    ),
    (
        "gdrx_pool_completions_total",
        "counter",
        "completions",
        "successful receive completions",
    ),
    (
        "gdrx_pool_completion_errors_total",
        "counter",
        "completions",
        "receive completions with an error status (flushes included)",
    ),
    (
        "gdrx_pool_bytes_received_total",
        "counter",
        "bytes",
        "bytes received into the pool",
    ),
    (
        "gdrx_pool_recycles_total",
        "counter",
        "slots",
        "slots returned by consumers and drained",
    ),
    (
        "gdrx_pool_rejected_returns_total",
        "counter",
        "returns",
        "returns rejected, by `reason` (duplicate, stale, out_of_range, held_by_lease)",
    ),
    (
        "gdrx_pool_empty_events_total",
        "counter",
        "events",
        "times every slot was lent out and nothing was left to post",
    ),
    (
        "gdrx_pool_refill_batch_size",
        "histogram",
        "work requests",
        "work requests per post call",
    ),
];

fn describe() {
    for &(name, kind, unit, desc) in NAMES {
        let unit = match unit {
            "bytes" => Some(Unit::Bytes),
            _ => Some(Unit::Count),
        };
        match (kind, unit) {
            ("gauge", Some(u)) => metrics::describe_gauge!(name, u, desc),
            ("counter", Some(u)) => metrics::describe_counter!(name, u, desc),
            (_, Some(u)) => metrics::describe_histogram!(name, u, desc),
            _ => {}
        }
    }
}

/// Handles the poller records into.
#[derive(Debug)]
pub(crate) struct PollerMetrics {
    pub free: Gauge,
    pub posted: Gauge,
    pub lent: Gauge,
    pub regions: Gauge,
    pub completions: Counter,
    pub completion_errors: Counter,
    pub bytes: Counter,
    pub recycles: Counter,
    pub empty_events: Counter,
    pub refill_batch: Histogram,
}

/// Handles recorded from any thread (returns).
#[derive(Debug)]
pub(crate) struct ReturnMetrics {
    pub duplicate: Counter,
    pub stale: Counter,
    pub out_of_range: Counter,
    pub held_by_lease: Counter,
}

pub(crate) fn register(pool: &str, provider: &str) -> (PollerMetrics, ReturnMetrics) {
    describe();
    let l = |name: &'static str| {
        let labels = [("pool", pool.to_owned()), ("provider", provider.to_owned())];
        (name, labels)
    };
    let g = |name| {
        let (n, labels) = l(name);
        metrics::gauge!(n, &labels)
    };
    let c = |name| {
        let (n, labels) = l(name);
        metrics::counter!(n, &labels)
    };
    let rejected = |reason: &'static str| {
        let labels = [
            ("pool", pool.to_owned()),
            ("provider", provider.to_owned()),
            ("reason", reason.to_owned()),
        ];
        metrics::counter!("gdrx_pool_rejected_returns_total", &labels)
    };
    let (hn, hl) = l("gdrx_pool_refill_batch_size");
    (
        PollerMetrics {
            free: g("gdrx_pool_slots_free"),
            posted: g("gdrx_pool_slots_posted"),
            lent: g("gdrx_pool_slots_lent"),
            regions: g("gdrx_pool_regions"),
            completions: c("gdrx_pool_completions_total"),
            completion_errors: c("gdrx_pool_completion_errors_total"),
            bytes: c("gdrx_pool_bytes_received_total"),
            recycles: c("gdrx_pool_recycles_total"),
            empty_events: c("gdrx_pool_empty_events_total"),
            refill_batch: metrics::histogram!(hn, &hl),
        },
        ReturnMetrics {
            duplicate: rejected("duplicate"),
            stale: rejected("stale"),
            out_of_range: rejected("out_of_range"),
            held_by_lease: rejected("held_by_lease"),
        },
    )
}
