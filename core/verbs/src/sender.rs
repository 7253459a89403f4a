//! A sender for the common case: connect to a gdrx receiver (`gdrx_core::Receiver`) with a
//! [`Hello`], check its [`Welcome`], and send messages (SEND, or SEND_WITH_IMM with immediate
//! data) copied into a ring of registered buffers, up to `depth` in flight.
//!
//! A receiver whose consumer holds every buffer answers with RNR NAKs; the sender's QP retries
//! forever (`rnr_retry` 7), so `send` blocks instead of losing messages. Its wait is bounded by
//! the timeout the caller gives.
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
    device_names, Access, Connection, ConnectionSpec, Cq, Device, Error, HostMemory, Mr, QpConfig,
    SendBatch, SendFlags, SendOp, WorkCompletion,
};
use gdrx_wire::{Hello, Welcome, WireError};

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
        let cq = Cq::new(&dev, self.depth + 1)?;
        let qp = QpConfig {
            max_send_wr: self.depth,
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
        let mem = Arc::new(HostMemory::new(slot * depth)?);
        let mr = pd.register(Arc::clone(&mem), Access::recv())?;
        Ok(Sender {
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

/// A connection to a gdrx receiver that sends copied messages; see the [module docs](self).
pub struct Sender {
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
        }
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
        Ok(true)
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
                for wc in &self.wcs[..n] {
                    wc.result().map_err(Error::from)?;
                }
                self.in_flight -= n;
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
