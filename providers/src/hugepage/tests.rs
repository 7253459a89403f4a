//! Tests of the huge page provider. The ones that allocate run on whatever this machine has
//! (none, 2 MiB or 1 GiB hugetlb pages, THP on or off) and assert that the outcome matches what
//! sysfs says; the check and error-message tests use a fake sysfs tree.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;

const MIB: usize = 1 << 20;

/// Serialises the tests that take hugetlb pages, so that one test's pages are not missing from
/// another's sysfs-based expectation.
static HUGETLB: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    HUGETLB.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pages of `size` a new mapping can reserve on this machine right now.
fn available(size: PageSize) -> u64 {
    HugePageProvider::new()
        .pool(size)
        .map_or(0, |p| p.available())
}

/// Asserts what every successful allocation must satisfy, and touches every page.
fn assert_consistent(p: &HugePageProvider, r: &HugePageRegion, len: usize) {
    let steps = r.steps();
    let d = r.desc();
    let (last, before) = steps.split_last().expect("at least one step");
    assert_eq!(last.outcome, StepOutcome::Obtained, "{steps:#?}");
    assert!(before.iter().all(|s| s.outcome != StepOutcome::Obtained));
    let order: Vec<PageSize> = steps.iter().map(|s| s.page_size).collect();
    assert_eq!(
        order,
        p.page_sizes()[..steps.len()],
        "steps follow the allowed order"
    );
    assert_eq!(r.page_size(), last.page_size);
    assert_eq!(d.page_size, last.page_size.bytes());
    assert_eq!(d.len, last.len);
    assert!(d.len >= len && d.len.is_multiple_of(d.page_size), "{d:?}");
    let addr = d.addr.unwrap().as_ptr();
    assert_eq!(addr as usize % d.page_size, 0);
    assert!(d.cpu_readable);
    for s in before {
        assert!(
            d.origin.contains(&s.page_size.to_string()),
            "origin names {}: {}",
            s.page_size,
            d.origin
        );
        if s.errno == Some(libc::ENOMEM) && s.page_size.is_hugetlb() {
            assert!(s.reason.contains("free"), "{s}");
        }
    }
    if last.page_size.is_hugetlb() {
        assert_eq!(last.huge_bytes, Some(d.len), "{last}");
    }
    if last.page_size == PageSize::Transparent {
        assert!(last.huge_bytes.is_none_or(|h| h >= d.len), "{last}");
    }
    for off in (0..d.len).step_by(gdrx_core::page_size()) {
        // SAFETY: in bounds of the region's read/write mapping, which no NIC has.
        unsafe {
            addr.add(off).write_volatile(off as u8 | 1);
            assert_eq!(addr.add(off).read_volatile(), off as u8 | 1);
        }
    }
    println!("{}: {}", sys::human(len), d.origin);
}

#[test]
fn default_falls_back_as_far_as_this_machine_needs() {
    let _g = lock();
    let p = HugePageProvider::new();
    assert_eq!((p.name(), p.kind()), ("hugepage", MemoryKind::HugePage));
    // What sysfs says (before the allocation takes pages) decides the first two steps.
    let (avail1g, avail2m) = (available(PageSize::Huge1G), available(PageSize::Huge2M));
    let r = p.alloc_region(3 * MIB).unwrap();
    assert_consistent(&p, &r, 3 * MIB);
    let got = r.page_size();
    if avail1g >= 1 {
        assert_eq!(got, PageSize::Huge1G);
    } else {
        assert_eq!(r.steps()[0].page_size, PageSize::Huge1G);
        assert_eq!(r.steps()[0].outcome, StepOutcome::Failed);
        if avail2m >= 2 {
            assert_eq!(got, PageSize::Huge2M);
            assert_eq!(r.desc().len, 4 * MIB);
            assert!(r.desc().origin.contains("rounded up to 4 MiB"));
        } else {
            assert!(!got.is_hugetlb(), "{:?}", r.steps());
        }
    }
    let dynr = p.alloc(MIB).unwrap();
    assert!(dynr.as_any().downcast_ref::<HugePageRegion>().is_some());
    assert!(dynr.dmabuf().is_none());
}

#[test]
fn requiring_1g_fails_naming_the_step_when_there_are_no_1g_pages() {
    let _g = lock();
    let p = HugePageProvider::new().require(PageSize::Huge1G);
    assert_eq!(p.page_sizes(), [PageSize::Huge1G]);
    let configured = p.pool(PageSize::Huge1G).map_or(0, |x| x.configured());
    assert_eq!(
        p.check_here().is_usable(),
        configured > 0,
        "{}",
        p.check_here()
    );
    let avail1g = available(PageSize::Huge1G);
    match p.alloc_region(1) {
        Ok(r) => {
            assert_eq!(r.page_size(), PageSize::Huge1G);
            assert_consistent(&p, &r, 1);
            assert_eq!(r.desc().len, 1 << 30);
            assert!(r.desc().origin.contains("rounded up to 1 GiB"));
        }
        Err(e) => {
            assert_eq!(avail1g, 0, "1 GiB pages were free, yet: {e}");
            let AllocError {
                ref what, ref hint, ..
            } = e;
            assert!(what.contains("1 GiB hugetlb (1 GiB): failed"), "{e}");
            assert!(hint.contains("hugepages-1048576kB/nr_hugepages"), "{e}");
            assert!(hint.contains("allow fallback"), "{e}");
            assert!(
                !what.contains("2 MiB") && !what.contains("THP"),
                "only 1 GiB: {e}"
            );
            println!("as expected without 1 GiB pages: {e}");
        }
    }
}

#[test]
fn no_fallback_below_2m_names_both_hugetlb_steps() {
    let _g = lock();
    let p = HugePageProvider::new().smallest(PageSize::Huge2M);
    assert_eq!(p.page_sizes(), [PageSize::Huge1G, PageSize::Huge2M]);
    let (avail1g, avail2m) = (available(PageSize::Huge1G), available(PageSize::Huge2M));
    match p.alloc_region(4 * MIB) {
        Ok(r) => {
            assert_consistent(&p, &r, 4 * MIB);
            assert!(r.page_size().is_hugetlb());
        }
        Err(e) => {
            assert!(avail1g == 0 && avail2m < 2, "{e}");
            let AllocError { ref what, .. } = e;
            assert!(
                what.contains("1 GiB hugetlb") && what.contains("2 MiB hugetlb"),
                "{e}"
            );
            assert!(!what.contains("THP") && !what.contains("base"), "{e}");
            println!("as expected without hugetlb pages: {e}");
        }
    }
}

#[test]
fn without_rounding_sizes_that_do_not_divide_the_length_are_skipped() {
    let p = HugePageProvider::new().round_up(false);
    let r = p.alloc_region(3 * MIB).unwrap();
    assert_consistent(&p, &r, 3 * MIB);
    assert_eq!(r.page_size(), PageSize::Base);
    assert_eq!(r.desc().len, 3 * MIB);
    let skipped: Vec<_> = r.steps()[..3].iter().map(|s| s.outcome).collect();
    assert_eq!(skipped, [StepOutcome::Skipped; 3], "{:?}", r.steps());
    assert!(r.steps()[0].reason.contains("not a multiple of 1 GiB"));

    let e = HugePageProvider::new()
        .require(PageSize::Huge2M)
        .round_up(false)
        .alloc_region(3 * MIB)
        .unwrap_err();
    let msg = e.to_string();
    assert_eq!(e.len, 3 * MIB, "{msg}");
    assert!(
        msg.contains("not a multiple of 2 MiB") && msg.contains("round_up"),
        "{msg}"
    );
}

#[test]
fn thp_step_matches_the_thp_setting() {
    let p = HugePageProvider::new().require(PageSize::Transparent);
    let (enabled, _) = p.thp_settings();
    match p.alloc_region(4 * MIB) {
        Ok(r) => {
            assert_consistent(&p, &r, 4 * MIB);
            assert_eq!(r.steps()[0].huge_bytes, Some(4 * MIB), "{:?}", r.steps());
            assert!(r.desc().origin.contains("AnonHugePages 4 MiB of 4 MiB"));
        }
        Err(e) => {
            let msg = e.to_string();
            match enabled.as_deref().map(selected) {
                Some("never") | None => assert!(msg.contains("skipped"), "{msg}"),
                // Enabled, yet the kernel could not find free 2 MiB blocks: depends on this
                // machine's fragmentation, so only the report is checked.
                _ => {
                    assert!(msg.contains("AnonHugePages"), "{msg}");
                    println!("skipped THP success check: memory too fragmented here: {msg}");
                }
            }
        }
    }
}

#[test]
fn bad_ranges_and_zero_lengths_are_refused() {
    let p = HugePageProvider::new()
        .largest(PageSize::Base)
        .smallest(PageSize::Huge1G);
    assert!(p.page_sizes().is_empty());
    let e = p
        .alloc_region(MIB)
        .expect_err("largest below smallest is refused");
    assert!(e.what.contains("smaller than smallest"), "{e}");
    assert!(!p.check_here().is_usable());
    let e = HugePageProvider::new().alloc(0).unwrap_err();
    assert_eq!(e.len, 0, "{e}");
    let p = HugePageProvider::new()
        .largest(PageSize::Huge2M)
        .forbid_fallback();
    assert_eq!(p.page_sizes(), [PageSize::Huge2M]);
}

#[test]
fn selected_word_of_a_sysfs_choice() {
    assert_eq!(selected("always [madvise] never"), "madvise");
    assert_eq!(selected("[always] madvise never"), "always");
    assert_eq!(selected("never"), "never");
}

/// A fake `/sys/kernel/mm` with the given 2 MiB and 1 GiB pools (`None`: no pool) and THP
/// setting, removed on drop.
struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    fn new(huge2m: Option<(u64, u64)>, huge1g: Option<(u64, u64)>, thp: &str) -> FakeSysfs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "gdrx-fake-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (kb, pool) in [(2048, huge2m), (1048576, huge1g)] {
            if let Some((nr, free)) = pool {
                let d = root.join(format!("hugepages/hugepages-{kb}kB"));
                std::fs::create_dir_all(&d).unwrap();
                for (f, v) in [
                    ("nr_hugepages", nr),
                    ("free_hugepages", free),
                    ("resv_hugepages", 0),
                    ("nr_overcommit_hugepages", 0),
                    ("surplus_hugepages", 0),
                ] {
                    std::fs::write(d.join(f), format!("{v}\n")).unwrap();
                }
            }
        }
        let t = root.join("transparent_hugepage");
        std::fs::create_dir_all(&t).unwrap();
        std::fs::write(t.join("enabled"), format!("{thp}\n")).unwrap();
        std::fs::write(
            t.join("defrag"),
            "always defer defer+madvise [madvise] never\n",
        )
        .unwrap();
        FakeSysfs { root }
    }

    fn provider(&self) -> HugePageProvider {
        HugePageProvider::new().with_sysfs(
            &self.root.join("hugepages"),
            &self.root.join("transparent_hugepage"),
        )
    }

    fn path(&self) -> &Path {
        &self.root
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn check_reports_pools_and_blocks_only_when_fallback_is_forbidden() {
    // The testbed: 64 free 2 MiB pages, no 1 GiB pool, THP on madvise.
    let fs = FakeSysfs::new(Some((64, 64)), None, "always [madvise] never");
    let c = fs.provider().check_here();
    assert!(c.is_usable(), "{c}");
    let notes = c.notes.join("\n");
    assert!(
        notes.contains("2 MiB hugetlb pages: 64 configured, 64 free"),
        "{notes}"
    );
    assert!(notes.contains("1 GiB hugetlb pages: no pool"), "{notes}");
    assert!(
        notes.contains("enabled `always [madvise] never`"),
        "{notes}"
    );
    assert!(fs
        .provider()
        .require(PageSize::Huge2M)
        .check_here()
        .is_usable());
    let c = fs.provider().require(PageSize::Huge1G).check_here();
    assert!(
        !c.is_usable() && c.blockers[0].contains("1 GiB hugetlb"),
        "{c}"
    );
    // Free pages may come and go; only configured ones decide.
    let fs = FakeSysfs::new(Some((8, 0)), Some((0, 0)), "always madvise [never]");
    assert!(fs
        .provider()
        .require(PageSize::Huge2M)
        .check_here()
        .is_usable());
    let c = fs.provider().require(PageSize::Huge1G).check_here();
    assert!(c.blockers[0].contains("0 pages configured"), "{c}");
    assert!(c.blockers[0].contains("echo N >"), "{c}");
    let fs = FakeSysfs::new(Some((0, 0)), None, "always madvise [never]");
    let c = fs.provider().smallest(PageSize::Transparent).check_here();
    assert!(!c.is_usable(), "{c}");
    assert!(c.blockers[0].contains("THP: disabled"), "{c}");
    assert!(
        fs.provider().check_here().is_usable(),
        "base pages are allowed"
    );
    assert!(fs.path().exists());
}

#[test]
fn refusal_reasons_and_hints_quote_sysfs() {
    let fs = FakeSysfs::new(Some((2, 1)), Some((0, 0)), "always [madvise] never");
    let p = fs.provider().smallest(PageSize::Huge2M);
    let enomem = io::Error::from_raw_os_error(libc::ENOMEM);
    let r = p.hugetlb_refusal(PageSize::Huge1G, 1, &enomem);
    let dir = fs.path().join("hugepages/hugepages-1048576kB");
    assert_eq!(
        r,
        format!(
            "ENOMEM: 0 free 1 GiB pages ({}), 1 needed, none configured ({})",
            dir.join("free_hugepages").display(),
            dir.join("nr_hugepages").display()
        )
    );
    let r = p.hugetlb_refusal(PageSize::Huge2M, 3, &enomem);
    assert!(
        r.starts_with("ENOMEM: 1 free 2 MiB pages (") && r.ends_with("3 needed"),
        "{r}"
    );
    let fs_no1g = FakeSysfs::new(Some((2, 1)), None, "never");
    let einval = io::Error::from_raw_os_error(libc::EINVAL);
    let r = fs_no1g
        .provider()
        .hugetlb_refusal(PageSize::Huge1G, 1, &einval);
    assert!(
        r.starts_with("EINVAL (") && r.contains("no pool of 1 GiB pages"),
        "{r}"
    );

    let steps = [
        Step {
            errno: Some(libc::ENOMEM),
            ..Step::new(PageSize::Huge1G, 1 << 30, StepOutcome::Failed, "one".into())
        },
        Step {
            errno: Some(libc::ENOMEM),
            ..Step::new(PageSize::Huge2M, 4 * MIB, StepOutcome::Failed, "two".into())
        },
    ];
    let e = p.exhausted(3 * MIB, &steps, Some(enomem));
    let AllocError {
        what, hint, source, ..
    } = &e;
    assert_eq!(
        what,
        "no allowed page size could be obtained: 1 GiB hugetlb (1 GiB): failed: one; then \
         2 MiB hugetlb (4 MiB): failed: two"
    );
    assert!(
        hint.contains(&format!("echo 1 > {}", dir.join("nr_hugepages").display())),
        "{hint}"
    );
    assert!(
        hint.contains("echo 4 > "),
        "2 configured + 2 needed: {hint}"
    );
    assert!(hint.ends_with("or allow fallback to smaller pages (HugePageProvider::smallest)"));
    assert!(source.is_some());
    assert_eq!(steps[0].to_string(), "1 GiB hugetlb (1 GiB): failed: one");
}

#[test]
fn a_partly_huge_thp_mapping_is_kept_as_base_pages() {
    let map = Mapping::anonymous_aligned(4 * MIB, 2 * MIB).unwrap();
    map.populate(gdrx_core::page_size()).unwrap();
    let addr = map.addr();
    let (kept, step) =
        try_base(4 * MIB, Some((map, 2 * MIB))).unwrap_or_else(|f| panic!("{}", f.step));
    assert_eq!(kept.addr(), addr, "the same mapping, not a new one");
    assert_eq!(step.outcome, StepOutcome::Obtained);
    assert_eq!((step.len, step.huge_bytes), (4 * MIB, Some(2 * MIB)));
    assert!(
        step.reason
            .contains("kept the THP attempt's mapping (2 MiB of it"),
        "{step}"
    );
}
