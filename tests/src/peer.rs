//! The sending side of the two-process tests (run by the `gdrx-testpeer` binary).
//!
//! It opens `conns` RDMA CM connections to the receiver, each announcing itself with a
//! [`Hello`] whose `conn_tag` is its index, then sends `messages` framed messages per connection
//! from one thread per connection, keeping up to `window` signaled work requests in flight, and
//! reports what it sent as one JSON line on stdout. It keeps the connections open until its stdin
//! closes (the receiver's signal that it has verified everything), then disconnects.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gdrx_core::wire::{Hello, Welcome};
use gdrx_core::{
    Access, Connection, ConnectionSpec, Cq, Device, HostMemory, Pd, QpConfig, SendBatch, SendFlags,
    SendOp, WcStatus, WorkCompletion,
};
use serde::{Deserialize, Serialize};

use crate::frame;

/// Which operation carries the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// SEND without immediate data (the sequence number travels in the payload only).
    Send,
    /// SEND_WITH_IMM, imm = sequence number.
    SendImm,
    /// RDMA WRITE_WITH_IMM into the window the receiver advertised; imm = sequence number; the
    /// message lands at offset `seq * max` of the connection's window.
    WriteImm,
}

impl OpKind {
    /// True when the receiver gets the sequence number as immediate data.
    pub fn has_imm(self) -> bool {
        !matches!(self, OpKind::Send)
    }
}

/// What the sender does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// RDMA device to use.
    pub dev: String,
    /// Receiver address.
    pub server: SocketAddr,
    /// Connections carrying the normal message stream.
    pub conns: u32,
    /// Messages per connection.
    pub messages: u32,
    /// Path MTU used by the size schedule.
    pub mtu: u32,
    /// Largest message (the receiver's buffer size).
    pub max: u32,
    /// Operation.
    pub op: OpKind,
    /// Signaled sends in flight per connection.
    pub window: u32,
    /// Open one more connection that sends `oversize_after` normal messages and then one message
    /// of `max + 1` bytes, which the receiver must reject.
    pub oversize_after: Option<u32>,
    /// First try one connection with private data that is not a gdrx Hello, and expect it to be
    /// rejected.
    pub bad_hello: bool,
    /// Tag of the first connection (connection `i` announces `first_tag + i`).
    #[serde(default)]
    pub first_tag: u32,
}

/// What one connection did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnReport {
    /// The Hello conn_tag.
    pub tag: u32,
    /// Messages whose send completed successfully.
    pub sent: u32,
    /// Payload bytes of those.
    pub bytes: u64,
    /// Error completions, as text.
    pub errors: Vec<String>,
    /// For the oversize connection: whether its oversize send failed as an overflow at the
    /// receiver (RemoteInvalidRequest on hardware, RemoteOperation on rxe).
    pub oversize_rejected: Option<bool>,
    /// The status the oversize send completed with.
    pub oversize_status: Option<String>,
}

/// The sender's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// One entry per connection.
    pub conns: Vec<ConnReport>,
    /// Result of the malformed-hello attempt, when made: the error text.
    pub bad_hello: Option<String>,
}

struct SendConn {
    conn: Connection,
    cq: Arc<Cq>,
    welcome: Welcome,
    /// Index in the plan (>= plan.conns for the oversize connection).
    index: u32,
    tag: u32,
}

fn open_conn(
    dev: &Arc<Device>,
    pd: &Arc<Pd>,
    plan: &Plan,
    index: u32,
    tag: u32,
    private: &[u8],
) -> anyhow::Result<SendConn> {
    let cq = Cq::new(dev, plan.window * 2 + 16)?;
    let mut spec = ConnectionSpec::new(pd, &cq, &cq, None);
    spec.qp = QpConfig {
        max_send_wr: plan.window + 8,
        max_send_sge: 1,
        max_recv_wr: 1,
        max_recv_sge: 1,
        max_inline_data: 0,
    };
    let conn = gdrx_core::connect(plan.server, None, &spec, private)
        .with_context(|| format!("connection {tag} to {}", plan.server))?;
    let welcome = Welcome::decode(conn.peer_private_data())
        .map_err(|e| gdrx_core::Error::malformed("accept private data", e))?;
    Ok(SendConn {
        conn,
        cq,
        welcome,
        index,
        tag,
    })
}

/// Runs the plan and returns the report (the binary prints it).
///
/// # Errors
/// When a connection cannot be made or an unexpected completion error happens.
pub fn run(plan: &Plan) -> anyhow::Result<Report> {
    let dev = Device::open(&plan.dev)?;
    let pd = dev.alloc_pd()?;
    let mut bad_hello = None;
    if plan.bad_hello {
        let garbage = [0x5Au8; 24];
        match open_conn(&dev, &pd, plan, u32::MAX, u32::MAX, &garbage) {
            Ok(_) => bail!("a connection with malformed private data was accepted"),
            Err(e) => bad_hello = Some(format!("{e:#}")),
        }
    }
    let mut conns = Vec::new();
    let total = plan.conns + u32::from(plan.oversize_after.is_some());
    for index in 0..total {
        let tag = plan.first_tag + index;
        let hello = Hello {
            flags: 0,
            conn_tag: tag,
            max_msg: plan.max,
        };
        let c = open_conn(&dev, &pd, plan, index, tag, &hello.encode())?;
        if c.welcome.recv_buf != plan.max {
            bail!(
                "receiver posts {}-byte buffers but the plan's largest message is {}",
                c.welcome.recv_buf,
                plan.max
            );
        }
        conns.push(c);
    }
    let mut threads = Vec::new();
    for c in conns {
        let plan = plan.clone();
        let pd = Arc::clone(&pd);
        threads.push(std::thread::spawn(move || {
            let oversize = (c.index >= plan.conns).then(|| plan.oversize_after.unwrap_or(0));
            let r = send_stream(&pd, &c, &plan, oversize);
            (c, r)
        }));
    }
    let mut reports = Vec::new();
    let mut keep = Vec::new();
    for t in threads {
        let (c, r) = t
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        reports.push(r?);
        keep.push(c);
    }
    reports.sort_by_key(|r| r.tag);
    let report = Report {
        conns: reports,
        bad_hello,
    };
    println!("{}", serde_json::to_string(&report)?);
    // Linger until the receiver closes our stdin (it has verified everything), at most 120 s.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(120));
    for mut c in keep {
        let _ = c.conn.disconnect();
    }
    Ok(report)
}

/// The signaled sends of one connection that have not completed yet, and what their
/// completions have said so far.
struct Inflight {
    count: usize,
    /// Length of the message in each send slot.
    lens: Vec<u32>,
    /// Sequence number of the oversize message, if this connection sends one.
    oversize: Option<u32>,
    /// An error completion was seen: stop posting.
    failed: bool,
    report: ConnReport,
}

impl Inflight {
    /// Polls `c`'s CQ until at most `target` sends are in flight.
    fn reap_until(
        &mut self,
        c: &SendConn,
        wcs: &mut [WorkCompletion],
        target: usize,
        deadline: Instant,
    ) -> anyhow::Result<()> {
        while self.count > target {
            let n = c.cq.poll(wcs)?;
            for wc in &wcs[..n] {
                self.complete(wc);
            }
            self.count -= n;
            if n == 0 {
                if Instant::now() > deadline {
                    bail!(
                        "connection {}: {} send completions never arrived",
                        c.tag,
                        self.count
                    );
                }
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    fn complete(&mut self, wc: &WorkCompletion) {
        let seq = wc.wr_id() as u32;
        let report = &mut self.report;
        match wc.result() {
            Ok(()) => {
                report.sent += 1;
                report.bytes += u64::from(self.lens[seq as usize % self.lens.len()]);
            }
            Err(e) => {
                if Some(seq) == self.oversize {
                    report.oversize_status = Some(format!("{:?}", e.status));
                    report.oversize_rejected = Some(e.status.is_send_overflow());
                    if !e.status.is_send_overflow() {
                        report.errors.push(e.to_string());
                    }
                } else if e.status != WcStatus::WrFlush || !self.failed {
                    report.errors.push(e.to_string());
                }
                self.failed = true;
            }
        }
    }
}

fn send_stream(
    pd: &Arc<Pd>,
    c: &SendConn,
    plan: &Plan,
    oversize_after: Option<u32>,
) -> anyhow::Result<ConnReport> {
    let slot = plan.max as usize + 4096;
    let window = plan.window as usize;
    let mem = Arc::new(HostMemory::new(slot * window)?);
    let mr = pd.register(Arc::clone(&mem), Access::none())?;
    let mut batch = SendBatch::with_capacity(1, 1);
    let mut wcs = WorkCompletion::buffer(window);
    let messages = oversize_after.map_or(plan.messages, |n| n + 1);
    let mut fl = Inflight {
        count: 0,
        lens: vec![0u32; window],
        oversize: oversize_after,
        failed: false,
        report: ConnReport {
            tag: c.tag,
            sent: 0,
            bytes: 0,
            errors: Vec::new(),
            oversize_rejected: oversize_after.map(|_| false),
            oversize_status: None,
        },
    };
    let remote = match plan.op {
        OpKind::WriteImm => {
            let w = c
                .welcome
                .window
                .ok_or_else(|| anyhow::anyhow!("receiver advertised no RDMA WRITE window"))?;
            if w.len < u64::from(plan.messages) * u64::from(plan.max) {
                bail!(
                    "receiver's window of {} bytes is too small for the plan",
                    w.len
                );
            }
            Some(w)
        }
        _ => None,
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    for seq in 0..messages {
        fl.reap_until(c, &mut wcs, window - 1, deadline)?;
        if fl.failed {
            break;
        }
        let i = seq as usize % window;
        let len = if Some(seq) == oversize_after {
            plan.max + 1
        } else {
            frame::size_for(c.tag, seq, plan.mtu, plan.max).0
        };
        fl.lens[i] = len;
        // SAFETY: slot `i` is not part of any outstanding work request (its previous send
        // completed: at most `window` are in flight and we waited for a free one).
        frame::fill(unsafe { mem.slice_mut(i * slot, len as usize) }, c.tag, seq);
        let sge = mr.sge(i * slot, len as usize).expect("slot in bounds");
        let op = match (plan.op, remote) {
            (OpKind::Send, _) => SendOp::Send,
            (OpKind::SendImm, _) => SendOp::SendWithImm(seq),
            (OpKind::WriteImm, Some(w)) => SendOp::RdmaWriteWithImm {
                remote_addr: w.addr + u64::from(seq) * u64::from(plan.max),
                rkey: w.rkey,
                imm: seq,
            },
            (OpKind::WriteImm, None) => unreachable!("checked above"),
        };
        batch
            .push(u64::from(seq), op, &[sge], SendFlags::SIGNALED)
            .expect("batch of one");
        // SAFETY: the SGE lies in `mr` (kept alive until all completions are polled below) and
        // slot `i` is not touched again until this work request completes.
        unsafe { c.conn.qp().post_send(&mut batch) }
            .map_err(|e| anyhow::anyhow!("connection {}: {e}", c.tag))?;
        fl.count += 1;
    }
    fl.reap_until(c, &mut wcs, 0, deadline)?;
    drop(mr);
    Ok(fl.report)
}
