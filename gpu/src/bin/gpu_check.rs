//! `gdrx-gpu-check`: the GPU checks of gdrx, for a machine with an NVIDIA GPU (no RDMA NIC
//! needed). Run by `deploy/gpu-checks.sh`.
//!
//! 1. `device`: the GPU opens and its attributes are read (dma-buf, GPUDirect RDMA, writes
//!    ordering, flush options, granularity).
//! 2. `dmabuf-export`: device memory is exported as a dma-buf; `/proc/self/fdinfo` shows it is
//!    one (`exp_name`, `size`), and the provider's region offers it to the pool with the device
//!    pointer as IOVA.
//! 3. `staging`: messages of assorted sizes (1 B .. slot size), written by this program into
//!    pinned host slots (standing in for the NIC), go through the stager into fewer GPU slots
//!    than messages, are read back on a consumer stream and verified byte for byte; every
//!    lease is released after an event on that stream.
//! 4. `event-gate`: a lease released after an event on a stream that is blocked (by a host
//!    function waiting for a flag) is not reposted until the stream moves on.
//! 5. `staging-throughput`: the stager's copy rate against plain pinned `cuMemcpyHtoD` (one
//!    large copy per batch, and per-message async copies on one stream), same bytes.
//!
//! Exit status 0 when every check passed (a check the GPU cannot run is reported as SKIP with
//! its reason), 1 otherwise. `--json FILE` writes the results.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use cudarc::driver::sys;
use cudarc::driver::CudaStream;
use gdrx_core::{Provider, Region};
use gdrx_gpu::{
    DeviceMemory, Gpu, GpuLease, GpuProvider, MessageMeta, PinnedHostProvider, PinnedRegion,
    StageError, Stager, StagingSource,
};
use gdrx_providers::HostProvider;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
#[command(about = "gdrx GPU checks: dma-buf export, host staging, event-gated recycling")]
struct Args {
    /// CUDA ordinal.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Messages in the staging check.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Bytes per size in the throughput check.
    #[arg(long, default_value_t = 2 << 30)]
    bytes: usize,
}

#[derive(Debug)]
enum Outcome {
    Pass(Value),
    Skip(String),
}

fn main() {
    let args = Args::parse();
    // GDRX_LOG, as for gdrx-bench and gdrx-doctor.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDRX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut results = Vec::new();
    let mut failed = 0;
    let gpu = match Gpu::open(args.gpu) {
        Ok(g) => g,
        Err(e) => {
            println!("FAIL device: {e}");
            write_json(
                &args,
                &[json!({"check": "device", "result": "FAIL", "error": e.to_string()})],
            );
            std::process::exit(1);
        }
    };
    type Check = fn(&Arc<Gpu>, &Args) -> Result<Outcome>;
    let checks: [(&str, Check); 5] = [
        ("device", check_device),
        ("dmabuf-export", check_export),
        ("staging", check_staging),
        ("event-gate", check_gate),
        ("staging-throughput", check_throughput),
    ];
    for (name, f) in checks {
        let t = Instant::now();
        let r = f(&gpu, &args);
        let secs = t.elapsed().as_secs_f64();
        let v = match r {
            Ok(Outcome::Pass(v)) => {
                println!("PASS {name} ({secs:.2} s): {v}");
                json!({"check": name, "result": "PASS", "details": v, "seconds": secs})
            }
            Ok(Outcome::Skip(why)) => {
                println!("SKIP {name}: {why}");
                json!({"check": name, "result": "SKIP", "reason": why})
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {name} ({secs:.2} s): {e:#}");
                json!({"check": name, "result": "FAIL", "error": format!("{e:#}"), "seconds": secs})
            }
        };
        results.push(v);
    }
    write_json(&args, &results);
    println!(
        "{} checks, {failed} failed, on cuda:{} ({})",
        results.len(),
        args.gpu,
        gpu.info().name
    );
    std::process::exit(i32::from(failed > 0));
}

fn write_json(args: &Args, results: &[Value]) {
    if let Some(p) = &args.json {
        let doc = json!({"checks": results});
        if let Err(e) = std::fs::write(p, serde_json::to_string_pretty(&doc).unwrap()) {
            eprintln!("cannot write {}: {e}", p.display());
        }
    }
}

fn cu(r: sys::CUresult, what: &str) -> Result<()> {
    r.result().map_err(|e| anyhow::anyhow!("{what}: {:?}", e.0))
}

fn check_device(gpu: &Arc<Gpu>, _: &Args) -> Result<Outcome> {
    let i = gpu.info();
    ensure!(!i.name.is_empty(), "the GPU has no name");
    ensure!(i.granularity >= 4096, "granularity {} B", i.granularity);
    ensure!(
        [0, 100, 200].contains(&i.rdma_writes_ordering),
        "GPU_DIRECT_RDMA_WRITES_ORDERING {} is none of 0/100/200",
        i.rdma_writes_ordering
    );
    ensure!(
        i.driver_version >= 11070,
        "driver CUDA version {}",
        i.driver_version
    );
    let vis = gdrx_gpu::Visibility::rule(
        gdrx_gpu::GpuPath::Dmabuf,
        i.rdma_writes_ordering,
        i.rdma_flush_options,
    );
    Ok(Outcome::Pass(
        json!({"info": i, "zero_copy_visibility": vis.to_string()}),
    ))
}

fn check_export(gpu: &Arc<Gpu>, _: &Args) -> Result<Outcome> {
    let len = 64 << 20;
    let mem = DeviceMemory::new(gpu, len)?;
    if !gpu.info().dmabuf_supported {
        let e = mem.export_dmabuf();
        ensure!(
            e.is_err(),
            "the attribute says no dma-buf, yet the export worked"
        );
        return Ok(Outcome::Skip(format!(
            "CU_DEVICE_ATTRIBUTE_DMA_BUF_SUPPORTED = 0; the export fails as expected: {}",
            e.unwrap_err()
        )));
    }
    let e = mem.export_dmabuf()?;
    let info = e
        .fdinfo()
        .context("cannot read /proc/self/fdinfo for the fd")?;
    let exporter = e
        .exporter()
        .with_context(|| format!("fdinfo has no exp_name, so the fd is not a dma-buf:\n{info}"))?;
    let size: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("size:"))
        .map(|s| s.trim().parse())
        .context("fdinfo has no size")??;
    ensure!(
        size == e.size(),
        "dma-buf size {size}, export asked {}",
        e.size()
    );
    ensure!(size >= mem.len(), "dma-buf of {size} B for {} B", mem.len());
    // The provider's region, as the pool sees it.
    let p = GpuProvider::with_paths(gpu, true, false);
    let r = p.alloc_region(3 << 20)?;
    let v = r
        .dmabuf()
        .context("a dma-buf provider region without a dma-buf")?;
    ensure!(
        v.iova == r.memory().device_ptr(),
        "IOVA is not the device pointer"
    );
    ensure!(
        !r.desc().cpu_readable && r.desc().addr.is_none(),
        "region must be unreadable, no address"
    );
    let pooled = Provider::alloc(&p, 1 << 20).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        pooled.dmabuf().is_some(),
        "Provider::alloc region without dma-buf"
    );
    Ok(Outcome::Pass(json!({
        "exporter": exporter,
        "fd_size": size,
        "alloc_len": mem.len(),
        "offset": e.offset(),
        "fdinfo": info,
        "region_origin": r.desc().origin,
    })))
}

/// One pinned host slot, standing in for a received buffer: goes back to `home` when dropped.
struct HostSlot {
    region: Arc<PinnedRegion>,
    idx: usize,
    size: usize,
    len: usize,
    home: mpsc::Sender<usize>,
}

// SAFETY: the slot's bytes are written only by `fill`, before the HostSlot is made and after
// the previous one for the same index was dropped (the index comes back through `home`), so they
// do not change while it lives; the region stays mapped while the Arc is held.
unsafe impl StagingSource for HostSlot {
    fn host_bytes(&self) -> Option<&[u8]> {
        // SAFETY: in bounds (idx < slots, len <= size); not written while self lives (above).
        Some(unsafe {
            std::slice::from_raw_parts(self.region.as_ptr().add(self.idx * self.size), self.len)
        })
    }
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        let _ = self.home.send(self.idx);
    }
}

struct HostSlots {
    region: Arc<PinnedRegion>,
    size: usize,
    free: VecDeque<usize>,
    home: mpsc::Sender<usize>,
    back: mpsc::Receiver<usize>,
}

impl HostSlots {
    fn new(gpu: &Arc<Gpu>, size: usize, n: usize) -> Result<HostSlots> {
        let p = PinnedHostProvider::new(Arc::new(HostProvider::new()), gpu);
        let region = Arc::new(p.alloc_region(size * n)?);
        let (home, back) = mpsc::channel();
        Ok(HostSlots {
            region,
            size,
            free: (0..n).collect(),
            home,
            back,
        })
    }

    /// A slot filled by `fill`, or None while all are staged.
    fn take(&mut self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<HostSlot> {
        self.free.extend(self.back.try_iter());
        let idx = self.free.pop_front()?;
        // SAFETY: slot `idx` is not held by any HostSlot (it came back or was never out), so
        // nothing reads it; in bounds.
        let buf = unsafe {
            std::slice::from_raw_parts_mut(self.region.as_ptr().add(idx * self.size), len)
        };
        fill(buf);
        Some(HostSlot {
            region: Arc::clone(&self.region),
            idx,
            size: self.size,
            len,
            home: self.home.clone(),
        })
    }
}

fn pattern(seq: u64, buf: &mut [u8]) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in buf.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// Pinned readback buffer (cuMemAllocHost), freed on drop.
struct Readback {
    ptr: *mut u8,
    len: usize,
}

impl Readback {
    fn new(len: usize) -> Result<Readback> {
        let mut p = std::ptr::null_mut();
        // SAFETY: writes the pointer; the context is current (the GPU was just used).
        let r = unsafe { sys::cuMemAllocHost_v2(&mut p, len) };
        cu(r, "cuMemAllocHost")?;
        Ok(Readback { ptr: p.cast(), len })
    }
}

impl Drop for Readback {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAllocHost; no copy into it is pending (streams synchronised).
        unsafe { sys::cuMemFreeHost(self.ptr.cast()) };
    }
}

fn check_staging(gpu: &Arc<Gpu>, args: &Args) -> Result<Outcome> {
    let slot = 64 << 10;
    let gpu_slots = 8u32;
    let sizes = [1usize, 7, 4095, 4096, 4097, 65_535, slot];
    let mut host = HostSlots::new(gpu, slot, 32)?;
    let mut stager: Stager<HostSlot> = Stager::new(gpu, slot, gpu_slots)?;
    let consumer = gpu.context().new_stream().context("consumer stream")?;
    let readback = Readback::new(slot * gpu_slots as usize)?;
    let mut pending: VecDeque<(u64, usize)> = VecDeque::new();
    let (mut next, mut verified, mut busy, mut max_out) = (0u64, 0u64, 0u64, 0usize);
    let mut out: Vec<(u64, GpuLease)> = Vec::new();
    let mut seq_of = VecDeque::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while verified < args.messages as u64 {
        ensure!(
            Instant::now() < deadline,
            "staging made no progress for 120 s"
        );
        // Produce: as the NIC would.
        while (next as usize) < args.messages {
            let len = sizes[next as usize % sizes.len()];
            let seq = next;
            let Some(hs) = host.take(len, |b| pattern(seq, b)) else {
                break;
            };
            let meta = MessageMeta {
                len: 0,
                imm: Some(seq as u32),
                qp_num: 1,
                src_qp: 2,
            };
            match stager.stage(hs, meta) {
                Ok(()) => {
                    seq_of.push_back(seq);
                    next += 1;
                }
                Err(StageError::Busy(hs)) => {
                    busy += 1;
                    drop(hs);
                    break;
                }
                Err(e) => bail!("stage: {e}"),
            }
        }
        // Consume: read each lease back on the consumer stream, release after its event.
        stager.poll(&mut |l| {
            let seq = l.imm().expect("imm") as u64;
            out.push((seq, l));
        })?;
        max_out = max_out.max(out.len() + stager.in_flight());
        gpu.context().bind_to_thread()?;
        for (i, (seq, l)) in out.iter_mut().enumerate() {
            // SAFETY: readback has gpu_slots * slot bytes and at most gpu_slots leases are out;
            // the copy reads `len` bytes of the lease's GPU slot.
            let dst = unsafe { readback.ptr.add(i * slot) };
            // SAFETY: as above; the stream is the consumer's, in the bound context.
            let r = unsafe {
                sys::cuMemcpyDtoHAsync_v2(dst.cast(), l.device_ptr(), l.len(), consumer.cu_stream())
            };
            cu(r, "cuMemcpyDtoHAsync")?;
            l.release_after(&consumer)?;
            pending.push_back((*seq, l.len()));
        }
        let n = out.len();
        out.clear(); // dropped before the stream finished: the gate holds the slots
        consumer.synchronize()?;
        for i in 0..n {
            let (seq, len) = pending.pop_front().expect("pending");
            // SAFETY: the stream is synchronised, so the copy into this part is complete.
            let got = unsafe { std::slice::from_raw_parts(readback.ptr.add(i * slot), len) };
            let mut want = vec![0u8; len];
            pattern(seq, &mut want);
            ensure!(
                got == &want[..],
                "message {seq} ({len} B) differs after staging"
            );
            verified += 1;
        }
        ensure!(readback.len >= n * slot, "readback too small");
    }
    let st = stager.stats();
    ensure!(
        st.completed == args.messages as u64,
        "completed {}",
        st.completed
    );
    ensure!(
        st.rejected.total() == 0,
        "rejected returns: {:?}",
        st.rejected
    );
    ensure!(
        st.gated >= verified,
        "gated returns {} < {verified}",
        st.gated
    );
    // Every GPU slot came back once the events completed.
    let free = stager.free_slots();
    ensure!(
        free == gpu_slots as usize,
        "{free} of {gpu_slots} GPU slots free at the end"
    );
    ensure!(next == verified, "in order and complete");
    Ok(Outcome::Pass(json!({
        "messages": verified,
        "sizes": sizes,
        "gpu_slots": gpu_slots,
        "host_slots": 32,
        "stage_busy": busy,
        "gated_returns": st.gated,
        "gated_returns_that_waited": st.parked,
        "most_out": max_out,
        "bytes": st.bytes,
    })))
}

unsafe extern "C" fn wait_for_flag(p: *mut std::ffi::c_void) {
    // SAFETY: `p` is the AtomicBool that check_gate keeps alive until the stream is synchronised.
    let flag = unsafe { &*(p as *const AtomicBool) };
    while !flag.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn check_gate(gpu: &Arc<Gpu>, _: &Args) -> Result<Outcome> {
    let slot = 4096;
    let mut host = HostSlots::new(gpu, slot, 2)?;
    let mut stager: Stager<HostSlot> = Stager::new(gpu, slot, 2)?;
    let consumer: Arc<CudaStream> = gpu.context().new_stream()?;
    let flag = Box::new(AtomicBool::new(false));
    gpu.context().bind_to_thread()?;
    // The consumer's stream is blocked until the flag is set, like a long kernel.
    // SAFETY: the flag outlives the host function (the stream is synchronised before the flag
    // is dropped); the function calls no CUDA API.
    let r = unsafe {
        sys::cuLaunchHostFunc(
            consumer.cu_stream(),
            Some(wait_for_flag),
            &*flag as *const AtomicBool as *mut std::ffi::c_void,
        )
    };
    cu(r, "cuLaunchHostFunc")?;
    let hs = host.take(100, |b| pattern(7, b)).context("host slot")?;
    stager
        .stage(hs, MessageMeta::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut lease = None;
    let t = Instant::now();
    while lease.is_none() && t.elapsed() < Duration::from_secs(10) {
        stager.poll(&mut |l| lease = Some(l))?;
    }
    let mut lease = lease.context("the copy did not complete in 10 s")?;
    lease.release_after(&consumer)?;
    drop(lease);
    let st = stager.stats();
    ensure!(
        st.waiting == 1,
        "the dropped lease is not parked ({} waiting)",
        st.waiting
    );
    // However often the poller looks, the slot stays out while the stream is blocked.
    let t = Instant::now();
    let mut polls = 0;
    while t.elapsed() < Duration::from_millis(200) {
        stager.poll(&mut |_| {})?;
        polls += 1;
    }
    let held = stager.free_slots();
    ensure!(
        held == 1,
        "{held} of 2 slots free while the consumer's stream is blocked"
    );
    flag.store(true, Ordering::Release);
    consumer.synchronize()?;
    stager.poll(&mut |_| {})?;
    let st = stager.stats();
    ensure!(st.waiting == 0, "still parked after the stream finished");
    let free = stager.free_slots();
    ensure!(
        free == 2,
        "{free} of 2 slots free after the stream finished"
    );
    drop(flag);
    Ok(Outcome::Pass(json!({
        "polls_while_blocked": polls,
        "free_while_blocked": held,
        "free_after": free,
        "gated": st.gated,
        "parked": st.parked,
    })))
}

fn check_throughput(gpu: &Arc<Gpu>, args: &Args) -> Result<Outcome> {
    let mut rows = Vec::new();
    for size in [64usize << 10, 1 << 20] {
        let slots = 64usize;
        let n = (args.bytes / size).max(slots);
        let mut host = HostSlots::new(gpu, size, slots)?;
        // Fill every host slot once; the stager's rate does not depend on the contents.
        for i in 0..slots {
            let s = host
                .take(size, |b| pattern(i as u64, b))
                .expect("fresh slot");
            drop(s);
        }
        let mut stager: Stager<HostSlot> = Stager::new(gpu, size, slots as u32)?;
        // Warm up, then time n messages: stage as fast as slots come back, drop leases at once.
        let mut run = |count: usize| -> Result<f64> {
            let t = Instant::now();
            let (mut sent, mut done) = (0, 0);
            while done < count {
                while sent < count {
                    let Some(hs) = host.take(size, |_| {}) else {
                        break;
                    };
                    match stager.stage(hs, MessageMeta::default()) {
                        Ok(()) => sent += 1,
                        Err(StageError::Busy(hs)) => {
                            drop(hs);
                            break;
                        }
                        Err(e) => bail!("stage: {e}"),
                    }
                }
                done += stager.poll(&mut drop)?;
            }
            Ok(t.elapsed().as_secs_f64())
        };
        run(slots * 2)?;
        let secs = run(n)?;
        let bytes = (n * size) as f64;
        let staged = bytes / secs / 1e9;
        // Plain pinned copies of the same bytes from the same pinned region.
        let dst = DeviceMemory::new(gpu, size * slots)?;
        gpu.context().bind_to_thread()?;
        let src = host.region.as_ptr();
        let stream = gpu.context().new_stream()?;
        let t = Instant::now();
        let mut left = n;
        while left > 0 {
            let k = left.min(slots);
            // SAFETY: k * size bytes of the pinned region into k * size bytes of `dst`.
            let r = unsafe { sys::cuMemcpyHtoD_v2(dst.device_ptr(), src.cast(), k * size) };
            cu(r, "cuMemcpyHtoD")?;
            left -= k;
        }
        let big = bytes / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        for i in 0..n {
            let j = i % slots;
            // SAFETY: slot j of the pinned region into slot j of `dst`, on our stream.
            let r = unsafe {
                sys::cuMemcpyHtoDAsync_v2(
                    dst.device_ptr() + (j * size) as u64,
                    src.add(j * size).cast(),
                    size,
                    stream.cu_stream(),
                )
            };
            cu(r, "cuMemcpyHtoDAsync")?;
        }
        stream.synchronize()?;
        let per_msg = bytes / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "  {size:>8} B x {n}: stager {staged:.1} GB/s, pinned cuMemcpyHtoD ({} B per call) {big:.1} GB/s \
             ({:.2}x), per-message cuMemcpyHtoDAsync {per_msg:.1} GB/s ({:.2}x)",
            size * slots,
            staged / big,
            staged / per_msg
        );
        rows.push(json!({
            "size": size, "messages": n, "stager_gbps": staged,
            "pinned_memcpy_gbps": big, "per_message_async_gbps": per_msg,
            "ratio_vs_pinned_memcpy": staged / big, "ratio_vs_per_message": staged / per_msg,
        }));
    }
    Ok(Outcome::Pass(
        json!({"unit": "GB/s (1e9 B/s)", "rows": rows}),
    ))
}
