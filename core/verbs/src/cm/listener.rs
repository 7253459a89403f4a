//! The passive side: a [`Listener`] on IP:port and the [`ConnectRequest`]s it yields.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_mummy_sys::rdma_cm_event_type as ev;

use crate::error::{Error, Result};
use crate::qp::QueuePair;

use super::address::to_sockaddr;
use super::connect::{check_device, conn_param, to_init, to_rtr_rts, Connection};
use super::raw::{cm_err, event_name, wait_for, CmId, EventChannel};
use super::{check_private_len, ConnectionSpec, MAX_ACCEPT_PRIVATE_DATA, MAX_REJECT_PRIVATE_DATA};

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
                        reply: None,
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
        check_private_len(private_data.len(), MAX_ACCEPT_PRIVATE_DATA, "accept")?;
        self.accept_with(spec, |_| Ok(private_data.to_vec()))
    }

    /// As [`ConnectRequest::accept`], with the private data made by `before` from the QP once
    /// it is ready to send and before the peer learns of the acceptance: the place to bind a
    /// memory window to the QP ([`QueuePair::bind_window`]) and advertise it, so that it is
    /// valid before the peer can write.
    ///
    /// # Errors
    /// As [`ConnectRequest::accept`], and those of `before` (the request is then rejected).
    pub fn accept_with(
        self,
        spec: &ConnectionSpec,
        before: impl FnOnce(&Arc<QueuePair>) -> Result<Vec<u8>>,
    ) -> Result<Connection> {
        spec.validate()?;
        let peer = self.peer_str();
        if let Err(e) = check_device(&self.id, spec, &peer) {
            let _ = self.reject(b"");
            return Err(e);
        }
        // Shared from the start: a memory window `before` binds holds the QP too, so the QP
        // outlives the window even when this accept fails.
        let qp = Arc::new(spec.create_qp()?);
        let ours = spec.effective_rd_atomic();
        let resp = self.initiator_depth.min(ours);
        let init = self.responder_resources.min(ours);
        to_init(&self.id, &qp)?;
        to_rtr_rts(&self.id, &qp, spec, resp)?;
        let private_data = match before(&qp)
            .and_then(|p| check_private_len(p.len(), MAX_ACCEPT_PRIVATE_DATA, "accept").map(|()| p))
        {
            Ok(p) => p,
            Err(e) => {
                let _ = self.reject(b"");
                return Err(e);
            }
        };
        let mut p = conn_param(spec, &qp, &private_data, resp, init);
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
            qp,
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
