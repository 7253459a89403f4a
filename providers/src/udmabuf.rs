//! [`UdmabufProvider`]: a dma-buf made from host memory, so the dma-buf registration path runs
//! without a GPU (devmem TCP's selftest does the same).
//!
//! Each [`UdmabufRegion`] owns:
//! - a memfd (`memfd_create(MFD_ALLOW_SEALING)`, sized with `ftruncate`, sealed with
//!   `F_SEAL_SHRINK` as udmabuf requires): the pages;
//! - the dma-buf fd that `ioctl(/dev/udmabuf, UDMABUF_CREATE)` exports from it;
//! - a `MAP_SHARED` mapping of the memfd: the CPU's view of the same pages.
//!
//! The region offers both registration paths: [`Region::dmabuf`] for
//! `ibv_reg_dmabuf_mr(fd, offset 0, iova = CPU address)`, and the memfd mapping as
//! [`RegionDesc::addr`] for `ibv_reg_mr`. The IOVA equals the CPU address, so a slot has the same
//! address on both paths. The memfd mapping (not an mmap of the dma-buf fd) is the CPU fallback on
//! purpose: on soft-RoCE (rxe) `ibv_reg_dmabuf_mr` returns EOPNOTSUPP, and `ibv_reg_mr` on an mmap
//! of the dma-buf fd fails with EFAULT because udmabuf maps it as PFN memory that
//! `get_user_pages` cannot pin; the memfd mapping is ordinary shmem it can pin.
//!
//! The kernel needs `CONFIG_UDMABUF` (`/dev/udmabuf`), and the udmabuf module caps one buffer at
//! `/sys/module/udmabuf/parameters/size_limit_mb` (64 MiB by default).

use std::any::Any;
use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gdrx_core::{
    AllocError, Device, DmabufView, MemlockLimit, MemoryKind, Provider, ProviderCheck, Region,
    RegionDesc,
};

use crate::host::checked_len;
use crate::sys::{self, Fd, Mapping};

const NAME: &str = "udmabuf";
const DEVICE: &str = "/dev/udmabuf";
const SIZE_LIMIT: &str = "/sys/module/udmabuf/parameters/size_limit_mb";
const NO_UDMABUF_HINT: &str = "the kernel needs CONFIG_UDMABUF (e.g. Debian's 6.12 kernel); \
                               load it with `modprobe udmabuf`";

/// `struct udmabuf_create` from `<linux/udmabuf.h>`.
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

/// Hands out udmabufs: host memory exported as a dma-buf ([`MemoryKind::HostDmabuf`]).
///
/// Cheap to construct and to clone; holds only its options. Nothing is opened until
/// [`UdmabufProvider::check_here`] or an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdmabufProvider {
    device: PathBuf,
    size_limit: PathBuf,
}

impl Default for UdmabufProvider {
    fn default() -> Self {
        UdmabufProvider::new()
    }
}

impl UdmabufProvider {
    /// A provider using `/dev/udmabuf`.
    pub fn new() -> UdmabufProvider {
        UdmabufProvider {
            device: DEVICE.into(),
            size_limit: SIZE_LIMIT.into(),
        }
    }

    /// Uses another device node (e.g. one bind-mounted into a container elsewhere).
    pub fn device_path(mut self, path: impl Into<PathBuf>) -> UdmabufProvider {
        self.device = path.into();
        self
    }

    /// Test hook: reads the size limit from another file.
    #[cfg(test)]
    fn size_limit_path(mut self, path: &Path) -> UdmabufProvider {
        self.size_limit = path.into();
        self
    }

    /// The largest udmabuf the kernel accepts, in bytes
    /// (`/sys/module/udmabuf/parameters/size_limit_mb`), when the module is loaded.
    pub fn size_limit(&self) -> Option<usize> {
        let mb = sys::read_u64(&self.size_limit)?;
        usize::try_from(mb).ok()?.checked_mul(1 << 20)
    }

    /// What [`Provider::check`] reports, without needing a device. Blocks when the udmabuf
    /// device is missing or cannot be opened for reading and writing; notes the size limit, the
    /// registration paths and `RLIMIT_MEMLOCK`.
    pub fn check_here(&self) -> ProviderCheck {
        let mut c = ProviderCheck::ok(NAME);
        match self.open_device() {
            Ok(_) => c
                .notes
                .push(format!("{} opens read/write", self.device.display())),
            Err(e) => c.blockers.push(self.device_problem(&e)),
        }
        match self.size_limit() {
            Some(l) => c.notes.push(format!(
                "udmabuf size limit {} ({}): larger regions fail; raise it with echo N > {}",
                sys::human(l),
                self.size_limit.display(),
                self.size_limit.display()
            )),
            None => c.notes.push(format!(
                "udmabuf size limit unknown ({} unreadable: module not loaded?)",
                self.size_limit.display()
            )),
        }
        c.notes.push(
            "registration: ibv_reg_dmabuf_mr(dma-buf fd, offset 0, iova = CPU address) where the \
             NIC supports dma-buf MRs, else ibv_reg_mr on the memfd mapping (rxe: EOPNOTSUPP \
             for dma-buf MRs)"
                .to_owned(),
        );
        if let Some(l) = MemlockLimit::current() {
            c.notes.push(format!(
                "RLIMIT_MEMLOCK {l}: registering a region pins it against this limit"
            ));
        }
        c
    }

    fn open_device(&self) -> io::Result<std::fs::File> {
        // std opens with O_CLOEXEC.
        OpenOptions::new().read(true).write(true).open(&self.device)
    }

    /// Why the device cannot be used, with what to do about it.
    fn device_problem(&self, e: &io::Error) -> String {
        let dev = self.device.display();
        match e.raw_os_error() {
            Some(libc::ENOENT) => format!("{dev} does not exist: {NO_UDMABUF_HINT}"),
            Some(libc::EACCES) | Some(libc::EPERM) => format!(
                "{dev} cannot be opened: {}; it is usually root:kvm mode 0660: add the user to \
                 group kvm or run as root",
                sys::describe(e)
            ),
            _ => format!("{dev} cannot be opened: {}", sys::describe(e)),
        }
    }

    /// Allocates a udmabuf of `len` bytes rounded up to whole pages, as a concrete
    /// [`UdmabufRegion`] ([`Provider::alloc`] returns the same thing behind `Arc<dyn Region>`).
    ///
    /// # Errors
    /// [`AllocError`] naming the step that failed: a length of 0 or over the udmabuf size limit
    /// (the error names the limit and how to raise it), a missing or unopenable `/dev/udmabuf`
    /// (hint: `CONFIG_UDMABUF`, `modprobe udmabuf`), `memfd_create`, `ftruncate`, sealing,
    /// `UDMABUF_CREATE`, or the `mmap` of the memfd.
    pub fn alloc_region(&self, len: usize) -> Result<UdmabufRegion, AllocError> {
        let page = gdrx_core::page_size();
        let rlen = checked_len(NAME, len, page)?;
        if let Some(limit) = self.size_limit() {
            if rlen > limit {
                return Err(over_limit(len, rlen, limit, &self.size_limit));
            }
        }
        let dev = self.open_device().map_err(|e| AllocError {
            provider: NAME.to_owned(),
            len,
            what: format!("open {}", self.device.display()),
            hint: self.device_problem(&e),
            source: Some(e),
        })?;
        let fail = |what: String, hint: &str, e: io::Error| AllocError {
            provider: NAME.to_owned(),
            len,
            what: format!("{what}: {}", sys::describe(&e)),
            hint: hint.to_owned(),
            source: Some(e),
        };
        let memfd = memfd().map_err(|e| {
            fail(
                "memfd_create".into(),
                "out of file descriptors or memory",
                e,
            )
        })?;
        let size = libc::off_t::try_from(rlen).map_err(|_| {
            fail(
                "memfd size".into(),
                "ask for less",
                io::Error::from_raw_os_error(libc::EFBIG),
            )
        })?;
        // SAFETY: `memfd` is an open descriptor we own; ftruncate takes no pointers.
        if unsafe { libc::ftruncate(memfd.as_raw_fd(), size) } != 0 {
            let e = io::Error::last_os_error();
            return Err(fail(
                format!("ftruncate of the memfd to {}", sys::human(rlen)),
                "allocate less",
                e,
            ));
        }
        // udmabuf refuses a memfd that could shrink under it.
        // SAFETY: `memfd` is open; F_ADD_SEALS takes an integer argument.
        if unsafe { libc::fcntl(memfd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
            let e = io::Error::last_os_error();
            return Err(fail(
                "fcntl(F_ADD_SEALS, F_SEAL_SHRINK)".into(),
                "the kernel lacks memfd sealing",
                e,
            ));
        }
        let req = UdmabufCreate {
            memfd: memfd.as_raw_fd() as u32,
            flags: UDMABUF_FLAGS_CLOEXEC,
            offset: 0,
            size: rlen as u64,
        };
        // SAFETY: UDMABUF_CREATE reads one `struct udmabuf_create`, which `req` is (repr(C),
        // same layout) and which outlives the call.
        let dfd = unsafe { libc::ioctl(dev.as_raw_fd(), UDMABUF_CREATE, &req) };
        if dfd < 0 {
            let e = io::Error::last_os_error();
            let hint = match e.raw_os_error() {
                Some(libc::ENOTTY) => format!("{} is not a udmabuf device", self.device.display()),
                Some(libc::EINVAL) => format!(
                    "the size is over the udmabuf size limit ({}) or not page-aligned",
                    self.size_limit.display()
                ),
                Some(libc::ENOMEM) => "out of memory: allocate less".to_owned(),
                _ => NO_UDMABUF_HINT.to_owned(),
            };
            return Err(fail(
                format!(
                    "ioctl(UDMABUF_CREATE) on {} for {}",
                    self.device.display(),
                    sys::human(rlen)
                ),
                &hint,
                e,
            ));
        }
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let dmabuf = Fd::new(unsafe { OwnedFd::from_raw_fd(dfd) }, "dma-buf");
        // The udmabuf holds the memfd's pages already, so populating only fills page tables.
        let map = Mapping::shared(memfd.as_fd(), rlen, libc::MAP_POPULATE).map_err(|e| {
            fail(
                "mmap(MAP_SHARED) of the memfd".into(),
                "out of address space or memory",
                e,
            )
        })?;
        let numa_node = sys::numa_node(map.addr(), rlen, page);
        let exporter = exporter_of(dmabuf.as_fd());
        let mut origin = format!(
            "memfd (MFD_ALLOW_SEALING, F_SEAL_SHRINK) -> {} UDMABUF_CREATE -> dma-buf (exporter {}); \
             CPU mapping: MAP_SHARED of the memfd, {} pages",
            self.device.display(),
            exporter.as_deref().unwrap_or("unknown"),
            sys::human(page)
        );
        if rlen != len {
            origin.push_str(&format!(
                "; len {} rounded up to {}",
                sys::human(len),
                sys::human(rlen)
            ));
        }
        if let Some(n) = numa_node {
            origin.push_str(&format!("; NUMA node {n}"));
        }
        let desc = RegionDesc {
            len: rlen,
            addr: Some(map.addr()),
            cpu_readable: true,
            page_size: page,
            numa_node,
            device: None,
            origin,
        };
        tracing::debug!(provider = NAME, len = rlen, origin = %desc.origin, "region allocated");
        Ok(UdmabufRegion {
            map,
            dmabuf,
            memfd,
            desc,
        })
    }
}

fn over_limit(len: usize, rlen: usize, limit: usize, path: &Path) -> AllocError {
    let mb = rlen.div_ceil(1 << 20);
    AllocError {
        provider: NAME.to_owned(),
        len,
        what: format!(
            "{} is over the udmabuf size limit of {} ({})",
            sys::human(rlen),
            sys::human(limit),
            path.display()
        ),
        hint: format!(
            "raise it: echo {mb} > {} (or modprobe udmabuf size_limit_mb={mb}), or allocate \
             several smaller regions",
            path.display()
        ),
        source: None,
    }
}

/// `memfd_create("gdrx-udmabuf", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL)`, without
/// `MFD_NOEXEC_SEAL` on kernels older than 6.3 (which refuse it with EINVAL). The flag keeps
/// newer kernels from warning about a memfd without an exec policy.
fn memfd() -> io::Result<Fd> {
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    for flags in [base | libc::MFD_NOEXEC_SEAL, base] {
        // SAFETY: a static NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"gdrx-udmabuf".as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a new descriptor that nothing else owns.
            return Ok(Fd::new(unsafe { OwnedFd::from_raw_fd(fd) }, "memfd"));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EINVAL))
}

/// The exporter `/proc/self/fdinfo/<fd>` names for a dma-buf fd (`exp_name:`).
fn exporter_of(fd: BorrowedFd<'_>) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("exp_name:"))
        .map(|s| s.trim().to_owned())
}

// SAFETY: every region comes from `alloc_region`: `desc.addr` is a MAP_SHARED read/write mapping
// of `desc.len` bytes of the region's memfd, kept mapped until the region is dropped; the memfd is
// sealed against shrinking, so the pages cannot go away under the mapping or the NIC. The dma-buf
// was created over the same memfd from offset 0 for `desc.len` bytes, so it is the same memory.
// The memfd is never handed out except borrowed through the region, so the pool is its only user.
unsafe impl Provider for UdmabufProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::HostDmabuf
    }

    fn check(&self, _device: &Device) -> ProviderCheck {
        self.check_here()
    }

    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError> {
        Ok(Arc::new(self.alloc_region(len)?))
    }
}

/// A udmabuf: the memfd, its dma-buf and its CPU mapping. Dropping it unmaps the memory, then
/// closes the dma-buf fd and the memfd (an MR registered on the dma-buf holds its own reference,
/// but the pool drops MRs first anyway).
pub struct UdmabufRegion {
    // Fields drop in this order: mapping, dma-buf, memfd.
    map: Mapping,
    dmabuf: Fd,
    memfd: Fd,
    desc: RegionDesc,
}

// SAFETY: the region owns its mapping and descriptors; neither is tied to a thread, and munmap
// and close may be called from any thread. It hands out only the address and borrowed fds.
unsafe impl Send for UdmabufRegion {}
// SAFETY: `&UdmabufRegion` only reads the immutable description and borrows the descriptors;
// reading fdinfo through them is thread-safe.
unsafe impl Sync for UdmabufRegion {}

impl UdmabufRegion {
    /// The dma-buf file descriptor.
    pub fn dmabuf_fd(&self) -> BorrowedFd<'_> {
        self.dmabuf.as_fd()
    }

    /// The memfd whose pages back the dma-buf (the CPU mapping is of this fd).
    pub fn memfd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// The dma-buf's exporter as `/proc/self/fdinfo` reports it (`exp_name:`): `udmabuf`.
    /// `None` when fdinfo cannot be read.
    pub fn exporter(&self) -> Option<String> {
        exporter_of(self.dmabuf.as_fd())
    }
}

impl fmt::Debug for UdmabufRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdmabufRegion")
            .field("map", &self.map)
            .field("dmabuf", &self.dmabuf)
            .field("memfd", &self.memfd)
            .field("desc", &self.desc)
            .finish()
    }
}

impl Region for UdmabufRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    fn dmabuf(&self) -> Option<DmabufView<'_>> {
        Some(DmabufView {
            fd: self.dmabuf.as_fd(),
            offset: 0,
            iova: self.map.addr().as_ptr() as u64,
        })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_udmabuf() -> bool {
        Path::new(DEVICE).exists()
    }

    /// Whether this process can open `/dev/udmabuf` (it may exist but be root:kvm 0660).
    fn can_open_udmabuf() -> bool {
        UdmabufProvider::new().open_device().is_ok()
    }

    #[test]
    fn check_matches_the_device_node() {
        let c = UdmabufProvider::new().check_here();
        if has_udmabuf() {
            assert_eq!(c.is_usable(), can_open_udmabuf(), "{c}");
            if !c.is_usable() {
                assert!(c.blockers[0].contains("cannot be opened"), "{c}");
            }
            assert!(c.notes.iter().any(|n| n.contains("size limit")), "{c}");
        } else {
            assert!(!c.is_usable());
            assert!(c.blockers[0].contains("/dev/udmabuf does not exist"), "{c}");
            assert!(c.blockers[0].contains("CONFIG_UDMABUF"), "{c}");
            assert!(c.blockers[0].contains("modprobe udmabuf"), "{c}");
        }
        let c = UdmabufProvider::new()
            .device_path("/nonexistent/udmabuf")
            .check_here();
        assert!(
            !c.is_usable() && c.blockers[0].contains("CONFIG_UDMABUF"),
            "{c}"
        );
    }

    #[test]
    fn alloc_without_the_device_is_a_clear_alloc_error() {
        let p = UdmabufProvider::new().device_path("/nonexistent/udmabuf");
        let e = p.alloc(1 << 20).unwrap_err();
        let msg = e.to_string();
        let AllocError {
            what, hint, source, ..
        } = &e;
        assert_eq!(what, "open /nonexistent/udmabuf");
        assert!(
            hint.contains("CONFIG_UDMABUF") && hint.contains("modprobe udmabuf"),
            "{msg}"
        );
        assert_eq!(
            source.as_ref().and_then(|s| s.raw_os_error()),
            Some(libc::ENOENT)
        );
        if !has_udmabuf() {
            let e = UdmabufProvider::new().alloc(1 << 20).unwrap_err();
            assert!(e.to_string().contains("open /dev/udmabuf"), "{e}");
        }
    }

    #[test]
    fn a_device_that_is_not_udmabuf_fails_at_create() {
        // /dev/null opens read/write and rejects the ioctl: memfd, ftruncate and sealing run
        // for real, then UDMABUF_CREATE fails.
        let e = UdmabufProvider::new()
            .device_path("/dev/null")
            .alloc(4096)
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ioctl(UDMABUF_CREATE) on /dev/null"), "{msg}");
        assert!(
            msg.contains("ENOTTY") && msg.contains("not a udmabuf device"),
            "{msg}"
        );
        assert!(e.source.is_some(), "{msg}");
    }

    #[test]
    fn over_the_size_limit_fails_naming_the_limit() {
        let dir = std::env::temp_dir().join(format!("gdrx-udmabuf-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("size_limit_mb");
        std::fs::write(&file, "64\n").unwrap();
        let p = UdmabufProvider::new().size_limit_path(&file);
        assert_eq!(p.size_limit(), Some(64 << 20));
        let e = p.alloc((64 << 20) + 1).unwrap_err();
        let msg = e.to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(e.source.is_none(), "{msg}");
        assert!(
            msg.contains("65540 KiB is over the udmabuf size limit of 64 MiB"),
            "{msg}"
        );
        assert!(
            msg.contains("size_limit_mb") && msg.contains("echo 65 >"),
            "{msg}"
        );
        assert!(UdmabufProvider::new().alloc(0).is_err());
    }

    #[test]
    fn udmabuf_region_is_shared_with_the_memfd_and_exported_by_udmabuf() {
        if !has_udmabuf() {
            println!("skipped: /dev/udmabuf missing (kernel without CONFIG_UDMABUF)");
            return;
        }
        if !can_open_udmabuf() {
            println!("skipped: /dev/udmabuf exists but this user cannot open it read/write");
            return;
        }
        let p = UdmabufProvider::new();
        assert_eq!(p.kind(), MemoryKind::HostDmabuf);
        let len = 1 << 20;
        let r = p.alloc_region(len - 100).unwrap();
        let d = r.desc();
        assert_eq!(d.len, len);
        assert!(d.cpu_readable);
        assert_eq!(r.exporter().as_deref(), Some("udmabuf"));
        assert!(d.origin.contains("exporter udmabuf"), "{}", d.origin);
        let addr = d.addr.unwrap().as_ptr();
        let view = r.dmabuf().unwrap();
        assert_eq!((view.offset, view.iova), (0, addr as u64));
        assert_eq!(view.fd.as_raw_fd(), r.dmabuf_fd().as_raw_fd());
        // SAFETY: the region's mapping is read/write for `len` bytes and no NIC has it.
        let bytes = unsafe { std::slice::from_raw_parts_mut(addr, len) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // The mapping is the memfd's memory: read it back through the fd.
        let mut back = vec![0u8; 4096];
        let off = len - 4096;
        // SAFETY: `back` is writable for its length; the memfd is open.
        let n = unsafe {
            libc::pread(
                r.memfd().as_raw_fd(),
                back.as_mut_ptr().cast(),
                back.len(),
                off as libc::off_t,
            )
        };
        assert_eq!(n, 4096);
        assert_eq!(back, bytes[off..]);
        let dynr = p.alloc(4096).unwrap();
        assert!(dynr.as_any().downcast_ref::<UdmabufRegion>().is_some());
        if let Some(limit) = p.size_limit() {
            let e = p.alloc(limit + 1).unwrap_err();
            assert!(e.to_string().contains("size limit"), "{e}");
        }
    }
}
