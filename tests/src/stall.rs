//! A peer that starts RDMA CM's handshake and never finishes it: it sends its connect request,
//! takes the server's reply (REP), and never sends the ready-to-use message (RTU) that would
//! establish the connection, as a sender that hangs or dies mid-handshake does. The server's
//! accept waits for an ESTABLISHED event that never comes.
//!
//! Written with librdmacm directly, not with gdrx's `connect` (which always completes the
//! handshake): the CM id has no QP attached, so librdmacm does not send the RTU by itself on
//! CONNECT_RESPONSE, and this peer never calls `rdma_establish`.

use std::net::SocketAddr;
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use rdma_mummy_sys::{
    rdma_cm_event_type as ev, rdma_cm_id, rdma_conn_param, rdma_event_channel, rdma_port_space,
};

/// The stalled peer; dropping it destroys its CM id (the server may then see it go).
#[derive(Debug)]
pub struct Stalled {
    id: NonNull<rdma_cm_id>,
    channel: NonNull<rdma_event_channel>,
    /// Whether the server replied (CONNECT_RESPONSE) before this returned.
    pub replied: bool,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        // SAFETY: both were created by `stall` and are destroyed once, the id first.
        unsafe {
            rdma_mummy_sys::rdma_destroy_id(self.id.as_ptr());
            rdma_mummy_sys::rdma_destroy_event_channel(self.channel.as_ptr());
        }
    }
}

/// Waits up to `timeout` for the next event on `channel`; returns its type and status.
fn next_event(channel: NonNull<rdma_event_channel>, timeout: Duration) -> Option<(u32, i32)> {
    // SAFETY: a live channel; its fd is a plain file descriptor.
    let fd = unsafe { channel.as_ref().fd };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if r > 0 {
            let mut e = ptr::null_mut();
            // SAFETY: a live channel with an event ready; `e` is acknowledged below.
            if unsafe { rdma_mummy_sys::rdma_get_cm_event(channel.as_ptr(), &mut e) } != 0 {
                return None;
            }
            // SAFETY: `e` is the event just returned; read, then acknowledged once.
            let out = unsafe { ((*e).event, (*e).status) };
            // SAFETY: as above.
            unsafe { rdma_mummy_sys::rdma_ack_cm_event(e) };
            return Some(out);
        }
        if left.is_zero() {
            return None;
        }
    }
}

/// Sends a connect request with `private` to `dst` and stops after the server's reply (or
/// after `timeout` without one).
///
/// # Panics
/// When librdmacm fails to set the request up (no RDMA device, no route).
pub fn stall(dst: SocketAddr, private: &[u8], timeout: Duration) -> Stalled {
    // SAFETY: plain constructor; NULL on failure.
    let channel = NonNull::new(unsafe { rdma_mummy_sys::rdma_create_event_channel() })
        .expect("rdma_create_event_channel");
    let mut id = ptr::null_mut();
    // SAFETY: a live channel; `id` receives the new CM id.
    let ret = unsafe {
        rdma_mummy_sys::rdma_create_id(
            channel.as_ptr(),
            &mut id,
            ptr::null_mut(),
            rdma_port_space::RDMA_PS_TCP,
        )
    };
    assert_eq!(ret, 0, "rdma_create_id");
    let mut s = Stalled {
        id: NonNull::new(id).expect("a CM id"),
        channel,
        replied: false,
    };
    let mut dss = gdrx_core::cm::to_sockaddr(&dst);
    let ms = timeout.as_millis() as i32;
    // SAFETY: a live id; the sockaddr is valid for the call.
    let ret = unsafe {
        rdma_mummy_sys::rdma_resolve_addr(
            s.id.as_ptr(),
            ptr::null_mut(),
            (&mut dss as *mut libc::sockaddr_storage).cast(),
            ms,
        )
    };
    assert_eq!(ret, 0, "rdma_resolve_addr");
    assert_eq!(
        next_event(channel, timeout).map(|e| e.0),
        Some(ev::RDMA_CM_EVENT_ADDR_RESOLVED)
    );
    // SAFETY: a live id with a resolved address.
    let ret = unsafe { rdma_mummy_sys::rdma_resolve_route(s.id.as_ptr(), ms) };
    assert_eq!(ret, 0, "rdma_resolve_route");
    assert_eq!(
        next_event(channel, timeout).map(|e| e.0),
        Some(ev::RDMA_CM_EVENT_ROUTE_RESOLVED)
    );
    let mut p = rdma_conn_param {
        private_data: private.as_ptr().cast(),
        private_data_len: private.len() as u8,
        responder_resources: 1,
        initiator_depth: 1,
        flow_control: 0,
        retry_count: 7,
        rnr_retry_count: 7,
        srq: 0,
        // No QP: a number the server's QP will never hear from.
        qp_num: 0x00ab_cdef,
    };
    // SAFETY: a live id with a resolved route; `p` and the private data outlive the call.
    let ret = unsafe { rdma_mummy_sys::rdma_connect(s.id.as_ptr(), &mut p) };
    assert_eq!(ret, 0, "rdma_connect");
    // The server's reply; without a QP on the id librdmacm leaves the RTU to us, and we never
    // send it.
    s.replied =
        next_event(channel, timeout).map(|e| e.0) == Some(ev::RDMA_CM_EVENT_CONNECT_RESPONSE);
    s
}
