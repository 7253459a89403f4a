//! OS plumbing shared by the providers: an owned memory mapping, errno names, sysfs and procfs
//! readers, and the NUMA node of a mapping.
//!
//! Nothing here is public: the providers turn these results into [`gdrx_core::RegionDesc`]s and
//! [`gdrx_core::AllocError`]s that say what happened in words.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

/// An owned `mmap` mapping: `addr .. addr + len` is the usable part, `base .. base + map_len` is
/// what `Drop` unmaps (it includes guard pages, when there are any).
pub(crate) struct Mapping {
    base: NonNull<u8>,
    map_len: usize,
    addr: NonNull<u8>,
    len: usize,
}

impl fmt::Debug for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("addr", &self.addr)
            .field("len", &self.len)
            .field("map_len", &self.map_len)
            .finish()
    }
}

/// How [`Mapping::populate`] faulted the pages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Populated {
    /// `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+): errors come back as errno, never SIGBUS.
    Madvise,
    /// The kernel predates `MADV_POPULATE_WRITE`: one byte per page was written instead.
    Touched,
}

impl Mapping {
    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | flags, -1, 0)`.
    pub(crate) fn anonymous(len: usize, flags: libc::c_int) -> io::Result<Mapping> {
        // SAFETY: a new anonymous mapping with no address hint cannot alias anything we own; the
        // result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
                -1,
                0,
            )
        };
        Self::from_mmap(p, len)
    }

    /// `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | flags, fd, 0)`.
    pub(crate) fn shared(
        fd: BorrowedFd<'_>,
        len: usize,
        flags: libc::c_int,
    ) -> io::Result<Mapping> {
        // SAFETY: a new shared mapping of a file we hold open, with no address hint; the result
        // is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | flags,
                fd.as_raw_fd(),
                0,
            )
        };
        Self::from_mmap(p, len)
    }

    fn from_mmap(p: *mut libc::c_void, len: usize) -> io::Result<Mapping> {
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let addr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Mapping {
            base: addr,
            map_len: len,
            addr,
            len,
        })
    }

    /// An anonymous read/write mapping of `len` bytes whose start is aligned to `align` (a power
    /// of two, a multiple of the page size), with one inaccessible (`PROT_NONE`) guard page on
    /// each side.
    ///
    /// The guards keep the kernel from merging the mapping with a neighbouring one, so
    /// `/proc/self/smaps` reports on exactly this memory (and a stray access just past either
    /// end faults instead of landing in someone else's memory).
    pub(crate) fn anonymous_aligned(len: usize, align: usize) -> io::Result<Mapping> {
        let page = gdrx_core::page_size();
        debug_assert!(
            align.is_power_of_two() && align.is_multiple_of(page) && len.is_multiple_of(page)
        );
        let total = len
            .checked_add(align)
            .and_then(|t| t.checked_add(page))
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // Reserve address space only; the usable part is made accessible below.
        // SAFETY: a new anonymous mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        let reserved = Self::from_mmap(p, total)?;
        let base = reserved.base.as_ptr() as usize;
        // First `align`-aligned address with at least one page before it; it lies at most
        // `align` past `base`, so `addr + len + page <= base + total`.
        let addr = (base + page).next_multiple_of(align);
        // SAFETY: `addr .. addr + len` lies inside the reservation we own (see above).
        let ret = unsafe {
            libc::mprotect(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error()); // `reserved` unmaps everything
        }
        // Give back what lies beyond the two guard pages.
        let head = addr - page - base;
        let tail_start = addr + len + page;
        let tail = base + total - tail_start;
        std::mem::forget(reserved);
        let unmap = |start: usize, n: usize| {
            if n > 0 {
                // SAFETY: the range lies in our reservation and holds no usable memory.
                let r = unsafe { libc::munmap(start as *mut libc::c_void, n) };
                if r != 0 {
                    tracing::warn!(err = %io::Error::last_os_error(), "munmap of alignment slack failed");
                }
            }
        };
        unmap(base, head);
        unmap(tail_start, tail);
        Ok(Mapping {
            // SAFETY: `addr - page >= base > 0`.
            base: unsafe { NonNull::new_unchecked((addr - page) as *mut u8) },
            map_len: len + 2 * page,
            // SAFETY: `addr > base > 0`.
            addr: unsafe { NonNull::new_unchecked(addr as *mut u8) },
            len,
        })
    }

    /// Start of the usable memory.
    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// Usable bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// `madvise(addr, len, advice)` on the usable part.
    pub(crate) fn madvise(&self, advice: libc::c_int) -> io::Result<()> {
        // SAFETY: the range is a mapping we own; madvise advice does not invalidate it (callers
        // only pass HUGEPAGE, NOHUGEPAGE and POPULATE_WRITE).
        let ret = unsafe { libc::madvise(self.addr.as_ptr().cast(), self.len, advice) };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Faults every page in for writing, so the memory is really there before the NIC gets it.
    ///
    /// Uses `MADV_POPULATE_WRITE`, which reports a page that cannot be had (hugetlb pool or
    /// cgroup limit) as an error where a plain write would raise SIGBUS. On kernels older than
    /// 5.14 (EINVAL) it writes one zero byte per `step` bytes instead; callers only do that on
    /// memory the kernel has already reserved.
    pub(crate) fn populate(&self, step: usize) -> io::Result<Populated> {
        match self.madvise(libc::MADV_POPULATE_WRITE) {
            Ok(()) => Ok(Populated::Madvise),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let p = self.addr.as_ptr();
                for off in (0..self.len).step_by(step.max(1)) {
                    // SAFETY: `off < len`, inside our writable mapping; the memory is fresh and
                    // zero-filled and nobody else has it yet, so writing a zero changes nothing.
                    unsafe { p.add(off).write_volatile(0) };
                }
                Ok(Populated::Touched)
            }
            Err(e) => Err(e),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: we own `base .. base + map_len`; regions hand out no references that outlive
        // them, and the pool drops MRs on a region before the region itself.
        let ret = unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
        if ret != 0 {
            tracing::error!(
                addr = ?self.base,
                len = self.map_len,
                err = %io::Error::last_os_error(),
                "munmap failed"
            );
        }
    }
}

/// An owned file descriptor whose `Drop` logs a failing `close` (std's `OwnedFd` ignores it).
pub(crate) struct Fd {
    raw: RawFd,
    what: &'static str,
}

impl Fd {
    /// Takes ownership of `fd`; `what` names it in logs (`memfd`, `dma-buf`).
    pub(crate) fn new(fd: OwnedFd, what: &'static str) -> Fd {
        Fd {
            raw: fd.into_raw_fd(),
            what,
        }
    }
}

impl AsFd for Fd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `raw` is open and owned by `self`, which the borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.raw) }
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw
    }
}

impl fmt::Debug for Fd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.what, self.raw)
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own `raw` and close it exactly once.
        if unsafe { libc::close(self.raw) } != 0 {
            tracing::error!(
                fd = self.raw,
                what = self.what,
                err = %io::Error::last_os_error(),
                "close failed"
            );
        }
    }
}

/// The symbolic name of an errno (`ENOMEM`), else `errno N`.
pub(crate) fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno {errno}"),
        e => format!("{e:?}"),
    }
}

/// `ENOMEM (Cannot allocate memory)` for an OS error, the plain message otherwise.
pub(crate) fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let msg = e.to_string();
            let msg = msg.split(" (os error").next().unwrap_or(&msg);
            format!("{} ({msg})", errno_name(n))
        }
        None => e.to_string(),
    }
}

/// A sysfs or procfs file's contents, trimmed; `None` when it cannot be read.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A sysfs file holding one unsigned number.
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// `4 KiB`, `2 MiB`, `1 GiB`, or bytes when not a whole number of KiB.
pub(crate) fn human(bytes: usize) -> String {
    const K: usize = 1 << 10;
    const M: usize = 1 << 20;
    const G: usize = 1 << 30;
    if bytes >= G && bytes.is_multiple_of(G) {
        format!("{} GiB", bytes / G)
    } else if bytes >= M && bytes.is_multiple_of(M) {
        format!("{} MiB", bytes / M)
    } else if bytes >= K && bytes.is_multiple_of(K) {
        format!("{} KiB", bytes / K)
    } else {
        format!("{bytes} B")
    }
}

/// The NUMA node holding the memory at `addr .. addr + len`, when every sampled page is present
/// and on the same node. Asks `move_pages(2)` (query mode: no pages move) about up to 16 pages
/// spread over the range; `None` on a kernel without NUMA support, for pages not faulted in yet,
/// or when the pages are spread over several nodes.
pub(crate) fn numa_node(addr: NonNull<u8>, len: usize, page: usize) -> Option<u32> {
    const SAMPLES: usize = 16;
    let pages = (len / page.max(1)).max(1);
    let n = pages.min(SAMPLES);
    let mut ptrs: Vec<*mut libc::c_void> = (0..n)
        .map(|i| {
            let off = (i * pages / n) * page;
            addr.as_ptr().wrapping_add(off).cast()
        })
        .collect();
    let mut status = vec![0 as libc::c_int; n];
    // SAFETY: `ptrs` and `status` both hold `n` elements and live across the call; with a NULL
    // `nodes` array move_pages only reports where the pages are and moves nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0 as libc::c_int,
            n as libc::c_ulong,
            ptrs.as_mut_ptr(),
            std::ptr::null::<libc::c_int>(),
            status.as_mut_ptr(),
            0 as libc::c_int,
        )
    };
    if ret != 0 {
        return None;
    }
    let first = *status.first()?;
    if first < 0 || status.iter().any(|&s| s != first) {
        return None;
    }
    u32::try_from(first).ok()
}

/// What `/proc/self/smaps` says about one mapping (sizes in bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SmapsEntry {
    /// Start of the VMA.
    pub start: usize,
    /// End of the VMA (exclusive).
    pub end: usize,
    /// `KernelPageSize`.
    pub kernel_page_size: Option<usize>,
    /// `AnonHugePages`: transparent huge pages mapped in the VMA.
    pub anon_huge_pages: usize,
    /// `Private_Hugetlb + Shared_Hugetlb`: hugetlb pages mapped in the VMA.
    pub hugetlb: usize,
}

/// The `/proc/self/smaps` entry of the VMA containing `addr`.
pub(crate) fn smaps_entry(addr: usize) -> io::Result<Option<SmapsEntry>> {
    let text = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(parse_smaps(&text, addr))
}

/// Parses smaps text and returns the entry of the VMA containing `addr`.
pub(crate) fn parse_smaps(text: &str, addr: usize) -> Option<SmapsEntry> {
    let mut cur: Option<SmapsEntry> = None;
    for line in text.lines() {
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                if cur.is_some() {
                    break; // the entry we wanted is complete
                }
                if start <= addr && addr < end {
                    cur = Some(SmapsEntry {
                        start,
                        end,
                        ..SmapsEntry::default()
                    });
                }
                continue;
            }
        }
        let Some(e) = cur.as_mut() else { continue };
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let kb = || -> usize {
            rest.split_ascii_whitespace()
                .next()
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0)
                * 1024
        };
        match key {
            "KernelPageSize" => e.kernel_page_size = Some(kb()),
            "AnonHugePages" => e.anon_huge_pages = kb(),
            "Private_Hugetlb" | "Shared_Hugetlb" => e.hugetlb += kb(),
            _ => {}
        }
    }
    cur
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
KernelPageSize:        4 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
KernelPageSize:        4 kB
AnonHugePages:      2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr mr mw me ac hg
7f0000600000-7f0000a00000 rw-p 00000000 00:0f 1234                       /anon_hugepage (deleted)
KernelPageSize:     2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:    4096 kB
";

    #[test]
    fn smaps_finds_the_vma_and_its_huge_pages() {
        let thp = parse_smaps(SMAPS, 0x7f00_0000_1000).unwrap();
        assert_eq!((thp.start, thp.end), (0x7f00_0000_0000, 0x7f00_0040_0000));
        assert_eq!(thp.kernel_page_size, Some(4096));
        assert_eq!(thp.anon_huge_pages, 2 << 20);
        assert_eq!(thp.hugetlb, 0);
        let tlb = parse_smaps(SMAPS, 0x7f00_0060_0000).unwrap();
        assert_eq!(tlb.kernel_page_size, Some(2 << 20));
        assert_eq!(tlb.hugetlb, 4 << 20);
        assert_eq!(parse_smaps(SMAPS, 0x7f00_0050_0000), None);
    }

    #[test]
    fn aligned_mapping_has_guards_and_its_own_vma() {
        let m = Mapping::anonymous_aligned(2 << 20, 2 << 20).unwrap();
        assert_eq!(m.addr().as_ptr() as usize % (2 << 20), 0);
        let e = smaps_entry(m.addr().as_ptr() as usize).unwrap().unwrap();
        assert_eq!(e.start, m.addr().as_ptr() as usize);
        assert_eq!(e.end - e.start, m.len());
        m.populate(gdrx_core::page_size()).unwrap();
    }

    #[test]
    fn errno_descriptions() {
        assert_eq!(errno_name(libc::ENOMEM), "ENOMEM");
        assert_eq!(errno_name(9999), "errno 9999");
        let d = describe(&io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(d.starts_with("ENOMEM (") && !d.contains("os error"), "{d}");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(3 << 20), "3 MiB");
        assert_eq!(human(1 << 30), "1 GiB");
        assert_eq!(human(1000), "1000 B");
    }
}
