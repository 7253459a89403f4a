//! Small helpers shared by the verbs modules: non-blocking fds, waiting on an fd, limit checks,
//! and unwrapping sideway's error kinds.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::error::{Error, Result};

/// Sets `O_NONBLOCK` on `fd` (a completion channel, CM event channel or async event fd).
pub(crate) fn set_nonblocking(fd: RawFd, what: &'static str) -> Result<()> {
    // SAFETY: fcntl on an fd owned by the caller's verbs object; no memory is passed.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(Error::os(what));
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes (forever for `None`); returns whether it is
/// readable. An interrupted wait counts as "not readable yet".
pub(crate) fn wait_readable(
    fd: RawFd,
    timeout: Option<Duration>,
    what: &'static str,
) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: one valid pollfd for the duration of the call.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::Os {
            op: what,
            source: e,
        });
    }
    Ok(r > 0)
}

/// Checks `1 <= value <= max`, naming the device limit in the error.
pub(crate) fn check_limit(
    what: &str,
    value: u32,
    max: u32,
    limit: &str,
    device: &str,
) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::InvalidConfig(format!(
            "{what} {value}: `{device}` allows 1..={max} ({limit})"
        )));
    }
    Ok(())
}

/// The `io::Error` inside one of sideway's `*ErrorKind` enums (their `Ibverbs` variant), or the
/// kind's text as an `io::Error` for the others.
macro_rules! sideway_io {
    ($kind:expr, $variant:path) => {
        match $kind {
            $variant(io) => io,
            #[allow(unreachable_patterns)]
            other => std::io::Error::other(other.to_string()),
        }
    };
}
pub(crate) use sideway_io;
