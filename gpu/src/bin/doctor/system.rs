//! What the machine offers before any device is opened: the kernel, the locked-memory limit,
//! huge pages, `/dev/udmabuf`, the kernel's RDMA support, and the memory providers' own checks.
//!
//! Every reader takes its root directory (`/sys`, `/proc`, `/lib/modules`) as an argument so
//! that the tests can point it at a fake tree.

use std::path::Path;

use gdrx_core::{MemlockLimit, ProviderCheck};
use gdrx_providers::{HostProvider, HugePageProvider, UdmabufProvider};
use serde::Serialize;

/// Below this soft RLIMIT_MEMLOCK the report warns: a pool of a few thousand 64 KiB slots does
/// not fit.
pub const MEMLOCK_ADVICE_MIN: u64 = 64 << 20;

/// `CAP_IPC_LOCK`'s bit in the capability sets: with it, `ibv_reg_mr` ignores RLIMIT_MEMLOCK.
const CAP_IPC_LOCK: u32 = 14;

/// The kernel modules the RDMA receive path uses, in load order.
pub const RDMA_MODULES: [&str; 5] = ["ib_core", "ib_uverbs", "rdma_cm", "rdma_ucm", "rdma_rxe"];

/// The system section of the report.
#[derive(Debug, Serialize)]
pub struct System {
    /// `uname -r`.
    pub kernel: String,
    /// `uname -m`.
    pub machine: String,
    /// RLIMIT_MEMLOCK and whether it is a problem.
    pub memlock: Memlock,
    /// Every hugetlb page size the kernel has a pool for, smallest first.
    pub hugepages: Vec<HugePool>,
    /// Whether `/dev/udmabuf` exists.
    pub udmabuf: bool,
    /// The kernel's RDMA support.
    pub rdma_kernel: RdmaKernel,
    /// The memory providers' checks (host, hugepage, udmabuf).
    pub providers: Vec<ProviderFacts>,
}

impl System {
    /// Reads everything from the live system.
    pub fn probe() -> System {
        let (kernel, machine) = uname();
        System {
            memlock: Memlock::probe(),
            hugepages: hugepage_pools(Path::new("/sys/kernel/mm/hugepages")),
            udmabuf: Path::new("/dev/udmabuf").exists(),
            rdma_kernel: RdmaKernel::probe_in(
                Path::new("/sys"),
                &Path::new("/lib/modules").join(&kernel),
            ),
            providers: [
                HostProvider::new().check_here(),
                HugePageProvider::new().check_here(),
                UdmabufProvider::new().check_here(),
            ]
            .into_iter()
            .map(ProviderFacts::from)
            .collect(),
            kernel,
            machine,
        }
    }

    /// The providers that are usable here, by name, in words (`host and hugepage`).
    pub fn usable_providers(&self) -> String {
        let names: Vec<&str> = self
            .providers
            .iter()
            .filter(|p| p.usable)
            .map(|p| p.provider.as_str())
            .collect();
        match names.split_last() {
            None => "no".to_owned(),
            Some((last, [])) => (*last).to_owned(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }
}

/// `uname -r` and `uname -m` (`unknown` when uname fails).
fn uname() -> (String, String) {
    // SAFETY: `utsname` is plain old data: all zeroes is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the duration of the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("unknown".into(), "unknown".into());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (field(&u.release), field(&u.machine))
}

/// RLIMIT_MEMLOCK as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Memlock {
    /// The soft limit (`unlimited`, `8 MiB`), or `unknown` when getrlimit failed.
    pub soft: String,
    /// The hard limit, written the same way.
    pub hard: String,
    /// The soft limit in bytes; `null` when unlimited or unknown.
    pub soft_bytes: Option<u64>,
    /// The hard limit in bytes; `null` when unlimited or unknown.
    pub hard_bytes: Option<u64>,
    /// Whether this process has CAP_IPC_LOCK (then registration ignores the limit); `null` when
    /// `/proc/self/status` could not be read.
    pub cap_ipc_lock: Option<bool>,
    /// What is wrong with the limit and what to do, when something is.
    pub warning: Option<String>,
    /// True when the limit restricts registration by this process (it is finite and the process
    /// lacks CAP_IPC_LOCK).
    pub limits_this_process: bool,
}

impl Memlock {
    /// Reads the calling process's limit and capabilities.
    fn probe() -> Memlock {
        let cap = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| cap_ipc_lock_in_status(&s));
        Memlock::new(MemlockLimit::current(), cap)
    }

    /// The report's view of `limit` (`None`: getrlimit failed).
    pub fn new(limit: Option<MemlockLimit>, cap_ipc_lock: Option<bool>) -> Memlock {
        let Some(l) = limit else {
            return Memlock {
                soft: "unknown".into(),
                hard: "unknown".into(),
                soft_bytes: None,
                hard_bytes: None,
                cap_ipc_lock,
                warning: Some("getrlimit(RLIMIT_MEMLOCK) failed".into()),
                limits_this_process: false,
            };
        };
        Memlock {
            soft: limit_text(l.soft),
            hard: limit_text(l.hard),
            soft_bytes: l.soft,
            hard_bytes: l.hard,
            cap_ipc_lock,
            warning: memlock_warning(l, cap_ipc_lock == Some(true)),
            limits_this_process: l.soft.is_some() && cap_ipc_lock != Some(true),
        }
    }
}

/// `unlimited`, or the size in the largest unit that divides it (`64 KiB`, `8 MiB`, `1000 B`).
pub fn limit_text(v: Option<u64>) -> String {
    match v {
        None => "unlimited".into(),
        Some(b) => human(b),
    }
}

/// A byte count in the largest binary unit that divides it.
pub fn human(b: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|&&(u, _)| b >= u && b.is_multiple_of(u))
        .map_or_else(
            || format!("{b} B"),
            |&(u, name)| format!("{} {name}", b / u),
        )
}

/// What is wrong with a soft limit below [`MEMLOCK_ADVICE_MIN`], and what to do.
pub fn memlock_warning(l: MemlockLimit, cap_ipc_lock: bool) -> Option<String> {
    let soft = l.soft?;
    if soft >= MEMLOCK_ADVICE_MIN {
        return None;
    }
    let fix = format!(
        "to raise it: `ulimit -l unlimited` in the shell that starts the process (up to the hard \
         limit, {}), a `* - memlock unlimited` line in /etc/security/limits.conf, \
         `docker run --ulimit memlock=-1`, or LimitMEMLOCK=infinity in a systemd unit",
        limit_text(l.hard)
    );
    Some(if cap_ipc_lock {
        format!(
            "RLIMIT_MEMLOCK soft limit {} is below {}; it does not limit this process \
             (CAP_IPC_LOCK), but one without that capability cannot register more; {fix}",
            human(soft),
            human(MEMLOCK_ADVICE_MIN)
        )
    } else {
        format!(
            "RLIMIT_MEMLOCK soft limit {} is too small for registering big pools (below {}; \
             ibv_reg_mr pins memory against it and fails with ENOMEM beyond it); {fix}",
            human(soft),
            human(MEMLOCK_ADVICE_MIN)
        )
    })
}

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has CAP_IPC_LOCK.
pub fn cap_ipc_lock_in_status(status: &str) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let caps = u64::from_str_radix(hex, 16).ok()?;
    Some(caps & (1 << CAP_IPC_LOCK) != 0)
}

/// One hugetlb pool (`/sys/kernel/mm/hugepages/hugepages-<N>kB`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugePool {
    /// Page size in KiB.
    pub size_kib: u64,
    /// Page size in words (`2 MiB`).
    pub size: String,
    /// `nr_hugepages`: pages configured (`null` when unreadable).
    pub nr: Option<u64>,
    /// `free_hugepages`: pages not in use (`null` when unreadable).
    pub free: Option<u64>,
}

/// Every hugetlb pool under `root`, smallest page size first; empty when `root` is missing.
pub fn hugepage_pools(root: &Path) -> Vec<HugePool> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let read = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let mut pools: Vec<HugePool> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let kib: u64 = name
                .to_str()?
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let d = e.path();
            Some(HugePool {
                size_kib: kib,
                size: human(kib << 10),
                nr: read(&d, "nr_hugepages"),
                free: read(&d, "free_hugepages"),
            })
        })
        .collect();
    pools.sort_by_key(|p| p.size_kib);
    pools
}

/// The kernel's RDMA support, from sysfs and the module lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RdmaKernel {
    /// Whether `/sys/class/infiniband` exists (an RDMA driver is loaded).
    pub sysfs_class: bool,
    /// The devices listed there.
    pub class_devices: Vec<String>,
    /// Each module of [`RDMA_MODULES`]: loaded (or built in with sysfs entries) or not.
    pub modules: Vec<Module>,
    /// Whether this kernel ships `rdma_rxe` (as a module or built in), from
    /// `/lib/modules/<release>/modules.dep` and `modules.builtin`; `null` when those are
    /// missing.
    pub rxe_available: Option<bool>,
}

/// One kernel module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Module {
    /// Its name.
    pub name: &'static str,
    /// Whether `/sys/module/<name>` exists.
    pub loaded: bool,
}

impl RdmaKernel {
    /// Reads `sys_root` (`/sys`) and `modules_dir` (`/lib/modules/<release>`).
    pub fn probe_in(sys_root: &Path, modules_dir: &Path) -> RdmaKernel {
        let class = sys_root.join("class/infiniband");
        let mut class_devices: Vec<String> = std::fs::read_dir(&class)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        class_devices.sort();
        RdmaKernel {
            sysfs_class: class.is_dir(),
            class_devices,
            modules: RDMA_MODULES
                .iter()
                .map(|&name| Module {
                    name,
                    loaded: sys_root.join("module").join(name).is_dir(),
                })
                .collect(),
            rxe_available: module_available(modules_dir, "rdma_rxe"),
        }
    }

    /// Whether `name` is loaded.
    pub fn loaded(&self, name: &str) -> bool {
        self.modules.iter().any(|m| m.name == name && m.loaded)
    }

    /// What to do when there is no RDMA in this kernel; `None` when there is.
    pub fn hint(&self) -> Option<String> {
        if self.sysfs_class && self.loaded("ib_uverbs") {
            return None;
        }
        Some(match self.rxe_available {
            Some(true) => "`modprobe rdma_rxe ib_uverbs`, then `rdma link add rxe0 type rxe \
                           netdev IFACE` (in gdrx's repository: deploy/rxe-host.sh up IFACE)"
                .into(),
            Some(false) => "this kernel ships no rdma_rxe (built without CONFIG_RDMA_RXE): use \
                            a kernel that has it (Debian's does), or a VM with one (in gdrx's \
                            repository: deploy/testbed.sh)"
                .into(),
            None => "no module list for this kernel, so it cannot be told whether it has \
                     rdma_rxe: try `modprobe rdma_rxe`, else use a VM with a kernel that has \
                     it (in gdrx's repository: deploy/testbed.sh)"
                .into(),
        })
    }
}

/// Whether `modules_dir/modules.dep` or `modules.builtin` lists `<name>.ko`; `None` when
/// neither can be read.
pub fn module_available(modules_dir: &Path, name: &str) -> Option<bool> {
    let needle = format!("/{name}.ko");
    let mut any = false;
    for list in ["modules.dep", "modules.builtin"] {
        if let Ok(text) = std::fs::read_to_string(modules_dir.join(list)) {
            any = true;
            if text
                .lines()
                .any(|l| l.split(':').next().is_some_and(|m| m.contains(&needle)))
            {
                return Some(true);
            }
        }
    }
    any.then_some(false)
}

/// A provider's check as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProviderFacts {
    /// `host`, `hugepage`, `udmabuf`.
    pub provider: String,
    /// Nothing blocks it.
    pub usable: bool,
    /// What blocks it.
    pub blockers: Vec<String>,
    /// What it found.
    pub notes: Vec<String>,
}

impl From<ProviderCheck> for ProviderFacts {
    fn from(c: ProviderCheck) -> Self {
        ProviderFacts {
            usable: c.is_usable(),
            provider: c.provider,
            blockers: c.blockers,
            notes: c.notes,
        }
    }
}

/// A scratch directory for one test.
#[cfg(test)]
pub fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gdrx-doctor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_written_in_the_largest_unit_that_divides_them() {
        assert_eq!(limit_text(None), "unlimited");
        assert_eq!(limit_text(Some(8 << 20)), "8 MiB");
        assert_eq!(limit_text(Some(64 << 10)), "64 KiB");
        assert_eq!(limit_text(Some(1 << 30)), "1 GiB");
        assert_eq!(limit_text(Some(1000)), "1000 B");
        assert_eq!(limit_text(Some((1 << 20) + 4096)), "1028 KiB");
    }

    #[test]
    fn a_small_memlock_limit_is_a_warning_with_the_fixes() {
        let l = |soft, hard| MemlockLimit { soft, hard };
        let w = memlock_warning(l(Some(8 << 20), Some(8 << 20)), false).unwrap();
        for needle in [
            "8 MiB",
            "too small",
            "ulimit -l unlimited",
            "limits.conf",
            "--ulimit memlock=-1",
        ] {
            assert!(w.contains(needle), "{needle:?} missing: {w}");
        }
        let w = memlock_warning(l(Some(64 << 10), None), true).unwrap();
        assert!(
            w.contains("does not limit this process") && w.contains("64 KiB"),
            "{w}"
        );
        assert!(w.contains("hard limit, unlimited"), "{w}");
        assert_eq!(memlock_warning(l(None, None), false), None);
        assert_eq!(memlock_warning(l(Some(64 << 20), None), false), None);
        let m = Memlock::new(Some(l(None, Some(1 << 30))), Some(false));
        assert_eq!((m.soft.as_str(), m.hard.as_str()), ("unlimited", "1 GiB"));
        assert_eq!((m.soft_bytes, m.hard_bytes), (None, Some(1 << 30)));
        assert!(!m.limits_this_process);
        let m = Memlock::new(Some(l(Some(8 << 20), None)), Some(true));
        assert!(m.warning.is_some() && !m.limits_this_process);
        let m = Memlock::new(Some(l(Some(1 << 30), None)), Some(false));
        assert!(m.warning.is_none() && m.limits_this_process);
        assert!(Memlock::new(None, None).warning.is_some());
    }

    #[test]
    fn cap_ipc_lock_is_read_from_cap_eff() {
        let status = "Name:\tx\nCapPrm:\t0000000000000000\nCapEff:\t000001fffeffffff\n";
        assert_eq!(cap_ipc_lock_in_status(status), Some(true));
        let status = "CapEff:\t0000000000000000\nCapPrm:\t0000000000004000\n";
        assert_eq!(cap_ipc_lock_in_status(status), Some(false));
        assert_eq!(
            cap_ipc_lock_in_status("CapEff:\t0000000000004000"),
            Some(true)
        );
        assert_eq!(cap_ipc_lock_in_status("Name: x"), None);
        assert_eq!(cap_ipc_lock_in_status("CapEff:\tzz"), None);
    }

    #[test]
    fn hugepage_pools_are_read_from_every_size_smallest_first() {
        let d = scratch("huge");
        let pool = |name: &str, nr: &str, free: Option<&str>| {
            let p = d.join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("nr_hugepages"), nr).unwrap();
            if let Some(f) = free {
                std::fs::write(p.join("free_hugepages"), f).unwrap();
            }
        };
        pool("hugepages-1048576kB", "0\n", Some("0\n"));
        pool("hugepages-2048kB", "64\n", Some("60\n"));
        pool("hugepages-64kB", "garbage", None);
        std::fs::create_dir_all(d.join("not-a-pool")).unwrap();
        let p = hugepage_pools(&d);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0],
            HugePool {
                size_kib: 64,
                size: "64 KiB".into(),
                nr: None,
                free: None
            }
        );
        assert_eq!(
            (p[1].size.as_str(), p[1].nr, p[1].free),
            ("2 MiB", Some(64), Some(60))
        );
        assert_eq!(
            (p[2].size.as_str(), p[2].nr, p[2].free),
            ("1 GiB", Some(0), Some(0))
        );
        assert!(hugepage_pools(&d.join("missing")).is_empty());
    }

    #[test]
    fn rdma_kernel_support_from_a_fake_sysfs() {
        let sys = scratch("sys");
        let mods = scratch("mods");
        let k = RdmaKernel::probe_in(&sys, &mods);
        assert!(!k.sysfs_class && k.class_devices.is_empty());
        assert!(k.modules.iter().all(|m| !m.loaded));
        assert_eq!(k.rxe_available, None);
        assert!(k.hint().unwrap().contains("deploy/testbed.sh"));

        std::fs::write(
            mods.join("modules.dep"),
            "kernel/drivers/infiniband/core/ib_core.ko.xz:\n\
             kernel/drivers/infiniband/core/ib_uverbs.ko.xz: kernel/drivers/infiniband/core/ib_core.ko.xz\n",
        )
        .unwrap();
        let k = RdmaKernel::probe_in(&sys, &mods);
        assert_eq!(k.rxe_available, Some(false));
        assert!(k.hint().unwrap().contains("CONFIG_RDMA_RXE"));

        std::fs::write(
            mods.join("modules.builtin"),
            "kernel/drivers/infiniband/sw/rxe/rdma_rxe.ko\n",
        )
        .unwrap();
        assert_eq!(module_available(&mods, "rdma_rxe"), Some(true));
        assert_eq!(module_available(&mods, "rxe"), Some(false));
        assert!(RdmaKernel::probe_in(&sys, &mods)
            .hint()
            .unwrap()
            .contains("modprobe rdma_rxe"));

        for m in ["ib_core", "ib_uverbs", "rdma_rxe"] {
            std::fs::create_dir_all(sys.join("module").join(m)).unwrap();
        }
        std::fs::create_dir_all(sys.join("class/infiniband/rxe0")).unwrap();
        let k = RdmaKernel::probe_in(&sys, &mods);
        assert!(k.sysfs_class && k.class_devices == ["rxe0"]);
        assert!(k.loaded("rdma_rxe") && k.loaded("ib_uverbs") && !k.loaded("rdma_cm"));
        assert_eq!(k.hint(), None);
    }

    #[test]
    fn provider_facts_keep_the_checks_verdict() {
        let mut c = ProviderCheck::ok("udmabuf");
        c.blockers.push("/dev/udmabuf does not exist".into());
        c.notes.push("size limit unknown".into());
        let f = ProviderFacts::from(c);
        assert!(!f.usable);
        assert_eq!(f.provider, "udmabuf");
        assert_eq!(f.blockers.len(), 1);
        assert!(ProviderFacts::from(ProviderCheck::ok("host")).usable);
    }
}
