//! nvidia-peermem detection through sysfs.
//!
//! With the `nvidia_peermem` kernel module (or Mellanox OFED's older `nv_peer_mem`) loaded,
//! `ibv_reg_mr` accepts a CUDA device pointer: the RDMA core asks the peer-memory client to pin
//! the GPU pages. Without it, `ibv_reg_mr` on a device pointer fails (EFAULT: the address is not
//! host memory), so gdrx only offers that path when the module is there.

use std::path::{Path, PathBuf};

/// A loaded peer-memory client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Peermem {
    /// The module: `nvidia_peermem` or `nv_peer_mem`.
    pub module: &'static str,
    /// Its version, when sysfs says.
    pub version: Option<String>,
    /// The sysfs path that showed it.
    pub path: PathBuf,
}

/// Where each peer-memory client shows itself, relative to the sysfs root: the in-driver module
/// first (driver >= 470), then the OFED one.
const PLACES: &[(&str, &str)] = &[
    ("nvidia_peermem", "module/nvidia_peermem"),
    ("nv_peer_mem", "kernel/mm/memory_peers/nv_mem"),
];

/// Looks for a peer-memory client under `/sys`.
pub fn detect() -> Option<Peermem> {
    detect_in(Path::new("/sys"))
}

/// Looks for a peer-memory client under `sys_root` (a test's fake sysfs, or `/sys`).
pub fn detect_in(sys_root: &Path) -> Option<Peermem> {
    PLACES.iter().find_map(|&(module, rel)| {
        let dir = sys_root.join(rel);
        dir.is_dir().then(|| Peermem {
            module,
            version: std::fs::read_to_string(dir.join("version"))
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty()),
            path: dir,
        })
    })
}

/// What to tell a user who has no peer-memory client.
pub const HINT: &str = "nvidia_peermem is not loaded (no /sys/module/nvidia_peermem, no \
                        /sys/kernel/mm/memory_peers/nv_mem): `modprobe nvidia_peermem` (it ships \
                        with the NVIDIA driver) on a host with a hardware RDMA NIC";

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gdrx-peermem-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn absent_when_neither_module_is_there() {
        let d = fake_sys("none");
        std::fs::create_dir_all(d.join("module/nvidia")).unwrap();
        assert_eq!(detect_in(&d), None);
    }

    #[test]
    fn finds_nvidia_peermem_with_its_version() {
        let d = fake_sys("new");
        std::fs::create_dir_all(d.join("module/nvidia_peermem")).unwrap();
        std::fs::write(d.join("module/nvidia_peermem/version"), "580.159.03\n").unwrap();
        let p = detect_in(&d).unwrap();
        assert_eq!(p.module, "nvidia_peermem");
        assert_eq!(p.version.as_deref(), Some("580.159.03"));
    }

    #[test]
    fn finds_ofed_nv_peer_mem_without_a_version() {
        let d = fake_sys("ofed");
        std::fs::create_dir_all(d.join("kernel/mm/memory_peers/nv_mem")).unwrap();
        let p = detect_in(&d).unwrap();
        assert_eq!(p.module, "nv_peer_mem");
        assert_eq!(p.version, None);
    }

    #[test]
    fn prefers_the_in_driver_module() {
        let d = fake_sys("both");
        std::fs::create_dir_all(d.join("kernel/mm/memory_peers/nv_mem")).unwrap();
        std::fs::create_dir_all(d.join("module/nvidia_peermem")).unwrap();
        assert_eq!(detect_in(&d).unwrap().module, "nvidia_peermem");
    }
}
