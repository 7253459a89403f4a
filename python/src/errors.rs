//! Rust errors as the typed Python exceptions of `gdrx.errors`: each carries the Rust error's
//! message and, where the error knows one, a hint (`exc.hint`).

use gdrx_core::receiver::ReceiverError;
use gdrx_core::sender::SenderError;
use gdrx_core::{Error, PoolError, WcStatus};
use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;

/// Builds `gdrx.errors.<class>(message, hint)`.
pub fn raise(py: Python<'_>, class: &str, message: String, hint: Option<String>) -> PyErr {
    let built = py
        .import("gdrx.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((message.clone(), hint)));
    match built {
        Ok(exc) => PyErr::from_value(exc),
        // The package's Python part is missing (the extension imported on its own).
        Err(e) => e,
    }
}

/// `ip:port` as a socket address; `ConfigError` when `ip` is not an IP address.
pub fn socket_addr(py: Python<'_>, ip: &str, port: u16) -> PyResult<std::net::SocketAddr> {
    let ip: std::net::IpAddr = ip.parse().map_err(|e| {
        raise(
            py,
            "ConfigError",
            format!("ip {ip:?} is not an IP address: {e}"),
            None,
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// The exception class for a verbs error.
fn verbs_class(e: &Error) -> (&'static str, Option<String>) {
    match e {
        Error::NoRdma { hint, .. } | Error::DeviceNotFound { hint, .. } => {
            ("NoDevice", Some((*hint).to_owned()))
        }
        Error::PortDown { .. } => ("NoDevice", None),
        Error::MemoryLock { .. } => ("MemoryLock", None),
        Error::Unsupported { hint, .. } => ("Unsupported", Some((*hint).to_owned())),
        Error::InvalidConfig(_) => ("ConfigError", None),
        Error::Timeout { .. } => ("Timeout", None),
        Error::Completion(wc) => match wc.status {
            WcStatus::RetryExceeded
            | WcStatus::RnrRetryExceeded
            | WcStatus::RemoteAborted
            | WcStatus::WrFlush => ("PeerGone", None),
            _ => ("GdrxError", None),
        },
        Error::Connection { event, hint, .. } => {
            let class = if *event == "REJECTED" {
                "Refused"
            } else {
                "ConnectFailed"
            };
            (class, hint.map(str::to_owned))
        }
        Error::Cm { hint, .. } => ("ConnectFailed", hint.map(str::to_owned)),
        Error::DeviceMismatch { .. } => ("ConfigError", None),
        Error::Malformed { .. } => ("ProtocolError", None),
        _ => ("GdrxError", None),
    }
}

/// A verbs error as a Python exception.
pub fn verbs(py: Python<'_>, e: &Error) -> PyErr {
    let (class, hint) = verbs_class(e);
    raise(py, class, e.to_string(), hint)
}

/// A pool error as a Python exception.
pub fn pool(py: Python<'_>, e: &PoolError) -> PyErr {
    match e {
        PoolError::Verbs(v) => verbs(py, v),
        PoolError::Config(_) => raise(py, "ConfigError", e.to_string(), None),
        PoolError::Alloc(a) => raise(py, "AllocFailed", e.to_string(), Some(a.hint.clone())),
        PoolError::ProviderUnusable { .. }
        | PoolError::UnreadableMemory { .. }
        | PoolError::DmabufRequired { .. } => raise(py, "Unsupported", e.to_string(), None),
        _ => raise(py, "RegistrationFailed", e.to_string(), None),
    }
}

/// A receiver error as a Python exception.
pub fn receiver(py: Python<'_>, e: &ReceiverError) -> PyErr {
    match e {
        ReceiverError::Verbs(v) => verbs(py, v),
        ReceiverError::Pool(p) => pool(py, p),
        ReceiverError::NoAddress { .. } | ReceiverError::NotRdmaAddress { .. } => {
            raise(py, "NoDevice", e.to_string(), None)
        }
        _ => raise(py, "GdrxError", e.to_string(), None),
    }
}

/// A sender error as a Python exception.
pub fn sender(py: Python<'_>, e: &SenderError) -> PyErr {
    match e {
        SenderError::Verbs(v) => verbs(py, v),
        SenderError::Welcome(_) => raise(py, "ProtocolError", e.to_string(), None),
        SenderError::BuffersTooSmall { .. } | SenderError::TooLarge { .. } => {
            raise(py, "ConfigError", e.to_string(), None)
        }
        SenderError::NoDevice => raise(py, "NoDevice", e.to_string(), None),
        _ => raise(py, "GdrxError", e.to_string(), None),
    }
}
