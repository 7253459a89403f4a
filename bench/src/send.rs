//! The sending side (`gdrx-bench client`, and the sender of `loopback`), built like perftest's
//! `ib_send_bw` client so that the receive paths are compared under the same load: every
//! connection keeps up to `tx_depth` sends in flight, posts them in lists of `post_list`, and
//! signals one completion every `cq_mod` sends (and the last). One thread drives every
//! connection, round robin, over one send CQ.
//!
//! Without `--verify` each connection sends from one buffer (as perftest does); with it, from a
//! ring of `tx_depth` buffers, each filled with the message's pattern before it is posted (a
//! buffer is reused only once the send that last used it completed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use gdrx_core::wire::{RemoteWindow, Welcome};
use gdrx_core::{
    Access, Connection, ConnectionSpec, Cq, Device, HostMemory, Pd, QpConfig, SendBatch, SendFlags,
    SendOp, WorkCompletion,
};

use crate::opts::{Op, OutOpts, SendOpts};
use crate::proto::{self, RunSpec};
use crate::report::{self, Progress, SendRow};

/// The sending side: a device and a PD.
#[derive(Debug)]
pub struct Sender {
    dev: Arc<Device>,
    pd: Arc<Pd>,
    /// The address it sends from (`-x`), else the route's.
    src: Option<std::net::IpAddr>,
}

impl Sender {
    /// Opens `dev`, checks that its port `port` is up, and sends from `src` when given.
    ///
    /// # Errors
    /// When the device is missing or its port is down.
    pub fn open(dev: &str, port: u8, src: Option<std::net::IpAddr>) -> anyhow::Result<Sender> {
        let dev = Device::open(dev)?;
        dev.require_active_port(port)?;
        let pd = dev.alloc_pd()?;
        Ok(Sender { dev, pd, src })
    }

    /// Runs every size of `opts` against the server at `server`, printing each row unless
    /// `quiet` (which also hides its progress), and returns the rows.
    ///
    /// # Errors
    /// Connection and completion errors (with the size that failed).
    pub fn run_all(
        &self,
        server: SocketAddr,
        opts: &SendOpts,
        out: &OutOpts,
        quiet: bool,
    ) -> anyhow::Result<Vec<SendRow>> {
        opts.validate()?;
        let sizes = opts.sizes();
        let run0 = fastrand::u32(..) & 0x00ff_ffff;
        let mut rows = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let spec = RunSpec {
                run_id: run0 + i as u32,
                conn: 0,
                qps: opts.qps,
                size,
                op: opts.op,
                verify: opts.verify,
                last_run: i + 1 == sizes.len(),
                iters: if opts.duration.is_some() {
                    0
                } else {
                    opts.iters
                },
                duration_ms: opts.duration.map_or(0, |d| (d * 1000.0).max(1.0) as u32),
                tx_depth: opts.tx_depth,
            };
            let row = self
                .run_one(server, opts, &spec, out, i == 0, quiet)
                .with_context(|| format!("{size} B run"))?;
            if !quiet {
                if out.json {
                    println!("{}", serde_json::to_string(&row)?);
                } else {
                    if i == 0 {
                        println!("{}", report::send_header());
                    }
                    println!("{}", report::send_line(&row));
                }
            }
            rows.push(row);
        }
        Ok(rows)
    }

    fn connect(
        &self,
        server: SocketAddr,
        cspec: &ConnectionSpec,
        spec: &RunSpec,
        retry: Option<Duration>,
    ) -> anyhow::Result<Connection> {
        let deadline = Instant::now() + retry.unwrap_or_default();
        loop {
            match gdrx_core::connect(server, self.src, cspec, &spec.encode()) {
                Ok(c) => return Ok(c),
                // A server that said why it refused will say it again: no retry.
                Err(e @ gdrx_core::Error::Connection { reply: Some(_), .. }) => {
                    return Err(anyhow!(e).context(format!(
                        "the gdrx-bench server at {server} refused the run"
                    )))
                }
                Err(e) if retry.is_some() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "server not ready yet; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!(
                        "connecting to the gdrx-bench server at {server} (is `gdrx-bench server` running there?)"
                    )))
                }
            }
        }
    }

    fn run_one(
        &self,
        server: SocketAddr,
        o: &SendOpts,
        spec: &RunSpec,
        out: &OutOpts,
        first_run: bool,
        quiet: bool,
    ) -> anyhow::Result<SendRow> {
        let q = usize::from(o.qps);
        let size = spec.size as usize;
        let scq = Cq::new(&self.dev, o.tx_depth * u32::from(o.qps) + 16)?;
        let rcq = Cq::new(&self.dev, 16)?;
        let cspec = ConnectionSpec::new(&self.pd, &scq, &rcq, None).qp(QpConfig {
            max_send_wr: o.tx_depth,
            max_recv_wr: 1,
            ..QpConfig::default()
        });
        let mut conns = Vec::with_capacity(q);
        let mut windows: Vec<Option<RemoteWindow>> = Vec::with_capacity(q);
        for c in 0..o.qps {
            let s = RunSpec { conn: c, ..*spec };
            let retry = (first_run && c == 0).then(|| Duration::from_secs_f64(o.connect_timeout));
            let conn = self.connect(server, &cspec, &s, retry)?;
            let welcome = Welcome::decode(conn.peer_private_data())
                .map_err(|e| gdrx_core::Error::malformed("the server's accept", e))?;
            if welcome.recv_buf < spec.size {
                bail!(
                    "the server posts {} B buffers, smaller than the {} B messages",
                    welcome.recv_buf,
                    spec.size
                );
            }
            if spec.op == Op::WriteImm && welcome.window.is_none() {
                bail!("the server advertised no WRITE window");
            }
            windows.push(welcome.window);
            conns.push(conn);
        }
        // Send buffers: one per connection, or a ring of tx_depth per connection to verify.
        let per_conn = if spec.verify { o.tx_depth as usize } else { 1 };
        let mem = Arc::new(HostMemory::new(q * per_conn * size)?);
        let mr = self.pd.register(Arc::clone(&mem), Access::none())?;
        let sig = u64::from(o.signal_every());
        let depth = u64::from(o.tx_depth);
        let total = (spec.iters > 0).then_some(spec.iters);
        let mut posted = vec![0u64; q];
        let mut completed = vec![0u64; q];
        // The last sequence number of each connection, once known.
        let mut last: Vec<Option<u64>> = vec![total.map(|n| n - 1); q];
        let mut batch = SendBatch::with_capacity(o.post_list as usize, o.post_list as usize);
        let mut wcs = WorkCompletion::buffer(64);
        let mut post_calls = 0u64;
        // Quiet (loopback): the receiver's progress is the one shown.
        let mut progress = if quiet {
            Progress::off()
        } else {
            Progress::new(
                out.progress,
                format!("{} B sent", spec.size),
                total.map(|n| n * q as u64),
            )
        };
        let cpu0 = report::thread_cpu();
        let t0 = Instant::now();
        let deadline =
            (spec.duration_ms > 0).then(|| t0 + Duration::from_millis(u64::from(spec.duration_ms)));
        let mut rounds = 0u64;
        loop {
            if let Some(d) = deadline {
                rounds += 1;
                if rounds.is_multiple_of(16) && last[0].is_none() && Instant::now() >= d {
                    // Time is up: each connection's next message is its last.
                    for c in 0..q {
                        last[c] = Some(posted[c]);
                    }
                }
            }
            let mut busy = false;
            for c in 0..q {
                let end = last[c].map_or(u64::MAX, |l| l + 1);
                let room = depth - (posted[c] - completed[c]);
                let k = room.min(u64::from(o.post_list)).min(end - posted[c]);
                if k == 0 {
                    busy |= posted[c] < end;
                    continue;
                }
                busy = true;
                for _ in 0..k {
                    let seq = posted[c];
                    let is_last = last[c] == Some(seq);
                    let off = (c * per_conn + (seq as usize % per_conn)) * size;
                    if spec.verify {
                        // SAFETY: [off, off+size) lies in `mem`; the send that last used this
                        // buffer (seq - tx_depth or earlier) has completed, since at most
                        // tx_depth sends of this connection are outstanding; nothing else
                        // references these bytes.
                        let buf =
                            unsafe { std::slice::from_raw_parts_mut(mem.as_ptr().add(off), size) };
                        proto::fill(buf, c as u16, seq as u32);
                    }
                    let imm = proto::imm(seq, is_last);
                    let op = match (spec.op, windows[c]) {
                        (Op::WriteImm, Some(w)) => {
                            let slots = w.len / spec.size as u64;
                            SendOp::RdmaWriteWithImm {
                                remote_addr: w.addr + (seq % slots) * spec.size as u64,
                                rkey: w.rkey,
                                imm,
                            }
                        }
                        _ => SendOp::SendWithImm(imm),
                    };
                    let signaled = (seq + 1) % sig == 0 || is_last;
                    batch
                        .push(
                            (c as u64) << 32 | seq,
                            op,
                            &[mr.sge(off, size).expect("in bounds")],
                            SendFlags {
                                signaled,
                                ..SendFlags::default()
                            },
                        )
                        .expect("batch sized to the post list");
                    posted[c] += 1;
                }
                // SAFETY: every SGE lies in `mr` (alive until the last completion below); the
                // bytes are not modified until their send completed (see the fill above);
                // remote addresses lie in the window the server registered for remote write.
                unsafe { conns[c].qp().post_send(&mut batch) }
                    .map_err(|e| anyhow!(e).context(format!("posting on connection {c}")))?;
                post_calls += 1;
            }
            let n = scq.poll(&mut wcs)?;
            for wc in &wcs[..n] {
                wc.result().map_err(|e| {
                    anyhow!(e).context("a send completed with an error (did the receiver go away?)")
                })?;
                let c = (wc.wr_id() >> 32) as usize;
                completed[c] = completed[c].max((wc.wr_id() & 0xffff_ffff) + 1);
            }
            if n > 0 && progress.is_on() {
                let done: u64 = completed.iter().sum();
                progress.tick(t0, done, done * spec.size as u64);
            }
            if !busy && (0..q).all(|c| completed[c] == posted[c]) {
                break;
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = report::thread_cpu().saturating_sub(cpu0);
        let messages: u64 = posted.iter().sum();
        for c in &mut conns {
            let _ = c.disconnect();
        }
        drop(conns);
        Ok(SendRow {
            schema: report::SCHEMA,
            op: spec.op.name().to_string(),
            qps: spec.qps,
            tx_depth: spec.tx_depth,
            bytes: spec.size,
            messages,
            secs,
            bw_avg_mib_s: messages as f64 * spec.size as f64 / secs / report::MIB,
            msg_rate_mpps: messages as f64 / secs / 1e6,
            tx_cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / messages as f64,
            post_calls,
        })
    }
}
