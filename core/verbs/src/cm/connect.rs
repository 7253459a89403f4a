//! The active side ([`connect`]), the QP transitions both sides drive, and established
//! [`Connection`]s.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys::{
    ibv_qp_attr, ibv_qp_attr_mask, ibv_qp_state, rdma_cm_event_type as ev, rdma_conn_param,
};

use crate::error::{Error, Result};
use crate::qp::QueuePair;

use super::address::to_sockaddr;
use super::raw::{cm_err, event_name, wait_for, CmId, EventChannel};
use super::{check_private_len, ConnectionSpec, MAX_CONNECT_PRIVATE_DATA};

pub(crate) fn check_device(id: &CmId, spec: &ConnectionSpec, peer: &str) -> Result<()> {
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
pub(crate) fn transition(
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

pub(crate) fn to_init(id: &CmId, qp: &QueuePair) -> Result<()> {
    transition(
        id,
        qp,
        ibv_qp_state::IBV_QPS_INIT,
        "ibv_modify_qp(INIT)",
        |_, _| {},
    )
}

pub(crate) fn to_rtr_rts(
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

pub(crate) fn conn_param(
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
    let rd = spec.effective_rd_atomic();
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
    pub(crate) qp: Arc<QueuePair>,
    pub(crate) id: CmId,
    pub(crate) channel: EventChannel,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) peer_private: Vec<u8>,
    pub(crate) connected: bool,
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

    /// The queue pair, shared: for a pool (`gdrx_pool::Pool`) that feeds this QP's own receive queue
    /// (`Pool::for_qp`). The QP may outlive the connection; it is in the error state
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
