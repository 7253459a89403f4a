//! A dma-buf without a GPU: memfd -> `/dev/udmabuf` (UDMABUF_CREATE), as devmem TCP's selftest
//! does. Used to exercise `ibv_reg_dmabuf_mr` with a real dma-buf fd.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[repr(C)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `_IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: libc::c_ulong = 0x4018_7542;
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// A udmabuf: the memfd behind it and the dma-buf fd.
#[derive(Debug)]
pub struct Udmabuf {
    /// The memfd (its pages back the dma-buf).
    pub memfd: OwnedFd,
    /// The dma-buf file descriptor.
    pub dmabuf: OwnedFd,
    /// Size in bytes.
    pub size: usize,
}

/// Creates a `size`-byte udmabuf (size a multiple of the page size).
///
/// # Errors
/// When memfd, sealing or `/dev/udmabuf` fail (e.g. the kernel lacks CONFIG_UDMABUF).
pub fn create(size: usize) -> io::Result<Udmabuf> {
    // SAFETY: static NUL-terminated name; flags are valid memfd flags.
    let fd = unsafe {
        libc::memfd_create(
            c"gdrx-udmabuf".as_ptr(),
            libc::MFD_ALLOW_SEALING | libc::MFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: valid fd.
    if unsafe { libc::ftruncate(memfd.as_raw_fd(), size as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // udmabuf requires the memfd to be sealed against shrinking.
    // SAFETY: valid fd, valid seal flags.
    if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/udmabuf")?;
    let req = UdmabufCreate {
        memfd: memfd.as_raw_fd() as u32,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset: 0,
        size: size as u64,
    };
    // SAFETY: UDMABUF_CREATE takes a pointer to a udmabuf_create struct, valid for the call.
    let dfd = unsafe { libc::ioctl(dev.as_raw_fd(), UDMABUF_CREATE, &req) };
    if dfd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Udmabuf {
        memfd,
        // SAFETY: the ioctl returned a new descriptor we own.
        dmabuf: unsafe { OwnedFd::from_raw_fd(dfd) },
        size,
    })
}

/// The exporter name `/proc/self/fdinfo/<fd>` reports for a dma-buf fd (e.g. `udmabuf`), or
/// `None` when the fd is not a dma-buf.
pub fn exporter(fd: &OwnedFd) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("exp_name:"))
        .map(|s| s.trim().to_owned())
}
