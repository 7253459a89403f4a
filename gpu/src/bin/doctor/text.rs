//! The human-readable report: one section per part of the [`Report`], the summary last.

use std::fmt::Write as _;

use crate::report::{PathRow, Report};
use crate::system::human;

/// Column the summary wraps at.
const WIDTH: usize = 100;

/// Renders the report as text.
pub fn render(r: &Report) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail: the results are ignored throughout.
    let _ = writeln!(
        o,
        "gdrx-doctor {} ({})",
        r.doctor.version,
        if r.doctor.cuda_built {
            "with CUDA support"
        } else {
            "built without CUDA support: rebuild with `--features cuda` for the GPU part"
        }
    );
    system(&mut o, r);
    rdma(&mut o, r);
    peermem(&mut o, r);
    gpus(&mut o, r);
    paths(&mut o, r);
    affinity(&mut o, r);
    let _ = writeln!(o, "\nSummary");
    for s in &r.summary {
        o.push_str(&wrap(s, "  - ", "    ", WIDTH));
    }
    o
}

fn system(o: &mut String, r: &Report) {
    let s = &r.system;
    let _ = writeln!(o, "\nSystem");
    let _ = writeln!(o, "  kernel          {} ({})", s.kernel, s.machine);
    let m = &s.memlock;
    let _ = writeln!(
        o,
        "  RLIMIT_MEMLOCK  soft {}, hard {}; CAP_IPC_LOCK {}",
        m.soft,
        m.hard,
        match m.cap_ipc_lock {
            Some(true) => "yes (registration ignores the limit)",
            Some(false) => "no",
            None => "unknown",
        }
    );
    if let Some(w) = &m.warning {
        o.push_str(&wrap(
            w,
            "                  ! ",
            "                    ",
            WIDTH,
        ));
    }
    let pools: Vec<String> = s
        .hugepages
        .iter()
        .map(|p| {
            let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
            format!("{}: {} configured, {} free", p.size, n(p.nr), n(p.free))
        })
        .collect();
    let _ = writeln!(
        o,
        "  huge pages      {}",
        if pools.is_empty() {
            "no hugetlb pools (/sys/kernel/mm/hugepages missing)".to_owned()
        } else {
            pools.join("; ")
        }
    );
    let _ = writeln!(
        o,
        "  /dev/udmabuf    {}",
        if s.udmabuf { "present" } else { "missing" }
    );
    let k = &s.rdma_kernel;
    let class = if k.sysfs_class {
        format!(
            "present ({})",
            if k.class_devices.is_empty() {
                "no devices".to_owned()
            } else {
                k.class_devices.join(", ")
            }
        )
    } else {
        "missing".to_owned()
    };
    let modules: Vec<String> = k
        .modules
        .iter()
        .map(|m| format!("{} {}", m.name, if m.loaded { "loaded" } else { "no" }))
        .collect();
    let _ = writeln!(o, "  kernel RDMA     /sys/class/infiniband {class}");
    o.push_str(&wrap(
        &format!("modules: {}", modules.join(", ")),
        "                  ",
        "                    ",
        WIDTH,
    ));
    let _ = writeln!(
        o,
        "                  rdma_rxe in this kernel: {}",
        match k.rxe_available {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown (no /lib/modules list for it)",
        }
    );
    if let Some(h) = k.hint() {
        o.push_str(&wrap(
            &format!("to get RDMA here: {h}"),
            "                  ! ",
            "                    ",
            WIDTH,
        ));
    }
    let provs: Vec<String> = s
        .providers
        .iter()
        .map(|p| {
            if p.usable {
                format!("{}: usable", p.provider)
            } else {
                format!("{}: NOT usable ({})", p.provider, p.blockers.join("; "))
            }
        })
        .collect();
    o.push_str(&wrap(
        &provs.join("; "),
        "  providers       ",
        "                  ",
        WIDTH,
    ));
}

fn rdma(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nRDMA devices");
    if let Some(e) = &r.rdma.error {
        o.push_str(&wrap(&format!("none: {e}"), "  ", "    ", WIDTH));
    } else if r.rdma.devices.is_empty() {
        let _ = writeln!(o, "  none listed");
    }
    for d in &r.rdma.devices {
        if let Some(e) = &d.error {
            o.push_str(&wrap(&format!("{}: {e}", d.name), "  ", "    ", WIDTH));
            continue;
        }
        let _ = writeln!(
            o,
            "  {}: {}",
            d.name,
            d.kind_text.as_deref().unwrap_or("unknown kind")
        );
        let ids = format!(
            "GUID {}, firmware {}, PCI {}, NUMA node {}",
            d.node_guid.as_deref().unwrap_or("unknown"),
            d.firmware.as_deref().unwrap_or("not reported"),
            d.pci_address
                .as_deref()
                .unwrap_or(if d.hardware == Some(false) {
                    "none (software device)"
                } else {
                    "unknown"
                }),
            d.numa_node
                .map_or_else(|| "not reported".to_owned(), |n| n.to_string())
        );
        o.push_str(&wrap(&ids, "    ", "      ", WIDTH));
        for p in &d.ports {
            let line = format!(
                "port {}: {}, MTU {}, {}{}{}{}",
                p.port,
                p.state,
                p.active_mtu,
                p.link_layer,
                p.rate
                    .as_deref()
                    .map_or_else(String::new, |r| format!(", {r}")),
                p.netdev
                    .as_deref()
                    .map_or_else(String::new, |n| format!(", netdev {n}")),
                match (&p.roce_v2_ip, p.roce_v2_gid_index) {
                    (Some(ip), Some(x)) => format!(", RoCE v2 GID for {ip} (index {x}, -x {x})"),
                    _ => String::new(),
                }
            );
            o.push_str(&wrap(&line, "    ", "      ", WIDTH));
            if !p.gids.is_empty() {
                let gids: Vec<String> = p
                    .gids
                    .iter()
                    .map(|g| format!("{} {} {}", g.index, g.ip, g.kind))
                    .collect();
                o.push_str(&wrap(
                    &format!("GIDs: {}", gids.join("; ")),
                    "      ",
                    "        ",
                    WIDTH,
                ));
            }
        }
        if let Some(e) = &d.ports_error {
            let _ = writeln!(o, "    ports: {e}");
        }
        if let Some(m) = &d.dmabuf {
            o.push_str(&wrap(
                &format!("dma-buf MRs: {} [{}]", m.text, m.errno_name),
                "    ",
                "      ",
                WIDTH,
            ));
        }
        if let Some(e) = &d.dmabuf_error {
            let _ = writeln!(o, "    dma-buf MRs: {e}");
        }
    }
}

fn peermem(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\npeermem");
    match &r.peermem {
        Some(p) => {
            let _ = writeln!(
                o,
                "  {} {}({})",
                p.module,
                p.version
                    .as_deref()
                    .map_or_else(String::new, |v| format!("{v} ")),
                p.path.display()
            );
        }
        None => o.push_str(&wrap(gdrx_gpu::peermem::HINT, "  ", "    ", WIDTH)),
    }
}

fn gpus(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nGPUs");
    if let Some(e) = &r.gpus.error {
        o.push_str(&wrap(&format!("none: {e}"), "  ", "    ", WIDTH));
    }
    for g in &r.gpus.devices {
        let i = &g.info;
        let _ = writeln!(
            o,
            "  cuda:{} {} ({}), compute {}.{}, {:.1} GiB, driver CUDA {}.{}",
            i.ordinal,
            i.name,
            i.pci_bus_id,
            i.compute_capability.0,
            i.compute_capability.1,
            i.total_mem as f64 / f64::from(1u32 << 30),
            i.driver_version / 1000,
            (i.driver_version % 1000) / 10
        );
        let export = match &g.export {
            Ok(exporter) => format!("exported (exporter `{exporter}`)"),
            Err(e) => format!("export failed: {e}"),
        };
        o.push_str(&wrap(
            &format!(
                "dma-buf: attribute {}, {export}",
                if i.dmabuf_supported { "yes" } else { "no" }
            ),
            "    ",
            "      ",
            WIDTH,
        ));
        let _ = writeln!(
            o,
            "    GPUDirect RDMA {}, writes ordering {}, flush options {:#x}, granularity {}",
            if i.gpudirect_rdma_supported {
                "yes"
            } else {
                "no"
            },
            i.rdma_writes_ordering,
            i.rdma_flush_options,
            human(i.granularity as u64)
        );
    }
}

fn affinity(o: &mut String, r: &Report) {
    if r.affinity.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nGPU-NIC affinity (PCIe distance, as nvidia-smi topo -m names it)"
    );
    for a in &r.affinity {
        o.push_str(&wrap(
            &format!("{} <-> {}: {}, {}", a.nic, a.gpu, a.distance, a.text),
            "  ",
            "    ",
            WIDTH,
        ));
    }
}

fn paths(o: &mut String, r: &Report) {
    let _ = writeln!(o, "\nPaths into GPU memory");
    if r.paths.is_empty() {
        let why = if !r.gpus.ok {
            "no GPU (see GPUs)"
        } else {
            "no usable RDMA device (see RDMA devices)"
        };
        let _ = writeln!(o, "  none: {why}");
        return;
    }
    let mut last: Option<(&str, &str)> = None;
    for p in &r.paths {
        if last != Some((&p.nic, &p.gpu)) {
            let _ = writeln!(o, "  {} -> {} ({})", p.nic, p.gpu, p.gpu_name);
            last = Some((&p.nic, &p.gpu));
        }
        row(o, p);
    }
}

fn row(o: &mut String, p: &PathRow) {
    let policy = format!(
        "    {}{}: ",
        p.policy,
        if p.default { " (default)" } else { "" }
    );
    let text = match (&p.plan, &p.refused) {
        (Some(plan), _) => plan.to_string(),
        (None, refused) => format!(
            "refused: {}",
            refused.as_deref().unwrap_or_default().join("; ")
        ),
    };
    o.push_str(&wrap(&text, &policy, "        ", WIDTH));
    if let Some(v) = &p.visibility {
        o.push_str(&wrap(
            &format!("visibility: {v}"),
            "        ",
            "          ",
            WIDTH,
        ));
    }
}

/// Word-wraps `text` to `width` columns: the first line starts with `first`, the others with
/// `rest`. A word longer than a line stays whole.
pub fn wrap(text: &str, first: &str, rest: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_owned();
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > width {
            out.push_str(&line);
            out.push('\n');
            line = rest.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{gpu, report, rxe};
    use crate::report::{GpuSection, RdmaSection};
    use gdrx_gpu::{GpuError, GpuPolicy};

    #[test]
    fn wrap_breaks_at_spaces_with_a_hanging_indent() {
        assert_eq!(wrap("a b c", "- ", "  ", 80), "- a b c\n");
        assert_eq!(wrap("aaa bbb ccc", "- ", "  ", 9), "- aaa bbb\n  ccc\n");
        assert_eq!(
            wrap("averylongword x", "- ", "  ", 5),
            "- averylongword\n  x\n"
        );
        assert_eq!(wrap("", "- ", "  ", 5), "- \n");
        for l in wrap(&"word ".repeat(100), "  - ", "    ", 40).lines() {
            assert!(l.len() <= 40, "{l:?}");
        }
    }

    #[test]
    fn text_names_the_device_its_dmabuf_result_and_the_paths() {
        let rdma = RdmaSection {
            ok: true,
            error: None,
            devices: vec![rxe()],
        };
        let mut r = report(rdma, GpuSection::new(Ok(vec![gpu()])), &GpuPolicy::ALL);
        r.doctor.cuda_built = true;
        let t = render(&r);
        for needle in [
            "gdrx-doctor 0.1.0 (with CUDA support)",
            "rxe0: soft-RoCE (rxe), software",
            "GUID 2c2a:16ff:fe2e:3b06, firmware not reported, PCI none (software device), NUMA node",
            "port 1: ACTIVE, MTU 4096, Ethernet, 10 Gb/sec (1X QDR), netdev veth0, RoCE v2 GID for 10.77.0.1",
            "(index 1, -x 1)",
            "GIDs: 0 fe80::2c2a:16ff:fe2e:3b06 RoCE v2; 1 10.77.0.1 RoCE v2",
            "GPU-NIC affinity",
            "rxe0 <-> cuda:0: n/a, no PCIe path (a software device",
            "dma-buf MRs: unsupported",
            "[EOPNOTSUPP]",
            "cuda:0 NVIDIA H200 (0000:19:00.0), compute 9.0, 140.0 GiB, driver CUDA 13.0",
            "exporter `nvidia`",
            "rxe0 -> cuda:0 (NVIDIA H200)",
            "allow-staging (default): host staging",
            "require-dmabuf: refused: dmabuf: rxe0",
            "visibility: after each slot's copy event completes",
            "nvidia_peermem is not loaded",
            "RLIMIT_MEMLOCK  soft 8 MiB, hard 8 MiB; CAP_IPC_LOCK no",
            "udmabuf: NOT usable (/dev/udmabuf does not exist)",
            "\nSummary\n  - rxe0:",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from:\n{t}");
        }
        assert!(t.lines().all(|l| l.len() <= WIDTH), "{t}");
    }

    #[test]
    fn text_without_rdma_or_gpu_says_none_and_why() {
        let rdma = RdmaSection {
            ok: false,
            error: Some("RDMA is not available on this machine: no libibverbs".into()),
            devices: Vec::new(),
        };
        let mut r = report(
            rdma,
            GpuSection::new(Err(GpuError::NotBuilt)),
            &GpuPolicy::ALL,
        );
        r.doctor.cuda_built = false; // as NotBuilt says, whatever this test binary was built with
        let t = render(&r);
        for needle in [
            "built without CUDA support",
            "RDMA devices\n  none: RDMA is not available",
            "GPUs\n  none: this build of gdrx has no CUDA support",
            "Paths into GPU memory\n  none: no GPU",
            "a GPU pool cannot be built here",
        ] {
            assert!(t.contains(needle), "{needle:?} missing from:\n{t}");
        }
    }
}
