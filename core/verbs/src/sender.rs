//! A sender for the common case: connect to a gdrx receiver (`gdrx_core::Receiver`) with a
//! [`Hello`], check its [`Welcome`], and send messages (SEND, or SEND_WITH_IMM with immediate
//! data) copied into a ring of registered buffers, up to `depth` in flight.
//!
//! A receiver that grants credits (its Welcome carries a [`CreditWord`]) is never sent more
//! messages than it has receives posted for this sender: once the grant is used up, `send`
//! waits, re-reading the grant with an RDMA READ (ahead of need, once half the grant is used, so
//! the sender rarely waits; a READ that brought nothing new is repeated only a quarter of the
//! grant later, or while the sender waits, with a back-off). Without credits (an older receiver, or
//! [`SenderBuilder::credits`]`(false)`), a receiver whose consumer holds every buffer answers
//! with RNR NAKs; the sender's QP retries forever (`rnr_retry` 7), so `send` blocks instead of
//! losing messages. Either wait is bounded by the timeout the caller gives.
//!
//! ```no_run
//! use std::time::Duration;
//! let mut tx = gdrx_verbs::Sender::builder("10.0.0.1:7471".parse()?, 4096).tag(3).connect()?;
//! for seq in 0..1000u32 {
//!     tx.send(&seq.to_le_bytes(), Some(seq), Some(Duration::from_secs(10)))?;
//! }
//! tx.close(Some(Duration::from_secs(10)))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    device_names, Access, ConnEvent, Connection, ConnectionSpec, Cq, Device, Error, HostMemory, Mr,
    QpConfig, SendBatch, SendFlags, SendOp, WorkCompletion,
};
use gdrx_wire::{CreditWord, Hello, Welcome, WireError};

/// What went wrong connecting or sending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SenderError {
    /// A verbs or RDMA CM call failed (the receiver refused, went away, ...).
    #[error(transparent)]
    Verbs(#[from] Error),
    /// The receiver's accept did not carry a gdrx Welcome.
    #[error(
        "the receiver's accept is not a gdrx Welcome: {0} (is a gdrx receiver listening there?)"
    )]
    Welcome(#[source] WireError),
    /// The receiver's buffers are smaller than the messages this sender announced.
    #[error(
        "the receiver's buffers hold {recv_buf} bytes, less than the {max_msg} this sender \
         announced: lower max_msg or give the receiver larger slots"
    )]
    BuffersTooSmall {
        /// The receiver's buffer size.
        recv_buf: u32,
        /// What the sender announced.
        max_msg: u32,
    },
    /// A message is larger than the sender's buffers.
    #[error("a {len}-byte message is larger than this sender's max_msg ({max_msg} bytes)")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The sender's largest message.
        max_msg: u32,
    },
    /// No RDMA device to send from.
    #[error("no RDMA device is present (load a driver, or `rdma link add` a soft-RoCE device)")]
    NoDevice,
}

/// Builds a [`Sender`]; see [`Sender::builder`].
#[derive(Debug, Clone)]
pub struct SenderBuilder {
    addr: SocketAddr,
    max_msg: u32,
    device: Option<String>,
    tag: u32,
    depth: u32,
    timeout: Duration,
    credits: bool,
}

impl SenderBuilder {
    /// The RDMA device to send from; by default the one the route to the receiver leaves by.
    #[must_use]
    pub fn device(mut self, name: impl Into<String>) -> Self {
        self.device = Some(name.into());
        self
    }

    /// The connection tag the receiver reports for this sender (default 0).
    #[must_use]
    pub fn tag(mut self, tag: u32) -> Self {
        self.tag = tag;
        self
    }

    /// Messages in flight, each in its own registered buffer (default 16).
    #[must_use]
    pub fn depth(mut self, n: u32) -> Self {
        self.depth = n.max(1);
        self
    }

    /// Use the credits a receiver grants (default true); `false` sends regardless and leaves
    /// flow control to RNR NAKs (to measure what credits save).
    #[must_use]
    pub fn credits(mut self, on: bool) -> Self {
        self.credits = on;
        self
    }

    /// How long connecting may take (default 20 s).
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Connects.
    ///
    /// # Errors
    /// [`SenderError`]: no device, the RDMA CM's errors (a refusal carries the receiver's
    /// reason), a reply that is not a Welcome, receive buffers smaller than `max_msg`.
    pub fn connect(self) -> Result<Sender, SenderError> {
        let first = match &self.device {
            Some(d) => d.clone(),
            None => device_names()?
                .into_iter()
                .next()
                .ok_or(SenderError::NoDevice)?,
        };
        match self.connect_on(&first) {
            // The route leaves by another device: that is the one to send from.
            Err(SenderError::Verbs(Error::DeviceMismatch { cm_device, .. }))
                if self.device.is_none() =>
            {
                self.connect_on(&cm_device)
            }
            other => other,
        }
    }

    fn connect_on(&self, device: &str) -> Result<Sender, SenderError> {
        let dev = Device::open(device)?;
        let pd = dev.alloc_pd()?;
        let depth = self.depth as usize;
        // One more send WR and completion than messages in flight: the credit READ.
        let cq = Cq::new(&dev, self.depth + 2)?;
        let qp = QpConfig {
            max_send_wr: self.depth + 1,
            max_recv_wr: 1,
            ..QpConfig::default()
        };
        let mut spec = ConnectionSpec::new(&pd, &cq, &cq, None).qp(qp);
        spec.timeout = self.timeout;
        let hello = Hello {
            flags: 0,
            conn_tag: self.tag,
            max_msg: self.max_msg,
        };
        let conn = crate::connect(self.addr, None, &spec, &hello.encode())?;
        let welcome = Welcome::decode(conn.peer_private_data()).map_err(SenderError::Welcome)?;
        if welcome.recv_buf < self.max_msg {
            return Err(SenderError::BuffersTooSmall {
                recv_buf: welcome.recv_buf,
                max_msg: self.max_msg,
            });
        }
        let slot = (self.max_msg as usize).max(1);
        // The message buffers, then the 8-byte word credit READs land in.
        let credit_off = (slot * depth).next_multiple_of(8);
        let mem = Arc::new(HostMemory::new(credit_off + 8)?);
        let mr = pd.register(Arc::clone(&mem), Access::recv())?;
        let credits = welcome.credits.filter(|_| self.credits).map(|word| {
            let grant = u64::from(word.initial);
            let low = (grant / 2).max(1);
            Credits {
                word,
                grant,
                low,
                read_at: grant.saturating_sub(low),
                off: credit_off,
                reading: false,
                dry: 0,
                reads: 0,
                waits: 0,
            }
        });
        Ok(Sender {
            credits,
            conn,
            cq,
            mr,
            mem,
            slot,
            depth,
            max_msg: self.max_msg,
            next: 0,
            in_flight: 0,
            wcs: WorkCompletion::buffer(depth.min(64)),
            batch: SendBatch::with_capacity(1, 1),
            sent: 0,
            welcome,
        })
    }
}

/// What a sender's credits did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreditStats {
    /// Messages the receiver has granted in all (the last grant read).
    pub grant: u64,
    /// Credit READs completed.
    pub reads: u64,
    /// Sends that had to wait for credit.
    pub waits: u64,
}

/// The READ of the credit word is this work request.
const CREDIT_READ: u64 = u64::MAX;
/// Back-off between READs that found no new credit: from the first to the cap, doubling.
const CREDIT_BACKOFF: (Duration, Duration) = (Duration::from_micros(20), Duration::from_millis(1));

#[derive(Debug)]
struct Credits {
    word: CreditWord,
    /// Messages this sender may have sent in all.
    grant: u64,
    /// Re-read the grant once no more than this many credits are left.
    low: u64,
    /// Ahead of need, READ the grant again once `sent` reaches this.
    read_at: u64,
    /// Where in `mem` READs land.
    off: usize,
    /// A READ is posted.
    reading: bool,
    /// READs in a row that brought no new credit.
    dry: u32,
    /// READs completed.
    reads: u64,
    /// Sends that waited for credit.
    waits: u64,
}

/// A connection to a gdrx receiver that sends copied messages; see the [module docs](self).
pub struct Sender {
    credits: Option<Credits>,
    conn: Connection,
    cq: Arc<Cq>,
    mr: Mr,
    mem: Arc<HostMemory>,
    slot: usize,
    depth: usize,
    max_msg: u32,
    next: usize,
    in_flight: usize,
    wcs: Vec<WorkCompletion>,
    batch: SendBatch,
    sent: u64,
    welcome: Welcome,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("peer", &self.conn.peer_addr())
            .field("max_msg", &self.max_msg)
            .field("depth", &self.depth)
            .field("in_flight", &self.in_flight)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// A sender to the receiver at `addr` for messages of up to `max_msg` bytes.
    pub fn builder(addr: SocketAddr, max_msg: u32) -> SenderBuilder {
        SenderBuilder {
            addr,
            max_msg,
            device: None,
            tag: 0,
            depth: 16,
            timeout: Duration::from_secs(20),
            credits: true,
        }
    }

    /// What the receiver's credits did (`None`: it grants none, or they are off).
    pub fn credits(&self) -> Option<CreditStats> {
        self.credits.as_ref().map(|c| CreditStats {
            grant: c.grant,
            reads: c.reads,
            waits: c.waits,
        })
    }

    /// What the receiver said when it accepted (its buffer size, a WRITE window).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Messages sent (posted) so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Messages posted whose completion has not been seen yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The largest message.
    pub fn max_msg(&self) -> u32 {
        self.max_msg
    }

    /// Copies `data` into a free buffer and posts it (SEND_WITH_IMM when `imm` is given),
    /// waiting up to `timeout` (forever for `None`) for a buffer to come free. `Ok(false)`: the
    /// timeout passed and nothing was sent (the receiver is not taking messages: RNR).
    ///
    /// # Errors
    /// [`SenderError::TooLarge`]; a failed completion of an earlier send (the receiver went
    /// away: retry exceeded).
    pub fn send(
        &mut self,
        data: &[u8],
        imm: Option<u32>,
        timeout: Option<Duration>,
    ) -> Result<bool, SenderError> {
        self.send_parts(&[data], imm, timeout)
    }

    /// [`send`](Self::send) of one message made of `parts` back to back (a sample header and
    /// its payload, say), copied into one buffer.
    ///
    /// # Errors
    /// As [`send`](Self::send); `TooLarge` for the parts' total.
    pub fn send_parts(
        &mut self,
        parts: &[&[u8]],
        imm: Option<u32>,
        timeout: Option<Duration>,
    ) -> Result<bool, SenderError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_msg as usize {
            return Err(SenderError::TooLarge {
                len,
                max_msg: self.max_msg,
            });
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.in_flight == self.depth {
            if !self.reap(deadline)? {
                return Ok(false);
            }
        }
        if !self.wait_for_credit(deadline)? {
            return Ok(false);
        }
        let mut off = self.next * self.slot;
        let start = off;
        for part in parts {
            // SAFETY: buffer `next` is not in flight (sends complete in order, and fewer than
            // `depth` are outstanding), the parts end at `start + len`, within the buffer
            // (`len <= max_msg <= slot`) and the memory, and nothing else writes it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    part.as_ptr(),
                    self.mem.as_ptr().add(off),
                    part.len(),
                );
            }
            off += part.len();
        }
        let sge = self.mr.sge(start, len).expect("the buffer lies in the MR");
        let op = match imm {
            Some(i) => SendOp::SendWithImm(i),
            None => SendOp::Send,
        };
        self.batch.clear();
        self.batch
            .push(self.sent, op, &[sge], SendFlags::SIGNALED)
            .expect("a batch of one");
        // SAFETY: the SGE lies in `mr`, which outlives the send (the Sender reaps every
        // completion before it drops the MR, or the QP is destroyed first); the buffer is not
        // written until the send completes.
        unsafe { self.conn.qp().post_send(&mut self.batch) }.map_err(Error::from)?;
        self.next = (self.next + 1) % self.depth;
        self.in_flight += 1;
        self.sent += 1;
        // Ask for more before the grant runs out, so that the sender rarely waits.
        if self
            .credits
            .as_ref()
            .is_some_and(|c| !c.reading && self.sent >= c.read_at)
        {
            self.read_credit()?;
        }
        Ok(true)
    }

    /// Waits until the grant covers one more message (always, without credits). `Ok(false)`:
    /// the deadline passed.
    fn wait_for_credit(&mut self, deadline: Option<Instant>) -> Result<bool, SenderError> {
        let Some(c) = self.credits.as_mut() else {
            return Ok(true);
        };
        if self.sent < c.grant {
            return Ok(true);
        }
        c.waits += 1;
        loop {
            let c = self.credits.as_mut().expect("credits are on");
            if self.sent < c.grant {
                return Ok(true);
            }
            if !c.reading {
                if c.dry > 0 {
                    // The receiver had nothing more to give: do not hammer it with READs.
                    let nap = CREDIT_BACKOFF
                        .0
                        .saturating_mul(1 << c.dry.min(10))
                        .min(CREDIT_BACKOFF.1);
                    if deadline.is_some_and(|d| Instant::now() + nap >= d) {
                        return Ok(false);
                    }
                    std::thread::sleep(nap);
                }
                self.read_credit()?;
            }
            if !self.reap(deadline)? {
                return Ok(false);
            }
        }
    }

    /// Posts the READ of the credit word.
    fn read_credit(&mut self) -> Result<(), SenderError> {
        let c = self.credits.as_mut().expect("credits are on");
        let sge = self
            .mr
            .sge(c.off, 8)
            .expect("the credit word lies in the MR");
        self.batch.clear();
        self.batch
            .push(
                CREDIT_READ,
                SendOp::RdmaRead {
                    remote_addr: c.word.addr,
                    rkey: c.word.rkey,
                },
                &[sge],
                SendFlags::SIGNALED,
            )
            .expect("a batch of one");
        // SAFETY: the SGE lies in `mr`, which outlives the READ (as for sends); the 8 bytes at
        // `off` are written only by this READ, and read only once its completion was polled.
        unsafe { self.conn.qp().post_send(&mut self.batch) }.map_err(Error::from)?;
        c.reading = true;
        Ok(())
    }

    /// Waits up to `timeout` for every posted message to complete. `Ok(false)`: some are still
    /// in flight.
    ///
    /// # Errors
    /// A failed completion (the receiver went away).
    pub fn flush(&mut self, timeout: Option<Duration>) -> Result<bool, SenderError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.in_flight > 0 {
            if !self.reap(deadline)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits up to `timeout` for the receiver to disconnect (it closed the connection, or its
    /// process ended and the kernel sent the disconnect for it): `Ok(true)` once it has,
    /// `Ok(false)` while it is still connected. This is how a sender that has sent everything
    /// learns that its receiver died before it consumed it.
    ///
    /// # Errors
    /// [`Error::Cm`] when the connection's event channel cannot be read.
    pub fn wait_disconnected(&mut self, timeout: Duration) -> Result<bool, SenderError> {
        let deadline = Instant::now() + timeout;
        while self.conn.is_connected() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.conn.poll_event(Some(left))? {
                Some(ConnEvent::Disconnected | ConnEvent::DeviceRemoval) => break,
                Some(_) if !left.is_zero() => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Flushes (up to `timeout`) and disconnects.
    ///
    /// # Errors
    /// As [`Sender::flush`]; [`Error::Timeout`] when messages were still in flight.
    pub fn close(mut self, timeout: Option<Duration>) -> Result<(), SenderError> {
        if !self.flush(timeout)? {
            return Err(Error::Timeout {
                what: "the sender's last messages to complete",
                after: timeout.unwrap_or_default(),
            }
            .into());
        }
        self.conn.disconnect()?;
        Ok(())
    }

    /// Reaps completions until at least one arrived (`true`) or the deadline passed.
    fn reap(&mut self, deadline: Option<Instant>) -> Result<bool, SenderError> {
        let mut spins = 0u32;
        loop {
            let n = self.cq.poll(&mut self.wcs)?;
            if n > 0 {
                let mut sends = n;
                for wc in &self.wcs[..n] {
                    wc.result().map_err(Error::from)?;
                    if wc.wr_id() == CREDIT_READ {
                        sends -= 1;
                        let c = self.credits.as_mut().expect("only credits post READs");
                        // SAFETY: the READ completed: its 8 bytes at `off` (in `mem`, 8-aligned)
                        // are written and nothing else writes them.
                        let raw = unsafe {
                            std::ptr::read_volatile(self.mem.as_ptr().add(c.off).cast::<[u8; 8]>())
                        };
                        let grant = u64::from_le_bytes(raw);
                        c.reading = false;
                        c.reads += 1;
                        if grant > c.grant {
                            c.grant = grant;
                            c.dry = 0;
                        } else {
                            c.dry = c.dry.saturating_add(1);
                        }
                        // The next READ ahead of need: once half the grant left is used, or
                        // (nothing new came) after a quarter of the window more messages, not
                        // at every message.
                        c.read_at = if c.dry == 0 {
                            c.grant.saturating_sub(c.low)
                        } else {
                            self.sent + (c.low / 2).max(1)
                        };
                    }
                }
                self.in_flight -= sends;
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        // Messages still in flight read the buffers: move the QP to error (the Connection's
        // drop) before the MR goes. Fields drop in declaration order: `conn` first.
        if self.in_flight > 0 {
            tracing::debug!(
                in_flight = self.in_flight,
                "sender dropped with sends in flight"
            );
        }
    }
}
