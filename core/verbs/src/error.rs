//! Typed errors for every gdrx-core operation.
//!
//! Each failing verb gives an [`Error`] that names the verb, the device, the OS error and, where
//! one is known, what the user can do about it. Errors on the data path ([`WcError`] for failed
//! work completions, [`PostError`] for rejected posts) are `Copy` and never allocate.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use rdma_mummy_sys::{ibv_wc_opcode, ibv_wc_status};

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error gdrx-core returns outside the data path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libibverbs could not be loaded, or the kernel has no RDMA support at all.
    #[error("RDMA is not available on this machine: {reason}; {hint}")]
    NoRdma {
        /// What was found missing.
        reason: String,
        /// What to do about it.
        hint: &'static str,
        /// The OS error, when there was one.
        #[source]
        source: Option<io::Error>,
    },

    /// The named device does not exist.
    #[error("RDMA device `{name}` not found (devices present: {}); {hint}", list_or_none(.available))]
    DeviceNotFound {
        /// The name that was asked for.
        name: String,
        /// The devices that do exist.
        available: Vec<String>,
        /// What to do about it.
        hint: &'static str,
    },

    /// The port is not ACTIVE, so no connection can be made through it.
    #[error(
        "port {port} of RDMA device `{device}` is {state}, not ACTIVE; {}",
        port_down_hint(.netdev)
    )]
    PortDown {
        /// Device name.
        device: String,
        /// Port number (1-based).
        port: u8,
        /// The state the port is in.
        state: &'static str,
        /// The network interface the port runs over (RoCE), when known.
        netdev: Option<String>,
    },

    /// A verb failed with an OS error.
    #[error("{verb} failed on `{device}`: {source}{}", hint_suffix(.hint))]
    Verbs {
        /// The verb that failed, e.g. `ibv_create_srq`.
        verb: &'static str,
        /// Device name.
        device: String,
        /// The errno the verb returned.
        #[source]
        source: io::Error,
        /// What to do about it, when known.
        hint: Option<&'static str>,
    },

    /// Memory could not be pinned for the NIC (ENOMEM from an MR registration).
    #[error(
        "{verb} could not pin {len} bytes on `{device}`: {source}; RLIMIT_MEMLOCK is {limit}: \
         raise it (`ulimit -l unlimited`, LimitMEMLOCK=infinity for a systemd service, \
         `--ulimit memlock=-1` for a container) or register less memory"
    )]
    MemoryLock {
        /// The verb that failed.
        verb: &'static str,
        /// Device name.
        device: String,
        /// Bytes that were being registered.
        len: usize,
        /// The limit in effect when the registration failed.
        limit: MemlockLimit,
        /// The errno (ENOMEM).
        #[source]
        source: io::Error,
    },

    /// The device, driver or kernel does not support an operation (EOPNOTSUPP and friends).
    #[error("{what} is not supported by `{device}`: {reason}; {hint}")]
    Unsupported {
        /// What was attempted, e.g. `dma-buf memory registration`.
        what: &'static str,
        /// Device name.
        device: String,
        /// Why it is unsupported.
        reason: String,
        /// What to do about it.
        hint: &'static str,
        /// The OS error, when there was one.
        #[source]
        source: Option<io::Error>,
    },

    /// A configuration value is out of range for the device or otherwise inconsistent.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A work request completed with an error status.
    #[error(transparent)]
    Completion(#[from] WcError),

    /// A post to a send or receive queue was refused.
    #[error(transparent)]
    Post(#[from] PostError),

    /// An RDMA CM call failed.
    #[error("RDMA CM {op}{} failed: {source}{}", addr_suffix(.addr), hint_suffix(.hint))]
    Cm {
        /// The librdmacm call, e.g. `rdma_resolve_addr`.
        op: &'static str,
        /// The address involved, when there is one.
        addr: Option<SocketAddr>,
        /// The errno.
        #[source]
        source: io::Error,
        /// What to do about it, when known.
        hint: Option<&'static str>,
    },

    /// Connection establishment failed on an RDMA CM event.
    #[error(
        "connection {peer}: {what} (RDMA CM event {event}, status {status}){}{}",
        reply_suffix(.reply),
        hint_suffix(.hint)
    )]
    Connection {
        /// The peer address, or `?` when unknown.
        peer: String,
        /// What went wrong.
        what: &'static str,
        /// The RDMA CM event that was received.
        event: &'static str,
        /// The event's status field (a negative errno, or an IB CM reject reason).
        status: i32,
        /// What to do about it, when known.
        hint: Option<&'static str>,
        /// What the peer said in its reject's private data, when it said anything (a gdrx
        /// receiver says why it refused).
        reply: Option<String>,
    },

    /// A connection arrived on (or resolved to) a device other than the one the PD lives on.
    #[error(
        "connection {peer} uses RDMA device `{cm_device}`, but its queue pair would be created on \
         `{pd_device}`; bind or connect to an IP address of `{pd_device}`"
    )]
    DeviceMismatch {
        /// The peer address.
        peer: String,
        /// The device the RDMA CM picked for the address.
        cm_device: String,
        /// The device the protection domain belongs to.
        pd_device: String,
    },

    /// Waiting for an event took too long.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// How long was waited.
        after: Duration,
    },

    /// Bytes received from a peer do not parse.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Why it does not parse.
        #[source]
        reason: gdrx_wire::WireError,
    },

    /// An OS call outside libibverbs failed (mmap, poll, fcntl...).
    #[error("{op} failed: {source}")]
    Os {
        /// The call that failed.
        op: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// [`Error::Malformed`]: the handshake bytes of `what` (e.g. "connect request private data")
    /// do not parse.
    pub fn malformed(what: &'static str, reason: gdrx_wire::WireError) -> Error {
        Error::Malformed { what, reason }
    }

    /// The errno behind this error, if it carries one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Verbs { source, .. }
            | Error::MemoryLock { source, .. }
            | Error::Cm { source, .. }
            | Error::Os { source, .. } => source.raw_os_error(),
            Error::Unsupported { source, .. } | Error::NoRdma { source, .. } => {
                source.as_ref().and_then(io::Error::raw_os_error)
            }
            Error::Post(p) => Some(p.errno),
            _ => None,
        }
    }

    /// True for [`Error::Unsupported`].
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }

    /// Builds the error for a failed verb from its errno, choosing the variant by errno:
    /// EOPNOTSUPP/EPROTONOSUPPORT become [`Error::Unsupported`]; everything else becomes
    /// [`Error::Verbs`] with a hint for the common errnos.
    pub(crate) fn verb(verb: &'static str, device: &str, source: io::Error) -> Error {
        let errno = source.raw_os_error().unwrap_or(0);
        if errno == libc::EOPNOTSUPP || errno == libc::EPROTONOSUPPORT {
            return Error::Unsupported {
                what: verb,
                device: device.to_owned(),
                reason: format!("the provider returned {source}"),
                hint: "check the device's capabilities (`gdrx` capability report) and the kernel \
                       and rdma-core versions",
                source: Some(source),
            };
        }
        let hint = match errno {
            libc::EINVAL => Some(
                "an attribute is out of range for this device: compare the request with the \
                 device's capability report",
            ),
            libc::ENOMEM => Some(
                "the device or the kernel ran out of resources: lower queue depths, or raise \
                 RLIMIT_MEMLOCK if memory is being pinned",
            ),
            libc::EPERM | libc::EACCES => Some(
                "permission denied: check RLIMIT_MEMLOCK and access to /dev/infiniband/uverbs*",
            ),
            libc::ENODEV | libc::ENXIO => {
                Some("the device went away (module unloaded or link removed)")
            }
            libc::EAGAIN => Some("the queue is full: poll completions before posting more"),
            _ => None,
        };
        Error::Verbs {
            verb,
            device: device.to_owned(),
            source,
            hint,
        }
    }

    /// [`Error::verb`] with `errno` taken from the thread's last OS error.
    pub(crate) fn last_verb(verb: &'static str, device: &str) -> Error {
        Error::verb(verb, device, io::Error::last_os_error())
    }

    /// [`Error::verb`] for verbs that return a positive errno instead of setting `errno`.
    pub(crate) fn verb_ret(verb: &'static str, device: &str, ret: i32) -> Error {
        // Some providers return -errno, some +errno, some -1 with errno set.
        let errno = if ret == -1 {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            ret.abs()
        };
        Error::verb(verb, device, io::Error::from_raw_os_error(errno))
    }

    pub(crate) fn os(op: &'static str) -> Error {
        Error::Os {
            op,
            source: io::Error::last_os_error(),
        }
    }
}

fn port_down_hint(netdev: &Option<String>) -> String {
    match netdev {
        Some(n) => format!(
            "its network interface `{n}` is down or has no carrier: check `ip link show {n}` \
             (cable, switch port, or the veth/bond peer) and `rdma link show`"
        ),
        None => "bring its network interface up and check `rdma link show`".to_owned(),
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

fn hint_suffix(h: &Option<&'static str>) -> String {
    match h {
        Some(h) => format!("; {h}"),
        None => String::new(),
    }
}

fn reply_suffix(r: &Option<String>) -> String {
    match r {
        Some(r) => format!("; the peer said: {r}"),
        None => String::new(),
    }
}

fn addr_suffix(a: &Option<SocketAddr>) -> String {
    match a {
        Some(a) => format!(" ({a})"),
        None => String::new(),
    }
}

/// RLIMIT_MEMLOCK as it was read when an error was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimit {
    /// Soft limit in bytes; `None` means unlimited.
    pub soft: Option<u64>,
    /// Hard limit in bytes; `None` means unlimited.
    pub hard: Option<u64>,
}

impl MemlockLimit {
    /// Reads the calling process's RLIMIT_MEMLOCK.
    pub fn current() -> Option<MemlockLimit> {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a valid, writable rlimit struct for the duration of the call.
        let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
        if ret != 0 {
            return None;
        }
        let conv = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
        Some(MemlockLimit {
            soft: conv(rl.rlim_cur),
            hard: conv(rl.rlim_max),
        })
    }
}

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn one(v: Option<u64>) -> String {
            match v {
                None => "unlimited".to_owned(),
                Some(b) if b >= 1 << 20 => format!("{} MiB", b >> 20),
                Some(b) => format!("{} KiB", b >> 10),
            }
        }
        write!(f, "soft {}, hard {}", one(self.soft), one(self.hard))
    }
}

/// A post to a send queue, receive queue or SRQ was refused.
///
/// The work requests before the failing one *were* posted: `posted` says how many, so the caller
/// knows which buffers the NIC now owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{verb} refused work request #{posted} of the batch: {}{}", io::Error::from_raw_os_error(*.errno), post_hint(*.errno))]
pub struct PostError {
    /// `ibv_post_send`, `ibv_post_recv` or `ibv_post_srq_recv`.
    pub verb: &'static str,
    /// Number of work requests at the head of the batch that were posted.
    pub posted: usize,
    /// The errno.
    pub errno: i32,
}

fn post_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOMEM => "; the queue is full: wait for completions before posting more",
        libc::EINVAL => {
            "; a work request is invalid (too many SGEs, bad opcode, or the QP is not in a state \
             that accepts it)"
        }
        _ => "",
    }
}

/// Status of a work completion (`enum ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcStatus {
    /// The work request completed successfully.
    Success,
    /// A local length error: for a receive, the incoming message was larger than the posted
    /// buffer.
    LocalLength,
    /// Local QP operation error.
    LocalQpOperation,
    /// Local EE context operation error.
    LocalEecOperation,
    /// Local protection error: an SGE does not fall in an MR with the needed access.
    LocalProtection,
    /// The work request was flushed because the QP is in the error state.
    WrFlush,
    /// Memory window bind error.
    MwBind,
    /// Bad response from the remote side.
    BadResponse,
    /// Local access error.
    LocalAccess,
    /// The remote side found the request invalid (e.g. a SEND larger than its receive buffer).
    RemoteInvalidRequest,
    /// Remote access error (rkey, address or access flags).
    RemoteAccess,
    /// Remote operation error.
    RemoteOperation,
    /// The transport retry count was exceeded: the peer stopped acknowledging.
    RetryExceeded,
    /// The RNR retry count was exceeded: the peer had no receive buffer for too long.
    RnrRetryExceeded,
    /// Local RDD violation.
    LocalRddViolation,
    /// Remote invalid RD request.
    RemoteInvalidRdRequest,
    /// Remote aborted.
    RemoteAborted,
    /// Invalid EE context number.
    InvalidEecn,
    /// Invalid EE context state.
    InvalidEecState,
    /// Fatal error.
    Fatal,
    /// Response timeout.
    ResponseTimeout,
    /// General error.
    General,
    /// Tag matching error.
    TagMatching,
    /// Tag matching rendezvous incomplete.
    TagMatchingRndvIncomplete,
    /// A status this version does not know.
    Unknown(u32),
}

impl WcStatus {
    /// Converts the raw `ibv_wc_status`.
    pub fn from_raw(s: u32) -> WcStatus {
        use ibv_wc_status::*;
        match s {
            IBV_WC_SUCCESS => WcStatus::Success,
            IBV_WC_LOC_LEN_ERR => WcStatus::LocalLength,
            IBV_WC_LOC_QP_OP_ERR => WcStatus::LocalQpOperation,
            IBV_WC_LOC_EEC_OP_ERR => WcStatus::LocalEecOperation,
            IBV_WC_LOC_PROT_ERR => WcStatus::LocalProtection,
            IBV_WC_WR_FLUSH_ERR => WcStatus::WrFlush,
            IBV_WC_MW_BIND_ERR => WcStatus::MwBind,
            IBV_WC_BAD_RESP_ERR => WcStatus::BadResponse,
            IBV_WC_LOC_ACCESS_ERR => WcStatus::LocalAccess,
            IBV_WC_REM_INV_REQ_ERR => WcStatus::RemoteInvalidRequest,
            IBV_WC_REM_ACCESS_ERR => WcStatus::RemoteAccess,
            IBV_WC_REM_OP_ERR => WcStatus::RemoteOperation,
            IBV_WC_RETRY_EXC_ERR => WcStatus::RetryExceeded,
            IBV_WC_RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
            IBV_WC_LOC_RDD_VIOL_ERR => WcStatus::LocalRddViolation,
            IBV_WC_REM_INV_RD_REQ_ERR => WcStatus::RemoteInvalidRdRequest,
            IBV_WC_REM_ABORT_ERR => WcStatus::RemoteAborted,
            IBV_WC_INV_EECN_ERR => WcStatus::InvalidEecn,
            IBV_WC_INV_EEC_STATE_ERR => WcStatus::InvalidEecState,
            IBV_WC_FATAL_ERR => WcStatus::Fatal,
            IBV_WC_RESP_TIMEOUT_ERR => WcStatus::ResponseTimeout,
            IBV_WC_GENERAL_ERR => WcStatus::General,
            IBV_WC_TM_ERR => WcStatus::TagMatching,
            IBV_WC_TM_RNDV_INCOMPLETE => WcStatus::TagMatchingRndvIncomplete,
            other => WcStatus::Unknown(other),
        }
    }

    /// rdma-core's name for the status (as `ibv_wc_status_str` prints it).
    pub fn name(self) -> &'static str {
        match self {
            WcStatus::Success => "success",
            WcStatus::LocalLength => "local length error",
            WcStatus::LocalQpOperation => "local QP operation error",
            WcStatus::LocalEecOperation => "local EE context operation error",
            WcStatus::LocalProtection => "local protection error",
            WcStatus::WrFlush => "Work Request Flushed Error",
            WcStatus::MwBind => "memory management operation error",
            WcStatus::BadResponse => "bad response error",
            WcStatus::LocalAccess => "local access error",
            WcStatus::RemoteInvalidRequest => "remote invalid request error",
            WcStatus::RemoteAccess => "remote access error",
            WcStatus::RemoteOperation => "remote operation error",
            WcStatus::RetryExceeded => "transport retry counter exceeded",
            WcStatus::RnrRetryExceeded => "RNR retry counter exceeded",
            WcStatus::LocalRddViolation => "local RDD violation error",
            WcStatus::RemoteInvalidRdRequest => "remote invalid RD request",
            WcStatus::RemoteAborted => "aborted error",
            WcStatus::InvalidEecn => "invalid EE context number",
            WcStatus::InvalidEecState => "invalid EE context state",
            WcStatus::Fatal => "fatal error",
            WcStatus::ResponseTimeout => "response timeout error",
            WcStatus::General => "general error",
            WcStatus::TagMatching => "TM error",
            WcStatus::TagMatchingRndvIncomplete => "TM software rendezvous",
            WcStatus::Unknown(_) => "unknown",
        }
    }

    /// True for the statuses a receiver sees when an incoming message is larger than the posted
    /// buffer: `LocalLength` (IB spec, hardware NICs) or `LocalQpOperation` (soft-RoCE treats the
    /// overflow as a malformed receive WQE).
    pub fn is_receive_overflow(self) -> bool {
        matches!(self, WcStatus::LocalLength | WcStatus::LocalQpOperation)
    }

    /// True for the statuses a sender sees when its SEND did not fit the receiver's buffer:
    /// `RemoteInvalidRequest` (hardware) or `RemoteOperation` (soft-RoCE).
    pub fn is_send_overflow(self) -> bool {
        matches!(
            self,
            WcStatus::RemoteInvalidRequest | WcStatus::RemoteOperation
        )
    }

    /// What the status usually means for a receive path, and what to do.
    pub fn hint(self) -> Option<&'static str> {
        Some(match self {
            WcStatus::LocalLength => {
                "the incoming message was larger than the posted receive buffer: post larger \
                 buffers or cap the sender's message size; the QP is now in the error state"
            }
            WcStatus::RemoteInvalidRequest => {
                "the receiver rejected the request, typically a SEND larger than its receive \
                 buffer; the connection is in the error state"
            }
            WcStatus::LocalQpOperation => {
                "the receive work request could not take the incoming message: soft-RoCE (rxe) \
                 reports a message larger than the posted receive buffer this way (hardware \
                 reports a local length error); the QP is now in the error state"
            }
            WcStatus::RemoteOperation => {
                "the receiver could not complete the request: soft-RoCE (rxe) receivers answer a \
                 SEND larger than their receive buffer this way; the connection is in the error \
                 state"
            }
            WcStatus::LocalProtection => {
                "an SGE is not inside a registered MR with the needed access (check lkey, \
                 address and length)"
            }
            WcStatus::RemoteAccess => "the rkey, remote address or remote access flags are wrong",
            WcStatus::WrFlush => {
                "the QP went to the error state (a previous error, or a disconnect) and this \
                 work request was flushed"
            }
            WcStatus::RetryExceeded => {
                "the peer stopped acknowledging: it is gone, or the link is down"
            }
            WcStatus::RnrRetryExceeded => {
                "the receiver had no receive buffer posted for too long: post more receive \
                 buffers, or raise rnr_retry_count (7 = retry forever)"
            }
            _ => return None,
        })
    }
}

impl fmt::Display for WcStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WcStatus::Unknown(v) => write!(f, "unknown status {v}"),
            s => f.write_str(s.name()),
        }
    }
}

/// Opcode of a work completion (`enum ibv_wc_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WcOpcode {
    /// SEND completed (send side).
    Send,
    /// RDMA WRITE completed (send side).
    RdmaWrite,
    /// RDMA READ completed.
    RdmaRead,
    /// Atomic compare and swap completed.
    CompSwap,
    /// Atomic fetch and add completed.
    FetchAdd,
    /// Memory window bind completed.
    BindMw,
    /// Local invalidate completed.
    LocalInv,
    /// A SEND (with or without immediate data) was received.
    Recv,
    /// An RDMA WRITE with immediate data was received.
    RecvRdmaWithImm,
    /// Another opcode.
    Other(u32),
}

impl WcOpcode {
    /// Converts the raw `ibv_wc_opcode`.
    pub fn from_raw(op: u32) -> WcOpcode {
        use ibv_wc_opcode::*;
        match op {
            IBV_WC_SEND => WcOpcode::Send,
            IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
            IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
            IBV_WC_COMP_SWAP => WcOpcode::CompSwap,
            IBV_WC_FETCH_ADD => WcOpcode::FetchAdd,
            IBV_WC_BIND_MW => WcOpcode::BindMw,
            IBV_WC_LOCAL_INV => WcOpcode::LocalInv,
            IBV_WC_RECV => WcOpcode::Recv,
            IBV_WC_RECV_RDMA_WITH_IMM => WcOpcode::RecvRdmaWithImm,
            other => WcOpcode::Other(other),
        }
    }

    /// True for the receive-side opcodes.
    pub fn is_recv(self) -> bool {
        matches!(self, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm)
    }
}

/// A work request that completed with an error. `Copy`, no allocation: safe to build on the data
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "work request {wr_id:#x} on QP {qp_num:#x} completed with {status} (vendor error \
     {vendor_err:#x}){}", status.hint().map(|h| format!("; {h}")).unwrap_or_default()
)]
pub struct WcError {
    /// The work request id that was posted.
    pub wr_id: u64,
    /// The completion status.
    pub status: WcStatus,
    /// Vendor-specific error syndrome.
    pub vendor_err: u32,
    /// The local QP number the completion belongs to.
    pub qp_num: u32,
    /// The opcode. Only valid for some error statuses; receive errors usually report `Recv`.
    pub opcode: WcOpcode,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_errno_maps_to_unsupported_variant() {
        let e = Error::verb(
            "ibv_reg_dmabuf_mr",
            "rxe0",
            io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        );
        assert!(e.is_unsupported(), "{e}");
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        let e = Error::verb(
            "ibv_create_srq",
            "rxe0",
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert!(!e.is_unsupported());
        let msg = e.to_string();
        assert!(
            msg.contains("ibv_create_srq") && msg.contains("rxe0") && msg.contains("capability"),
            "{msg}"
        );
    }

    #[test]
    fn verb_ret_accepts_both_sign_conventions() {
        let a = Error::verb_ret("ibv_modify_qp", "d", libc::EINVAL);
        let b = Error::verb_ret("ibv_modify_qp", "d", -libc::EINVAL);
        assert_eq!(a.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(b.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn wc_error_names_status_and_hint() {
        let e = WcError {
            wr_id: 7,
            status: WcStatus::from_raw(ibv_wc_status::IBV_WC_LOC_LEN_ERR),
            vendor_err: 0,
            qp_num: 0x11,
            opcode: WcOpcode::from_raw(ibv_wc_opcode::IBV_WC_RECV),
        };
        assert_eq!(e.status, WcStatus::LocalLength);
        let s = e.to_string();
        assert!(
            s.contains("local length error") && s.contains("larger than the posted"),
            "{s}"
        );
        assert_eq!(WcStatus::from_raw(9999), WcStatus::Unknown(9999));
    }

    #[test]
    fn memlock_limit_formats() {
        let l = MemlockLimit {
            soft: Some(8 << 20),
            hard: None,
        };
        assert_eq!(l.to_string(), "soft 8 MiB, hard unlimited");
        assert!(MemlockLimit::current().is_some());
    }

    #[test]
    fn post_error_reports_how_many_were_posted() {
        let e = PostError {
            verb: "ibv_post_srq_recv",
            posted: 3,
            errno: libc::ENOMEM,
        };
        let s = e.to_string();
        assert!(s.contains("#3") && s.contains("queue is full"), "{s}");
    }
}
