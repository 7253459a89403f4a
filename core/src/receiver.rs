//! [`Receiver`]: the receive side for the common case, in one object.
//!
//! A receiver listens on an IP:port (or a device's RoCE address), accepts gdrx senders (each
//! announces itself with a [`Hello`]; the receiver answers with a [`Welcome`](gdrx_wire::Welcome) naming its buffer
//! size), keeps one SRQ fed from a [`Pool`] and hands out one stream of [`Event`]s: batches of
//! leases, peers connected, refused and gone. It owns the PD, the CQs, the SRQ, the pool, the
//! listener and the connections, and tears them down in the right order when dropped.
//!
//! ```no_run
//! use gdrx_core::receiver::{Event, Receiver};
//! use gdrx_core::RecvEvent;
//!
//! # fn main() -> Result<(), gdrx_core::receiver::ReceiverError> {
//! # let provider: std::sync::Arc<dyn gdrx_core::Provider> = todo!();
//! // provider: e.g. Arc::new(gdrx_providers::HostProvider::new())
//! let mut rx = Receiver::builder("10.0.0.1:7471".parse().unwrap(), provider)
//!     .slots(64 << 10, 256)
//!     .build()?;
//! loop {
//!     match rx.next(None)? {
//!         Event::Batch(batch) => {
//!             for ev in batch {
//!                 if let RecvEvent::Message(lease) = ev {
//!                     println!("{} bytes from QP {:#x}", lease.len(), lease.qp_num());
//!                 } // dropping the lease reposts its buffer
//!             }
//!         }
//!         Event::Gone(peer) => println!("peer {} gone", peer.tag),
//!         other => println!("{other:?}"),
//!     }
//! }
//! # }
//! ```
//!
//! # Waiting
//! [`Receiver::next`] is the blocking poll of [`crate::wait`]: it returns as soon as something
//! happened, or [`Event::Timeout`] once the timeout passed. In event mode it sleeps on one
//! epoll instance that holds the CQ's completion channel and the RDMA CM channels; that fd
//! ([`Receiver::as_raw_fd`]) can go into the caller's own epoll loop or tokio's `AsyncFd`
//! (readable means: call `next(Some(Duration::ZERO))`). In busy mode it spins on the CQ and
//! looks at the CM channels every millisecond; its fd then signals only connection events.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gdrx_pool::{Batch, Pool, PoolConfig, PoolError, Provider, RecvEvent};
use gdrx_verbs::cm::{Admitted, Refusal};
use gdrx_verbs::wait::{wait_for, Waiter};
use gdrx_verbs::{
    ConnEvent, ConnectRequest, Connection, ConnectionSpec, Cq, Device, Error, Listener, Pd, Srq,
    SrqConfig,
};
use gdrx_wire::Hello;

use crate::accept::admit_hello_with_credits;
use crate::credits::{CreditTable, PeerCredit, Tally};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

const CQ: Token = Token(0);
const LISTENER: Token = Token(1);
/// Connection `i` is registered as `Token(CONN_BASE + i)`.
const CONN_BASE: usize = 2;
/// How often busy mode looks at the CM channels.
const BUSY_CM_INTERVAL: Duration = Duration::from_millis(1);

/// What went wrong building or running a [`Receiver`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiverError {
    /// A verbs or RDMA CM call failed.
    #[error(transparent)]
    Verbs(#[from] Error),
    /// The pool refused its configuration or failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The device has no RoCE v2 address to listen on.
    #[error(
        "RDMA device `{device}` has no RoCE v2 IP address on port 1: give the receiver an IP \
         address instead, or configure one on the device's network interface"
    )]
    NoAddress {
        /// The device.
        device: String,
    },
    /// The address the receiver was given is not an RDMA device's (loopback, a wildcard, an
    /// interface no RDMA device is bound to, no interface at all).
    #[error(
        "no RDMA device has the address {ip} (devices present: {present}): give the receiver \
         the IP of an interface an RDMA device is bound to (`rdma link show`), or a device name"
    )]
    NotRdmaAddress {
        /// The address.
        ip: IpAddr,
        /// The devices present, comma-separated ("none" when there are none).
        present: String,
    },
    /// The epoll instance behind [`Receiver::as_raw_fd`] failed.
    #[error("{op} failed: {source}")]
    Poll {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

type Result<T, E = ReceiverError> = std::result::Result<T, E>;

/// A connected sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The `conn_tag` of its [`Hello`].
    pub tag: u32,
    /// Its address, when the CM reports one.
    pub addr: Option<SocketAddr>,
    /// The local QP number its messages arrive on ([`crate::Lease::qp_num`]).
    pub qp_num: u32,
}

/// How long accepting one sender may take by default (soft-RoCE under emulation is slow).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Receiver::next`] yields.
#[derive(Debug)]
pub enum Event<'a> {
    /// What one poll of the pool handed out: messages (leases), failed receives, and the pool
    /// running out of buffers.
    Batch(Batch<'a, RecvEvent>),
    /// A sender was accepted.
    Connected(PeerInfo),
    /// A connection request was refused (nothing was set up for it).
    Refused {
        /// The requester's address.
        addr: Option<SocketAddr>,
        /// Why.
        reason: String,
    },
    /// A sender went away. Every message it sent before is in an earlier batch.
    Gone(PeerInfo),
    /// Nothing happened before the timeout.
    Timeout,
}

/// Decides whether a sender is accepted: `Err(reason)` refuses it.
pub type AcceptFn = dyn Fn(&Hello, Option<SocketAddr>) -> Result<(), String> + Send;

/// Builds a [`Receiver`]; see [`Receiver::builder`].
pub struct ReceiverBuilder {
    bind: Bind,
    provider: Arc<dyn Provider>,
    pool: PoolConfig,
    event_mode: bool,
    max_peers: usize,
    accept: Option<Box<AcceptFn>>,
    credits: bool,
    handshake_timeout: Duration,
}

enum Bind {
    Addr(SocketAddr),
    Device(String, u16),
}

impl fmt::Debug for ReceiverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiverBuilder")
            .field("pool", &self.pool)
            .field("event_mode", &self.event_mode)
            .field("max_peers", &self.max_peers)
            .finish_non_exhaustive()
    }
}

impl ReceiverBuilder {
    fn new(bind: Bind, provider: Arc<dyn Provider>) -> ReceiverBuilder {
        ReceiverBuilder {
            bind,
            provider,
            pool: PoolConfig::named("gdrx-receiver"),
            event_mode: true,
            max_peers: 64,
            accept: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            credits: true,
        }
    }

    /// `count` buffers of `slot_size` bytes (the largest message accepted), in one region.
    #[must_use]
    pub fn slots(mut self, slot_size: u32, count: u32) -> Self {
        self.pool = self.pool.slot_size(slot_size).slots_per_region(count);
        self
    }

    /// The whole pool configuration (growth, watermark, batches, header split, ...).
    #[must_use]
    pub fn pool(mut self, cfg: PoolConfig) -> Self {
        self.pool = cfg;
        self
    }

    /// Header split: the first `bytes` of every message land in CPU-readable memory from
    /// `provider` (a [`SampleHeader`](gdrx_wire::SampleHeader), say), the rest in the pool's
    /// slots; [`Lease::header`](gdrx_pool::Lease::header) and
    /// [`Lease::payload`](gdrx_pool::Lease::payload) give the two parts.
    #[must_use]
    pub fn header_split(mut self, bytes: u32, provider: Arc<dyn Provider>) -> Self {
        self.pool = self.pool.header_split(bytes, provider);
        self
    }

    /// Sleep on the completion channel (`true`, the default) or spin on the CQ (`false`).
    #[must_use]
    pub fn event_mode(mut self, on: bool) -> Self {
        self.event_mode = on;
        self
    }

    /// Senders connected at once; further requests are refused (default 64).
    #[must_use]
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n;
        self
    }

    /// Grant senders credits (default true): each Welcome carries a [`CreditWord`] that the
    /// sender reads, so that it never sends more than this receiver's posted receives can
    /// take: no RNR NAKs, and a consumer that holds buffers slows only its own senders. The
    /// rule is in [`credits`](crate::credits). `false`: senders are held back by RNR NAKs alone.
    ///
    /// [`CreditWord`]: gdrx_wire::CreditWord
    #[must_use]
    pub fn credits(mut self, on: bool) -> Self {
        self.credits = on;
        self
    }

    /// How long accepting one sender may take, until its connection is established (default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`]). Accepting happens inside [`Receiver::next`]: a sender
    /// that never completes its handshake delays the others by this much at most, and is then
    /// reported as [`Event::Refused`].
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// A check on each sender's [`Hello`] and address; `Err(reason)` refuses it. Requests whose
    /// private data is not a gdrx Hello are always refused.
    #[must_use]
    pub fn accept_if(
        mut self,
        f: impl Fn(&Hello, Option<SocketAddr>) -> Result<(), String> + Send + 'static,
    ) -> Self {
        self.accept = Some(Box::new(f));
        self
    }

    /// Opens the device, builds the pool and starts listening.
    ///
    /// # Errors
    /// [`ReceiverError::NoAddress`] for a device without a RoCE v2 address;
    /// [`ReceiverError::NotRdmaAddress`] for an address no device has; the verbs errors of
    /// opening, binding and creating queues; the pool's refusals ([`PoolError`]).
    pub fn build(self) -> Result<Receiver> {
        if self.handshake_timeout.is_zero() {
            return Err(gdrx_verbs::Error::InvalidConfig(
                "handshake_timeout must be positive: accepting a sender takes a round trip".into(),
            )
            .into());
        }
        let (addr, opened) = match &self.bind {
            Bind::Addr(a) => (*a, None),
            Bind::Device(name, port) => {
                let dev = Device::open(name)?;
                let p = dev.require_active_port(1)?;
                let ip: IpAddr = p
                    .select_roce_v2_gid(None)
                    .ok_or_else(|| ReceiverError::NoAddress {
                        device: name.clone(),
                    })?
                    .ip();
                (SocketAddr::new(ip, *port), Some(dev))
            }
        };
        // An address no RDMA device has: refused by the bind (EADDRNOTAVAIL, ENODEV), or bound
        // to no device (loopback); both say which devices there are.
        let not_rdma = || ReceiverError::NotRdmaAddress {
            ip: addr.ip(),
            present: present_devices(),
        };
        let listener = Listener::bind(addr, 64).map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRNOTAVAIL | libc::ENODEV) => not_rdma(),
            _ => e.into(),
        })?;
        let dev_name = listener.device_name().ok_or_else(not_rdma)?;
        // The device the listener is bound to (the one opened for its address, when it is).
        let dev = match opened {
            Some(d) if d.name() == dev_name => d,
            _ => Device::open(&dev_name)?,
        };
        let pd = dev.alloc_pd()?;
        let depth = match self.pool.depth {
            0 => self.pool.slots_per_region * self.pool.max_regions,
            d => d,
        };
        let cq_depth = depth.saturating_add(64);
        let cq = if self.event_mode {
            Cq::with_events(&dev, cq_depth)?
        } else {
            Cq::new(&dev, cq_depth)?
        };
        let send_cq = Cq::new(&dev, 16)?;
        let sges = if self.pool.header_split.is_some() {
            2
        } else {
            1
        };
        let srq = Srq::new(&pd, SrqConfig::new(depth, sges))?;
        let provider = self.provider;
        let header = self.pool.header_split.as_ref().map_or(0, |h| h.bytes);
        let max_message = self.pool.slot_size.saturating_add(header);
        let pool = Pool::new(&srq, &cq, provider, self.pool)?;

        let poll = Poll::new().map_err(|source| ReceiverError::Poll {
            op: "epoll_create",
            source,
        })?;
        let reg = |fd: RawFd, t: Token| {
            poll.registry()
                .register(&mut SourceFd(&fd), t, Interest::READABLE)
                .map_err(|source| ReceiverError::Poll {
                    op: "epoll_ctl(ADD)",
                    source,
                })
        };
        if let Some(fd) = cq.event_fd() {
            reg(fd, CQ)?;
        }
        reg(listener.as_raw_fd(), LISTENER)?;
        let spec =
            ConnectionSpec::new(&pd, &send_cq, &cq, Some(&srq)).timeout(self.handshake_timeout);
        let credits = if self.credits {
            Some(CreditTable::new(&pd, self.max_peers)?)
        } else {
            None
        };
        Ok(Receiver {
            credits,
            last_posted: u32::MAX,
            peers: Vec::new(),
            pool,
            listener,
            spec,
            cq,
            pd,
            poll,
            events: Events::with_capacity(64),
            control: VecDeque::new(),
            gone: Vec::new(),
            accept: self.accept,
            max_peers: self.max_peers,
            max_message,
            next_token: CONN_BASE,
        })
    }
}

struct Peer {
    conn: Connection,
    info: PeerInfo,
    token: Token,
    credit: Option<PeerCredit>,
}

/// The receive side in one object; see the [module docs](self). `Send`: build it on one thread
/// and poll it on another.
pub struct Receiver {
    // Field order is drop order: the connections; the spec's hold on the SRQ, so that the pool
    // holds the last one and destroys the SRQ before its MRs; the pool (its leases keep the
    // memory); the listener and the rest.
    peers: Vec<Peer>,
    /// Holds the send CQ and the SRQ the connections use.
    spec: ConnectionSpec,
    pool: Pool,
    listener: Listener,
    cq: Arc<Cq>,
    pd: Arc<Pd>,
    poll: Poll,
    events: Events,
    control: VecDeque<Control>,
    /// Peers whose disconnect was seen; reported once the pool has nothing left for them.
    gone: Vec<PeerInfo>,
    accept: Option<Box<AcceptFn>>,
    max_peers: usize,
    max_message: u32,
    next_token: usize,
    /// The grant words (credits on).
    credits: Option<CreditTable>,
    /// The posted count grants were last raised for (`u32::MAX`: raise at the next poll).
    last_posted: u32,
}

enum Control {
    Connected(PeerInfo),
    Refused {
        addr: Option<SocketAddr>,
        reason: String,
    },
    Gone(PeerInfo),
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("addr", &self.listener.local_addr())
            .field("peers", &self.peers.len())
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A builder listening on `addr` (an IP of an RDMA device; port 0 picks one), with
    /// buffers from `provider` (e.g. gdrx-providers' `HostProvider` or `HugePageProvider`).
    pub fn builder(addr: SocketAddr, provider: Arc<dyn Provider>) -> ReceiverBuilder {
        ReceiverBuilder::new(Bind::Addr(addr), provider)
    }

    /// A builder listening on `port` at the RoCE v2 address of RDMA device `device`.
    pub fn on_device(
        device: impl Into<String>,
        port: u16,
        provider: Arc<dyn Provider>,
    ) -> ReceiverBuilder {
        ReceiverBuilder::new(Bind::Device(device.into(), port), provider)
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The pool (stats, report, returner).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The PD, for registering the caller's own memory on the same device.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// Senders connected now.
    pub fn peers(&self) -> impl Iterator<Item = &PeerInfo> {
        self.peers.iter().map(|p| &p.info)
    }

    /// The largest message a sender may send (the Welcome's `recv_buf`).
    pub fn max_message(&self) -> u32 {
        self.max_message
    }

    /// Waits up to `timeout` (forever for `None`) for the next event. Connection events come
    /// in order with the messages: a peer's [`Event::Gone`] follows every batch holding its
    /// messages.
    ///
    /// # Errors
    /// The pool's errors; RDMA CM errors reading events or accepting; a failed epoll wait.
    /// Refused senders are events, not errors.
    pub fn next(&mut self, timeout: Option<Duration>) -> Result<Event<'_>> {
        let mut w = ReceiverWaiter {
            rx: self,
            last_cm: None,
        };
        if wait_for(&mut w, timeout)? == 0 {
            return Ok(Event::Timeout);
        }
        // Control events first: they were queued before the batch now waiting was gathered.
        Ok(match self.control.pop_front() {
            Some(Control::Connected(p)) => Event::Connected(p),
            Some(Control::Refused { addr, reason }) => Event::Refused { addr, reason },
            Some(Control::Gone(p)) => Event::Gone(p),
            None => {
                let posted = self.pool.posted();
                let batch = self.pool.take();
                if let Some(table) = &self.credits {
                    count_messages(&mut self.peers, batch.as_slice());
                    let starved = raise_grants(table, &mut self.peers, posted);
                    // A sender left without credit: top the queue up at the next poll.
                    self.last_posted = if starved { u32::MAX } else { posted };
                }
                Event::Batch(batch)
            }
        })
    }

    /// Raises the grants when the pool reposted since they were last raised.
    ///
    /// The pool reposts lazily (once fewer than its low watermark are posted), so a sender can
    /// be left with no credit while free slots wait to be posted: the grants a finished or idle
    /// sender holds keep the others from the posted receives. Then the queue is topped up now.
    fn grant_reposts(&mut self) -> Result<()> {
        let Some(table) = &self.credits else {
            return Ok(());
        };
        let posted = self.pool.posted();
        if posted == self.last_posted {
            return Ok(());
        }
        self.last_posted = posted;
        if raise_grants(table, &mut self.peers, posted) && self.pool.free() > 0 {
            self.pool.top_up()?;
            let posted = self.pool.posted();
            raise_grants(table, &mut self.peers, posted);
            self.last_posted = posted;
        }
        Ok(())
    }

    /// Moves peers seen leaving to the control queue: only once the pool has nothing left, so
    /// that a peer's `Gone` follows its last message. Returns the control events waiting.
    fn report_gone(&mut self) -> Result<usize> {
        let n = self.pool.gather()?;
        if n > 0 {
            return Ok(n);
        }
        let g = std::mem::take(&mut self.gone);
        self.control.extend(g.into_iter().map(Control::Gone));
        Ok(self.control.len())
    }

    /// Accepts or refuses pending requests and notices peers that left.
    fn check_cm(&mut self) -> Result<()> {
        while let Some(req) = self.listener.next_request(Some(Duration::ZERO))? {
            self.on_request(req)?;
        }
        let mut i = 0;
        while i < self.peers.len() {
            let mut left = false;
            while let Some(ev) = self.peers[i].conn.poll_event(Some(Duration::ZERO))? {
                if matches!(ev, ConnEvent::Disconnected | ConnEvent::DeviceRemoval) {
                    left = true;
                }
            }
            if left {
                let mut p = self.peers.swap_remove(i);
                if let (Some(t), Some(c)) = (self.credits.as_mut(), p.credit.take()) {
                    t.release(c);
                    // What it held goes to the others: raise their grants at the next poll.
                    self.last_posted = u32::MAX;
                }
                let fd = p.conn.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                tracing::info!(tag = p.info.tag, token = p.token.0, "peer gone");
                self.gone.push(p.info);
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    fn on_request(&mut self, req: ConnectRequest) -> Result<()> {
        let (max_peers, connected) = (self.max_peers, self.peers.len());
        let addr = req.peer_addr();
        let accept = &self.accept;
        // A word for the newcomer's grant, claimed before the Welcome that names it.
        let posted = self.pool.posted();
        let initial = CreditTable::initial(
            posted,
            Tally::of(self.peers.iter().filter_map(|p| p.credit.as_ref())),
        );
        let mut credit = self.credits.as_mut().and_then(|t| t.claim(initial));
        let word = credit.as_ref().map(|(_, w)| *w);
        let admission =
            admit_hello_with_credits(req.private_data(), self.max_message, word, |hello| {
                if connected >= max_peers {
                    return Err(format!(
                        "{max_peers} senders are connected already (max_peers)"
                    ));
                }
                if let Some(f) = accept {
                    f(hello, addr)?;
                }
                Ok(None)
            });
        let admitted = req.admit(&self.spec, admission);
        let give_back = |rx: &mut Receiver, c: &mut Option<(PeerCredit, _)>| {
            if let (Some(t), Some((c, _))) = (rx.credits.as_mut(), c.take()) {
                t.release(c);
            }
        };
        let (conn, hello) = match admitted {
            Ok(Admitted::Accepted(conn, hello)) => (conn, hello),
            Ok(Admitted::Refused(Refusal { addr, reason })) => {
                give_back(self, &mut credit);
                self.control.push_back(Control::Refused { addr, reason });
                return Ok(());
            }
            Err(e) => {
                // The handshake failed (the sender never completed it, went away, or its
                // request could not be served): that sender's loss, reported as a refusal,
                // not the receiver's error.
                give_back(self, &mut credit);
                let reason = format!("accepting it failed: {e}");
                tracing::warn!(?addr, "{reason}");
                self.control.push_back(Control::Refused { addr, reason });
                return Ok(());
            }
        };
        let token = Token(self.next_token);
        self.next_token += 1;
        let fd = conn.as_raw_fd();
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), token, Interest::READABLE)
            .map_err(|source| ReceiverError::Poll {
                op: "epoll_ctl(ADD)",
                source,
            })?;
        let info = PeerInfo {
            tag: hello.conn_tag,
            addr: conn.peer_addr(),
            qp_num: conn.qp().qp_num(),
        };
        self.peers.push(Peer {
            conn,
            info: info.clone(),
            token,
            credit: credit.map(|(c, _)| c),
        });
        self.control.push_back(Control::Connected(info));
        Ok(())
    }
}

/// [`Receiver::next`]'s attempts and waits, for the one blocking-poll loop of [`crate::wait`].
struct ReceiverWaiter<'a> {
    rx: &'a mut Receiver,
    /// When busy mode last looked at the CM channels.
    last_cm: Option<Instant>,
}

impl Waiter for ReceiverWaiter<'_> {
    type Error = ReceiverError;

    /// Control events waiting, else pool events, else (after looking at the CM channels) what
    /// that found.
    fn attempt(&mut self) -> Result<usize> {
        let rx = &mut *self.rx;
        if !rx.control.is_empty() {
            return Ok(rx.control.len());
        }
        let n = rx.pool.gather()?;
        if n > 0 {
            return Ok(n);
        }
        // Nothing arrived, but returned leases may have been reposted.
        rx.grant_reposts()?;
        if !rx.gone.is_empty() {
            return rx.report_gone();
        }
        let busy = !rx.cq.is_event_mode();
        if !busy || self.last_cm.is_none_or(|t| t.elapsed() >= BUSY_CM_INTERVAL) {
            self.last_cm = Some(Instant::now());
            rx.check_cm()?;
            if !rx.control.is_empty() {
                return Ok(rx.control.len());
            }
            if !rx.gone.is_empty() {
                return rx.report_gone();
            }
        }
        Ok(0)
    }

    /// Busy mode spins. Event mode arms, looks once more (a completion before the arm raises
    /// no event), then sleeps on the epoll set; returned leases need reposting while the
    /// consumer holds buffers, so it wakes up now and then.
    fn wait(&mut self, left: Option<Duration>) -> Result<usize> {
        let rx = &mut *self.rx;
        if !rx.cq.is_event_mode() {
            std::hint::spin_loop();
            return Ok(0);
        }
        rx.cq.arm()?;
        let n = rx.pool.gather()?;
        if n > 0 {
            return Ok(n);
        }
        let cap = if rx.pool.lent() > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(100)
        };
        let nap = left.map_or(cap, |l| l.min(cap));
        match rx.poll.poll(&mut rx.events, Some(nap)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ReceiverError::Poll {
                    op: "epoll_wait",
                    source,
                })
            }
        }
        if rx.events.iter().any(|e| e.token() == CQ) {
            while rx.cq.take_event()? {}
        }
        Ok(0)
    }
}

/// The epoll fd holding the CQ channel (event mode) and the CM channels: readable when
/// [`Receiver::next`] has something to do.
impl AsRawFd for Receiver {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

/// Counts each message of `events` against its sender (by QP number; a departed sender's late
/// messages count for nobody).
fn count_messages(peers: &mut [Peer], events: &[RecvEvent]) {
    let mut last = usize::MAX;
    for ev in events {
        let RecvEvent::Message(l) = ev else { continue };
        let q = l.qp_num();
        if peers.get(last).is_none_or(|p| p.info.qp_num != q) {
            match peers.iter().position(|p| p.info.qp_num == q) {
                Some(i) => last = i,
                None => continue,
            }
        }
        if let Some(c) = peers[last].credit.as_mut() {
            c.received += 1;
        }
    }
}

/// Raises each credited sender's grant towards its messages handed out plus its share of
/// `posted`, within what the grants outstanding leave of `posted` (see [`CreditTable::raise`]).
/// True when a sender is left with no credit.
fn raise_grants(table: &CreditTable, peers: &mut [Peer], posted: u32) -> bool {
    let tally = Tally::of(peers.iter().filter_map(|p| p.credit.as_ref()));
    table.raise(
        peers.iter_mut().filter_map(|p| p.credit.as_mut()),
        tally,
        posted,
    )
}

// The receiver moves to its polling thread.
/// The device names present, for an error message.
fn present_devices() -> String {
    match gdrx_verbs::device_names() {
        Ok(v) if !v.is_empty() => v.join(", "),
        _ => "none".to_owned(),
    }
}

const _: () = {
    const fn send<T: Send>() {}
    send::<Receiver>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_address_says_what_to_do() {
        let e = ReceiverError::NoAddress {
            device: "rxe0".into(),
        };
        assert!(e.to_string().contains("give the receiver an IP address"));
        let e = ReceiverError::NotRdmaAddress {
            ip: "127.0.0.1".parse().unwrap(),
            present: "rxe0".into(),
        };
        assert!(e
            .to_string()
            .starts_with("no RDMA device has the address 127.0.0.1 (devices present: rxe0)"));
    }
}
