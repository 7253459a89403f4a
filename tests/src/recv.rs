//! The receiving side of the two-process tests: one SRQ fed from one receive region, a listener
//! accepting every sender connection, and a poll loop that verifies each message and reposts its
//! buffer.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gdrx_core::accept::admit_hello;
use gdrx_core::cm::Gather;
use gdrx_core::wire::Hello;
use gdrx_core::{
    Access, ConnectionSpec, Cq, Device, HostMemory, Listener, Mr, RecvBatch, Sge, Srq, SrqConfig,
    WcError, WcOpcode, WorkCompletion,
};

use crate::frame::{self, SizeClass};
use crate::peer::{OpKind, Plan, Report};
use crate::RxeEnv;

/// Bytes of each receive that land in the header buffer when receives use two SGEs.
pub const HEADER_SPLIT: u32 = 64;

/// Connection tag of the sender process that gets killed ([`RecvConfig::kill_peer_after`]).
pub const DOOMED_TAG: u32 = 1000;

/// How the receiver is set up and what it expects.
#[derive(Debug, Clone)]
pub struct RecvConfig {
    /// Event mode (completion channel + poll) instead of busy polling.
    pub events: bool,
    /// SGEs per receive work request: 1 (one buffer) or 2 (a 64-byte header buffer from one MR
    /// and the rest from another, like header split).
    pub sges: u32,
    /// Receive work requests posted on the SRQ (= receive buffers).
    pub slots: u32,
    /// Bytes per receive buffer: the largest message accepted.
    pub slot_size: u32,
    /// Sender connections carrying normal streams.
    pub conns: u32,
    /// Messages per connection.
    pub messages: u32,
    /// Operation the sender uses.
    pub op: OpKind,
    /// Add a connection that sends this many normal messages and then one oversize message.
    pub oversize_after: Option<u32>,
    /// Have the sender first try a connection with malformed private data.
    pub bad_hello: bool,
    /// Also run a second sender process (one connection, tag [`DOOMED_TAG`]) and SIGKILL it
    /// once this many of its messages have been verified.
    pub kill_peer_after: Option<u32>,
    /// Give up after this long.
    pub timeout: Duration,
}

/// What the receiver verified.
#[derive(Debug, Default)]
pub struct RecvReport {
    /// Device used.
    pub device: String,
    /// Path MTU used by the schedule.
    pub mtu: u32,
    /// Messages verified per connection tag.
    pub received: BTreeMap<u32, u32>,
    /// Bytes verified per connection tag.
    pub bytes_by_tag: BTreeMap<u32, u64>,
    /// Size-class coverage.
    pub classes: BTreeMap<String, u64>,
    /// Error completions seen on the receive side.
    pub wc_errors: Vec<WcError>,
    /// Verification failures (first 20).
    pub frame_errors: Vec<String>,
    /// Messages that failed verification.
    pub frame_error_count: u64,
    /// Connection requests rejected (malformed private data), with the error.
    pub rejected: Vec<String>,
    /// Completion events read (event mode).
    pub events: u64,
    /// Receive work requests reposted.
    pub reposts: u64,
    /// Connection tags whose RDMA CM reported a disconnect while receiving.
    pub disconnected: Vec<u32>,
    /// Messages verified from the killed sender before it died.
    pub killed_after: Option<u32>,
    /// Largest number of work requests posted in one `ibv_post_srq_recv` call.
    pub max_repost_batch: usize,
    /// The sender's report.
    pub peer: Option<Report>,
    /// Seconds spent in the receive loop.
    pub secs: f64,
}

impl RecvReport {
    /// Total messages verified.
    pub fn total(&self) -> u64 {
        self.received.values().map(|&v| u64::from(v)).sum()
    }

    /// Total bytes verified.
    pub fn bytes(&self) -> u64 {
        self.bytes_by_tag.values().sum()
    }
}

struct Buffers {
    // MRs before the memory they register (drop order).
    mrs: Vec<Mr>,
    mems: Vec<Arc<HostMemory>>,
    sges: u32,
    slot_size: u32,
}

impl Buffers {
    fn new(
        pd: &Arc<gdrx_core::Pd>,
        slots: u32,
        slot_size: u32,
        sges: u32,
    ) -> anyhow::Result<Buffers> {
        let sizes: Vec<usize> = match sges {
            1 => vec![slot_size as usize],
            2 => vec![HEADER_SPLIT as usize, (slot_size - HEADER_SPLIT) as usize],
            n => bail!("{n} SGEs per receive: the harness does 1 or 2"),
        };
        let mut mems = Vec::new();
        let mut mrs = Vec::new();
        for s in sizes {
            let m = Arc::new(HostMemory::new(s * slots as usize)?);
            mrs.push(pd.register(Arc::clone(&m), Access::recv())?);
            mems.push(m);
        }
        Ok(Buffers {
            mrs,
            mems,
            sges: sges.max(1),
            slot_size,
        })
    }

    fn sges(&self, slot: u32, out: &mut [Sge; 2]) -> usize {
        if self.sges == 1 {
            let s = self.slot_size as usize;
            out[0] = self.mrs[0]
                .sge(slot as usize * s, s)
                .expect("slot in bounds");
            1
        } else {
            let h = HEADER_SPLIT as usize;
            let p = (self.slot_size - HEADER_SPLIT) as usize;
            out[0] = self.mrs[0]
                .sge(slot as usize * h, h)
                .expect("slot in bounds");
            out[1] = self.mrs[1]
                .sge(slot as usize * p, p)
                .expect("slot in bounds");
            2
        }
    }

    /// Copies the `len` received bytes of `slot` into `scratch`.
    ///
    /// # Safety
    /// The slot's work request has completed and is not reposted yet.
    unsafe fn read(&self, slot: u32, len: usize, scratch: &mut Vec<u8>) {
        scratch.clear();
        if self.sges == 1 {
            let s = self.slot_size as usize;
            // SAFETY: the caller guarantees the NIC is done with the slot.
            scratch.extend_from_slice(unsafe { self.mems[0].slice(slot as usize * s, len) });
        } else {
            let h = HEADER_SPLIT as usize;
            let p = (self.slot_size - HEADER_SPLIT) as usize;
            let first = len.min(h);
            // SAFETY: as above.
            scratch.extend_from_slice(unsafe { self.mems[0].slice(slot as usize * h, first) });
            if len > h {
                // SAFETY: as above.
                scratch
                    .extend_from_slice(unsafe { self.mems[1].slice(slot as usize * p, len - h) });
            }
        }
    }
}

/// A sender process that is killed and reaped when dropped, so a test that fails early leaves
/// no sender running into the next test.
#[derive(Debug)]
pub struct Peer(pub Child);

impl std::ops::Deref for Peer {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Spawns the sender process.
pub fn spawn_peer(exe: &Path, plan: &Plan) -> anyhow::Result<Peer> {
    let child = Command::new(exe)
        .arg("--plan")
        .arg(serde_json::to_string(plan)?)
        .env(
            "GDRX_LOG",
            std::env::var("GDRX_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {}", exe.display()))?;
    Ok(Peer(child))
}

struct ConnState {
    tag: u32,
    next: u32,
    expect: u32,
    window_base: u64,
    doomed: bool,
}

/// Runs a two-process test: this process receives, a `gdrx-testpeer` process (`peer_exe`,
/// from `env!("CARGO_BIN_EXE_gdrx-testpeer")` in the test) sends.
///
/// # Errors
/// Set-up failures and a sender that fails; verification problems are returned in the report for
/// the test to assert on.
pub fn run_two_process(
    env: &RxeEnv,
    cfg: &RecvConfig,
    peer_exe: &Path,
) -> anyhow::Result<RecvReport> {
    let dev: Arc<Device> = env.open();
    let port = dev.require_active_port(1)?;
    let mtu = port.active_mtu;
    let pd = dev.alloc_pd()?;
    let total_conns = cfg.conns + u32::from(cfg.oversize_after.is_some());
    let cqe = cfg.slots + 64;
    let cq = if cfg.events {
        Cq::with_events(&dev, cqe)?
    } else {
        Cq::new(&dev, cqe)?
    };
    let srq = Srq::new(&pd, SrqConfig::new(cfg.slots, cfg.sges))?;
    let bufs = Buffers::new(&pd, cfg.slots, cfg.slot_size, cfg.sges)?;
    // RDMA WRITE window: one sub-window of messages * slot_size per connection.
    let per_conn_window = u64::from(cfg.messages) * u64::from(cfg.slot_size);
    let (window_mem, window_mr) = if cfg.op == OpKind::WriteImm {
        let m = Arc::new(HostMemory::new(
            (per_conn_window * u64::from(total_conns)) as usize,
        )?);
        let mr = pd.register(Arc::clone(&m), Access::remote_write())?;
        (Some(m), Some(mr))
    } else {
        (None, None)
    };

    // Fill the SRQ: one chained post for all slots.
    let mut batch = RecvBatch::with_capacity(cfg.slots as usize, (cfg.slots * cfg.sges) as usize);
    let mut sg = [Sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; 2];
    for slot in 0..cfg.slots {
        let n = bufs.sges(slot, &mut sg);
        batch
            .push(u64::from(slot), &sg[..n])
            .expect("batch sized for all slots");
    }
    // SAFETY: every SGE lies in `bufs`' MRs, which outlive the SRQ (dropped after it, below), and
    // no slot is read before its completion is polled.
    unsafe { srq.post_recv(&mut batch) }?;

    let mut listener = Listener::bind(SocketAddr::new(env.ip, 0), 64)?;
    let server = listener.local_addr();
    let plan = Plan {
        dev: env.dev.clone(),
        server,
        conns: cfg.conns,
        messages: cfg.messages,
        mtu,
        max: cfg.slot_size,
        op: cfg.op,
        window: 16,
        oversize_after: cfg.oversize_after,
        bad_hello: cfg.bad_hello,
        first_tag: 0,
    };
    let mut child = spawn_peer(peer_exe, &plan)?;
    let mut doomed = match cfg.kill_peer_after {
        Some(_) => Some(spawn_peer(
            peer_exe,
            &Plan {
                conns: 1,
                messages: cfg.messages.saturating_mul(50),
                oversize_after: None,
                bad_hello: false,
                first_tag: DOOMED_TAG,
                ..plan.clone()
            },
        )?),
        None => None,
    };
    let mut report = RecvReport {
        device: dev.name().to_owned(),
        mtu,
        ..Default::default()
    };
    let spec = ConnectionSpec::new(&pd, &cq, &cq, Some(&srq));
    let want_requests =
        (total_conns + u32::from(cfg.bad_hello) + u32::from(doomed.is_some())) as usize;
    let mut gather: Gather<Hello> = Gather::new();
    let collected = gather.collect::<anyhow::Error>(
        &mut listener,
        &spec,
        Instant::now() + Duration::from_secs(120),
        // A refused malformed Hello is one of the requests expected.
        |g| g.decided() >= want_requests,
        |req, _| {
            Ok(admit_hello(req.private_data(), cfg.slot_size, |hello| {
                Ok(window_mr.as_ref().and_then(|mr| {
                    mr.remote_window(u64::from(hello.conn_tag) * per_conn_window, per_conn_window)
                }))
            }))
        },
        |_| match child.try_wait()? {
            Some(st) => bail!(
                "sender exited ({st}) while connecting: {}",
                drain(&mut child)
            ),
            None => Ok(()),
        },
    );
    if let Err(e) = collected {
        let _ = child.kill();
        bail!(
            "{} of {want_requests} connection requests arrived: {e:#}; sender: {}",
            gather.decided(),
            drain(&mut child)
        );
    }
    report.rejected = gather.refused.into_iter().map(|r| r.reason).collect();
    let mut conns = Vec::new();
    let mut by_qp: HashMap<u32, ConnState> = HashMap::new();
    for (conn, hello) in gather.accepted {
        let is_doomed = hello.conn_tag == DOOMED_TAG && doomed.is_some();
        let expect = if is_doomed {
            0
        } else if hello.conn_tag >= cfg.conns {
            cfg.oversize_after.unwrap_or(0)
        } else {
            cfg.messages
        };
        by_qp.insert(
            conn.qp().qp_num(),
            ConnState {
                tag: hello.conn_tag,
                next: 0,
                expect,
                window_base: u64::from(hello.conn_tag.min(total_conns)) * per_conn_window,
                doomed: is_doomed,
            },
        );
        report.received.insert(hello.conn_tag, 0);
        conns.push((hello.conn_tag, conn));
    }

    // Receive loop.
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    let mut wcs = WorkCompletion::buffer(64);
    let mut repost = RecvBatch::with_capacity(cfg.slots as usize, (cfg.slots * cfg.sges) as usize);
    let mut scratch = Vec::with_capacity(cfg.slot_size as usize);
    let mut oversize_seen = cfg.oversize_after.is_none();
    let mut polls = 0u64;
    let done = |by_qp: &HashMap<u32, ConnState>, oversize_seen: bool, doomed_gone: bool| {
        oversize_seen && doomed_gone && by_qp.values().all(|c| c.doomed || c.next >= c.expect)
    };
    let mut doomed_gone = doomed.is_none();
    let mut last_cm_check = Instant::now();
    while !done(&by_qp, oversize_seen, doomed_gone) {
        // The doomed sender dies once enough of its messages arrived.
        if let (Some(after), Some(d)) = (cfg.kill_peer_after, doomed.as_mut()) {
            let got = by_qp.values().find(|c| c.doomed).map_or(0, |c| c.next);
            if got >= after && report.killed_after.is_none() {
                d.kill()?;
                d.wait()?;
                report.killed_after = Some(got);
            }
        }
        // Watch every connection's RDMA CM events (disconnects) every 20 ms.
        if last_cm_check.elapsed() > Duration::from_millis(20) {
            last_cm_check = Instant::now();
            for (tag, conn) in conns.iter_mut() {
                if let Some(gdrx_core::ConnEvent::Disconnected) =
                    conn.poll_event(Some(Duration::ZERO))?
                {
                    report.disconnected.push(*tag);
                    if *tag == DOOMED_TAG && report.killed_after.is_some() {
                        doomed_gone = true;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let progress: Vec<_> = by_qp.values().map(|c| (c.tag, c.next, c.expect)).collect();
            bail!(
                "timed out after {:?}: (tag, received, expected) = {progress:?}; sender: {}",
                cfg.timeout,
                drain(&mut child)
            );
        }
        let n = if cfg.events {
            cq.poll_blocking(&mut wcs, Some(Duration::from_millis(200)))?
        } else {
            cq.poll(&mut wcs)?
        };
        polls += 1;
        if n == 0 {
            if polls.is_multiple_of(64) {
                if let Some(st) = child.try_wait()? {
                    if !st.success() {
                        bail!("sender failed ({st}) mid-stream: {}", drain(&mut child));
                    }
                }
            }
            if !cfg.events {
                std::thread::yield_now();
            }
            continue;
        }
        for wc in &wcs[..n] {
            let slot = wc.wr_id() as u32;
            match wc.result() {
                Ok(()) => {
                    let Some(c) = by_qp.get_mut(&wc.qp_num()) else {
                        report
                            .frame_errors
                            .push(format!("completion for unknown QP {:#x}", wc.qp_num()));
                        report.frame_error_count += 1;
                        continue;
                    };
                    let seq = c.next;
                    let (want, class) = frame::size_for(c.tag, seq, mtu, cfg.slot_size);
                    let res = match (cfg.op, wc.opcode()) {
                        (OpKind::WriteImm, WcOpcode::RecvRdmaWithImm) => {
                            let mem = window_mem.as_ref().expect("window exists in write mode");
                            let off = (c.window_base + u64::from(seq) * u64::from(cfg.slot_size))
                                as usize;
                            // Data written before the WRITE_WITH_IMM completion is visible now;
                            // the sender never writes this sub-range again.
                            // SAFETY: no other reference to this range exists and the peer is done
                            // writing it (its completion is what we are handling).
                            let data = unsafe { mem.slice(off, want as usize) };
                            if wc.byte_len() != want {
                                Err(frame::FrameError::Length {
                                    want,
                                    got: wc.byte_len(),
                                })
                            } else {
                                frame::verify(data, c.tag, seq, want, wc.imm(), true)
                            }
                        }
                        (OpKind::WriteImm, op) => Err(frame::FrameError::Opcode {
                            want: "RecvRdmaWithImm",
                            got: format!("{op:?}"),
                        }),
                        (_, _) => {
                            let len = (wc.byte_len() as usize).min(cfg.slot_size as usize);
                            // SAFETY: the slot's work request just completed; it is reposted only
                            // after this read.
                            unsafe { bufs.read(slot, len, &mut scratch) };
                            frame::verify(&scratch, c.tag, seq, want, wc.imm(), cfg.op.has_imm())
                        }
                    };
                    match res {
                        Ok(()) => {
                            *report.classes.entry(format!("{class:?}")).or_insert(0) += 1;
                            *report.bytes_by_tag.entry(c.tag).or_insert(0) += u64::from(want);
                            *report.received.get_mut(&c.tag).expect("tag registered") += 1;
                        }
                        Err(e) => {
                            report.frame_error_count += 1;
                            if report.frame_errors.len() < 20 {
                                report
                                    .frame_errors
                                    .push(format!("conn {} seq {seq}: {e}", c.tag));
                            }
                        }
                    }
                    c.next += 1;
                }
                Err(e) => {
                    if e.status.is_receive_overflow()
                        && by_qp.get(&e.qp_num).is_some_and(|c| c.tag >= cfg.conns)
                    {
                        oversize_seen = true;
                    }
                    report.wc_errors.push(e);
                }
            }
            // Every completion, good or bad, consumed one SRQ work request: give it back.
            let k = bufs.sges(slot, &mut sg);
            repost
                .push(u64::from(slot), &sg[..k])
                .expect("repost batch sized for all slots");
        }
        report.max_repost_batch = report.max_repost_batch.max(repost.len());
        report.reposts += repost.len() as u64;
        // SAFETY: as for the initial post; the slots were just read and are not touched until
        // their next completion.
        unsafe { srq.post_recv(&mut repost) }?;
    }
    report.secs = start.elapsed().as_secs_f64();
    report.events = cq.events_read();

    report.peer = Some(finish_peer(&mut child)?);
    // Tear down: connections first (QPs), then SRQ, CQ, MRs, PD, device (Arcs enforce it too).
    drop(conns);
    drop(srq);
    drop(spec);
    drop(window_mr);
    drop(bufs);
    drop(cq);
    drop(pd);
    drop(dev);
    Ok(report)
}

/// Lets the sender finish: closes its stdin (the signal that everything was verified), waits for
/// it to exit successfully and parses its JSON report line.
pub fn finish_peer(child: &mut Peer) -> anyhow::Result<Report> {
    drop(child.stdin.take());
    let (status, stdout, stderr) = wait_with_timeout(child, Duration::from_secs(60))?;
    if !status.success() {
        bail!("sender exited with {status}: {stderr}");
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_default();
    serde_json::from_str(line)
        .with_context(|| format!("parsing the sender's report {line:?}; stderr: {stderr}"))
}

/// Kills the sender and returns what it wrote (for error messages).
pub(crate) fn drain(child: &mut Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    if let Some(o) = child.stdout.take() {
        for l in BufReader::new(o).lines().map_while(Result::ok) {
            s.push_str("\n[stdout] ");
            s.push_str(&l);
        }
    }
    s
}

/// Waits up to `t` for `child` to exit and returns its status, stdout and stderr (both piped);
/// kills it after `t`.
pub fn wait_with_timeout(
    child: &mut Child,
    t: Duration,
) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let ot = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let et = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + t;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("sender did not exit within {t:?} after the receiver finished");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok((
        status,
        ot.join().unwrap_or_default(),
        et.join().unwrap_or_default(),
    ))
}

/// Asserts a report shows every message verified exactly once, in order, for every connection.
///
/// # Panics
/// On any shortfall, with the report.
pub fn assert_clean(r: &RecvReport, cfg: &RecvConfig) {
    assert_eq!(
        r.frame_error_count, 0,
        "verification failures: {:?}",
        r.frame_errors
    );
    for tag in 0..cfg.conns {
        assert_eq!(
            r.received.get(&tag).copied(),
            Some(cfg.messages),
            "connection {tag}: messages verified (report {r:#?})"
        );
    }
    let peer = r.peer.as_ref().expect("sender report");
    for c in peer.conns.iter().filter(|c| c.tag < cfg.conns) {
        assert!(
            c.errors.is_empty(),
            "sender errors on connection {}: {:?}",
            c.tag,
            c.errors
        );
        assert_eq!(
            c.sent, cfg.messages,
            "sender completed sends on connection {}",
            c.tag
        );
        assert_eq!(
            Some(&c.sent),
            r.received.get(&c.tag),
            "sent == received for connection {}",
            c.tag
        );
        assert_eq!(
            Some(&c.bytes),
            r.bytes_by_tag.get(&c.tag),
            "bytes sent == bytes verified for connection {}",
            c.tag
        );
    }
    assert_eq!(
        r.reposts,
        r.total() + r.wc_errors.len() as u64,
        "every completion's buffer was reposted"
    );
}

/// Counts of each size class the schedule must have covered.
pub fn assert_coverage(r: &RecvReport) {
    for c in [
        SizeClass::One,
        SizeClass::Tiny,
        SizeClass::MtuMinus1,
        SizeClass::Mtu,
        SizeClass::MtuPlus1,
        SizeClass::Max,
        SizeClass::Random,
    ] {
        let n = r.classes.get(&format!("{c:?}")).copied().unwrap_or(0);
        assert!(
            n > 0,
            "no message of size class {c:?} was verified: {:?}",
            r.classes
        );
    }
}
