//! The vocabulary of a huge page allocation: the page sizes tried ([`PageSize`]), what happened
//! at each ([`Step`], [`StepOutcome`]), and the hugetlb pool counters sysfs reports.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::OnceLock;

use crate::sys::{self, Mapping};

use super::THP_SYSFS;

/// A page size [`HugePageProvider`](super::HugePageProvider) can try, from largest to smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PageSize {
    /// 1 GiB hugetlb pages (`MAP_HUGETLB | MAP_HUGE_1GB`), from
    /// `/sys/kernel/mm/hugepages/hugepages-1048576kB`.
    Huge1G,
    /// 2 MiB hugetlb pages (`MAP_HUGETLB | MAP_HUGE_2MB`), from
    /// `/sys/kernel/mm/hugepages/hugepages-2048kB`.
    Huge2M,
    /// Transparent huge pages (PMD size, 2 MiB on x86-64), asked for with `MADV_HUGEPAGE`.
    Transparent,
    /// The system's base pages (4 KiB on x86-64).
    Base,
}

impl PageSize {
    /// Every size, largest first: the order the provider tries them in.
    pub const ALL: [PageSize; 4] = [
        PageSize::Huge1G,
        PageSize::Huge2M,
        PageSize::Transparent,
        PageSize::Base,
    ];

    /// The page size in bytes.
    pub fn bytes(self) -> usize {
        match self {
            PageSize::Huge1G => 1 << 30,
            PageSize::Huge2M => 2 << 20,
            PageSize::Transparent => thp_size(),
            PageSize::Base => gdrx_core::page_size(),
        }
    }

    /// True for the hugetlb sizes (a pool of pages reserved in advance).
    pub fn is_hugetlb(self) -> bool {
        matches!(self, PageSize::Huge1G | PageSize::Huge2M)
    }

    /// Position in [`PageSize::ALL`] (0 = largest).
    pub(super) fn rank(self) -> usize {
        PageSize::ALL.iter().position(|&p| p == self).unwrap_or(0)
    }

    pub(super) fn map_flag(self) -> libc::c_int {
        match self {
            PageSize::Huge1G => libc::MAP_HUGETLB | libc::MAP_HUGE_1GB,
            PageSize::Huge2M => libc::MAP_HUGETLB | libc::MAP_HUGE_2MB,
            PageSize::Transparent | PageSize::Base => 0,
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            PageSize::Huge1G | PageSize::Huge2M => "hugetlb",
            PageSize::Transparent => "THP",
            PageSize::Base => "base",
        };
        write!(f, "{} {kind}", sys::human(self.bytes()))
    }
}

/// The PMD (transparent huge page) size, from sysfs; 2 MiB when it cannot be read.
pub(super) fn thp_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        sys::read_u64(&Path::new(THP_SYSFS).join("hpage_pmd_size"))
            .and_then(|v| usize::try_from(v).ok())
            .filter(|v| v.is_power_of_two())
            .unwrap_or(2 << 20)
    })
}

/// What happened at one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StepOutcome {
    /// The region uses this page size.
    Obtained,
    /// Tried and refused (the reason says by what).
    Failed,
    /// Not tried (e.g. THP disabled, or the length is not a multiple and rounding is off).
    Skipped,
}

/// One step of a huge page allocation, as recorded in [`HugePageRegion::steps`](super::HugePageRegion::steps) and in the
/// error when every step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Step {
    /// The page size tried.
    pub page_size: PageSize,
    /// Bytes tried: the requested length rounded up to this page size (the requested length for
    /// a step skipped before rounding).
    pub len: usize,
    /// What happened.
    pub outcome: StepOutcome,
    /// Why, in words: the errno and what sysfs says, e.g. `ENOMEM: 0 free 1 GiB pages
    /// (/sys/kernel/mm/hugepages/hugepages-1048576kB/free_hugepages), 1 needed`.
    pub reason: String,
    /// The errno behind a failure, when there was one.
    pub errno: Option<i32>,
    /// Bytes `/proc/self/smaps` shows as huge pages in the mapping (`Private_Hugetlb` for
    /// hugetlb, `AnonHugePages` for THP), when it was checked.
    pub huge_bytes: Option<usize>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.outcome {
            StepOutcome::Obtained => "obtained",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
        };
        write!(
            f,
            "{} ({}): {what}: {}",
            self.page_size,
            sys::human(self.len),
            self.reason
        )
    }
}

/// Counters of one hugetlb pool in sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pool {
    pub(super) nr: u64,
    pub(super) free: u64,
    pub(super) resv: u64,
    pub(super) overcommit: u64,
    pub(super) surplus: u64,
}

impl Pool {
    /// Pages a new mapping can still reserve.
    pub(super) fn available(&self) -> u64 {
        self.free.saturating_sub(self.resv) + self.overcommit.saturating_sub(self.surplus)
    }

    /// Pages the pool may ever hold.
    pub(super) fn configured(&self) -> u64 {
        self.nr + self.overcommit
    }
}

pub(super) type Attempt = std::result::Result<(Mapping, Step), Failure>;

/// A failed step, the errno behind it, and memory the next step may reuse.
pub(super) struct Failure {
    pub(super) step: Step,
    pub(super) error: Option<io::Error>,
    pub(super) leftover: Option<(Mapping, usize)>,
}

impl Failure {
    pub(super) fn new(size: PageSize, len: usize, reason: String, e: io::Error) -> Failure {
        let mut step = Step::new(size, len, StepOutcome::Failed, reason);
        step.errno = e.raw_os_error();
        Failure {
            step,
            error: Some(e),
            leftover: None,
        }
    }

    pub(super) fn skipped(size: PageSize, len: usize, reason: String) -> Failure {
        Failure {
            step: Step::new(size, len, StepOutcome::Skipped, reason),
            error: None,
            leftover: None,
        }
    }
}

impl Step {
    pub(super) fn new(
        page_size: PageSize,
        len: usize,
        outcome: StepOutcome,
        reason: String,
    ) -> Step {
        Step {
            page_size,
            len,
            outcome,
            reason,
            errno: None,
            huge_bytes: None,
        }
    }
}
