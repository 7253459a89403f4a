//! RDMA CM connections: a [`Listener`] on IP:port that accepts many peers, a connector
//! ([`connect`]), and [`Connection`]s whose RC queue pairs can all draw receives from one SRQ.
//!
//! librdmacm's `rdma_create_qp` would create the QP on the CM's own verbs context; gdrx creates
//! it on the context of the [`Pd`] the caller chose (so one SRQ, CQ and set of MRs serve every
//! connection) and drives the INIT -> RTR -> RTS transitions itself, with attributes from
//! `rdma_init_qp_attr`. The RDMA CM only carries the handshake: addresses, route, QP numbers and
//! up to 56 (connect) / 196 (accept) bytes of private data each way. Private data arrives
//! zero-padded to those sizes, so messages carried in it must say their own length (see
//! [`crate::wire`]).
//!
//! Each accepted connection is migrated to its own event channel, so its disconnect events go to
//! its own fd and never block the listener. [`Connection`] moves its QP to the error state and
//! disconnects on drop; outstanding send work requests then complete with `WrFlush`.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys::{
    ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_state, rdma_cm_event, rdma_cm_event_type as ev,
    rdma_cm_id, rdma_conn_param, rdma_event_channel, rdma_port_space,
};

use crate::cq::Cq;
use crate::error::{Error, Result};
use crate::pd::Pd;
use crate::qp::{QpConfig, QueuePair};
use crate::srq::Srq;
use crate::sys::{set_nonblocking, wait_readable};

/// Most private data a connect request carries (RDMA CM, TCP port space).
pub const MAX_CONNECT_PRIVATE_DATA: usize = 56;
/// Most private data an accept carries.
pub const MAX_ACCEPT_PRIVATE_DATA: usize = 196;
/// Most private data a reject carries.
pub const MAX_REJECT_PRIVATE_DATA: usize = 148;

/// What to build for each connection: the QP's PD, CQs and SRQ, its sizes, and the transport's
/// retry behaviour.
#[derive(Debug, Clone)]
pub struct ConnectionSpec {
    /// PD the QP is created on (its device must be the one the address maps to).
    pub pd: Arc<Pd>,
    /// Send CQ.
    pub send_cq: Arc<Cq>,
    /// Receive CQ.
    pub recv_cq: Arc<Cq>,
    /// SRQ the QP takes receives from; `None` gives the QP its own receive queue.
    pub srq: Option<Arc<Srq>>,
    /// Queue sizes.
    pub qp: QpConfig,
    /// RNR NAK timer this side advertises, as the 5-bit IB encoding (12 = 0.64 ms, 14 = 1.28
    /// ms). When this side's receive queue is empty, the sender waits this long before retrying.
    pub min_rnr_timer: u8,
    /// How often this side's sends are retried after an RNR NAK (7 = forever). A receive path
    /// whose consumer may hold every buffer wants 7: senders stall instead of failing.
    pub rnr_retry: u8,
    /// Transport retries before `RetryExceeded` (0..=7).
    pub retry_count: u8,
    /// Outstanding RDMA READ/atomic operations this side initiates and accepts.
    pub rd_atomic: u8,
    /// How long each handshake step may take.
    pub timeout: Duration,
}

impl ConnectionSpec {
    /// A spec with gdrx's defaults: RNR retry forever, 0.64 ms RNR timer, 7 transport retries,
    /// 1 outstanding READ, 20 s per handshake step (soft-RoCE under emulation is slow).
    pub fn new(pd: &Arc<Pd>, send_cq: &Arc<Cq>, recv_cq: &Arc<Cq>, srq: Option<&Arc<Srq>>) -> Self {
        ConnectionSpec {
            pd: Arc::clone(pd),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
            srq: srq.cloned(),
            qp: QpConfig::default(),
            min_rnr_timer: 12,
            rnr_retry: 7,
            retry_count: 7,
            rd_atomic: 1,
            timeout: Duration::from_secs(20),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.min_rnr_timer > 31 {
            return Err(Error::InvalidConfig(format!(
                "min_rnr_timer {} is not a 5-bit IB encoding (0..=31)",
                self.min_rnr_timer
            )));
        }
        if self.rnr_retry > 7 || self.retry_count > 7 {
            return Err(Error::InvalidConfig(format!(
                "rnr_retry {} / retry_count {}: both are 3-bit (0..=7)",
                self.rnr_retry, self.retry_count
            )));
        }
        Ok(())
    }

    fn create_qp(&self) -> Result<QueuePair> {
        QueuePair::new_rc(
            &self.pd,
            &self.send_cq,
            &self.recv_cq,
            self.srq.as_ref(),
            self.qp,
        )
    }

    fn rd_atomic(&self) -> u8 {
        let max = self.pd.device().limits().max_qp_rd_atom.min(u8::MAX as u32) as u8;
        self.rd_atomic.min(max)
    }
}

// ---------------------------------------------------------------------------------------------
// Owning wrappers over librdmacm objects.

struct EventChannel {
    raw: NonNull<rdma_event_channel>,
}

impl EventChannel {
    fn new() -> Result<EventChannel> {
        // SAFETY: no preconditions.
        let raw = unsafe { rdma_mummy_sys::rdma_create_event_channel() };
        let raw = NonNull::new(raw).ok_or_else(|| {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODEV)
                | Some(libc::ENOENT)
                | Some(libc::EOPNOTSUPP)
                | Some(libc::ENOSYS) => Error::NoRdma {
                    reason: format!("the RDMA CM is unavailable ({e})"),
                    hint: "load rdma_ucm and an RDMA driver (/dev/infiniband/rdma_cm must \
                               exist) and install librdmacm1, or run inside deploy/testbed.sh",
                    source: Some(e),
                },
                _ => Error::Cm {
                    op: "rdma_create_event_channel",
                    addr: None,
                    source: e,
                    hint: None,
                },
            }
        })?;
        let ch = EventChannel { raw };
        set_nonblocking(ch.fd(), "fcntl(O_NONBLOCK) on the RDMA CM event channel")?;
        Ok(ch)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: live channel; plain field.
        unsafe { self.raw.as_ref().fd }
    }

    /// The next event, waiting until `deadline` (forever when `None`); `None` on timeout.
    fn next(&self, deadline: Option<Instant>) -> Result<Option<CmEvent>> {
        loop {
            let mut evp: *mut rdma_cm_event = ptr::null_mut();
            // SAFETY: live channel; out-pointer valid. The fd is non-blocking.
            let ret = unsafe { rdma_mummy_sys::rdma_get_cm_event(self.raw.as_ptr(), &mut evp) };
            if ret == 0 {
                // Success returns a non-null event we now own (acked by CmEvent::drop).
                if let Some(raw) = NonNull::new(evp) {
                    return Ok(Some(CmEvent { raw }));
                }
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Cm {
                    op: "rdma_get_cm_event",
                    addr: None,
                    source: e,
                    hint: None,
                });
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    None => return Ok(None),
                    Some(left) => Some(left.max(Duration::from_millis(1))),
                },
            };
            wait_readable(self.fd(), wait, "poll(RDMA CM event channel)")?;
        }
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id on the channel was destroyed first (field order in the owners).
        unsafe { rdma_mummy_sys::rdma_destroy_event_channel(self.raw.as_ptr()) };
    }
}

/// A received CM event; acknowledged on drop.
struct CmEvent {
    raw: NonNull<rdma_cm_event>,
}

impl CmEvent {
    fn kind(&self) -> u32 {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().event }
    }

    fn status(&self) -> i32 {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().status }
    }

    fn id(&self) -> *mut rdma_cm_id {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().id }
    }

    fn conn_param(&self) -> rdma_conn_param {
        // SAFETY: for connection events (the only ones we read it from) the union holds `conn`;
        // rdma_conn_param is plain data.
        unsafe { self.raw.as_ref().param.conn }
    }

    /// Copies the private data of a connection event.
    fn private_data(&self) -> Vec<u8> {
        let p = self.conn_param();
        if p.private_data.is_null() || p.private_data_len == 0 {
            return Vec::new();
        }
        // SAFETY: librdmacm guarantees `private_data_len` readable bytes while the event is not
        // acknowledged; we copy them out.
        unsafe {
            std::slice::from_raw_parts(p.private_data.cast::<u8>(), p.private_data_len as usize)
        }
        .to_vec()
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: the event came from rdma_get_cm_event and is acknowledged exactly once.
        unsafe { rdma_mummy_sys::rdma_ack_cm_event(self.raw.as_ptr()) };
    }
}

struct CmId {
    raw: NonNull<rdma_cm_id>,
}

impl CmId {
    fn new(ch: &EventChannel) -> Result<CmId> {
        let mut id: *mut rdma_cm_id = ptr::null_mut();
        // SAFETY: live channel; out-pointer valid; no user context.
        let ret = unsafe {
            rdma_mummy_sys::rdma_create_id(
                ch.raw.as_ptr(),
                &mut id,
                ptr::null_mut(),
                rdma_port_space::RDMA_PS_TCP,
            )
        };
        if ret != 0 {
            return Err(cm_err("rdma_create_id", None));
        }
        Ok(CmId {
            // SAFETY: success gives a non-null id.
            raw: unsafe { NonNull::new_unchecked(id) },
        })
    }

    fn ptr(&self) -> *mut rdma_cm_id {
        self.raw.as_ptr()
    }

    /// Name of the device the id is bound to (after bind to a specific address, address
    /// resolution, or a connect request).
    fn device_name(&self) -> Option<String> {
        // SAFETY: live id; `verbs` is set by librdmacm once bound and stays valid for the
        // process (librdmacm keeps its device contexts open).
        unsafe {
            let verbs = self.raw.as_ref().verbs;
            if verbs.is_null() {
                return None;
            }
            let name = rdma_mummy_sys::ibv_get_device_name((*verbs).device);
            if name.is_null() {
                return None;
            }
            Some(CStr::from_ptr(name).to_string_lossy().into_owned())
        }
    }

    fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: live id; the route's address union is plain data filled by librdmacm.
        unsafe { from_sockaddr(&self.raw.as_ref().route.addr.dst_addr_union.dst_storage) }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        // SAFETY: as above.
        unsafe { from_sockaddr(&self.raw.as_ref().route.addr.src_addr_union.src_storage) }
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: no QP is attached through librdmacm (we own QPs separately) and every event
        // for the id has been acknowledged (CmEvent values never outlive the function that read
        // them).
        let ret = unsafe { rdma_mummy_sys::rdma_destroy_id(self.raw.as_ptr()) };
        if ret != 0 {
            tracing::error!(err = %io::Error::last_os_error(), "rdma_destroy_id failed");
        }
    }
}

fn cm_err(op: &'static str, addr: Option<SocketAddr>) -> Error {
    let source = io::Error::last_os_error();
    let hint = match source.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            Some("the port is in use: pick another or stop the other listener")
        }
        Some(libc::EADDRNOTAVAIL) | Some(libc::ENODEV) => Some(
            "no RDMA device has this address: use an IP of an interface an RDMA device is bound \
             to (`rdma link show`, `ip addr`); RDMA CM does not work over `lo`",
        ),
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
            Some("no route from an RDMA device to this address")
        }
        _ => None,
    };
    Error::Cm {
        op,
        addr,
        source,
        hint,
    }
}

fn to_sockaddr(addr: &SocketAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain data; zeroes are valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            unsafe { ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
        }
    }
    ss
}

/// # Safety
/// `ss` must be a valid sockaddr_storage (any family).
unsafe fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in; storage is large and aligned enough.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says sockaddr_in6; storage is large and aligned enough.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// The name librdmacm gives an event type.
fn event_name(kind: u32) -> &'static str {
    match kind {
        ev::RDMA_CM_EVENT_ADDR_RESOLVED => "ADDR_RESOLVED",
        ev::RDMA_CM_EVENT_ADDR_ERROR => "ADDR_ERROR",
        ev::RDMA_CM_EVENT_ROUTE_RESOLVED => "ROUTE_RESOLVED",
        ev::RDMA_CM_EVENT_ROUTE_ERROR => "ROUTE_ERROR",
        ev::RDMA_CM_EVENT_CONNECT_REQUEST => "CONNECT_REQUEST",
        ev::RDMA_CM_EVENT_CONNECT_RESPONSE => "CONNECT_RESPONSE",
        ev::RDMA_CM_EVENT_CONNECT_ERROR => "CONNECT_ERROR",
        ev::RDMA_CM_EVENT_UNREACHABLE => "UNREACHABLE",
        ev::RDMA_CM_EVENT_REJECTED => "REJECTED",
        ev::RDMA_CM_EVENT_ESTABLISHED => "ESTABLISHED",
        ev::RDMA_CM_EVENT_DISCONNECTED => "DISCONNECTED",
        ev::RDMA_CM_EVENT_DEVICE_REMOVAL => "DEVICE_REMOVAL",
        ev::RDMA_CM_EVENT_ADDR_CHANGE => "ADDR_CHANGE",
        ev::RDMA_CM_EVENT_TIMEWAIT_EXIT => "TIMEWAIT_EXIT",
        _ => "OTHER",
    }
}

fn event_hint(kind: u32, status: i32) -> Option<&'static str> {
    Some(match kind {
        ev::RDMA_CM_EVENT_ADDR_ERROR | ev::RDMA_CM_EVENT_ROUTE_ERROR => {
            "no RDMA device reaches this address: connect to an IP of an interface an RDMA \
             device is bound to (for soft-RoCE, the interface given to `rdma link add`); RDMA CM \
             does not work over `lo`"
        }
        ev::RDMA_CM_EVENT_UNREACHABLE => {
            "the peer did not answer: is a listener running at that address and port, and is the \
             peer's port ACTIVE?"
        }
        ev::RDMA_CM_EVENT_REJECTED if status == 8 => {
            "nothing listens on that port (IB CM reject reason 8, invalid service id)"
        }
        ev::RDMA_CM_EVENT_REJECTED => {
            "the peer refused the connection (IB CM reject reason in `status`; 28 = rejected by \
             the application)"
        }
        ev::RDMA_CM_EVENT_CONNECT_ERROR => "the handshake failed after the peer answered",
        _ => return None,
    })
}

fn wait_for(
    ch: &EventChannel,
    want: u32,
    what: &'static str,
    peer: &str,
    timeout: Duration,
) -> Result<CmEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let Some(e) = ch.next(Some(deadline))? else {
            return Err(Error::Timeout {
                what,
                after: timeout,
            });
        };
        let kind = e.kind();
        if kind == want {
            return Ok(e);
        }
        if kind == ev::RDMA_CM_EVENT_ADDR_CHANGE || kind == ev::RDMA_CM_EVENT_TIMEWAIT_EXIT {
            tracing::debug!(
                event = event_name(kind),
                peer,
                "ignoring RDMA CM event while waiting for {what}"
            );
            continue;
        }
        return Err(Error::Connection {
            peer: peer.to_owned(),
            what,
            event: event_name(kind),
            status: e.status(),
            hint: event_hint(kind, e.status()),
        });
    }
}

fn check_private_len(len: usize, max: usize, what: &str) -> Result<()> {
    if len > max {
        return Err(Error::InvalidConfig(format!(
            "{len} bytes of {what} private data: RDMA CM carries at most {max}"
        )));
    }
    Ok(())
}

fn check_device(id: &CmId, spec: &ConnectionSpec, peer: &str) -> Result<()> {
    let pd_dev = spec.pd.device().name();
    match id.device_name() {
        Some(d) if d == pd_dev => Ok(()),
        Some(d) => Err(Error::DeviceMismatch {
            peer: peer.to_owned(),
            cm_device: d,
            pd_device: pd_dev.to_owned(),
        }),
        None => Err(Error::DeviceMismatch {
            peer: peer.to_owned(),
            cm_device: "<none>".to_owned(),
            pd_device: pd_dev.to_owned(),
        }),
    }
}

/// Moves `qp` to `state` with the attributes the RDMA CM computed, after `tweak`.
fn transition(
    id: &CmId,
    qp: &QueuePair,
    state: u32,
    verb: &'static str,
    tweak: impl FnOnce(&mut ibv_qp_attr, &mut i32),
) -> Result<()> {
    // SAFETY: plain data; zeroes valid.
    let mut attr: ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = state;
    let mut mask: i32 = 0;
    // SAFETY: live id; attr/mask are valid out-parameters.
    let ret = unsafe { rdma_mummy_sys::rdma_init_qp_attr(id.ptr(), &mut attr, &mut mask) };
    if ret != 0 {
        return Err(cm_err("rdma_init_qp_attr", id.peer_addr()));
    }
    tweak(&mut attr, &mut mask);
    // SAFETY: attributes as filled by rdma_init_qp_attr for this state, plus our adjustments
    // of fields whose mask bits we set.
    unsafe { qp.modify(&mut attr, mask, verb) }
}

fn to_init(id: &CmId, qp: &QueuePair) -> Result<()> {
    transition(
        id,
        qp,
        ibv_qp_state::IBV_QPS_INIT,
        "ibv_modify_qp(INIT)",
        |_, _| {},
    )
}

fn to_rtr_rts(
    id: &CmId,
    qp: &QueuePair,
    spec: &ConnectionSpec,
    responder_resources: u8,
) -> Result<()> {
    transition(
        id,
        qp,
        ibv_qp_state::IBV_QPS_RTR,
        "ibv_modify_qp(RTR)",
        |a, m| {
            a.min_rnr_timer = spec.min_rnr_timer;
            a.max_dest_rd_atomic = responder_resources;
            *m |= (ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER.0
                | ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC.0) as i32;
        },
    )?;
    transition(
        id,
        qp,
        ibv_qp_state::IBV_QPS_RTS,
        "ibv_modify_qp(RTS)",
        |a, m| {
            a.rnr_retry = spec.rnr_retry;
            a.retry_cnt = spec.retry_count;
            *m |= (ibv_qp_attr_mask::IBV_QP_RNR_RETRY.0 | ibv_qp_attr_mask::IBV_QP_RETRY_CNT.0)
                as i32;
        },
    )
}

fn conn_param(
    spec: &ConnectionSpec,
    qp: &QueuePair,
    private: &[u8],
    resp: u8,
    init: u8,
) -> rdma_conn_param {
    rdma_conn_param {
        private_data: if private.is_empty() {
            ptr::null()
        } else {
            private.as_ptr().cast()
        },
        private_data_len: private.len() as u8,
        responder_resources: resp,
        initiator_depth: init,
        // End-to-end credits make no sense with an SRQ.
        flow_control: u8::from(spec.srq.is_none()),
        retry_count: spec.retry_count,
        rnr_retry_count: spec.rnr_retry,
        srq: u8::from(spec.srq.is_some()),
        qp_num: qp.qp_num(),
    }
}

// ---------------------------------------------------------------------------------------------
// Listener, requests, connector, connections.

/// Listens for RDMA CM connection requests on one IP:port.
pub struct Listener {
    // Field order: the id is destroyed before its channel.
    id: CmId,
    channel: EventChannel,
    addr: SocketAddr,
}

// SAFETY: the listener's id and channel are only used through &mut self or by librdmacm calls
// that are thread-safe; the raw pointers are owned.
unsafe impl Send for Listener {}
// SAFETY: &self methods only read immutable fields.
unsafe impl Sync for Listener {}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish()
    }
}

impl Listener {
    /// Binds `addr` (an IP of an RDMA-capable interface, or the unspecified address for every
    /// device; port 0 picks a free port) and listens with `backlog` pending requests.
    ///
    /// # Errors
    /// [`Error::NoRdma`] when the RDMA CM is unavailable; [`Error::Cm`] when binding or listening
    /// fails (address not on an RDMA device, port in use).
    pub fn bind(addr: SocketAddr, backlog: i32) -> Result<Listener> {
        let channel = EventChannel::new()?;
        let id = CmId::new(&channel)?;
        let mut ss = to_sockaddr(&addr);
        // SAFETY: live id; ss holds a valid sockaddr of the right family.
        let ret = unsafe {
            rdma_mummy_sys::rdma_bind_addr(
                id.ptr(),
                (&mut ss as *mut libc::sockaddr_storage).cast(),
            )
        };
        if ret != 0 {
            return Err(cm_err("rdma_bind_addr", Some(addr)));
        }
        // SAFETY: live, bound id.
        let ret = unsafe { rdma_mummy_sys::rdma_listen(id.ptr(), backlog) };
        if ret != 0 {
            return Err(cm_err("rdma_listen", Some(addr)));
        }
        let bound = id.local_addr().unwrap_or(addr);
        Ok(Listener {
            id,
            channel,
            addr: bound,
        })
    }

    /// The bound address (with the port chosen when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device the listener is bound to (`None` when bound to the unspecified address).
    pub fn device_name(&self) -> Option<String> {
        self.id.device_name()
    }

    /// Waits up to `timeout` (forever for `None`) for a connection request. Returns `None` on
    /// timeout. Events other than requests (e.g. device removal) are logged and skipped.
    ///
    /// # Errors
    /// [`Error::Cm`] when reading events or migrating the new id fails.
    pub fn next_request(&mut self, timeout: Option<Duration>) -> Result<Option<ConnectRequest>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let Some(e) = self.channel.next(deadline)? else {
                return Ok(None);
            };
            if e.kind() != ev::RDMA_CM_EVENT_CONNECT_REQUEST {
                tracing::warn!(
                    event = event_name(e.kind()),
                    status = e.status(),
                    "listener: unexpected RDMA CM event"
                );
                if e.kind() == ev::RDMA_CM_EVENT_DEVICE_REMOVAL {
                    return Err(Error::Connection {
                        peer: self.addr.to_string(),
                        what: "the listener's device was removed",
                        event: "DEVICE_REMOVAL",
                        status: e.status(),
                        hint: None,
                    });
                }
                continue;
            }
            let param = e.conn_param();
            let private = e.private_data();
            // A CONNECT_REQUEST event carries a new id that we now own.
            let Some(raw) = NonNull::new(e.id()) else {
                continue;
            };
            let id = CmId { raw };
            drop(e); // ack before migrating: rdma_migrate_id waits for acknowledged events
            let channel = EventChannel::new()?;
            // SAFETY: live id and channel.
            let ret = unsafe { rdma_mummy_sys::rdma_migrate_id(id.ptr(), channel.raw.as_ptr()) };
            if ret != 0 {
                return Err(cm_err("rdma_migrate_id", id.peer_addr()));
            }
            let peer = id.peer_addr();
            return Ok(Some(ConnectRequest {
                device: id.device_name(),
                id,
                channel,
                peer,
                private,
                initiator_depth: param.initiator_depth,
                responder_resources: param.responder_resources,
            }));
        }
    }
}

impl AsRawFd for Listener {
    /// The event channel fd (non-blocking): readable when a request may be pending.
    fn as_raw_fd(&self) -> RawFd {
        self.channel.fd()
    }
}

/// A connection request, to accept or reject.
pub struct ConnectRequest {
    id: CmId,
    channel: EventChannel,
    peer: Option<SocketAddr>,
    private: Vec<u8>,
    device: Option<String>,
    initiator_depth: u8,
    responder_resources: u8,
}

impl fmt::Debug for ConnectRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectRequest")
            .field("peer", &self.peer)
            .field("device", &self.device)
            .field("private_len", &self.private.len())
            .finish()
    }
}

impl ConnectRequest {
    /// The private data the peer sent (zero-padded to the transport's size).
    pub fn private_data(&self) -> &[u8] {
        &self.private
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The device the request arrived on.
    pub fn device_name(&self) -> Option<&str> {
        self.device.as_deref()
    }

    fn peer_str(&self) -> String {
        self.peer.map_or_else(|| "?".to_owned(), |p| p.to_string())
    }

    /// Creates the QP from `spec`, brings it to RTS, accepts with `private_data` and waits for
    /// the connection to be established.
    ///
    /// # Errors
    /// [`Error::DeviceMismatch`] when the request arrived on another device than `spec.pd`'s
    /// (the request is rejected); [`Error::InvalidConfig`] for oversized private data; QP
    /// creation errors; [`Error::Connection`] / [`Error::Timeout`] when the handshake fails.
    pub fn accept(self, spec: &ConnectionSpec, private_data: &[u8]) -> Result<Connection> {
        spec.validate()?;
        check_private_len(private_data.len(), MAX_ACCEPT_PRIVATE_DATA, "accept")?;
        let peer = self.peer_str();
        if let Err(e) = check_device(&self.id, spec, &peer) {
            let _ = self.reject(b"");
            return Err(e);
        }
        let qp = spec.create_qp()?;
        let ours = spec.rd_atomic();
        let resp = self.initiator_depth.min(ours);
        let init = self.responder_resources.min(ours);
        to_init(&self.id, &qp)?;
        to_rtr_rts(&self.id, &qp, spec, resp)?;
        let mut p = conn_param(spec, &qp, private_data, resp, init);
        // SAFETY: live id; `p` and the private data it points to outlive the call.
        let ret = unsafe { rdma_mummy_sys::rdma_accept(self.id.ptr(), &mut p) };
        if ret != 0 {
            return Err(cm_err("rdma_accept", self.peer));
        }
        wait_for(
            &self.channel,
            ev::RDMA_CM_EVENT_ESTABLISHED,
            "ESTABLISHED after accept",
            &peer,
            spec.timeout,
        )?;
        Ok(Connection {
            qp: Arc::new(qp),
            id: self.id,
            channel: self.channel,
            peer: self.peer,
            peer_private: self.private,
            connected: true,
        })
    }

    /// Rejects the request, sending `private_data` (at most 148 bytes) to the peer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for oversized private data; [`Error::Cm`] when `rdma_reject`
    /// fails.
    pub fn reject(self, private_data: &[u8]) -> Result<()> {
        check_private_len(private_data.len(), MAX_REJECT_PRIVATE_DATA, "reject")?;
        let p = if private_data.is_empty() {
            ptr::null()
        } else {
            private_data.as_ptr().cast()
        };
        // SAFETY: live id; the private data outlives the call.
        let ret =
            unsafe { rdma_mummy_sys::rdma_reject(self.id.ptr(), p, private_data.len() as u8) };
        if ret != 0 {
            return Err(cm_err("rdma_reject", self.peer));
        }
        Ok(())
    }
}

/// Connects to a listener at `dst`, creating the QP from `spec` and sending `private_data` (at
/// most 56 bytes) with the request. `src` picks the local address (and so the device); `None`
/// lets the routing table choose.
///
/// # Errors
/// [`Error::Cm`] / [`Error::Connection`] with a hint when the address, route or peer cannot be
/// reached or the peer rejects; [`Error::DeviceMismatch`] when the route leaves through another
/// device than `spec.pd`'s; [`Error::Timeout`].
pub fn connect(
    dst: SocketAddr,
    src: Option<IpAddr>,
    spec: &ConnectionSpec,
    private_data: &[u8],
) -> Result<Connection> {
    spec.validate()?;
    check_private_len(private_data.len(), MAX_CONNECT_PRIVATE_DATA, "connect")?;
    let peer = dst.to_string();
    let channel = EventChannel::new()?;
    let id = CmId::new(&channel)?;
    let ms = spec.timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut dss = to_sockaddr(&dst);
    let mut sss = src.map(|ip| to_sockaddr(&SocketAddr::new(ip, 0)));
    let sp = sss.as_mut().map_or(ptr::null_mut(), |s| {
        (s as *mut libc::sockaddr_storage).cast()
    });
    // SAFETY: live id; sockaddrs valid for the call.
    let ret = unsafe {
        rdma_mummy_sys::rdma_resolve_addr(
            id.ptr(),
            sp,
            (&mut dss as *mut libc::sockaddr_storage).cast(),
            ms,
        )
    };
    if ret != 0 {
        return Err(cm_err("rdma_resolve_addr", Some(dst)));
    }
    drop(wait_for(
        &channel,
        ev::RDMA_CM_EVENT_ADDR_RESOLVED,
        "address resolution",
        &peer,
        spec.timeout,
    )?);
    // SAFETY: live id with a resolved address.
    let ret = unsafe { rdma_mummy_sys::rdma_resolve_route(id.ptr(), ms) };
    if ret != 0 {
        return Err(cm_err("rdma_resolve_route", Some(dst)));
    }
    drop(wait_for(
        &channel,
        ev::RDMA_CM_EVENT_ROUTE_RESOLVED,
        "route resolution",
        &peer,
        spec.timeout,
    )?);
    check_device(&id, spec, &peer)?;
    let qp = spec.create_qp()?;
    to_init(&id, &qp)?;
    let rd = spec.rd_atomic();
    let mut p = conn_param(spec, &qp, private_data, rd, rd);
    // SAFETY: live id with a resolved route; `p` and its private data outlive the call.
    let ret = unsafe { rdma_mummy_sys::rdma_connect(id.ptr(), &mut p) };
    if ret != 0 {
        return Err(cm_err("rdma_connect", Some(dst)));
    }
    let resp = wait_for(
        &channel,
        ev::RDMA_CM_EVENT_CONNECT_RESPONSE,
        "connect response",
        &peer,
        spec.timeout,
    )?;
    let peer_private = resp.private_data();
    let peer_param = resp.conn_param();
    drop(resp);
    let setup = to_rtr_rts(&id, &qp, spec, peer_param.initiator_depth.min(rd));
    if let Err(e) = setup {
        // SAFETY: live id; tells the peer we give up.
        unsafe { rdma_mummy_sys::rdma_reject(id.ptr(), ptr::null(), 0) };
        return Err(e);
    }
    // SAFETY: live id after CONNECT_RESPONSE, QP in RTS.
    let ret = unsafe { rdma_mummy_sys::rdma_establish(id.ptr()) };
    if ret != 0 {
        return Err(cm_err("rdma_establish", Some(dst)));
    }
    Ok(Connection {
        qp: Arc::new(qp),
        id,
        channel,
        peer: Some(dst),
        peer_private,
        connected: true,
    })
}

/// Something that happened to an established connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// The peer disconnected (or went away and the CM noticed): the QP is now in the error
    /// state and outstanding work requests flush.
    Disconnected,
    /// The device was removed.
    DeviceRemoval,
    /// The time-wait period after a disconnect ended; the QP number may be reused.
    TimewaitExit,
    /// Another event, by name.
    Other(&'static str),
}

/// An established RC connection.
pub struct Connection {
    // Field order: QP destroyed before the CM id, the id before its channel.
    qp: Arc<QueuePair>,
    id: CmId,
    channel: EventChannel,
    peer: Option<SocketAddr>,
    peer_private: Vec<u8>,
    connected: bool,
}

// SAFETY: the CM id and channel are touched only through &mut self methods (and Drop); the QP is
// Send + Sync itself.
unsafe impl Send for Connection {}
// SAFETY: &self methods only read plain fields or use the (Sync) QP.
unsafe impl Sync for Connection {}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("qp", &self.qp)
            .field("connected", &self.connected)
            .finish()
    }
}

impl Connection {
    /// The queue pair.
    pub fn qp(&self) -> &QueuePair {
        &self.qp
    }

    /// The queue pair, shared: for a [`crate::Pool`] that feeds this QP's own receive queue
    /// ([`crate::Pool::for_qp`]). The QP may outlive the connection; it is in the error state
    /// once the connection is gone.
    pub fn shared_qp(&self) -> Arc<QueuePair> {
        Arc::clone(&self.qp)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The private data the peer sent in the handshake (its connect request, or its accept).
    pub fn peer_private_data(&self) -> &[u8] {
        &self.peer_private
    }

    /// True until a disconnect was seen or made.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Waits up to `timeout` for a connection event; `None` when there was none.
    ///
    /// # Errors
    /// [`Error::Cm`] when reading the event channel fails.
    pub fn poll_event(&mut self, timeout: Option<Duration>) -> Result<Option<ConnEvent>> {
        let deadline = Some(Instant::now() + timeout.unwrap_or(Duration::ZERO));
        let Some(e) = self.channel.next(deadline)? else {
            return Ok(None);
        };
        let out = match e.kind() {
            ev::RDMA_CM_EVENT_DISCONNECTED => {
                self.connected = false;
                // The CM does not touch a QP it did not create: flush ours.
                if let Err(err) = self.qp.set_error() {
                    tracing::warn!(error = %err, "moving QP to error after disconnect failed");
                }
                ConnEvent::Disconnected
            }
            ev::RDMA_CM_EVENT_DEVICE_REMOVAL => {
                self.connected = false;
                ConnEvent::DeviceRemoval
            }
            ev::RDMA_CM_EVENT_TIMEWAIT_EXIT => ConnEvent::TimewaitExit,
            k => ConnEvent::Other(event_name(k)),
        };
        Ok(Some(out))
    }

    /// Moves the QP to the error state (outstanding work requests flush) and sends a disconnect
    /// request to the peer.
    ///
    /// # Errors
    /// [`Error::Verbs`] / [`Error::Cm`] when either step fails (both are attempted).
    pub fn disconnect(&mut self) -> Result<()> {
        if !self.connected {
            return Ok(());
        }
        self.connected = false;
        let qp_res = self.qp.set_error();
        // SAFETY: live id.
        let ret = unsafe { rdma_mummy_sys::rdma_disconnect(self.id.ptr()) };
        let cm_res = if ret != 0 {
            let e = io::Error::last_os_error();
            // EINVAL: the peer already disconnected.
            if e.raw_os_error() == Some(libc::EINVAL) {
                Ok(())
            } else {
                Err(Error::Cm {
                    op: "rdma_disconnect",
                    addr: self.peer,
                    source: e,
                    hint: None,
                })
            }
        } else {
            Ok(())
        };
        qp_res.and(cm_res)
    }
}

impl AsRawFd for Connection {
    /// The connection's own RDMA CM event fd (non-blocking): readable when
    /// [`Connection::poll_event`] has something.
    fn as_raw_fd(&self) -> RawFd {
        self.channel.fd()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Err(e) = self.disconnect() {
            tracing::debug!(error = %e, "disconnect during drop");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;

    #[test]
    fn sockaddr_roundtrip() {
        for s in ["10.77.0.1:7471", "[fe80::1]:9", "0.0.0.0:0"] {
            let a: SocketAddr = s.parse().unwrap();
            let ss = to_sockaddr(&a);
            // SAFETY: built by to_sockaddr.
            assert_eq!(unsafe { from_sockaddr(&ss) }, Some(a));
        }
        // SAFETY: zeroed storage is valid (family AF_UNSPEC).
        let z: libc::sockaddr_storage = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: valid storage.
        assert_eq!(unsafe { from_sockaddr(&z) }, None);
    }

    #[test]
    fn event_names_and_hints() {
        assert_eq!(event_name(ev::RDMA_CM_EVENT_REJECTED), "REJECTED");
        assert!(event_hint(ev::RDMA_CM_EVENT_REJECTED, 8)
            .unwrap()
            .contains("nothing listens"));
        assert!(event_hint(ev::RDMA_CM_EVENT_ADDR_ERROR, -19)
            .unwrap()
            .contains("lo"));
        assert!(event_hint(ev::RDMA_CM_EVENT_ESTABLISHED, 0).is_none());
    }

    #[test]
    fn private_data_limits() {
        assert!(check_private_len(56, MAX_CONNECT_PRIVATE_DATA, "connect").is_ok());
        let e = check_private_len(57, MAX_CONNECT_PRIVATE_DATA, "connect").unwrap_err();
        assert!(e.to_string().contains("at most 56"), "{e}");
    }
}
