//! `gdrx-bench server --perftest`: the pool receiver fed by perftest's own client,
//! `ib_send_bw -R`, unchanged. The control connection speaks perftest's protocol
//! ([`crate::perftest_wire`]); the data connections land on the run's SRQ and pool exactly as
//! `gdrx-bench client`'s do, and the run is measured by the same code, so the only difference
//! between the two receivers `compare` sets side by side is the receiver.
//!
//! perftest's SENDs carry no immediate data and its client announces no count (before 6.28),
//! so a run ends when the client's closing exchange arrives (it sends it once every send was
//! acknowledged, so every message was received). With `-n` the server checks each
//! connection's count; every message must be `-s` bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use gdrx_core::{
    Access, Connection, ConnectionSpec, Cq, HostMemory, Mr, QpConfig, RecvBatch, SendBatch,
    SendFlags, SendOp, WorkCompletion,
};

use super::{Receiver, Run, STALL_TIMEOUT};
use crate::opts::{Op, OutOpts};
use crate::perftest_wire::{Dest, Exchange, Phase, Step};
use crate::proto::RunSpec;
use crate::report::{self, RecvRow};

/// Bytes of one control buffer (perftest's largest control message is 320 B).
const CTL_BUF: usize = 4096;
const RECV_ID: u64 = 1;
const SEND_ID: u64 = 2;

/// The control connection: one QP with its own CQ, one receive posted at a time (the client
/// never has more than one message outstanding), replies sent from a second buffer.
struct Control {
    conn: Connection,
    cq: Arc<Cq>,
    mem: Arc<HostMemory>,
    mr: Mr,
    wcs: Vec<WorkCompletion>,
    /// A reply is in flight (its buffer must not be rewritten yet).
    sending: bool,
}

impl Control {
    fn accept(rx: &Receiver, req: gdrx_core::ConnectRequest) -> anyhow::Result<Control> {
        // Event mode: between messages the handshake sleeps on the completion channel.
        let cq = Cq::with_events(&rx.dev, 16)?;
        let mem = Arc::new(HostMemory::new(2 * CTL_BUF)?);
        let mr = rx.pd.register(Arc::clone(&mem), Access::recv())?;
        let spec = ConnectionSpec::new(&rx.pd, &cq, &cq, None).qp(QpConfig {
            max_send_wr: 4,
            max_recv_wr: 4,
            ..QpConfig::default()
        });
        let conn = req
            .accept(&spec, &[])
            .context("accepting perftest's control connection")?;
        let c = Control {
            conn,
            cq,
            mem,
            mr,
            wcs: WorkCompletion::buffer(4),
            sending: false,
        };
        c.post_recv()?;
        Ok(c)
    }

    fn post_recv(&self) -> anyhow::Result<()> {
        let mut b = RecvBatch::with_capacity(1, 1);
        let sge = self.mr.sge(0, CTL_BUF).expect("inside the MR");
        b.push(RECV_ID, &[sge]).expect("room for one");
        // SAFETY: the buffer belongs to `self.mr`, which `self` keeps registered and mapped
        // until the QP is gone (the connection is dropped first: field order).
        unsafe { self.conn.qp().post_recv(&mut b) }.context("posting the control receive")?;
        Ok(())
    }

    /// The next control message, if one arrived (its receive is posted again at once).
    fn poll(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        let n = self.cq.poll(&mut self.wcs)?;
        let mut msg = None;
        for wc in &self.wcs[..n] {
            wc.result().map_err(|e| {
                anyhow!(e).context("perftest's control connection failed (did the client exit?)")
            })?;
            match wc.wr_id() {
                SEND_ID => self.sending = false,
                _ => {
                    let len = (wc.byte_len() as usize).min(CTL_BUF);
                    // SAFETY: the receive completed, so the NIC is done with the first buffer,
                    // and no receive is posted into it until this copy is made.
                    msg = Some(unsafe { self.mem.slice(0, len) }.to_vec());
                }
            }
        }
        if msg.is_some() {
            self.post_recv()?;
        }
        Ok(msg)
    }

    /// The next control message, sleeping on the CQ's channel up to `timeout` for it: arms
    /// the CQ, looks once more (completions before arming raise no event), then waits.
    fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        if let Some(m) = self.poll()? {
            return Ok(Some(m));
        }
        self.cq.arm()?;
        if let Some(m) = self.poll()? {
            return Ok(Some(m));
        }
        self.cq.wait_event(Some(timeout))?;
        self.poll()
    }

    fn reply(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.sending {
            if self.poll()?.is_some() {
                bail!("perftest's client sent a control message before our reply went out");
            }
            if Instant::now() > deadline {
                bail!("our previous control reply was not acknowledged within 10 s");
            }
        }
        // SAFETY: no send is in flight (`sending` is false), so nothing reads the second
        // buffer; `bytes` is at most CTL_BUF long (a message's length).
        unsafe { self.mem.slice_mut(CTL_BUF, bytes.len()) }.copy_from_slice(bytes);
        let mut b = SendBatch::with_capacity(1, 1);
        let sge = self.mr.sge(CTL_BUF, bytes.len()).expect("inside the MR");
        b.push(SEND_ID, SendOp::Send, &[sge], SendFlags::SIGNALED)
            .expect("room for one");
        // SAFETY: the send buffer is in `self.mr`, kept alive by `self`, and is not written
        // again until this send completes.
        unsafe { self.conn.qp().post_send(&mut b) }.context("sending a control reply")?;
        self.sending = true;
        Ok(())
    }
}

/// How a perftest-fed run is configured.
#[derive(Debug, Clone, Copy)]
pub struct PerftestRun {
    /// The client's `-s`.
    pub size: u32,
    /// The client's `-n` (per QP), checked when given.
    pub iters: Option<u64>,
    /// The client's `-q`: sizes the SRQ, checked at the handshake.
    pub qps: u16,
}

impl Receiver {
    /// Serves `ib_send_bw -R` clients, one run each, until `runs` runs (default 1) or (waiting
    /// for a client) `idle` passes; prints each row as `out` says and returns them.
    ///
    /// # Errors
    /// As [`Receiver::serve`], and a client that speaks another protocol, runs bidirectionally,
    /// or sends messages of another size or count than announced.
    pub fn serve_perftest(
        &mut self,
        p: PerftestRun,
        runs: Option<u32>,
        idle: Option<Duration>,
        out: &OutOpts,
    ) -> anyhow::Result<Vec<RecvRow>> {
        let mut rows = Vec::new();
        let runs = runs.unwrap_or(1);
        while rows.len() < runs as usize {
            let Some(req) = self.listener.next_request(idle)? else {
                bail!(
                    "no connection request within {:?} on {} (is `ib_send_bw -R` pointed at \
                     this address and port, with -p?)",
                    idle.unwrap_or_default(),
                    self.local_addr()
                );
            };
            let row = self
                .perftest_run(req, p, out)
                .with_context(|| format!("{} B run fed by ib_send_bw", p.size))?;
            if out.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                if rows.is_empty() {
                    println!("{}", report::recv_header());
                }
                println!("{}", report::recv_line(&row));
            }
            let bad = row.verify_errors;
            rows.push(row);
            if bad > 0 {
                bail!(
                    "{bad} messages of the {} B run were not {} B long (or came on a QP of no \
                     data connection)",
                    p.size,
                    p.size
                );
            }
        }
        Ok(rows)
    }

    fn perftest_run(
        &mut self,
        req: gdrx_core::ConnectRequest,
        p: PerftestRun,
        out: &OutOpts,
    ) -> anyhow::Result<RecvRow> {
        let mut spec = RunSpec {
            run_id: 0,
            conn: 0,
            qps: p.qps,
            size: p.size,
            op: Op::Send,
            verify: false,
            last_run: false,
            iters: p.iters.unwrap_or(0),
            duration_ms: 0,
            tx_depth: 128,
        };
        // The pool is built before the client's first message, so nothing is allocated while
        // it measures.
        let mut run = Run::setup(self, &spec)
            .with_context(|| format!("setting up the receiver for {} B messages (-s)", p.size))?;
        let mut ctl = Control::accept(self, req)?;
        let mut x = Exchange::new();
        let cspec = ConnectionSpec::new(&self.pd, &run.scq, &run.cq, Some(&run.srq)).qp(QpConfig {
            max_send_wr: 4,
            ..QpConfig::default()
        });
        let mut conns: Vec<Connection> = Vec::new();
        let me = |conns: &[Connection], srqn: u32| Dest {
            qpn: conns.first().map_or(0, |c| c.qp().qp_num()),
            psn: 0,
            srqn,
        };
        // Setup and key exchanges, accepting the data connections between H0 and H1.
        let mut refusal: Option<anyhow::Error> = None;
        let deadline = Instant::now() + STALL_TIMEOUT;
        loop {
            // Block between messages (the process's CPU time is part of what is measured):
            // on the listener while the data connections come (H1 follows them), else on the
            // control CQ's channel.
            let msg = if x.phase() == Phase::Connecting {
                if let Some(r) = self.listener.next_request(Some(Duration::from_millis(2)))? {
                    conns.push(r.accept(&cspec, &[]).with_context(|| {
                        format!("accepting perftest's data connection {}", conns.len())
                    })?);
                }
                ctl.poll()?
            } else {
                ctl.next(Duration::from_millis(50))?
            };
            if let Some(msg) = msg {
                let (reply, step) = x
                    .answer(&msg, conns.len(), me(&conns, 0))
                    .map_err(|e| anyhow!(e))?;
                ctl.reply(&reply)?;
                if step == Step::Start {
                    break;
                }
                continue;
            }
            if Instant::now() > deadline {
                bail!(
                    "perftest's client stopped in its handshake ({:?}, {} data connections) \
                     for {STALL_TIMEOUT:?}",
                    x.phase(),
                    conns.len()
                );
            }
        }
        // perftest's client has no timeouts: failing here would leave it waiting forever. A run
        // that breaks what this server was told is measured and answered to its end, then
        // failed with the reason.
        if let Some(n) = x.negotiated() {
            if let Err(e) = check_negotiated(n, p) {
                refusal.get_or_insert(e);
            }
        }
        if x.data_conns() != usize::from(p.qps) {
            refusal.get_or_insert(anyhow!(
                "the client opened {} data connections (its -q) but this server was told -q {}",
                x.data_conns(),
                p.qps
            ));
        }
        spec.qps = u16::try_from(x.data_conns()).context("data connections")?;
        tracing::info!(
            client = x.client_version().unwrap_or("?"),
            qps = conns.len(),
            "perftest client connected; receiving"
        );
        // The data phase ends with the client's closing exchange.
        let mut closed = || -> anyhow::Result<bool> {
            let Some(msg) = ctl.poll()? else {
                return Ok(false);
            };
            let (reply, step) = x.answer(&msg, 0, Dest::default())?;
            ctl.reply(&reply)?;
            Ok(step == Step::End)
        };
        let row = run.measure(
            &self.dev,
            &mut conns,
            &spec,
            &self.opts,
            out,
            Some(&mut closed),
        );
        if x.phase() == Phase::Running {
            // The run ended with its last message (the count was known), or failed. perftest's
            // client has no timeouts: it waits for the reply to its closing exchange forever.
            // Take (and drop) whatever it still sends and answer it, so that a failed run costs
            // only itself; an error is reported all the same.
            let extra = finish_client(&mut run, &mut ctl, &mut x);
            if extra > 0 && row.is_ok() {
                // Every connection had sent its -n when the run ended: anything after is more
                // than announced.
                refusal.get_or_insert(anyhow!(
                    "the client sent {extra} messages more than the {} per QP announced (-n)",
                    spec.iters
                ));
            }
        }
        // Let the last reply go out before the data connections are torn down.
        let t = Instant::now();
        while ctl.sending && t.elapsed() < Duration::from_secs(2) {
            if ctl.poll().is_err() {
                break;
            }
        }
        for c in &mut conns {
            let _ = c.disconnect();
        }
        drop(conns);
        let teardown = run.pool.close();
        tracing::debug!("{teardown}");
        match refusal {
            Some(e) => Err(e),
            None => row,
        }
    }
}

/// After the run's last message, or a failed run: receives and drops what the client still
/// sends, and answers its control messages until its closing exchange (at most
/// [`FINISH_TIMEOUT`]). Returns the messages it dropped.
fn finish_client(run: &mut Run, ctl: &mut Control, x: &mut Exchange) -> u64 {
    let deadline = Instant::now() + FINISH_TIMEOUT;
    let mut messages = 0u64;
    while x.phase() != Phase::Closed && Instant::now() < deadline {
        match run.pool.poll() {
            // Dropping the leases puts their slots back to be posted again.
            Ok(batch) => {
                messages += batch
                    .filter(|ev| matches!(ev, gdrx_core::RecvEvent::Message(_)))
                    .count() as u64;
            }
            Err(e) => {
                tracing::warn!(error = %e, "draining a failed run");
                return messages;
            }
        }
        match ctl.next(Duration::from_millis(1)) {
            Ok(Some(msg)) => match x.answer(&msg, 0, Dest::default()) {
                Ok((reply, _)) => {
                    if ctl.reply(&reply).is_err() {
                        return messages;
                    }
                }
                Err(_) => return messages,
            },
            Ok(None) => {}
            Err(_) => return messages,
        }
    }
    messages
}

/// How long a failed run waits for perftest's client to finish.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// A perftest 6.28+ client (one that negotiates although this server reports a lower version)
/// says what it will send: a mismatch with what this server was told is the run's error, named
/// by flag (reported once the client has been answered to its end).
fn check_negotiated(n: crate::perftest_wire::Negotiated, p: PerftestRun) -> anyhow::Result<()> {
    if n.qps != u32::from(p.qps) {
        bail!(
            "the client opens {} QPs (its -q) but this server was told -q {}",
            n.qps,
            p.qps
        );
    }
    if n.size != u64::from(p.size) {
        bail!(
            "the client sends {} B messages (its -s) but this server was told -s {}",
            n.size,
            p.size
        );
    }
    if let Some(iters) = p.iters {
        if n.duration == 0 && n.iters != iters {
            bail!(
                "the client sends {} messages per QP (its -n) but this server was told -n {iters}",
                n.iters
            );
        }
    }
    Ok(())
}
