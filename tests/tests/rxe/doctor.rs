//! `gdrx-doctor` on real rxe: the JSON report lists the testbed's device as soft-RoCE (not
//! hardware) with the same dma-buf probe result the suite gets itself, reports no GPU with the
//! typed no-driver error (the testbed has no libcuda) and says a GPU pool cannot be built and
//! why; the text report names the device and its dma-buf result; `--device` narrows the report
//! and a `--device` that does not exist is an error naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gdrx_core::DmabufSupport;
use serde_json::Value;

use super::env;

/// The `gdrx-doctor` binary (`$GDRX_DOCTOR_BIN`, else `target/release/gdrx-doctor`, which
/// `deploy/run-tests.sh` builds with `--features cuda`).
fn doctor() -> PathBuf {
    super::workspace_bin(
        "gdrx-doctor",
        "GDRX_DOCTOR_BIN",
        "cargo build --release -p gdrx-gpu --features cuda --bin gdrx-doctor",
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(doctor())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running gdrx-doctor")
}

/// Runs gdrx-doctor; panics with its output unless it exited 0.
fn run_ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "gdrx-doctor {args:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json(args: &[&str]) -> Value {
    let o = run_ok(args);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "gdrx-doctor {args:?} printed no JSON object ({e}):\n{}",
            String::from_utf8_lossy(&o.stdout)
        )
    })
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing or not a string in {v}"))
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn doctor_json_reports_rxe_without_dmabuf_and_no_gpu() {
    let e = env();
    let own = e.open().alloc_pd().expect("PD").probe_dmabuf();
    assert!(
        matches!(own, DmabufSupport::Unsupported { errno, .. } if errno == libc::EOPNOTSUPP),
        "rxe has no dma-buf MRs: {own:?}"
    );
    let v = json(&["--json"]);
    assert_eq!(
        v["doctor"]["cuda_built"], true,
        "this test needs gdrx-doctor built with `--features cuda` (the GPU part must run and \
         find no driver): {}",
        v["doctor"]
    );

    // The device, as the suite sees it.
    assert_eq!(v["rdma"]["ok"], true, "{}", v["rdma"]);
    let devices = v["rdma"]["devices"].as_array().expect("rdma.devices");
    let d = devices
        .iter()
        .find(|d| d["name"] == e.dev.as_str())
        .unwrap_or_else(|| panic!("{} is not in the report: {}", e.dev, v["rdma"]));
    assert_eq!(str_of(d, "kind"), "soft-roce", "{d}");
    assert_eq!(d["hardware"], false, "{d}");
    assert!(str_of(d, "kind_text").contains("software"), "{d}");
    let (errno, supported) = match &own {
        DmabufSupport::Supported { errno } => (*errno, true),
        DmabufSupport::Unsupported { errno, .. } => (*errno, false),
    };
    let m = &d["dmabuf"];
    assert_eq!(m["supported"], supported, "{m}");
    assert_eq!(m["errno"], errno, "{m}");
    assert_eq!(str_of(m, "errno_name"), "EOPNOTSUPP", "{m}");
    assert_eq!(str_of(m, "text"), own.to_string(), "{m}");
    let port = &d["ports"][0];
    assert_eq!(str_of(port, "state"), "ACTIVE", "{port}");
    assert_eq!(str_of(port, "roce_v2_ip"), e.ip.to_string(), "{port}");
    // What ibv_devinfo users look for, read back from sysfs here.
    let sys = |attr: &str| {
        std::fs::read_to_string(format!("/sys/class/infiniband/{}/{attr}", e.dev))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|err| panic!("{attr}: {err}"))
    };
    assert_eq!(str_of(d, "node_guid"), sys("node_guid"), "{d}");
    // rxe's fw_ver is empty (a NIC's driver fills it): reported as null then.
    let fw = std::fs::read_to_string(format!("/sys/class/infiniband/{}/fw_ver", e.dev))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    assert_eq!(d["firmware"].as_str().unwrap_or_default(), fw, "{d}");
    assert!(
        d["pci_address"].is_null(),
        "soft-RoCE has no PCI address: {d}"
    );
    assert_eq!(str_of(port, "rate"), sys("ports/1/rate"), "{port}");
    let gids = port["gids"].as_array().expect("the GID table");
    let mine = gids
        .iter()
        .find(|g| g["ip"] == e.ip.to_string().as_str())
        .unwrap_or_else(|| panic!("a GID for {}: {port}", e.ip));
    assert_eq!(str_of(mine, "type"), "RoCE v2", "{mine}");
    assert_eq!(port["roce_v2_gid_index"], mine["index"], "{port}");
    let x = mine["index"].as_u64().expect("an index");
    assert_eq!(
        sys(&format!("ports/1/gid_attrs/types/{x}")),
        "RoCE v2",
        "the kernel agrees on entry {x}"
    );
    // No GPU: no GPU-NIC pairs to place.
    assert_eq!(
        v["affinity"].as_array().map(Vec::len),
        Some(0),
        "{}",
        v["affinity"]
    );

    // No GPU here: a typed error naming libcuda, no path, and the summary says why.
    let g = &v["gpus"];
    assert_eq!(g["ok"], false, "{g}");
    assert_eq!(str_of(g, "error_kind"), "no-driver", "{g}");
    let gerr = str_of(g, "error");
    assert!(
        gerr.contains("no CUDA driver") && gerr.contains("libcuda"),
        "{gerr}"
    );
    assert_eq!(g["devices"].as_array().map(Vec::len), Some(0), "{g}");
    assert_eq!(
        v["paths"].as_array().map(Vec::len),
        Some(0),
        "{}",
        v["paths"]
    );
    // Each finding has a machine-readable code beside its prose.
    let findings = v["findings"].as_array().expect("findings");
    assert_eq!(findings.len(), v["summary"].as_array().map_or(0, Vec::len));
    assert!(
        findings
            .iter()
            .any(|f| f["code"] == "no-gpu-pool" && str_of(f, "text").contains("libcuda")),
        "{findings:?}"
    );
    let summary: Vec<&str> = v["summary"]
        .as_array()
        .expect("summary")
        .iter()
        .map(|s| s.as_str().expect("summary line"))
        .collect();
    let no_pool = summary
        .iter()
        .find(|s| s.starts_with("a GPU pool cannot be built here"))
        .unwrap_or_else(|| {
            panic!("the summary does not say a GPU pool cannot be built: {summary:#?}")
        });
    assert!(
        no_pool.contains(gerr),
        "the reason is the GPU error: {no_pool}"
    );
    assert!(
        no_pool.contains(&e.dev),
        "it names the device other pools work on: {no_pool}"
    );
    assert!(
        summary
            .iter()
            .any(|s| s.starts_with(&format!("{}: soft-RoCE", e.dev)) && s.contains("dma-buf")),
        "{summary:#?}"
    );

    // The system facts match what the guest shows.
    let sys = &v["system"];
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(str_of(sys, "kernel"), release.trim(), "{sys}");
    assert_eq!(sys["udmabuf"], Path::new("/dev/udmabuf").exists(), "{sys}");
    let k = &sys["rdma_kernel"];
    assert_eq!(k["sysfs_class"], true, "{k}");
    assert!(
        k["class_devices"]
            .as_array()
            .expect("class_devices")
            .iter()
            .any(|n| *n == e.dev.as_str()),
        "{k}"
    );
    let rxe = k["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .find(|m| m["name"] == "rdma_rxe")
        .expect("rdma_rxe in the module list");
    assert_eq!(rxe["loaded"], true, "{k}");
    let two_mib = sys["hugepages"]
        .as_array()
        .expect("hugepages")
        .iter()
        .find(|p| p["size_kib"] == 2048)
        .unwrap_or_else(|| panic!("no 2 MiB pool: {sys}"));
    assert_eq!(
        two_mib["nr"].as_u64(),
        read_u64(Path::new(
            "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
        )),
        "{two_mib}"
    );
    println!(
        "gdrx-doctor --json: {} on {}: {m}; gpus: {gerr}",
        e.dev,
        str_of(sys, "kernel")
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn doctor_text_device_filter_and_a_missing_device() {
    let e = env();
    e.open();
    let o = run_ok(&["--device", &e.dev]);
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    for needle in [
        format!("{}: soft-RoCE (rxe), software", e.dev),
        "dma-buf MRs: unsupported".to_owned(),
        "[EOPNOTSUPP]".to_owned(),
        "no CUDA driver".to_owned(),
        "a GPU pool cannot be built here".to_owned(),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from:\n{text}");
    }

    let v = json(&["--json", "--device", &e.dev, "--policy", "allow-staging"]);
    let names: Vec<&str> = v["rdma"]["devices"]
        .as_array()
        .expect("rdma.devices")
        .iter()
        .map(|d| str_of(d, "name"))
        .collect();
    assert_eq!(names, [e.dev.as_str()]);
    assert_eq!(
        v["doctor"]["policies"],
        serde_json::json!(["allow-staging"])
    );

    let o = run(&["--device", "gdrx_missing0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "a missing --device is an error: {}\n{err}",
        o.status
    );
    assert!(
        err.contains("`gdrx_missing0` not found") && err.contains(&e.dev),
        "the message names the missing device and the ones present: {err}"
    );
    assert!(o.stdout.is_empty(), "no report for a missing device");
    println!("missing device: {}", err.trim());
}
