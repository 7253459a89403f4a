//! Owning wrappers over librdmacm objects (event channel, event, CM id), its errors and event
//! names, and the wait for one event.

use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use rdma_mummy_sys::{
    rdma_cm_event, rdma_cm_event_type as ev, rdma_cm_id, rdma_conn_param, rdma_event_channel,
    rdma_port_space,
};

use crate::error::{Error, Result};
use crate::sys::{set_nonblocking, wait_readable};

use super::address::from_sockaddr;

pub(crate) struct EventChannel {
    pub(crate) raw: NonNull<rdma_event_channel>,
}

impl EventChannel {
    pub(crate) fn new() -> Result<EventChannel> {
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
                               exist) and install librdmacm1 (in gdrx's repository: \
                               deploy/testbed.sh has all of it)",
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

    pub(crate) fn fd(&self) -> RawFd {
        // SAFETY: live channel; plain field.
        unsafe { self.raw.as_ref().fd }
    }

    /// The next event, waiting until `deadline` (forever when `None`); `None` on timeout.
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Result<Option<CmEvent>> {
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
pub(crate) struct CmEvent {
    raw: NonNull<rdma_cm_event>,
}

impl CmEvent {
    pub(crate) fn kind(&self) -> u32 {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().event }
    }

    pub(crate) fn status(&self) -> i32 {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().status }
    }

    pub(crate) fn id(&self) -> *mut rdma_cm_id {
        // SAFETY: live event; plain field.
        unsafe { self.raw.as_ref().id }
    }

    pub(crate) fn conn_param(&self) -> rdma_conn_param {
        // SAFETY: for connection events (the only ones we read it from) the union holds `conn`;
        // rdma_conn_param is plain data.
        unsafe { self.raw.as_ref().param.conn }
    }

    /// Copies the private data of a connection event.
    pub(crate) fn private_data(&self) -> Vec<u8> {
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

pub(crate) struct CmId {
    pub(crate) raw: NonNull<rdma_cm_id>,
}

impl CmId {
    pub(crate) fn new(ch: &EventChannel) -> Result<CmId> {
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

    pub(crate) fn ptr(&self) -> *mut rdma_cm_id {
        self.raw.as_ptr()
    }

    /// Name of the device the id is bound to (after bind to a specific address, address
    /// resolution, or a connect request).
    pub(crate) fn device_name(&self) -> Option<String> {
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

    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        // SAFETY: live id; the route's address union is plain data filled by librdmacm.
        unsafe { from_sockaddr(&self.raw.as_ref().route.addr.dst_addr_union.dst_storage) }
    }

    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
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

pub(crate) fn cm_err(op: &'static str, addr: Option<SocketAddr>) -> Error {
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

/// The name librdmacm gives an event type.
pub(crate) fn event_name(kind: u32) -> &'static str {
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

pub(crate) fn event_hint(kind: u32, status: i32) -> Option<&'static str> {
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

pub(crate) fn wait_for(
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
        let reply = if kind == ev::RDMA_CM_EVENT_REJECTED {
            reject_reply(&e.private_data())
        } else {
            None
        };
        return Err(Error::Connection {
            peer: peer.to_owned(),
            what,
            event: event_name(kind),
            status: e.status(),
            hint: event_hint(kind, e.status()),
            reply,
        });
    }
}

/// The text a peer put in its reject's private data: the bytes before the NUL padding, when
/// they are printable text (a gdrx receiver writes why it refused; other peers may send binary
/// data, shown as nothing rather than garbage).
pub(crate) fn reject_reply(private: &[u8]) -> Option<String> {
    let end = private.iter().rposition(|&b| b != 0)? + 1;
    let text = std::str::from_utf8(&private[..end]).ok()?;
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reject_reply_is_the_text_before_the_padding() {
        let mut data = b"gdrx: malformed hello".to_vec();
        data.resize(148, 0);
        assert_eq!(
            reject_reply(&data).as_deref(),
            Some("gdrx: malformed hello")
        );
        assert_eq!(reject_reply(&[0; 148]), None, "nothing said");
        assert_eq!(reject_reply(&[]), None);
        assert_eq!(reject_reply(&[0xff, 0xfe, 0, 0]), None, "not text");
        assert_eq!(reject_reply(&[1, 2, 3, 0]), None, "binary");
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
}
