//! [`HugePageProvider`]: huge pages, trying the largest allowed size first and reporting every
//! step.
//!
//! The steps, largest first ([`PageSize`]):
//! 1. **1 GiB hugetlb**: `mmap(MAP_HUGETLB | MAP_HUGE_1GB)`;
//! 2. **2 MiB hugetlb**: `mmap(MAP_HUGETLB | MAP_HUGE_2MB)`;
//! 3. **transparent huge pages**: an anonymous mapping aligned to the THP size (2 MiB) with
//!    `madvise(MADV_HUGEPAGE)`, verified afterwards with `AnonHugePages` in `/proc/self/smaps`;
//! 4. **base pages** (4 KiB), always possible.
//!
//! [`HugePageProvider::largest`] and [`HugePageProvider::smallest`] bound the steps tried;
//! [`HugePageProvider::require`] allows exactly one size, so that not getting it is an error
//! ([`gdrx_core::AllocError`] naming every step and how to reserve pages) instead of a silent
//! fallback.
//!
//! The length is rounded up to the page size of the step being tried (3 MiB becomes 1 GiB on the
//! 1 GiB step and 4 MiB on the 2 MiB step); [`HugePageProvider::round_up`]`(false)` skips the
//! steps whose page size does not divide the length instead.
//!
//! Hugetlb mappings are made without `MAP_NORESERVE`, so `mmap` itself reserves the pages and
//! fails with ENOMEM when the pool is short (verified on Linux 6.18: with `MAP_NORESERVE`, even
//! with `MAP_POPULATE`, `mmap` succeeds and the first touch of a missing page raises SIGBUS). The
//! pages are then faulted in with `MADV_POPULATE_WRITE`, which reports the remaining failure
//! cases (hugetlb cgroup limits, memory policy) as an errno instead of SIGBUS, and the page size
//! is checked in `/proc/self/smaps` (`KernelPageSize`, `Private_Hugetlb`).

use std::any::Any;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use gdrx_core::{
    AllocError, Device, MemlockLimit, MemoryKind, Provider, ProviderCheck, Region, RegionDesc,
};

use crate::host::checked_len;
use crate::sys::{self, Mapping};

mod step;

use step::{Attempt, Failure, Pool};
pub use step::{PageSize, Step, StepOutcome};

const NAME: &str = "hugepage";
const HUGETLB_SYSFS: &str = "/sys/kernel/mm/hugepages";
const THP_SYSFS: &str = "/sys/kernel/mm/transparent_hugepage";

/// Hands out huge page memory ([`MemoryKind::HugePage`]), falling back from 1 GiB hugetlb pages
/// to 2 MiB hugetlb pages, transparent huge pages and base pages within the allowed range.
///
/// Cheap to construct and to clone; holds only its options. Built like
/// `HugePageProvider::new().smallest(PageSize::Huge2M)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugePageProvider {
    largest: PageSize,
    smallest: PageSize,
    round_up: bool,
    hugetlb_sysfs: PathBuf,
    thp_sysfs: PathBuf,
}

impl Default for HugePageProvider {
    fn default() -> Self {
        HugePageProvider::new()
    }
}

impl HugePageProvider {
    /// Tries every size from [`PageSize::Huge1G`] down to [`PageSize::Base`], rounding the
    /// length up to each.
    pub fn new() -> HugePageProvider {
        HugePageProvider {
            largest: PageSize::Huge1G,
            smallest: PageSize::Base,
            round_up: true,
            hugetlb_sysfs: HUGETLB_SYSFS.into(),
            thp_sysfs: THP_SYSFS.into(),
        }
    }

    /// The largest page size to try (default [`PageSize::Huge1G`]).
    pub fn largest(mut self, size: PageSize) -> HugePageProvider {
        self.largest = size;
        self
    }

    /// The smallest page size to fall back to (default [`PageSize::Base`]); when it cannot be had
    /// either, allocation fails.
    pub fn smallest(mut self, size: PageSize) -> HugePageProvider {
        self.smallest = size;
        self
    }

    /// Allows exactly `size`: no larger size is tried and there is no fallback.
    pub fn require(self, size: PageSize) -> HugePageProvider {
        self.largest(size).smallest(size)
    }

    /// Forbids falling back below the largest size: the same as `require(largest)`.
    pub fn forbid_fallback(self) -> HugePageProvider {
        let l = self.largest;
        self.smallest(l)
    }

    /// Whether to round the length up to each step's page size (default `true`). When `false`,
    /// a step whose page size does not divide the length is skipped.
    pub fn round_up(mut self, round_up: bool) -> HugePageProvider {
        self.round_up = round_up;
        self
    }

    /// The page sizes that will be tried, in order (empty when `largest` is smaller than
    /// `smallest`).
    pub fn page_sizes(&self) -> Vec<PageSize> {
        PageSize::ALL[self.largest.rank()..]
            .iter()
            .copied()
            .filter(|p| p.rank() <= self.smallest.rank())
            .collect()
    }

    /// Test hook: reads hugetlb and THP settings from other directories.
    #[cfg(test)]
    pub(crate) fn with_sysfs(
        mut self,
        hugetlb: &std::path::Path,
        thp: &std::path::Path,
    ) -> HugePageProvider {
        self.hugetlb_sysfs = hugetlb.into();
        self.thp_sysfs = thp.into();
        self
    }

    fn config_error(&self) -> Option<String> {
        (self.largest.rank() > self.smallest.rank()).then(|| {
            format!(
                "hugepage provider: largest page size ({}) is smaller than smallest ({})",
                self.largest, self.smallest
            )
        })
    }

    fn pool_dir(&self, size: PageSize) -> PathBuf {
        self.hugetlb_sysfs
            .join(format!("hugepages-{}kB", size.bytes() / 1024))
    }

    fn pool(&self, size: PageSize) -> Option<Pool> {
        let dir = self.pool_dir(size);
        let rd = |f: &str| sys::read_u64(&dir.join(f));
        Some(Pool {
            nr: rd("nr_hugepages")?,
            free: rd("free_hugepages").unwrap_or(0),
            resv: rd("resv_hugepages").unwrap_or(0),
            overcommit: rd("nr_overcommit_hugepages").unwrap_or(0),
            surplus: rd("surplus_hugepages").unwrap_or(0),
        })
    }

    /// `enabled` and `defrag` of THP as sysfs shows them (`always [madvise] never`).
    fn thp_settings(&self) -> (Option<String>, Option<String>) {
        (
            sys::read_trimmed(&self.thp_sysfs.join("enabled")),
            sys::read_trimmed(&self.thp_sysfs.join("defrag")),
        )
    }

    /// What [`Provider::check`] reports, without needing a device: the steps that will be tried,
    /// the configured and free pages of each hugetlb size, and the THP settings, as notes. A
    /// blocker only when no allowed step can succeed whatever the length: every allowed hugetlb
    /// size has 0 pages configured (or no pool), THP is disabled or not allowed, and base pages
    /// are not allowed (that is, fallback is forbidden).
    pub fn check_here(&self) -> ProviderCheck {
        let mut c = ProviderCheck::ok(NAME);
        if let Some(e) = self.config_error() {
            c.blockers.push(e);
            return c;
        }
        let sizes = self.page_sizes();
        c.notes.push(format!(
            "will try, in order: {}",
            sizes
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let mut impossible = Vec::new();
        for size in [PageSize::Huge1G, PageSize::Huge2M] {
            let dir = self.pool_dir(size);
            let allowed = sizes.contains(&size);
            match self.pool(size) {
                Some(p) => {
                    c.notes.push(format!(
                        "{size} pages: {} configured, {} free ({} reserved), overcommit {} ({})",
                        p.nr,
                        p.free,
                        p.resv,
                        p.overcommit,
                        dir.display()
                    ));
                    if allowed && p.configured() == 0 {
                        impossible.push(format!(
                            "{size}: 0 pages configured ({}); reserve some: echo N > {}",
                            dir.join("nr_hugepages").display(),
                            dir.join("nr_hugepages").display()
                        ));
                    }
                }
                None => {
                    c.notes
                        .push(format!("{size} pages: no pool ({} missing)", dir.display()));
                    if allowed {
                        impossible.push(format!(
                            "{size}: the kernel has no pool of this size ({} missing)",
                            dir.display()
                        ));
                    }
                }
            }
        }
        let (enabled, defrag) = self.thp_settings();
        let thp_off = enabled.as_deref().map(selected) == Some("never") || enabled.is_none();
        c.notes.push(format!(
            "transparent huge pages: enabled `{}`, defrag `{}`",
            enabled.as_deref().unwrap_or("unknown (no THP sysfs)"),
            defrag.as_deref().unwrap_or("unknown")
        ));
        if sizes.contains(&PageSize::Transparent) && thp_off {
            impossible.push(format!(
                "THP: disabled ({}/enabled); enable it: echo madvise > {}/enabled",
                self.thp_sysfs.display(),
                self.thp_sysfs.display()
            ));
        }
        if let Some(l) = MemlockLimit::current() {
            c.notes.push(format!(
                "RLIMIT_MEMLOCK {l}: registering a region pins it against this limit"
            ));
        }
        if !sizes.contains(&PageSize::Base) && impossible.len() == sizes.len() {
            c.blockers.push(format!(
                "no allowed page size can be obtained and fallback is forbidden: {}",
                impossible.join("; ")
            ));
        }
        c
    }

    /// Allocates at least `len` bytes, trying the allowed page sizes largest first, as a
    /// concrete [`HugePageRegion`] whose [`HugePageRegion::steps`] say what happened at each
    /// ([`Provider::alloc`] returns the same thing behind `Arc<dyn Region>`).
    ///
    /// # Errors
    /// [`AllocError`] when `largest` is smaller than `smallest`, when `len` is 0, or when no allowed page size could be obtained: its
    ///   `what` lists every step with its reason, its `hint` says how to reserve pages or allow
    ///   fallback, its `source` is the last errno.
    pub fn alloc_region(&self, len: usize) -> Result<HugePageRegion, AllocError> {
        if let Some(e) = self.config_error() {
            return Err(AllocError {
                provider: NAME.to_owned(),
                len,
                what: e,
                hint: "set the largest page size to at least the smallest".to_owned(),
                source: None,
            });
        }
        checked_len(NAME, len, gdrx_core::page_size())?;
        let mut steps = Vec::new();
        let mut last_err = None;
        // A THP attempt that did not become (all) huge is still good memory in base pages.
        let mut leftover: Option<(Mapping, usize)> = None;
        for size in self.page_sizes() {
            let page = size.bytes();
            let tlen = if self.round_up {
                len.checked_next_multiple_of(page)
            } else {
                len.is_multiple_of(page).then_some(len)
            };
            let Some(tlen) = tlen else {
                let reason = if self.round_up {
                    format!(
                        "len {len} overflows when rounded up to {}",
                        sys::human(page)
                    )
                } else {
                    format!(
                        "len {} is not a multiple of {} (rounding up is off)",
                        sys::human(len),
                        sys::human(page)
                    )
                };
                steps.push(Step::new(size, len, StepOutcome::Skipped, reason));
                continue;
            };
            let attempt = match size {
                PageSize::Huge1G | PageSize::Huge2M => self.try_hugetlb(size, tlen),
                PageSize::Transparent => self.try_thp(tlen),
                PageSize::Base => try_base(tlen, leftover.take()),
            };
            match attempt {
                Ok((map, step)) => return Ok(self.finish(len, map, step, steps)),
                Err(f) => {
                    steps.push(f.step);
                    if f.error.is_some() {
                        last_err = f.error;
                    }
                    if f.leftover.is_some() {
                        leftover = f.leftover;
                    }
                }
            }
        }
        Err(self.exhausted(len, &steps, last_err))
    }

    fn try_hugetlb(&self, size: PageSize, tlen: usize) -> Attempt {
        let page = size.bytes();
        let pages = tlen / page;
        let map = match Mapping::anonymous(tlen, size.map_flag()) {
            Ok(m) => m,
            Err(e) => {
                let reason = self.hugetlb_refusal(size, pages, &e);
                return Err(Failure::new(size, tlen, reason, e));
            }
        };
        if let Err(e) = map.populate(page) {
            let reason = format!(
                "mmap reserved {pages} pages but faulting them in failed: {} (a hugetlb cgroup \
                 limit, or no free pages on the NUMA nodes the memory policy allows)",
                sys::describe(&e)
            );
            return Err(Failure::new(size, tlen, reason, e));
        }
        let flags = if size == PageSize::Huge1G {
            "MAP_HUGETLB|MAP_HUGE_1GB"
        } else {
            "MAP_HUGETLB|MAP_HUGE_2MB"
        };
        let mut step = Step::new(
            size,
            tlen,
            StepOutcome::Obtained,
            format!(
                "mmap({flags}) gave {pages} page{}",
                if pages == 1 { "" } else { "s" }
            ),
        );
        match sys::smaps_entry(map.addr().as_ptr() as usize) {
            Ok(Some(e)) if e.kernel_page_size == Some(page) => {
                step.huge_bytes = Some(e.hugetlb);
                step.reason.push_str(&format!(
                    ", smaps: KernelPageSize {}, {} hugetlb",
                    sys::human(page),
                    sys::human(e.hugetlb)
                ));
            }
            Ok(Some(e)) => {
                // Cannot happen with a kernel that honours MAP_HUGE_*; refuse rather than lie.
                let reason = format!(
                    "mmap({flags}) succeeded but smaps reports KernelPageSize {:?}",
                    e.kernel_page_size
                );
                return Err(Failure {
                    step: Step::new(size, tlen, StepOutcome::Failed, reason),
                    error: None,
                    leftover: None,
                });
            }
            Ok(None) | Err(_) => step.reason.push_str(" (not verified: smaps unreadable)"),
        }
        Ok((map, step))
    }

    /// The reason a hugetlb mmap failed, with what sysfs says about the pool.
    fn hugetlb_refusal(&self, size: PageSize, pages: usize, e: &io::Error) -> String {
        let dir = self.pool_dir(size);
        match (e.raw_os_error(), self.pool(size)) {
            (Some(libc::ENOMEM), Some(p)) => {
                let mut s = format!(
                    "ENOMEM: {} free {} pages ({}), {pages} needed",
                    p.free,
                    sys::human(size.bytes()),
                    dir.join("free_hugepages").display()
                );
                if p.resv > 0 {
                    s.push_str(&format!(
                        ", {} of the free ones reserved by other mappings",
                        p.resv
                    ));
                }
                if p.configured() == 0 {
                    s.push_str(&format!(
                        ", none configured ({})",
                        dir.join("nr_hugepages").display()
                    ));
                } else if p.available() >= pages as u64 {
                    s.push_str(" (the pool has enough now: another process raced us, or a cgroup or NUMA policy limits it)");
                }
                s
            }
            (_, None) => format!(
                "{}: the kernel has no pool of {} pages ({} missing: the CPU or kernel does not \
                 support this size)",
                sys::describe(e),
                sys::human(size.bytes()),
                dir.display()
            ),
            _ => sys::describe(e),
        }
    }

    fn try_thp(&self, tlen: usize) -> Attempt {
        let size = PageSize::Transparent;
        let (enabled, defrag) = self.thp_settings();
        let Some(enabled) = enabled else {
            let reason = format!(
                "the kernel has no transparent huge pages ({} missing)",
                self.thp_sysfs.display()
            );
            return Err(Failure::skipped(size, tlen, reason));
        };
        let settings = format!(
            "{}/enabled `{enabled}`, defrag `{}`",
            self.thp_sysfs.display(),
            defrag.as_deref().unwrap_or("unknown")
        );
        if selected(&enabled) == "never" {
            return Err(Failure::skipped(
                size,
                tlen,
                format!("THP disabled: {settings}"),
            ));
        }
        // SAFETY: PR_GET_THP_DISABLE takes no pointers; the trailing arguments must be zero.
        let off = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        if off > 0 {
            let reason = "THP disabled for this process (prctl PR_SET_THP_DISABLE)".to_owned();
            return Err(Failure::skipped(size, tlen, reason));
        }
        let map = match Mapping::anonymous_aligned(tlen, size.bytes()) {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("mmap: {}", sys::describe(&e));
                return Err(Failure::new(size, tlen, reason, e));
            }
        };
        if let Err(e) = map.madvise(libc::MADV_HUGEPAGE) {
            let reason = format!("madvise(MADV_HUGEPAGE): {}", sys::describe(&e));
            return Err(Failure::new(size, tlen, reason, e));
        }
        if let Err(e) = map.populate(gdrx_core::page_size()) {
            let reason = format!("faulting the memory in: {}", sys::describe(&e));
            return Err(Failure::new(size, tlen, reason, e));
        }
        let mut step = Step::new(
            size,
            tlen,
            StepOutcome::Obtained,
            format!(
                "mmap aligned to {} + madvise(MADV_HUGEPAGE)",
                sys::human(size.bytes())
            ),
        );
        match sys::smaps_entry(map.addr().as_ptr() as usize) {
            Ok(Some(e)) => {
                let huge = e.anon_huge_pages;
                step.huge_bytes = Some(huge);
                step.reason.push_str(&format!(
                    ": smaps AnonHugePages {} of {}; {settings}",
                    sys::human(huge),
                    sys::human(tlen)
                ));
                if huge < tlen {
                    step.outcome = StepOutcome::Failed;
                    step.reason.push_str(
                        " (memory too fragmented for the page allocator, or THP limited by a \
                         cgroup or khugepaged settings)",
                    );
                    return Err(Failure {
                        step,
                        error: None,
                        leftover: Some((map, huge)),
                    });
                }
            }
            Ok(None) | Err(_) => step.reason.push_str(&format!(
                " (requested, not verified: smaps unreadable); {settings}"
            )),
        }
        Ok((map, step))
    }

    fn finish(&self, len: usize, map: Mapping, got: Step, mut steps: Vec<Step>) -> HugePageRegion {
        let size = got.page_size;
        let mut origin = format!("{}: {}", got.page_size, got.reason);
        if got.len != len {
            origin.push_str(&format!(
                "; len {} rounded up to {}",
                sys::human(len),
                sys::human(got.len)
            ));
        }
        if !steps.is_empty() {
            let before: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
            origin.push_str(&format!("; before that: {}", before.join("; ")));
        }
        steps.push(got);
        let numa_node = sys::numa_node(map.addr(), map.len(), size.bytes());
        if let Some(n) = numa_node {
            origin.push_str(&format!("; NUMA node {n}"));
        }
        let desc = RegionDesc {
            len: map.len(),
            addr: Some(map.addr()),
            cpu_readable: true,
            page_size: size.bytes(),
            numa_node,
            device: None,
            origin,
        };
        if steps.len() > 1 {
            tracing::info!(provider = NAME, len, origin = %desc.origin, "fell back to smaller pages");
        } else {
            tracing::debug!(provider = NAME, len, origin = %desc.origin, "region allocated");
        }
        HugePageRegion {
            map,
            desc,
            steps,
            size,
        }
    }

    /// The error when every allowed step failed.
    fn exhausted(&self, len: usize, steps: &[Step], source: Option<io::Error>) -> AllocError {
        let mut hints = Vec::new();
        let unrounded = |s: &Step| s.reason.contains("rounding up is off");
        if steps.iter().any(unrounded) {
            hints.push(
                "ask for a multiple of the page size or enable rounding up \
                 (HugePageProvider::round_up(true))"
                    .to_owned(),
            );
        }
        for s in steps.iter().filter(|s| !unrounded(s)) {
            match s.page_size {
                p if p.is_hugetlb() => {
                    let pages = s.len / p.bytes();
                    let more = self.pool(p).map_or(0, |pool| pool.nr) + pages as u64;
                    hints.push(format!(
                        "reserve {} pages: echo {more} > {} (boot with hugepagesz={} \
                         hugepages=N where memory is fragmented)",
                        sys::human(p.bytes()),
                        self.pool_dir(p).join("nr_hugepages").display(),
                        if p == PageSize::Huge1G { "1G" } else { "2M" }
                    ));
                }
                PageSize::Transparent if s.reason.contains("disabled") => hints.push(format!(
                    "enable THP: echo madvise > {}/enabled",
                    self.thp_sysfs.display()
                )),
                PageSize::Transparent if s.huge_bytes.is_some() => hints.push(
                    "defragment memory for THP: echo 1 > /proc/sys/vm/compact_memory".to_owned(),
                ),
                _ => {}
            }
        }
        if self.smallest != PageSize::Base {
            hints
                .push("or allow fallback to smaller pages (HugePageProvider::smallest)".to_owned());
        }
        if hints.is_empty() {
            hints.push("free some memory or allocate less".to_owned());
        }
        AllocError {
            provider: NAME.to_owned(),
            len,
            what: format!(
                "no allowed page size could be obtained: {}",
                steps
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join("; then ")
            ),
            hint: hints.join("; "),
            source,
        }
    }
}

/// The base-page step: the THP attempt's mapping when there is one, else a fresh mapping.
fn try_base(tlen: usize, leftover: Option<(Mapping, usize)>) -> Attempt {
    let size = PageSize::Base;
    if let Some((map, huge)) = leftover {
        let mut step = Step::new(
            size,
            map.len(),
            StepOutcome::Obtained,
            format!(
                "kept the THP attempt's mapping ({} of it in transparent huge pages, the rest in \
                 base pages)",
                sys::human(huge)
            ),
        );
        step.huge_bytes = Some(huge);
        return Ok((map, step));
    }
    let map = match Mapping::anonymous(tlen, 0) {
        Ok(m) => m,
        Err(e) => {
            let reason = format!("mmap: {}", sys::describe(&e));
            return Err(Failure::new(size, tlen, reason, e));
        }
    };
    // EINVAL here means a kernel without THP: base pages anyway.
    let _ = map.madvise(libc::MADV_NOHUGEPAGE);
    if let Err(e) = map.populate(size.bytes()) {
        let reason = format!("faulting the memory in: {}", sys::describe(&e));
        return Err(Failure::new(size, tlen, reason, e));
    }
    let reason = "anonymous mmap (MADV_NOHUGEPAGE), faulted in".to_owned();
    Ok((map, Step::new(size, tlen, StepOutcome::Obtained, reason)))
}

/// The selected word of a sysfs choice list: `always [madvise] never` -> `madvise`.
fn selected(s: &str) -> &str {
    s.split_once('[')
        .and_then(|(_, r)| r.split_once(']'))
        .map_or(s, |(w, _)| w)
}

// SAFETY: every region comes from `alloc_region`, which maps `desc.len` bytes of private
// read/write memory (hugetlb, THP or base pages) at `desc.addr`, faults them in, and keeps them
// mapped (never remapped or shrunk) until the region is dropped; nothing else in the process
// knows the mapping. There is no dma-buf view.
unsafe impl Provider for HugePageProvider {
    fn name(&self) -> &str {
        NAME
    }

    fn kind(&self) -> MemoryKind {
        MemoryKind::HugePage
    }

    fn check(&self, _device: &Device) -> ProviderCheck {
        self.check_here()
    }

    fn alloc(&self, len: usize) -> Result<Arc<dyn Region>, AllocError> {
        Ok(Arc::new(self.alloc_region(len)?))
    }
}

/// A region of huge page memory; dropping it unmaps the memory (hugetlb pages go back to their
/// pool).
pub struct HugePageRegion {
    map: Mapping,
    desc: RegionDesc,
    steps: Vec<Step>,
    size: PageSize,
}

// SAFETY: the region owns its mapping like a `Box<[u8]>` owns its bytes and hands out only the
// address; nothing in it is tied to a thread, and `munmap` may be called from any thread.
unsafe impl Send for HugePageRegion {}
// SAFETY: `&HugePageRegion` only reads the immutable description and steps.
unsafe impl Sync for HugePageRegion {}

impl HugePageRegion {
    /// Every step tried, in order; the last one is [`StepOutcome::Obtained`].
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The page size obtained (its bytes are `desc().page_size`).
    pub fn page_size(&self) -> PageSize {
        self.size
    }
}

impl fmt::Debug for HugePageRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HugePageRegion")
            .field("map", &self.map)
            .field("page_size", &self.size)
            .field("desc", &self.desc)
            .field("steps", &self.steps)
            .finish()
    }
}

impl Region for HugePageRegion {
    fn desc(&self) -> &RegionDesc {
        &self.desc
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests;
