//! Loopback mode: one process, a receiving thread and a sending thread, one RC connection made
//! through RDMA CM on the device's IP address.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use gdrx_core::wire::{Hello, Welcome};
use gdrx_core::{
    Access, ConnectionSpec, Cq, Device, HostMemory, Listener, QpConfig, RecvBatch, SendBatch,
    SendFlags, SendOp, Srq, SrqConfig, WorkCompletion,
};
use serde::Serialize;

/// Options of `gdrx-bench loopback`, named after perftest's where they mean the same.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// RDMA device (default: $GDRX_RDMA_DEV, set by deploy/testbed.sh).
    #[arg(long, env = "GDRX_RDMA_DEV")]
    pub dev: String,
    /// IP address of the device's interface (default: $GDRX_RDMA_IP).
    #[arg(long, env = "GDRX_RDMA_IP")]
    pub ip: IpAddr,
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 65536)]
    pub size: u32,
    /// Sweep sizes 2, 4, 8, ... up to --max-size (like perftest -a).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Largest size of a sweep.
    #[arg(long, default_value_t = 65536)]
    pub max_size: u32,
    /// Messages per size.
    #[arg(short = 'n', long, default_value_t = 5000)]
    pub iters: u32,
    /// Receive buffers posted on the SRQ (perftest -r).
    #[arg(short = 'r', long, default_value_t = 512)]
    pub rx_depth: u32,
    /// Sends in flight (perftest -t).
    #[arg(short = 't', long, default_value_t = 128)]
    pub tx_depth: u32,
    /// Sleep on the completion channel instead of busy polling (receiver).
    #[arg(long)]
    pub events: bool,
    /// Print one JSON object per size instead of the table.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// The sizes to run.
    pub fn sizes(&self) -> Vec<u32> {
        if self.all {
            std::iter::successors(Some(2u32), |s| s.checked_mul(2))
                .take_while(|&s| s <= self.max_size)
                .collect()
        } else {
            vec![self.size]
        }
    }

    /// Checks the options.
    ///
    /// # Errors
    /// When a value is out of range.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.sizes().contains(&0) || self.max_size == 0 {
            bail!("message size must be at least 1 byte");
        }
        if self.iters == 0 || self.rx_depth == 0 || self.tx_depth == 0 {
            bail!("--iters, --rx-depth and --tx-depth must be positive");
        }
        Ok(())
    }
}

/// One row of the report.
#[derive(Debug, Serialize)]
pub struct Row {
    /// Message size.
    pub bytes: u32,
    /// Messages received.
    pub iterations: u32,
    /// Average bandwidth, MiB/s (2^20 bytes), as perftest prints it.
    pub bw_avg_mib_s: f64,
    /// Average bandwidth, Gb/s (1e9 bits).
    pub bw_avg_gbit_s: f64,
    /// Messages per second, in millions.
    pub msg_rate_mpps: f64,
    /// Receiver thread CPU time per message, microseconds.
    pub rx_cpu_us_per_msg: f64,
    /// Elapsed seconds.
    pub secs: f64,
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the loopback benchmark.
///
/// # Errors
/// Device, connection or completion errors.
pub fn run(a: &Args) -> anyhow::Result<()> {
    a.validate()?;
    let dev = Device::open(&a.dev)?;
    let port = dev.require_active_port(1)?;
    if !a.json {
        println!(
            "gdrx-bench loopback on {} ({}), active MTU {}, {}",
            dev.name(),
            dev.kind(),
            port.active_mtu,
            if a.events {
                "event-mode receiver"
            } else {
                "busy-polling receiver"
            }
        );
        println!(
            "{:>10} {:>10} {:>14} {:>12} {:>14} {:>16}",
            "#bytes", "#iters", "BW avg[MiB/s]", "BW avg[Gb/s]", "MsgRate[Mpps]", "rx CPU[us/msg]"
        );
    }
    for size in a.sizes() {
        let row = run_size(&dev, a, size).with_context(|| format!("size {size}"))?;
        if a.json {
            println!("{}", serde_json::to_string(&row)?);
        } else {
            println!(
                "{:>10} {:>10} {:>14.2} {:>12.3} {:>14.5} {:>16.2}",
                row.bytes,
                row.iterations,
                row.bw_avg_mib_s,
                row.bw_avg_gbit_s,
                row.msg_rate_mpps,
                row.rx_cpu_us_per_msg
            );
        }
    }
    Ok(())
}

fn run_size(dev: &Arc<Device>, a: &Args, size: u32) -> anyhow::Result<Row> {
    let pd = dev.alloc_pd()?;
    let slots = a.rx_depth;
    let rcq = if a.events {
        Cq::with_events(dev, slots + 16)?
    } else {
        Cq::new(dev, slots + 16)?
    };
    let srq = Srq::new(
        &pd,
        SrqConfig {
            max_wr: slots,
            max_sge: 1,
            limit: 0,
        },
    )?;
    let rmem = Arc::new(HostMemory::new(slots as usize * size as usize)?);
    let rmr = pd.register(Arc::clone(&rmem), Access::recv())?;
    let mut batch = RecvBatch::with_capacity(slots as usize, slots as usize);
    for i in 0..slots {
        batch
            .push(
                u64::from(i),
                &[rmr
                    .sge(i as usize * size as usize, size as usize)
                    .expect("in bounds")],
            )
            .expect("sized");
    }
    // SAFETY: every SGE lies in `rmr`, which outlives the SRQ in this function; the buffers are
    // never read (the benchmark does not touch payloads).
    unsafe { srq.post_recv(&mut batch) }?;
    let mut listener = Listener::bind(SocketAddr::new(a.ip, 0), 4)?;
    let server = listener.local_addr();

    let start = Arc::new(Barrier::new(2));
    let (iters, tx_depth) = (a.iters, a.tx_depth);
    let spd = dev.alloc_pd()?;
    let scq = Cq::new(dev, tx_depth + 16)?;
    let mut sspec = ConnectionSpec::new(&spd, &scq, &scq, None);
    sspec.qp = QpConfig {
        max_send_wr: tx_depth,
        ..QpConfig::default()
    };
    let go = Arc::clone(&start);
    let sender = std::thread::spawn(move || -> anyhow::Result<()> {
        let hello = Hello {
            flags: 0,
            conn_tag: 0,
            max_msg: size,
        };
        let conn = gdrx_core::connect(server, None, &sspec, &hello.encode())?;
        let smem = Arc::new(HostMemory::new(size as usize)?);
        let smr = spd.register(smem, Access::none())?;
        let sge = smr.sge(0, size as usize).expect("in bounds");
        let signal_every = (tx_depth / 2).clamp(1, 32);
        let mut sb = SendBatch::with_capacity(1, 1);
        let mut wcs = WorkCompletion::buffer(32);
        go.wait();
        let (mut posted, mut outstanding) = (0u32, 0u32);
        while posted < iters {
            while outstanding + signal_every > tx_depth {
                let n = scq.poll(&mut wcs)?;
                for wc in &wcs[..n] {
                    wc.result()?;
                    outstanding -= signal_every.min(outstanding);
                }
            }
            let signaled = (posted + 1) % signal_every == 0 || posted + 1 == iters;
            sb.push(
                u64::from(posted),
                SendOp::Send,
                &[sge],
                SendFlags {
                    signaled,
                    ..Default::default()
                },
            )
            .expect("batch of one");
            // SAFETY: the SGE lies in `smr`, alive until the final completion below; the payload
            // is never modified.
            unsafe { conn.qp().post_send(&mut sb) }?;
            posted += 1;
            outstanding += 1;
        }
        // Wait for the last signaled send.
        loop {
            let n = scq.poll(&mut wcs)?;
            if wcs[..n].iter().any(|wc| wc.wr_id() == u64::from(iters - 1)) {
                for wc in &wcs[..n] {
                    wc.result()?;
                }
                break;
            }
        }
        drop(conn);
        Ok(())
    });

    let req = listener
        .next_request(Some(Duration::from_secs(60)))?
        .context("the sending thread never connected")?;
    Hello::decode(req.private_data()).map_err(|e| e.into_error("connect request"))?;
    let rspec = ConnectionSpec::new(&pd, &rcq, &rcq, Some(&srq));
    let welcome = Welcome {
        flags: 0,
        recv_buf: size,
        window: None,
    };
    let conn = req.accept(&rspec, &welcome.encode())?;
    let mut wcs = WorkCompletion::buffer(64);
    let mut repost = RecvBatch::with_capacity(slots as usize, slots as usize);
    start.wait();
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    let mut received = 0u32;
    while received < iters {
        let n = if a.events {
            rcq.poll_blocking(&mut wcs, Some(Duration::from_secs(30)))?
        } else {
            rcq.poll(&mut wcs)?
        };
        if n == 0 && a.events {
            bail!("no completion for 30 s after {received} of {iters} messages");
        }
        for wc in &wcs[..n] {
            wc.result()?;
            received += 1;
            let i = wc.wr_id() as usize;
            repost
                .push(
                    wc.wr_id(),
                    &[rmr
                        .sge(i * size as usize, size as usize)
                        .expect("in bounds")],
                )
                .expect("sized");
        }
        // SAFETY: as for the first post.
        unsafe { srq.post_recv(&mut repost) }?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu() - cpu0;
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    drop(conn);
    let bytes = f64::from(size) * f64::from(iters);
    Ok(Row {
        bytes: size,
        iterations: iters,
        bw_avg_mib_s: bytes / secs / f64::from(1u32 << 20),
        bw_avg_gbit_s: bytes * 8.0 / secs / 1e9,
        msg_rate_mpps: f64::from(iters) / secs / 1e6,
        rx_cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / f64::from(iters),
        secs,
    })
}
