//! Device async events: port state changes, the SRQ low-watermark, QP, CQ and device errors.
//!
//! Every opened [`Device`] has an async event fd (non-blocking, usable with epoll/poll).
//! [`Device::take_async_event`] reads one event and acknowledges it at once, so destroying the
//! object it names never blocks on an unacknowledged event.

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::sys::{set_nonblocking, wait_readable};

/// Identifies a verbs object (an SRQ) an event refers to; compare with [`crate::Srq::object_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId(pub(crate) usize);

/// An asynchronous event of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsyncEvent {
    /// The port became ACTIVE.
    PortActive {
        /// Port number.
        port: u8,
    },
    /// The port left the ACTIVE state (link down): connections through it stop.
    PortError {
        /// Port number.
        port: u8,
    },
    /// The port's GID table changed (an address was added or removed).
    GidChange {
        /// Port number.
        port: u8,
    },
    /// Another port event (LID, P_Key, SM change, client reregister).
    PortOther {
        /// Port number.
        port: u8,
        /// The raw event type.
        code: u32,
    },
    /// An SRQ armed with [`crate::Srq::set_limit`] fell below its limit.
    SrqLimitReached {
        /// The SRQ.
        srq: ObjectId,
    },
    /// An SRQ hit an error and can no longer be used.
    SrqError {
        /// The SRQ.
        srq: ObjectId,
    },
    /// A QP event: fatal error, request/access error, communication established, last WQE
    /// reached, send queue drained, path migration.
    Qp {
        /// The QP number.
        qp_num: u32,
        /// Which event.
        kind: QpEventKind,
    },
    /// A CQ overran or hit an error.
    CqError,
    /// The device hit a fatal error and must be closed.
    DeviceFatal,
    /// An event type this version does not know.
    Other {
        /// The raw event type.
        code: u32,
    },
}

/// Which QP event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QpEventKind {
    /// Catastrophic QP error: the QP is in the error state.
    Fatal,
    /// Invalid request error.
    RequestError,
    /// Access violation.
    AccessError,
    /// Communication established (first packet on an RTR QP).
    CommEstablished,
    /// Send queue drained.
    SqDrained,
    /// Path migrated / migration error.
    PathMigration,
    /// Last WQE reached (an SRQ-attached QP in error has no more receives in flight).
    LastWqeReached,
}

impl fmt::Display for AsyncEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsyncEvent::PortActive { port } => write!(f, "port {port} active"),
            AsyncEvent::PortError { port } => write!(f, "port {port} down"),
            AsyncEvent::GidChange { port } => write!(f, "port {port} GID table changed"),
            AsyncEvent::PortOther { port, code } => write!(f, "port {port} event {code}"),
            AsyncEvent::SrqLimitReached { .. } => f.write_str("SRQ limit reached"),
            AsyncEvent::SrqError { .. } => f.write_str("SRQ error"),
            AsyncEvent::Qp { qp_num, kind } => write!(f, "QP {qp_num:#x}: {kind:?}"),
            AsyncEvent::CqError => f.write_str("CQ error"),
            AsyncEvent::DeviceFatal => f.write_str("device fatal error"),
            AsyncEvent::Other { code } => write!(f, "async event {code}"),
        }
    }
}

/// `struct ibv_async_event` read as plain integers: the element union (pointers or a port
/// number) and the event type as a `u32`, so an event code this build does not know cannot
/// produce an invalid Rust enum value. The element is zeroed before the call, so a port number
/// (a C `int`) reads back correctly from the low bytes on this little-endian target.
#[repr(C)]
struct RawAsyncEvent {
    element: usize,
    event_type: u32,
}

#[cfg(not(target_endian = "little"))]
compile_error!("RawAsyncEvent reads the port number from the low bytes of the element union");

const _: () = {
    assert!(
        std::mem::size_of::<RawAsyncEvent>()
            == std::mem::size_of::<rdma_mummy_sys::ibv_async_event>()
    );
    assert!(
        std::mem::align_of::<RawAsyncEvent>()
            == std::mem::align_of::<rdma_mummy_sys::ibv_async_event>()
    );
};

impl Device {
    /// The async event fd (non-blocking), for epoll/poll.
    pub fn async_event_fd(&self) -> RawFd {
        // SAFETY: the context is alive while `self` is; async_fd is a plain field.
        unsafe { (*self.raw_context()).async_fd }
    }

    pub(crate) fn set_async_nonblocking(&self) -> Result<()> {
        set_nonblocking(
            self.async_event_fd(),
            "fcntl(O_NONBLOCK) on the async event fd",
        )
    }

    /// Reads and acknowledges one pending async event, without blocking.
    ///
    /// # Errors
    /// [`Error::Verbs`] when `ibv_get_async_event` fails for another reason than "no event".
    pub fn take_async_event(&self) -> Result<Option<AsyncEvent>> {
        let mut raw = RawAsyncEvent {
            element: 0,
            event_type: 0,
        };
        let p = (&mut raw as *mut RawAsyncEvent).cast::<rdma_mummy_sys::ibv_async_event>();
        // SAFETY: `raw` has the size and alignment of ibv_async_event (checked above) and the
        // context is alive. The fd is non-blocking.
        let ret = unsafe { rdma_mummy_sys::ibv_get_async_event(self.raw_context(), p) };
        if ret != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(Error::verb("ibv_get_async_event", self.name(), e));
        }
        let code = raw.event_type;
        let port = raw.element as u32 as u8;
        let qp_num = || {
            // SAFETY: for QP events the element is the ibv_qp, alive until acknowledged below.
            unsafe { (*(raw.element as *const rdma_mummy_sys::ibv_qp)).qp_num }
        };
        let qp = |kind| AsyncEvent::Qp {
            qp_num: qp_num(),
            kind,
        };
        let ev = match code {
            0 => AsyncEvent::CqError,
            1 => qp(QpEventKind::Fatal),
            2 => qp(QpEventKind::RequestError),
            3 => qp(QpEventKind::AccessError),
            4 => qp(QpEventKind::CommEstablished),
            5 => qp(QpEventKind::SqDrained),
            6 | 7 => qp(QpEventKind::PathMigration),
            8 => AsyncEvent::DeviceFatal,
            9 => AsyncEvent::PortActive { port },
            10 => AsyncEvent::PortError { port },
            11..=13 | 17 | 20 => AsyncEvent::PortOther { port, code },
            14 => AsyncEvent::SrqError {
                srq: ObjectId(raw.element),
            },
            15 => AsyncEvent::SrqLimitReached {
                srq: ObjectId(raw.element),
            },
            16 => qp(QpEventKind::LastWqeReached),
            18 => AsyncEvent::GidChange { port },
            _ => AsyncEvent::Other { code },
        };
        // SAFETY: the event was returned by ibv_get_async_event and is acknowledged once.
        unsafe { rdma_mummy_sys::ibv_ack_async_event(p) };
        Ok(Some(ev))
    }

    /// Waits up to `timeout` (forever for `None`) for an async event.
    ///
    /// # Errors
    /// [`Error::Os`] when poll(2) fails; as [`Device::take_async_event`].
    pub fn wait_async_event(&self, timeout: Option<Duration>) -> Result<Option<AsyncEvent>> {
        if let Some(e) = self.take_async_event()? {
            return Ok(Some(e));
        }
        if !wait_readable(self.async_event_fd(), timeout, "poll(async event fd)")? {
            return Ok(None);
        }
        self.take_async_event()
    }
}
