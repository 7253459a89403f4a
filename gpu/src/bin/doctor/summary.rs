//! The summary: the report's findings, most important first, each saying what to do.

use gdrx_gpu::peermem;
use gdrx_gpu::{GpuPath, GpuPolicy, Visibility};

use crate::report::{Report, SOFT_ROCE_HINT};

/// One finding: a stable machine-readable code and the prose, which says what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// What kind of finding (`no-rdma`, `no-gpu-pool`, `gpu-path`, `memlock-low`, ...): stable
    /// across releases, for scripts.
    pub code: &'static str,
    /// The finding in words, with what to do.
    pub text: String,
}

impl Finding {
    fn new(code: &'static str, text: impl Into<String>) -> Finding {
        Finding {
            code,
            text: text.into(),
        }
    }
}

/// The findings, most important first, each saying what to do.
pub fn summarize(r: &Report) -> Vec<Finding> {
    let mut s = Vec::new();
    // The kernel's own verdict only where it is conclusive: the NoRdma text has the hints.
    let no_rxe = if r.system.rdma_kernel.rxe_available == Some(false) {
        " (this kernel has no rdma_rxe: use the VM)"
    } else {
        ""
    };
    if !r.rdma.ok {
        // The typed error already says what to do.
        s.push(Finding::new(
            "no-rdma",
            format!(
                "no RDMA: {}{no_rxe}",
                r.rdma.error.as_deref().unwrap_or("unknown error")
            ),
        ));
    } else if r.rdma.devices.is_empty() {
        s.push(Finding::new(
            "no-rdma-device",
            format!("no RDMA device: libibverbs loaded but lists none; {SOFT_ROCE_HINT}{no_rxe}"),
        ));
    }
    for d in &r.rdma.devices {
        if let Some(e) = &d.error {
            s.push(Finding::new(
                "rdma-device-error",
                format!("{}: {e}", d.name),
            ));
            continue;
        }
        let kind = d.kind_text.as_deref().unwrap_or("unknown kind");
        match (&d.dmabuf, &d.dmabuf_error) {
            (Some(m), _) => s.push(Finding::new(
                "rdma-device",
                format!("{}: {kind}; dma-buf MRs {}", d.name, m.text),
            )),
            (None, Some(e)) => s.push(Finding::new(
                "rdma-device",
                format!("{}: {kind}; {e}", d.name),
            )),
            (None, None) => s.push(Finding::new("rdma-device", format!("{}: {kind}", d.name))),
        }
        if let Some(p) = d.ports.iter().find(|p| p.state != "ACTIVE") {
            s.push(Finding::new(
                "port-down",
                format!(
                    "{} port {} is {}: no connection can be made through it until the link is up",
                    d.name, p.port, p.state
                ),
            ));
        }
    }

    let nics: Vec<&str> = r
        .rdma
        .devices
        .iter()
        .filter(|d| d.facts.is_some())
        .map(|d| d.name.as_str())
        .collect();
    let providers = r.system.usable_providers();
    if !r.gpus.ok {
        let err = r.gpus.error.as_deref().unwrap_or("unknown error");
        if nics.is_empty() {
            s.push(Finding::new(
                "no-gpu-pool",
                format!(
                "a GPU pool cannot be built here: {err}. No pool of any kind can be built until \
                 there is an RDMA device ({providers} memory is ready)"
            ),
            ));
        } else {
            s.push(Finding::new(
                "no-gpu-pool",
                format!(
                    "a GPU pool cannot be built here: {err}; {providers} pools work (on {})",
                    nics.join(", ")
                ),
            ));
        }
    } else if nics.is_empty() {
        s.push(Finding::new(
            "no-gpu-pool",
            format!(
            "a GPU pool cannot be built here: no usable RDMA device, so no path into {} GPU(s) \
             (see above)",
            r.gpus.devices.len()
        ),
        ));
    } else {
        let policy = r.doctor.summary_policy;
        let marker = if policy == GpuPolicy::default() {
            " (the default)"
        } else {
            ""
        };
        for row in r.paths.iter().filter(|p| p.policy == policy.name()) {
            let what = format!(
                "a GPU pool on {} ({}) fed by {} under policy {policy}{marker}",
                row.gpu, row.gpu_name, row.nic
            );
            match (&row.plan, &row.refused) {
                (Some(p), _) => {
                    s.push(Finding::new("gpu-path", format!("{what} takes {}", p.path)));
                    if let Some(Visibility::NotGuaranteed(why)) = &row.visibility_rule {
                        s.push(Finding::new(
                            "gpu-visibility-not-guaranteed",
                            format!("{what}: visibility NOT guaranteed: {why}"),
                        ));
                    }
                }
                (None, refused) => s.push(Finding::new(
                    "gpu-path-refused",
                    format!(
                        "{what} cannot be built: {}",
                        refused.as_deref().unwrap_or_default().join("; ")
                    ),
                )),
            }
        }
        let any_hw = r.rdma.devices.iter().any(|d| d.hardware == Some(true));
        let any_zero_copy_lost = r
            .paths
            .iter()
            .any(|p| p.policy == policy.name() && p.path != Some(GpuPath::Dmabuf.name()));
        if any_hw && any_zero_copy_lost && r.peermem.is_none() {
            s.push(Finding::new(
                "peermem-missing",
                format!(
                    "without dma-buf MRs, zero copy needs nvidia-peermem: {}",
                    peermem::HINT
                ),
            ));
        }
    }

    if let (Some(w), true) = (
        &r.system.memlock.warning,
        r.system.memlock.limits_this_process,
    ) {
        s.push(Finding::new("memlock-low", w.clone()));
    }
    if r.system.hugepages.iter().all(|p| p.nr.unwrap_or(0) == 0) {
        s.push(Finding::new(
            "no-hugepages",
            "no huge pages reserved: hugepage pools fall back to transparent huge pages or base \
             pages; reserve 2 MiB pages with `echo 64 > /proc/sys/vm/nr_hugepages`"
                .to_owned(),
        ));
    }
    for p in r.system.providers.iter().filter(|p| !p.usable) {
        s.push(Finding::new(
            "provider-unusable",
            format!(
                "{} pools cannot be built: {}",
                p.provider,
                p.blockers.join("; ")
            ),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{gpu, report, rxe, with_rxe};
    use crate::report::{DmabufJson, GpuSection, RdmaSection};
    use gdrx_core::{DeviceKind, DmabufSupport};
    use gdrx_gpu::GpuError;

    #[test]
    fn no_gpu_says_a_gpu_pool_cannot_be_built_and_which_pools_work() {
        let r = report(
            with_rxe(),
            GpuSection::new(Err(GpuError::NotBuilt)),
            &GpuPolicy::ALL,
        );
        assert!(r.paths.is_empty());
        let codes: Vec<&str> = r.findings.iter().map(|f| f.code).collect();
        assert!(
            codes.contains(&"rdma-device")
                && codes.contains(&"no-gpu-pool")
                && codes.contains(&"provider-unusable"),
            "{codes:?}"
        );
        assert_eq!(
            r.summary,
            r.findings
                .iter()
                .map(|f| f.text.clone())
                .collect::<Vec<_>>()
        );
        let all = r.summary.join("\n");
        assert!(
            all.contains("rxe0: soft-RoCE (rxe), software; dma-buf MRs unsupported"),
            "{all}"
        );
        assert!(
            all.contains("a GPU pool cannot be built here: this build of gdrx has no CUDA support"),
            "{all}"
        );
        assert!(all.contains("host pools work (on rxe0)"), "{all}");
        assert!(
            all.contains("udmabuf pools cannot be built: /dev/udmabuf"),
            "{all}"
        );
        assert!(
            all.contains("too small"),
            "memlock 8 MiB without CAP_IPC_LOCK: {all}"
        );
        assert!(!all.contains("no huge pages"), "{all}");
    }

    #[test]
    fn no_rdma_says_so_and_what_to_do() {
        let rdma = RdmaSection {
            ok: false,
            error: Some("RDMA is not available on this machine: libibverbs".into()),
            devices: Vec::new(),
        };
        let r = report(
            rdma,
            GpuSection::new(Err(GpuError::NoDriver {
                tried: "libcuda.so.1".into(),
            })),
            &GpuPolicy::ALL,
        );
        assert!(
            r.summary[0].starts_with("no RDMA: RDMA is not available"),
            "{:?}",
            r.summary
        );
        // The typed error carries the remedy; the hint is not repeated.
        assert!(!r.summary[0].contains(SOFT_ROCE_HINT), "{:?}", r.summary);
        let all = r.summary.join("\n");
        assert!(
            all.contains("a GPU pool cannot be built here: no CUDA driver"),
            "{all}"
        );
        assert!(all.contains("until there is an RDMA device"), "{all}");
    }

    #[test]
    fn rxe_and_a_gpu_give_staging_under_the_default_policy() {
        let r = report(
            with_rxe(),
            GpuSection::new(Ok(vec![gpu()])),
            &GpuPolicy::ALL,
        );
        assert_eq!(r.paths.len(), 3);
        let row = |p: GpuPolicy| r.paths.iter().find(|x| x.policy == p.name()).unwrap();
        let d = row(GpuPolicy::AllowStaging);
        assert!(d.default && d.path == Some("staging"), "{d:?}");
        assert_eq!(d.visibility_rule, Some(Visibility::AfterCopy));
        let strict = row(GpuPolicy::RequireDmabuf);
        assert!(!strict.default && strict.plan.is_none());
        assert!(
            strict.refused.as_ref().unwrap()[0].contains("rxe0"),
            "{strict:?}"
        );
        let all = r.summary.join("\n");
        assert!(
            all.contains("fed by rxe0 under policy allow-staging (the default) takes host staging"),
            "{all}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["paths"][2]["plan"]["path"], "Staging", "{v}");
        assert_eq!(
            v["rdma"]["devices"][0]["dmabuf"]["errno_name"],
            "EOPNOTSUPP"
        );
        assert!(v["rdma"]["devices"][0].get("facts").is_none());
    }

    #[test]
    fn one_policy_is_the_one_the_summary_speaks_of() {
        let r = report(
            with_rxe(),
            GpuSection::new(Ok(vec![gpu()])),
            &[GpuPolicy::PreferDmabuf],
        );
        assert_eq!(r.paths.len(), 1);
        assert_eq!(r.doctor.policies, ["prefer-dmabuf"]);
        let all = r.summary.join("\n");
        assert!(
            all.contains("under policy prefer-dmabuf cannot be built"),
            "{all}"
        );
        assert!(
            all.contains("staging: policy prefer-dmabuf does not allow it"),
            "{all}"
        );
    }

    #[test]
    fn zero_copy_without_ordering_or_flush_is_flagged() {
        let mut hw = rxe();
        let s = DmabufSupport::Supported { errno: libc::EBADF };
        hw.name = "mlx5_0".into();
        hw.hardware = Some(true);
        hw.dmabuf = Some(DmabufJson::from(&s));
        hw.facts = Some((DeviceKind::Hardware, s));
        let rdma = RdmaSection {
            ok: true,
            error: None,
            devices: vec![hw],
        };
        let r = report(rdma, GpuSection::new(Ok(vec![gpu()])), &GpuPolicy::ALL);
        assert!(r.paths.iter().all(|p| p.path == Some("dmabuf")));
        let all = r.summary.join("\n");
        assert!(all.contains("takes dma-buf"), "{all}");
        assert!(all.contains("visibility NOT guaranteed"), "{all}");
        assert!(
            !all.contains("nvidia-peermem"),
            "dma-buf taken, peermem not needed: {all}"
        );
    }
}
