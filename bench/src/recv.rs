//! The receiving side (`gdrx-bench server`, and the receiver thread of `loopback`): one SRQ fed by
//! a [`Pool`] from the chosen memory provider, every connection of a run on it, leases handed to
//! consumer threads (or consumed on the polling thread), one [`RecvRow`] per run.
//!
//! A run is one message size. The client's connect requests describe it ([`RunSpec`]); the
//! server builds the CQ, SRQ and pool for it when the first request arrives (before accepting,
//! so nothing is allocated inside the measurement), accepts every connection of the run, then
//! polls until every connection delivered its last message.
//!
//! Timing runs from the first completion to the last; CPU time is the polling and consumer
//! threads' own CPU clocks over the same span. Sequence numbers (immediate data) are checked for
//! every message; with `--verify` every payload is checked byte for byte. In WRITE_WITH_IMM mode
//! the payload sits in the connection's window, at slot `seq % W`, and is checked on the polling
//! thread when its completion is handled, before the lease is handed on. That is sound with
//! `W = pool buffers + sender tx depth`: the sender writes message `i + W` only once message
//! `i + W - tx_depth` was acknowledged, which needs a posted receive for every message from `i`
//! on; those are `W - tx_depth + 1` messages in distinct pool buffers (message `i`'s completion
//! not being handled yet), more than the pool has. (Only the last packet of a WRITE_WITH_IMM needs
//! a posted receive, so the RNR mechanism alone would not protect the window.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use gdrx_core::cm::{Admission, Gather};
use gdrx_core::wire::Welcome;
use gdrx_core::{
    Access, ConnEvent, Connection, ConnectionSpec, Cq, Device, HostMemory, Lease, Listener,
    MemoryWindow, Mr, Pd, Pool, PoolConfig, Provider, QpConfig, RecvEvent, Srq, SrqConfig, WcError,
};
use hdrhistogram::Histogram;

use crate::opts::{Hold, Op, OutOpts, ProviderKind, RecvOpts};
use crate::proto::{self, RunSpec};
use crate::report::{self, Peak, Progress, RecvRow};

mod perftest;
pub use perftest::PerftestRun;

/// The prefix of the reply a refused request gets (`gdrx-bench: <reason>`).
const REPLY_PREFIX: &str = "gdrx-bench";

/// How long a run may go without a completion before it is abandoned (and how long its
/// connections may take to arrive).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The receiving side: a device, a PD and a listener; it serves runs one after another.
#[derive(Debug)]
pub struct Receiver {
    dev: Arc<Device>,
    pd: Arc<Pd>,
    listener: Listener,
    opts: RecvOpts,
}

impl Receiver {
    /// Opens `dev`, checks that its port `port` is up, and listens on `addr` (port 0 picks one).
    ///
    /// # Errors
    /// When the device is missing or its port is down, or the address cannot be bound.
    pub fn bind(
        dev: &str,
        port: u8,
        addr: SocketAddr,
        opts: &RecvOpts,
    ) -> anyhow::Result<Receiver> {
        opts.validate()?;
        let dev = Device::open(dev)?;
        dev.require_active_port(port)?;
        let pd = dev.alloc_pd()?;
        let listener = Listener::bind(addr, 64)?;
        Ok(Receiver {
            dev,
            pd,
            listener,
            opts: opts.clone(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Serves runs until the client's last run, `runs` runs, or (waiting for a run) `idle`
    /// passes; prints each row as `out` says and returns them all.
    ///
    /// A peer costs only its own run. A request this server will not serve (not a benchmark
    /// run, out of order, over a limit such as `--max-qps` or `--max-memory-mib`) is refused
    /// with the reason, before anything is allocated for it. A run whose handshake stalls for
    /// `--handshake-timeout` is abandoned; other senders' requests that arrived meanwhile were
    /// held, and are served next. A run that fails once measured (a peer that breaks its
    /// announced count, disappears, or sends bad data) is reported at once, and the server
    /// goes on; it fails at the end, naming those runs. With `fail_fast` (loopback: the only
    /// sender is our own) the first refusal or failure ends it instead.
    ///
    /// # Errors
    /// Setup errors that are ours (the pool cannot be built), no run within `idle`, and at the
    /// end the runs that failed.
    pub fn serve(
        &mut self,
        runs: Option<u32>,
        idle: Option<Duration>,
        out: &OutOpts,
        fail_fast: bool,
    ) -> anyhow::Result<Vec<RecvRow>> {
        let mut rows = Vec::new();
        let mut failed: Vec<String> = Vec::new();
        // Runs that ended, well or not (what --runs counts).
        let mut served = 0usize;
        let mut held = std::collections::VecDeque::new();
        let mut header = false;
        loop {
            let req = match held.pop_front() {
                Some(r) => r,
                None => match self.listener.next_request(idle)? {
                    Some(r) => r,
                    None => bail!(
                        "no connection request within {:?} on {} (is `gdrx-bench client` pointed at this address?)",
                        idle.unwrap_or_default(),
                        self.local_addr()
                    ),
                },
            };
            let peer = req
                .peer_addr()
                .map_or_else(|| "an unknown peer".to_string(), |p| p.to_string());
            let refusal = match RunSpec::decode(req.private_data()) {
                Ok(s) if s.conn != 0 => Err(format!(
                    "out of order: a run starts with connection 0, this is connection {}",
                    s.conn
                )),
                Ok(s) => check_limits(&self.opts, &s).map(|()| s),
                Err(e) => Err(format!("not a benchmark run: {e}")),
            };
            let spec = match refusal {
                Ok(s) => s,
                Err(why) => {
                    // (refuse() logs it, with the peer.)
                    let _ = req.refuse(REPLY_PREFIX, why.clone());
                    if fail_fast {
                        bail!("{why}");
                    }
                    continue;
                }
            };
            let run = match Run::setup(self, &spec) {
                Ok(r) => r,
                Err(e) => {
                    // Within the limits and still not buildable here (memlock, huge pages,
                    // udmabuf's size limit, no memory windows): refused with the reason. The
                    // next sender may ask for less.
                    let e = e.context(format!("setting up the {} B run of {peer}", spec.size));
                    let _ = req.refuse(REPLY_PREFIX, format!("receiver setup failed: {e:#}"));
                    if fail_fast {
                        return Err(e);
                    }
                    eprintln!("gdrx-bench server: refused a run: {e:#}");
                    failed.push(format!("{e:#}"));
                    served += 1;
                    if runs.is_some_and(|n| served >= n as usize) {
                        break;
                    }
                    continue;
                }
            };
            let measured = match run.accept_and_measure(self, req, &spec, out, &mut held) {
                Ok(row) => Ok(row),
                Err(RunError::Handshake(e)) => {
                    // Not a run: its sender never got going. It costs nobody else anything.
                    let e = e.context(format!("abandoned the {} B run of {peer}", spec.size));
                    tracing::warn!("{e:#}");
                    if fail_fast {
                        return Err(e);
                    }
                    continue;
                }
                Err(RunError::Run(e)) => Err(e),
            };
            match measured {
                Ok(row) => {
                    if out.json {
                        println!("{}", serde_json::to_string(&row)?);
                    } else {
                        if !header {
                            println!("{}", report::recv_header());
                            header = true;
                        }
                        println!("{}", report::recv_line(&row));
                    }
                    if row.verify_errors > 0 {
                        failed.push(format!(
                            "{} messages failed verification in the {} B run",
                            row.verify_errors, spec.size
                        ));
                    }
                    rows.push(row);
                }
                Err(e) => {
                    let e = format!("{} B run of {peer}: {e:#}", spec.size);
                    eprintln!("gdrx-bench server: run failed: {e}");
                    failed.push(e);
                }
            }
            served += 1;
            if fail_fast && !failed.is_empty() {
                break;
            }
            if spec.last_run || runs.is_some_and(|n| served >= n as usize) {
                break;
            }
        }
        // Requests still held were never answered: say no rather than leave them to time out.
        for r in held {
            let _ = r.refuse(REPLY_PREFIX, "the server is done");
        }
        match failed.len() {
            0 => Ok(rows),
            1 => bail!("{}", failed[0]),
            n => bail!("{n} of {served} runs failed; the first: {}", failed[0]),
        }
    }
}

/// How long a run keeps polling after every connection flagged its last message, to catch a
/// sender that goes on sending.
const AFTER_LAST: Duration = Duration::from_millis(200);

/// Requests of other runs held while a run gathers its connections, at most.
const MAX_HELD: usize = 16;

/// Why a run did not produce a row.
enum RunError {
    /// Its connections did not all arrive and establish within `--handshake-timeout`.
    Handshake(anyhow::Error),
    /// It started and failed.
    Run(anyhow::Error),
}

/// Checks what a run described by its client would allocate against this server's limits,
/// before anything is allocated. The reason fits a refusal's private data.
fn check_limits(o: &RecvOpts, spec: &RunSpec) -> Result<(), String> {
    check_qps(o, spec)?;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let max = o.max_memory();
    let slots = u64::from(o.pool_slots(spec.qps));
    let slot = u64::from(slot_size(spec));
    let pool = slots.saturating_mul(slot);
    if pool > max {
        return Err(format!(
            "{slots} buffers of {slot} B ({:.1} MiB) exceed the {:.0} MiB limit (--max-memory-mib): \
             lower --pool-slots, or -r/--rx-depth",
            mib(pool),
            mib(max)
        ));
    }
    if spec.op == Op::WriteImm {
        let window = u64::from(spec.qps)
            .saturating_mul(window_slots(o, spec))
            .saturating_mul(u64::from(spec.size));
        if pool.saturating_add(window) > max {
            return Err(format!(
                "WRITE windows of {} x ({slots} + tx depth {}) x {} B ({:.0} MiB in all) exceed \
                 the {:.0} MiB limit (--max-memory-mib)",
                spec.qps,
                spec.tx_depth,
                spec.size,
                mib(pool.saturating_add(window)),
                mib(max)
            ));
        }
    }
    Ok(())
}

/// The connection count against `--max-qps`.
fn check_qps(o: &RecvOpts, spec: &RunSpec) -> Result<(), String> {
    if spec.qps > o.max_qps {
        return Err(format!(
            "the run asks for {} connections; this server takes at most {} (--max-qps)",
            spec.qps, o.max_qps
        ));
    }
    Ok(())
}

/// Messages in each connection's WRITE window: the pool's buffers plus the sender's tx depth
/// (see the module docs for why that is enough).
fn window_slots(o: &RecvOpts, spec: &RunSpec) -> u64 {
    u64::from(o.pool_slots(spec.qps)) + u64::from(spec.tx_depth)
}

/// Checks every run `send` would start against the limits of a receiver with `recv`, as the
/// server will when their requests arrive (loopback knows both sides, so it says so at once).
///
/// # Errors
/// The first run over a limit, with the reason the server would give.
pub fn check_runs(recv: &RecvOpts, send: &crate::opts::SendOpts) -> anyhow::Result<()> {
    for size in send.sizes() {
        let spec = RunSpec {
            run_id: 0,
            conn: 0,
            qps: send.qps,
            size,
            op: send.op,
            verify: send.verify,
            last_run: false,
            iters: 1,
            duration_ms: 0,
            tx_depth: send.tx_depth,
        };
        check_limits(recv, &spec)
            .map_err(|why| anyhow!("{why}"))
            .with_context(|| format!("the {size} B run"))?;
    }
    Ok(())
}

/// The pool's buffer size for a run: the message, or for WRITE_WITH_IMM (the payload lands in
/// the window) a token.
fn slot_size(spec: &RunSpec) -> u32 {
    match spec.op {
        Op::Send => spec.size,
        Op::WriteImm => 64,
    }
}

/// The per-run resources.
struct Run {
    cq: Arc<Cq>,
    scq: Arc<Cq>,
    srq: Arc<Srq>,
    pool: Pool,
    /// WRITE_WITH_IMM: one memory window per connection, each bound to that connection's MR
    /// and QP (declared first: they are deallocated before the MRs are deregistered).
    mws: Vec<MemoryWindow>,
    /// WRITE_WITH_IMM: each connection's window memory (`window_slots` messages) with its MR,
    /// registered without remote access: peers reach it only through `mws`. An MR per
    /// connection as well as a window: a window's rkey works on its own QP only, and the MR
    /// bounds what it reaches (soft-RoCE checks a window's accesses against its MR's range,
    /// not the window's own).
    window: Vec<(Arc<HostMemory>, Arc<Mr>)>,
    window_slots: u64,
    provider: String,
    registration: String,
    page_size: u64,
}

fn provider(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Host => Arc::new(gdrx_providers::HostProvider::new()),
        ProviderKind::Hugepage => Arc::new(gdrx_providers::HugePageProvider::new()),
        ProviderKind::Udmabuf => Arc::new(gdrx_providers::UdmabufProvider::new()),
    }
}

impl Run {
    fn setup(rx: &Receiver, spec: &RunSpec) -> anyhow::Result<Run> {
        let o = &rx.opts;
        // The connection count comes from the peer and sizes the SRQ, the CQ, the pool and the
        // WRITE windows: bounded before anything is allocated (`serve` checks the memory limit
        // too, before this; the perftest-fed server's sizes are its own flags).
        check_qps(o, spec).map_err(|why| anyhow!("{why}"))?;
        let (depth, slots) = (o.depth(spec.qps), o.pool_slots(spec.qps));
        if slots < depth {
            bail!(
                "--pool-slots {slots} is below the {depth} receives a run of {} connections keeps \
                 posted (-r {} per connection): raise --pool-slots or lower -r",
                spec.qps,
                o.rx_depth
            );
        }
        let cqe = o.srq_depth(spec.qps) + 64;
        let cq = if o.events {
            Cq::with_events(&rx.dev, cqe)?
        } else {
            Cq::new(&rx.dev, cqe)?
        };
        let scq = Cq::new(&rx.dev, 16)?;
        let srq = Srq::new(&rx.pd, SrqConfig::new(o.srq_depth(spec.qps), 1))?;
        // WRITE_WITH_IMM puts the payload in the window; the receive itself carries nothing.
        let slot_size = slot_size(spec);
        let pool = Pool::new(
            &srq,
            &cq,
            provider(o.provider),
            PoolConfig::named("gdrx-bench")
                .slot_size(slot_size)
                .slots_per_region(slots)
                .initial_regions(1)
                .max_regions(1)
                .depth(o.depth(spec.qps)),
        )
        .with_context(|| {
            let total = u64::from(slots) * u64::from(slot_size);
            format!(
                "building the {} pool: {} buffers of {slot_size} B ({:.1} MiB) for {} B \
                 messages (lower --pool-slots, or -r/--rx-depth, which sets it to -r x \
                 (connections + 1))",
                o.provider.name(),
                slots,
                total as f64 / f64::from(1u32 << 20),
                spec.size
            )
        })?;
        let report = pool.report();
        tracing::info!("{report}");
        let registration = report
            .regions
            .first()
            .map_or_else(|| "?".into(), |r| r.path.name().to_string());
        let page_size = report.regions.first().map_or(0, |r| r.page_size as u64);
        let window_slots = window_slots(o, spec);
        let window = match spec.op {
            Op::Send => Vec::new(),
            Op::WriteImm => {
                // Each connection's window is a type 2 memory window: say now if this device
                // has none, rather than failing the first accept.
                drop(
                    rx.pd.alloc_mw().context(
                        "WRITE_WITH_IMM runs give each connection a type 2 memory window",
                    )?,
                );
                let len = window_slots * u64::from(spec.size);
                let len = usize::try_from(len).context("window size")?;
                (0..spec.qps)
                    .map(|_| -> anyhow::Result<_> {
                        let mem = Arc::new(HostMemory::new(len).with_context(|| {
                            format!("allocating a {len} B WRITE window (lower --pool-slots or -q)")
                        })?);
                        // No REMOTE_WRITE on the MR itself: its rkey would work from any QP.
                        // The connection gets a type 2 memory window over it at its accept.
                        let mr = rx
                            .pd
                            .register(Arc::clone(&mem), Access::LOCAL_WRITE | Access::MW_BIND)?;
                        Ok((mem, Arc::new(mr)))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
        };
        Ok(Run {
            cq,
            scq,
            srq,
            pool,
            mws: Vec::new(),
            window,
            window_slots,
            provider: o.provider.name().to_string(),
            registration,
            page_size,
        })
    }

    /// Accepts the rest of the run's connections, holding other runs' requests in `held`
    /// (up to [`MAX_HELD`]), then measures it.
    fn accept_and_measure(
        mut self,
        rx: &mut Receiver,
        first: gdrx_core::ConnectRequest,
        spec: &RunSpec,
        out: &OutOpts,
        held: &mut std::collections::VecDeque<gdrx_core::ConnectRequest>,
    ) -> Result<RecvRow, RunError> {
        let patience = rx.opts.handshake_timeout();
        let cspec = ConnectionSpec::new(&rx.pd, &self.scq, &self.cq, Some(&self.srq))
            .qp(QpConfig {
                max_send_wr: 4,
                ..QpConfig::default()
            })
            .timeout(patience);
        let want = usize::from(spec.qps);
        let mut run: Gather<u16> = Gather::new();
        let gathered = (|| -> anyhow::Result<()> {
            let first_admission = self.admission(first.private_data(), spec, 0)?;
            self.admit(&mut run, first, &cspec, spec, first_admission, patience)?;
            // The run may take as long as it likes while it makes progress; a stall of
            // `patience` abandons it.
            let mut deadline = Instant::now() + patience;
            while run.accepted.len() < want {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    bail!(
                        "no new connection for {patience:?} (--handshake-timeout); the run \
                         announced {want}"
                    );
                }
                let Some(req) = rx.listener.next_request(Some(left))? else {
                    continue;
                };
                let other_run = RunSpec::decode(req.private_data())
                    .is_ok_and(|s| !s.same_run(spec) && s.conn == 0);
                if other_run && held.len() < MAX_HELD {
                    // Another sender's run: it waits for this one instead of being refused.
                    held.push_back(req);
                    continue;
                }
                let admission = self.admission(req.private_data(), spec, run.accepted.len())?;
                let before = run.accepted.len();
                self.admit(&mut run, req, &cspec, spec, admission, patience)?;
                if run.accepted.len() > before {
                    deadline = Instant::now() + patience;
                }
            }
            Ok(())
        })();
        if let Err(e) = gathered {
            let arrived = run.accepted.len();
            // The windows before the QPs (see below).
            self.mws.clear();
            drop(run);
            return Err(RunError::Handshake(anyhow!(
                "{arrived} of its {want} connections arrived: {e:#}"
            )));
        }
        let mut conns: Vec<Connection> = run.accepted.into_iter().map(|(c, _)| c).collect();
        let row = self.measure(&rx.dev, &mut conns, spec, &rx.opts, out, None);
        for c in &mut conns {
            let _ = c.disconnect();
        }
        // The windows before the QPs: a bound type 2 window holds a reference on its QP.
        self.mws.clear();
        drop(conns);
        let teardown = self.pool.close();
        tracing::debug!("{teardown}");
        row.map_err(RunError::Run)
    }

    /// Carries out `admission` for `req`: a refusal as decided, an acceptance through
    /// [`Run::accept_one`].
    fn admit(
        &mut self,
        run: &mut Gather<u16>,
        req: gdrx_core::ConnectRequest,
        cspec: &ConnectionSpec,
        spec: &RunSpec,
        admission: Admission<u16>,
        patience: Duration,
    ) -> anyhow::Result<()> {
        match admission {
            Admission::Accept { peer, .. } => {
                let conn = self.accept_one(req, cspec, spec, peer, patience)?;
                run.accepted.push((conn, peer));
            }
            refusal => run.admit(req, cspec, refusal)?,
        }
        Ok(())
    }

    /// Accepts connection `conn` of the run with its Welcome. For WRITE_WITH_IMM it first binds
    /// a memory window to the connection's QP over the connection's range of the window
    /// memory, and advertises that: another connection's rkey, or an address outside the
    /// range, gets the writer a remote access error, and nothing is written.
    fn accept_one(
        &mut self,
        req: gdrx_core::ConnectRequest,
        cspec: &ConnectionSpec,
        spec: &RunSpec,
        conn: u16,
        patience: Duration,
    ) -> anyhow::Result<Connection> {
        let welcome = |window| {
            Welcome {
                flags: 0,
                recv_buf: spec.size,
                window,
                credits: None,
            }
            .encode()
            .to_vec()
        };
        let Some((_, mr)) = self.window.get(usize::from(conn)) else {
            return Ok(req.accept(cspec, &welcome(None))?);
        };
        let mr = Arc::clone(mr);
        let mut mw = mr.pd().alloc_mw()?;
        let c = req.accept_with(cspec, |qp| {
            // The window's exact length: the sender derives its slot count from it, and the
            // MR's length is rounded up to whole pages.
            let len = self.window_slots * u64::from(spec.size);
            let w = qp.bind_window(&mut mw, &mr, 0, len, patience)?;
            Ok(welcome(Some(w)))
        })?;
        self.mws.push(mw);
        Ok(c)
    }

    /// Decides about a request of the run `spec` whose next connection is `next`: connection
    /// `next` of this run is accepted with its WRITE window; anything else is refused (one run
    /// at a time).
    fn admission(
        &self,
        private: &[u8],
        spec: &RunSpec,
        next: usize,
    ) -> anyhow::Result<Admission<u16>> {
        let this = match RunSpec::decode(private) {
            Ok(s) if s.same_run(spec) && usize::from(s.conn) == next => s,
            Ok(s) if s.same_run(spec) => {
                return Ok(Admission::refuse(
                    REPLY_PREFIX,
                    format!("out of order: expected connection {next}, got {}", s.conn),
                ))
            }
            Ok(_) => {
                return Ok(Admission::refuse(
                    REPLY_PREFIX,
                    "another run is in progress",
                ))
            }
            Err(e) => {
                return Ok(Admission::refuse(
                    REPLY_PREFIX,
                    format!("not a benchmark run: {e}"),
                ))
            }
        };
        // The reply (the Welcome, with the connection's window) is made at the accept, once
        // the window is bound to the connection's QP: see `accept_one`.
        Ok(Admission::Accept {
            reply: Vec::new(),
            peer: this.conn,
        })
    }

    /// Receives the run on `conns` until every connection delivered its last message or, for
    /// a peer that frames nothing (perftest: `ended` is given), until `ended` says the peer
    /// closed the run and the completions are drained.
    fn measure(
        &mut self,
        dev: &Arc<Device>,
        conns: &mut [Connection],
        spec: &RunSpec,
        o: &RecvOpts,
        out: &OutOpts,
        mut ended: Option<&mut dyn FnMut() -> anyhow::Result<bool>>,
    ) -> anyhow::Result<RecvRow> {
        let qpn: Vec<u32> = conns.iter().map(|c| c.qp().qp_num()).collect();
        let rnr0 = report::rnr_counter(dev.name());
        let verify_payload = spec.verify && spec.op == Op::Send;
        // One hand-off per polled batch, not per lease: a channel operation (and a consumer
        // wake-up) costs more than the lease it carries.
        let (tx, rx) = crossbeam_channel::unbounded::<Vec<Handoff>>();
        let consumers: Vec<_> = (0..o.consumers)
            .map(|i| {
                let rx = rx.clone();
                let hold = o.hold;
                std::thread::Builder::new()
                    .name(format!("gdrx-consumer-{i}"))
                    .spawn(move || consume(&rx, hold, verify_payload, u64::from(i)))
                    .expect("spawning a consumer thread")
            })
            .collect();
        drop(rx);
        let mut t = Tally {
            now: None,
            inline: (o.consumers == 0).then(|| Consumer::new(true, o.hold, verify_payload, 99)),
            tx: (o.consumers > 0).then_some(tx),
            pending: Vec::new(),
            // A batch goes to one consumer thread: with holds, its leases would wait behind
            // each other's holds while the other threads idle, so then hand them out one by one.
            batch_handoff: o.hold.is_zero(),
            qpn,
            next: vec![0; usize::from(spec.qps)],
            done: vec![false; usize::from(spec.qps)],
            finished: 0,
            messages: 0,
            bytes: 0,
            first: None,
            last: None,
            cpu0: Duration::ZERO,
            peak: Peak::new(Duration::from_millis(20)),
            seq_errors: 0,
            window_errors: 0,
            window_verified: 0,
            wc_error: None,
            window: self.window.iter().map(|(m, _)| Arc::clone(m)).collect(),
            window_slots: self.window_slots,
            spec: *spec,
            lent_max: 0,
            count: vec![0; usize::from(spec.qps)],
            broken: None,
            unframed: ended.is_some(),
        };
        let mut closing = false;
        let mut progress = Progress::new(
            out.progress,
            format!("{} B", spec.size),
            (spec.iters > 0).then(|| spec.iters * u64::from(spec.qps)),
        );
        let mut gone = vec![false; conns.len()];
        let started = Instant::now();
        let mut last_check = started;
        // When (and at what thread CPU time) every connection had flagged its last message.
        let mut finished: Option<(Instant, Duration)> = None;
        let mut idle_polls = 0u32;
        let result = loop {
            // One clock read per polled batch: its completions were taken at the same moment.
            t.now = None;
            let n = match if o.events {
                self.pool.poll_blocking(Some(Duration::from_millis(50)))
            } else {
                self.pool.poll()
            } {
                Ok(batch) => {
                    let n = batch.len();
                    batch.for_each(|ev| t.on_event(ev));
                    t.send_pending();
                    n
                }
                Err(e) => break Err(anyhow!(e).context("polling the pool")),
            };
            if let Some(e) = t.wc_error {
                break Err(anyhow!(e).context("a receive completed with an error"));
            }
            if let Some(why) = t.broken.take() {
                break Err(anyhow!("{why}: the run is not valid"));
            }
            t.lent_max = t.lent_max.max(u64::from(self.pool.lent()));
            if t.finished == conns.len() {
                // Every connection flagged its last message. A sender that goes on sending is
                // caught by a short grace poll (its message fails the run, above); what it sends
                // later finds its connection closed and fails at the sender. The run's CPU time
                // stops here.
                let (at, _) =
                    *finished.get_or_insert_with(|| (Instant::now(), report::thread_cpu()));
                if t.unframed || at.elapsed() >= AFTER_LAST {
                    break Ok(());
                }
            }
            if n > 0 {
                idle_polls = 0;
                if let Some(t0) = t.first {
                    progress.tick(t0, t.messages, t.bytes);
                }
                continue;
            }
            // Busy polling: read the clock only now and then (under emulation a clock read
            // costs more than an empty poll).
            idle_polls = idle_polls.wrapping_add(1);
            if !o.events && !idle_polls.is_multiple_of(1024) {
                continue;
            }
            let now = Instant::now();
            if now.duration_since(last_check) < Duration::from_millis(100) {
                continue;
            }
            last_check = now;
            if let Some(ended) = ended.as_mut() {
                if closing {
                    // An empty poll after the peer closed: everything it sent is handled.
                    break t.counts_as_announced();
                }
                match ended() {
                    Ok(true) => {
                        closing = true;
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => break Err(e),
                }
            }
            for (i, c) in conns.iter_mut().enumerate() {
                while let Ok(Some(ev)) = c.poll_event(Some(Duration::ZERO)) {
                    if matches!(ev, ConnEvent::Disconnected | ConnEvent::DeviceRemoval) {
                        gone[i] = true;
                    }
                }
            }
            // A peer that went away before its last message: once its completions are drained
            // (this poll found none), nothing more can come.
            if let Some(i) = (0..conns.len()).find(|&i| gone[i] && !t.done[i]) {
                break Err(anyhow!(
                    "the sender of connection {i} disconnected after {} of its messages (peer {:?})",
                    t.count[i],
                    conns[i].peer_addr()
                ));
            }
            if now.duration_since(t.last.unwrap_or(started)) > STALL_TIMEOUT {
                break Err(anyhow!(
                    "no completion for {STALL_TIMEOUT:?}: {} messages received, connections done: {:?}",
                    t.messages,
                    t.done
                ));
            }
        };
        let poll_cpu = finished
            .map_or_else(report::thread_cpu, |(_, cpu)| cpu)
            .saturating_sub(t.cpu0);
        // Stop the consumers: they drain what is queued, then report.
        t.tx = None;
        let mut outs: Vec<ConsumerOut> = consumers
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("a consumer thread panicked")))
            .collect::<anyhow::Result<_>>()?;
        if let Some(c) = t.inline.take() {
            outs.push(c.finish());
        }
        // Leases are back: drain them so the pool's counters are final.
        let _ = self.pool.poll();
        if let Err(e) = result {
            // What the run got before it failed: whose messages arrived, and whether what was
            // checked held (a failed peer must not have spoiled the others' data).
            let verified: u64 = t.window_verified + outs.iter().map(|c| c.verified).sum::<u64>();
            let bad: u64 = t.window_errors + outs.iter().map(|c| c.errors).sum::<u64>();
            return Err(anyhow!(
                "{e:#}; before that: messages per connection {:?}, {verified} payloads \
                 verified, {bad} failed verification, {} out of sequence",
                t.count,
                t.seq_errors
            ));
        }
        let stats = self.pool.stats();
        let rnr = match (rnr0, report::rnr_counter(dev.name())) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let mut cpu = poll_cpu;
        let (mut verified, mut payload_errors) = (t.window_verified, t.window_errors);
        for c in &outs {
            hist.add(&c.hist).expect("same bounds");
            cpu += c.cpu;
            verified += c.verified;
            payload_errors += c.errors;
        }
        let (first, last) = (t.first.expect("messages"), t.last.expect("messages"));
        let secs = last.duration_since(first).as_secs_f64();
        // The first message opens the clock: count the bytes after it.
        let timed_bytes = t.bytes - u64::from(spec.size);
        let timed_msgs = t.messages - 1;
        let (bw, rate) = if secs > 0.0 {
            (timed_bytes as f64 / secs, timed_msgs as f64 / secs)
        } else {
            (0.0, 0.0)
        };
        let us = |ns: u64| ns as f64 / 1000.0;
        Ok(RecvRow {
            schema: report::SCHEMA,
            bytes: spec.size,
            op: spec.op.name().into(),
            qps: spec.qps,
            messages: t.messages,
            secs,
            bw_avg_mib_s: bw / report::MIB,
            bw_peak_mib_s: t.peak.best().unwrap_or(bw).max(bw) / report::MIB,
            bw_avg_gbit_s: bw * 8.0 / 1e9,
            msg_rate_mpps: rate / 1e6,
            rx_cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / t.messages as f64,
            lat_p50_us: us(hist.value_at_quantile(0.5)),
            lat_p99_us: us(hist.value_at_quantile(0.99)),
            lat_max_us: us(hist.max()),
            pool_empty_events: stats.empty_events,
            rnr_naks: rnr,
            max_leases_out: t.lent_max,
            verify_errors: t.seq_errors + payload_errors,
            verified,
            consumers: o.consumers,
            hold: o.hold.to_string(),
            events: o.events,
            provider: self.provider.clone(),
            registration: self.registration.clone(),
            page_size: self.page_size,
        })
    }
}

/// A lease on its way to a consumer: the lease, when its completion was taken, and whose
/// message it is.
struct Handoff {
    lease: Lease,
    at: Instant,
    conn: u16,
    seq: u32,
}

/// The polling thread's state during a run.
struct Tally {
    /// When the current batch of completions was polled.
    now: Option<Instant>,
    inline: Option<Consumer>,
    tx: Option<crossbeam_channel::Sender<Vec<Handoff>>>,
    /// This poll batch's leases for the consumer threads.
    pending: Vec<Handoff>,
    /// Send a poll batch's leases in one channel operation (consumers that hold nothing).
    batch_handoff: bool,
    qpn: Vec<u32>,
    next: Vec<u32>,
    done: Vec<bool>,
    finished: usize,
    messages: u64,
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    cpu0: Duration,
    peak: Peak,
    seq_errors: u64,
    window_errors: u64,
    window_verified: u64,
    wc_error: Option<WcError>,
    window: Vec<Arc<HostMemory>>,
    window_slots: u64,
    spec: RunSpec,
    lent_max: u64,
    /// Messages per connection.
    count: Vec<u64>,
    /// The first way a sender broke what its run descriptor announced.
    broken: Option<String>,
    /// The sender frames nothing (perftest: no immediate data, no last flag): messages are
    /// counted, and checked against `spec.iters` when it is known.
    unframed: bool,
}

impl Tally {
    fn on_event(&mut self, ev: RecvEvent) {
        match ev {
            RecvEvent::Message(lease) => self.on_message(lease),
            RecvEvent::Failed(e) => {
                self.wc_error.get_or_insert(e);
            }
            RecvEvent::Exhausted { lent } => {
                tracing::debug!(lent, "every pool buffer is lent out");
            }
        }
    }

    fn on_message(&mut self, lease: Lease) {
        let now = *self.now.get_or_insert_with(Instant::now);
        if self.first.is_none() {
            self.first = Some(now);
            self.cpu0 = report::thread_cpu();
        }
        self.last = Some(now);
        let len = lease.len() as u64;
        self.messages += 1;
        self.bytes += len;
        self.peak.add(now, len);
        let Some(conn) = self.qpn.iter().position(|&q| q == lease.qp_num()) else {
            self.seq_errors += 1;
            return;
        };
        self.count[conn] += 1;
        if self.unframed {
            self.on_unframed(lease, conn, now);
            return;
        }
        let (seq, last) = proto::split_imm(lease.imm().unwrap_or(u32::MAX));
        self.check_announced(conn, seq, last);
        if lease.imm().is_none() || seq != self.next[conn] || len != u64::from(self.spec.size) {
            if self.seq_errors < 5 {
                tracing::error!(
                    conn,
                    seq,
                    want = self.next[conn],
                    len,
                    "message out of sequence or of the wrong length"
                );
            }
            self.seq_errors += 1;
        }
        self.next[conn] = seq.wrapping_add(1) & crate::opts::SEQ_MASK;
        if last && !self.done[conn] {
            self.done[conn] = true;
            self.finished += 1;
        }
        let conn = conn as u16;
        if self.spec.verify {
            if let Some(w) = self.window.get(usize::from(conn)) {
                self.window_verified += 1;
                if !window_holds(w, self.window_slots, self.spec.size, conn, seq) {
                    self.window_errors += 1;
                }
            }
        }
        self.hand_off(Handoff {
            lease,
            at: now,
            conn,
            seq,
        });
    }
}

impl Tally {
    /// A message of a sender that frames nothing: the right size, no more than `-n`.
    fn on_unframed(&mut self, lease: Lease, conn: usize, now: Instant) {
        let (n, iters, len) = (self.count[conn], self.spec.iters, lease.len());
        if len != self.spec.size as usize {
            if self.seq_errors < 5 {
                tracing::error!(
                    conn,
                    len,
                    want = self.spec.size,
                    "a message of the wrong length"
                );
            }
            self.seq_errors += 1;
        }
        if iters > 0 && n > iters && self.broken.is_none() {
            self.broken = Some(format!(
                "connection {conn} sent more than the {iters} messages announced (-n)"
            ));
        }
        if iters > 0 && n == iters && !self.done[conn] {
            // The count is known: the run ends with the last message, not with the peer's
            // closing word (which comes once it saw the last acknowledgement).
            self.done[conn] = true;
            self.finished += 1;
        }
        self.hand_off(Handoff {
            lease,
            at: now,
            conn: conn as u16,
            seq: n as u32,
        });
    }

    /// To the inline consumer, or into the batch for the consumer threads.
    fn hand_off(&mut self, h: Handoff) {
        if let Some(c) = &mut self.inline {
            drop(c.take(h, None));
        } else if let Some(tx) = &self.tx {
            if self.batch_handoff {
                self.pending.push(h);
            } else {
                // The consumers only go away after the run.
                let _ = tx.send(vec![h]);
            }
        }
    }

    /// Hands this poll batch's leases to a consumer thread, in one channel operation.
    fn send_pending(&mut self) {
        if let (Some(tx), false) = (&self.tx, self.pending.is_empty()) {
            let cap = self.pending.capacity();
            // The consumers only go away after the run.
            let _ = tx.send(std::mem::replace(
                &mut self.pending,
                Vec::with_capacity(cap),
            ));
        }
    }

    /// At the end of an unframed run: every connection sent what was announced (`-n`), or
    /// at least one message when nothing was.
    fn counts_as_announced(&self) -> anyhow::Result<()> {
        let iters = self.spec.iters;
        for (conn, &n) in self.count.iter().enumerate() {
            if iters > 0 && n != iters {
                bail!("connection {conn} delivered {n} messages, {iters} were announced (-n)");
            }
            if n == 0 {
                bail!("connection {conn} delivered no message");
            }
        }
        Ok(())
    }

    /// Holds a connection to the count its run descriptor announced: no message after the one
    /// flagged last, no more than `iters`, and the last flag on message `iters` exactly.
    fn check_announced(&mut self, conn: usize, seq: u32, last: bool) {
        if self.broken.is_some() {
            return;
        }
        let (n, iters) = (self.count[conn], self.spec.iters);
        self.broken = if self.done[conn] {
            Some(format!(
                "connection {conn} sent a message (sequence {seq}) after the one it flagged as \
                 its last"
            ))
        } else if iters > 0 && n > iters {
            Some(format!(
                "connection {conn} sent more than the {iters} messages its run descriptor \
                 announced"
            ))
        } else if iters > 0 && last && n != iters {
            Some(format!(
                "connection {conn} announced {iters} messages but flagged message {n} as its last"
            ))
        } else {
            None
        };
    }
}

/// True when message (`conn`, `seq`) sits intact in its WRITE window slot.
fn window_holds(w: &HostMemory, slots: u64, size: u32, conn: u16, seq: u32) -> bool {
    let size = u64::from(size);
    let off = (u64::from(seq) % slots) * size;
    // SAFETY: `off + size` lies inside connection `conn`'s window `w` (slot < slots), which
    // `w` keeps mapped. The sender wrote this slot before the completion being handled, and cannot write
    // it again while that completion is unhandled (the window is larger than the pool plus the
    // sender's depth; see the module docs), so the bytes are stable while they are read.
    let bytes = unsafe { std::slice::from_raw_parts(w.as_ptr().add(off as usize), size as usize) };
    proto::check(bytes, conn, seq).is_ok()
}

/// What one consumer measured.
struct ConsumerOut {
    hist: Histogram<u64>,
    cpu: Duration,
    verified: u64,
    errors: u64,
}

struct Consumer {
    inline: bool,
    hold: Hold,
    verify: bool,
    rng: fastrand::Rng,
    out: ConsumerOut,
    cpu0: Option<Duration>,
}

impl Consumer {
    fn new(inline: bool, hold: Hold, verify: bool, seed: u64) -> Consumer {
        Consumer {
            inline,
            hold,
            verify,
            rng: fastrand::Rng::with_seed(0x6764_7278 ^ seed),
            out: ConsumerOut {
                hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("bounds"),
                cpu: Duration::ZERO,
                verified: 0,
                errors: 0,
            },
            cpu0: None,
        }
    }

    /// Consumes one lease and hands it back to be returned; `now` is when its batch arrived
    /// (read once per batch), or `None` to read the clock for this lease (consumers that hold
    /// leases, whose batch-mates wait).
    fn take(&mut self, h: Handoff, now: Option<Instant>) -> Lease {
        if self.cpu0.is_none() {
            self.cpu0 = Some(report::thread_cpu());
        }
        // Consumed on the polling thread there is no hand-off to time.
        let lat = if self.inline {
            0
        } else {
            now.unwrap_or_else(Instant::now)
                .saturating_duration_since(h.at)
                .as_nanos() as u64
        };
        self.out.hist.saturating_record(lat);
        if self.verify {
            self.out.verified += 1;
            let ok = h
                .lease
                .payload()
                .is_ok_and(|p| proto::check(p, h.conn, h.seq).is_ok());
            if !ok {
                self.out.errors += 1;
            }
        }
        let d = self.hold.sample(&mut self.rng);
        if d >= Duration::from_micros(200) {
            std::thread::sleep(d);
        } else if !d.is_zero() {
            let t = Instant::now();
            while t.elapsed() < d {
                std::hint::spin_loop();
            }
        }
        h.lease
    }

    fn finish(mut self) -> ConsumerOut {
        if let Some(c0) = self.cpu0 {
            self.out.cpu = report::thread_cpu().saturating_sub(c0);
        }
        self.out
    }
}

fn consume(
    rx: &crossbeam_channel::Receiver<Vec<Handoff>>,
    hold: Hold,
    verify: bool,
    seed: u64,
) -> ConsumerOut {
    let mut c = Consumer::new(false, hold, verify, seed);
    let zero_hold = hold.is_zero();
    while let Ok(batch) = rx.recv() {
        let now = zero_hold.then(Instant::now);
        if zero_hold {
            // The batch goes back as it is consumed: one claim on the recycle ring per 64
            // leases instead of one per lease (Lease::give_back_all).
            Lease::give_back_all(batch.into_iter().map(|h| c.take(h, now)));
        } else {
            // Held leases go back one by one, each when its hold ends, as a real consumer's
            // would.
            for h in batch {
                drop(c.take(h, None));
            }
        }
    }
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(extra: &[&str]) -> RecvOpts {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            r: RecvOpts,
        }
        P::try_parse_from(std::iter::once("x").chain(extra.iter().copied()))
            .unwrap()
            .r
    }

    fn spec(qps: u16, op: Op, size: u32, tx_depth: u32) -> RunSpec {
        RunSpec {
            run_id: 1,
            conn: 0,
            qps,
            size,
            op,
            verify: false,
            last_run: false,
            iters: 10,
            duration_ms: 0,
            tx_depth,
        }
    }

    #[test]
    fn announcements_over_a_limit_are_refused_naming_the_flag() {
        let o = opts(&["-r", "64", "--max-memory-mib", "512"]);
        assert!(check_limits(&o, &spec(64, Op::Send, 4096, 128)).is_ok());
        let e = check_limits(&o, &spec(10_000, Op::Send, 64, 8)).unwrap_err();
        assert!(
            e.contains("10000 connections") && e.contains("(--max-qps)"),
            "{e}"
        );
        // 1 GiB messages: 128 buffers of 1 GiB.
        let e = check_limits(&o, &spec(1, Op::Send, 1 << 30, 8)).unwrap_err();
        assert!(
            e.contains("128 buffers of 1073741824 B (131072.0 MiB)")
                && e.contains("512 MiB limit (--max-memory-mib)")
                && e.contains("lower --pool-slots, or -r/--rx-depth"),
            "{e}"
        );
        // The WRITE windows grow with the announced tx depth; the pool is 64 B tokens.
        assert!(check_limits(&o, &spec(2, Op::WriteImm, 65536, 128)).is_ok());
        let e = check_limits(&o, &spec(2, Op::WriteImm, 65536, 1 << 20)).unwrap_err();
        assert!(
            e.contains("WRITE windows of 2 x (192 + tx depth 1048576) x 65536 B"),
            "{e}"
        );
        // Every reason fits a reject's private data with its prefix.
        for e in [
            check_limits(&o, &spec(10_000, Op::Send, 64, 8)).unwrap_err(),
            check_limits(&o, &spec(1, Op::Send, 1 << 30, 8)).unwrap_err(),
            check_limits(&o, &spec(64, Op::WriteImm, 1 << 30, 1 << 20)).unwrap_err(),
        ] {
            assert!(
                REPLY_PREFIX.len() + 2 + e.len() <= 148,
                "{} B: {e}",
                e.len()
            );
        }
    }
}
