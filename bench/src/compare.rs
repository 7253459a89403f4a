//! `gdrx-bench compare`: perftest and gdrx on the same device, sizes, message counts and queue
//! depths, in one go (so: the same testbed boot), several times, reported as medians with
//! gdrx/perftest ratios, a JSON file and a bandwidth-vs-size SVG.
//!
//! Both tools run as two processes, a receiver and a sender, exactly as users run them:
//! `ib_send_bw` (or `ib_write_bw` for `--op write-imm`) server and client with RDMA CM (`-R`),
//! and `gdrx-bench server --runs 1` and `gdrx-bench client`. Bandwidth and message rate are the
//! receiver's figures for SEND (perftest's server report, gdrx's server row) and, for WRITE,
//! perftest's client report (its server does not see writes) against gdrx's server row. The
//! receiver CPU time is measured the same way for both: the receiving process's user + system
//! time (`wait4`), divided by the messages it received. Repetitions alternate which tool goes
//! first, so that a warming or cooling machine favours neither.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::opts::{Op, RecvOpts, SendOpts, Target};
use crate::proc::{Exit, Proc};
use crate::report::{RecvRow, MIB};

/// How often a perftest run that failed to start or reported nothing is tried.
const PERFTEST_ATTEMPTS: u16 = 4;

/// Bytes per run when no `-n`/`-D` is given: each size gets `BYTES_PER_RUN / size` messages,
/// within [`MIN_ITERS`, `MAX_ITERS`], so that small sizes run long enough to be measured.
pub const BYTES_PER_RUN: u64 = 64 << 20;
/// Fewest messages per run in that case.
pub const MIN_ITERS: u64 = 2000;
/// Most messages per run in that case.
pub const MAX_ITERS: u64 = 20_000;

/// Messages per connection for `size` when the user gave no count.
pub fn auto_iters(size: u32) -> u64 {
    (BYTES_PER_RUN / u64::from(size.max(1))).clamp(MIN_ITERS, MAX_ITERS)
}

/// Sizes `compare` runs when none are given.
pub const DEFAULT_SIZES: [u32; 5] = [64, 512, 4096, 16384, 65536];

/// Options of `gdrx-bench compare`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    send: SendOpts,
    #[command(flatten)]
    recv: RecvOpts,
    /// Repetitions of every size and tool; medians are reported.
    #[arg(long, default_value_t = 3)]
    reps: u32,
    /// Folder for compare.json, compare.txt and bw_vs_size.svg (default: $GDRX_OUT/compare,
    /// else target/testbed/compare).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the summary as JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// RDMA CM port perftest uses.
    #[arg(long, default_value_t = 18515)]
    perftest_port: u16,
    /// Folder holding ib_send_bw / ib_write_bw (default: found on PATH).
    #[arg(long)]
    perftest_dir: Option<PathBuf>,
    /// Seconds one process may run before it is killed.
    #[arg(long, default_value_t = 300)]
    run_timeout: u64,
    /// Set when no -n / -D was given: messages per size from [`auto_iters`].
    #[arg(skip)]
    auto_iters: bool,
}

/// One run of one tool at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// `perftest` or `gdrx`.
    pub tool: &'static str,
    /// Repetition, from 1.
    pub rep: u32,
    /// Message size.
    pub bytes: u32,
    /// Messages the receiver got.
    pub messages: u64,
    /// Average bandwidth, MiB/s.
    pub bw_avg_mib_s: f64,
    /// Peak bandwidth, MiB/s.
    pub bw_peak_mib_s: f64,
    /// Message rate, Mpps.
    pub msg_rate_mpps: f64,
    /// Receiving process CPU time (user + system) per message, microseconds, from the moment
    /// it was ready for the sender to its exit (connection handshake, transfer, teardown).
    pub rx_cpu_us_per_msg: f64,
    /// Receiving process CPU seconds over that span.
    pub rx_cpu_s: f64,
    /// Receiving process CPU seconds in all, start-up included.
    pub rx_process_cpu_s: f64,
    /// Receiving process wall seconds.
    pub rx_wall_s: f64,
    /// Sending process CPU time per message (whole process), microseconds.
    pub tx_cpu_us_per_msg: f64,
    /// RNR NAKs the device sent during the run (`send_rnr_err` on rxe), when it counts them.
    pub rnr_naks: Option<u64>,
    /// gdrx's own row (latency, pool-empty events, RNR NAKs, thread CPU).
    pub gdrx: Option<RecvRow>,
    /// perftest's result lines (server, client).
    pub perftest: Option<(String, String)>,
}

/// Medians of one tool at one size.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Medians {
    /// Average bandwidth, MiB/s.
    pub bw_avg_mib_s: f64,
    /// Peak bandwidth, MiB/s.
    pub bw_peak_mib_s: f64,
    /// Message rate, Mpps.
    pub msg_rate_mpps: f64,
    /// Receiving process CPU per message, microseconds.
    pub rx_cpu_us_per_msg: f64,
    /// Sending process CPU per message, microseconds.
    pub tx_cpu_us_per_msg: f64,
}

/// One size, both tools.
#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    /// Message size.
    pub bytes: u32,
    /// Messages per connection and run (0 in duration mode).
    pub iters: u64,
    /// perftest's medians.
    pub perftest: Medians,
    /// gdrx's medians.
    pub gdrx: Medians,
    /// gdrx / perftest average bandwidth (higher is better for gdrx).
    pub bw_ratio: f64,
    /// gdrx / perftest message rate.
    pub msg_rate_ratio: f64,
    /// gdrx / perftest receiver CPU per message (lower is better for gdrx).
    pub cpu_ratio: f64,
    /// gdrx completion-to-consumer latency, median of the runs' p50, microseconds.
    pub gdrx_lat_p50_us: f64,
    /// The same for p99.
    pub gdrx_lat_p99_us: f64,
    /// gdrx pool-empty events over all runs.
    pub gdrx_pool_empty_events: u64,
    /// RNR NAKs over all gdrx runs (when the device counts them).
    pub gdrx_rnr_naks: Option<u64>,
    /// RNR NAKs over all perftest runs.
    pub perftest_rnr_naks: Option<u64>,
    /// gdrx receiving threads' own CPU per message (median), microseconds.
    pub gdrx_thread_cpu_us_per_msg: f64,
}

/// Everything `compare` measured.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// Device.
    pub device: String,
    /// The perftest program.
    pub perftest: String,
    /// perftest's version line.
    pub perftest_version: String,
    /// Operation.
    pub op: Op,
    /// Repetitions.
    pub reps: u32,
    /// Messages per connection, when the same at every size (`None`: see each size's, or
    /// duration mode).
    pub iters: Option<u64>,
    /// Duration per run in seconds, in duration mode.
    pub duration_s: Option<f64>,
    /// Connections.
    pub qps: u16,
    /// The gdrx receiver's settings.
    pub gdrx_receiver: String,
    /// Per size.
    pub sizes: Vec<SizeSummary>,
    /// Every run.
    pub samples: Vec<Sample>,
    /// The SVG plot.
    pub plot: PathBuf,
}

/// A perftest result line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfLine {
    /// Message size.
    pub bytes: u32,
    /// Iterations.
    pub iters: u64,
    /// Peak bandwidth, MiB/s.
    pub peak_mib_s: f64,
    /// Average bandwidth, MiB/s.
    pub avg_mib_s: f64,
    /// Message rate, Mpps.
    pub mpps: f64,
}

/// Finds the result line of a perftest BW report (`#bytes #iterations BW peak BW average
/// MsgRate`), converting Gb/s to MiB/s when perftest reported Gb/s. Returns the line too.
pub fn parse_perftest(text: &str) -> Option<(PerfLine, String)> {
    let mut lines = text.lines();
    while let Some(h) = lines.next() {
        if !(h.contains("#bytes") && h.contains("BW average")) {
            continue;
        }
        let scale = if h.contains("Gb/sec") {
            1e9 / 8.0 / MIB
        } else {
            1.0
        };
        // perftest may print a warning between the header and the numbers (e.g. "Correlation
        // coefficient r^2: 0.66 < 0.9" when its CPU frequency estimate failed).
        let row = lines.find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok())
        })?;
        let f: Vec<&str> = row.split_whitespace().collect();
        if f.len() < 5 {
            return None;
        }
        return Some((
            PerfLine {
                bytes: f[0].parse().ok()?,
                iters: f[1].parse().ok()?,
                peak_mib_s: f[2].parse::<f64>().ok()? * scale,
                avg_mib_s: f[3].parse::<f64>().ok()? * scale,
                mpps: f[4].parse().ok()?,
            },
            row.trim().to_string(),
        ));
    }
    None
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

impl Args {
    fn perftest_prog(&self) -> PathBuf {
        let name = self.send.op.perftest();
        self.perftest_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }

    /// Messages per connection at `size`.
    fn iters(&self, size: u32) -> u64 {
        if self.auto_iters {
            auto_iters(size)
        } else {
            self.send.iters
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.run_timeout)
    }

    /// perftest's arguments for one size; only what differs from perftest's defaults is
    /// passed, so the run is what a perftest user gets.
    pub fn perftest_args(&self, size: u32, port: u16, client: bool) -> Vec<String> {
        let s = &self.send;
        let mut v: Vec<String> = vec![
            "-d".into(),
            self.target.dev.clone(),
            "-s".into(),
            size.to_string(),
            "-F".into(),
            "-R".into(),
            "-p".into(),
            port.to_string(),
        ];
        let mut opt = |flag: &str, val: String| {
            v.push(flag.into());
            v.push(val);
        };
        match s.duration {
            Some(d) => opt("-D", (d.ceil() as u64).max(1).to_string()),
            None => opt("-n", self.iters(size).to_string()),
        }
        if s.qps != 1 {
            opt("-q", s.qps.to_string());
        }
        if s.tx_depth != 128 {
            opt("-t", s.tx_depth.to_string());
        }
        if s.cq_mod != 100 {
            opt("-Q", s.cq_mod.to_string());
        }
        if s.post_list != 1 {
            opt("-l", s.post_list.to_string());
        }
        if s.op == Op::Send && self.recv.rx_depth != 512 {
            opt("-r", self.recv.rx_depth.to_string());
        }
        if self.recv.events {
            v.push("-e".into());
        }
        if client {
            v.push(self.target.ip.to_string());
        }
        v
    }

    /// gdrx-bench's arguments for one size.
    pub fn gdrx_args(&self, size: u32, port: u16, client: bool) -> Vec<String> {
        let (s, r) = (&self.send, &self.recv);
        let mut v: Vec<String> = vec![
            if client { "client" } else { "server" }.into(),
            "--dev".into(),
            self.target.dev.clone(),
            "--ip".into(),
            self.target.ip.to_string(),
            "--port".into(),
            port.to_string(),
            "--json".into(),
        ];
        let mut opt = |flag: &str, val: String| {
            v.push(flag.into());
            v.push(val);
        };
        if client {
            opt("-s", size.to_string());
            match s.duration {
                Some(d) => opt("-D", d.to_string()),
                None => opt("-n", self.iters(size).to_string()),
            }
            opt("-q", s.qps.to_string());
            opt("-l", s.post_list.to_string());
            opt("-t", s.tx_depth.to_string());
            opt("-Q", s.cq_mod.to_string());
            opt("--op", s.op.name().into());
            if s.verify {
                opt("--verify", String::new());
            }
        } else {
            opt("--runs", "1".into());
            opt("--idle-timeout", "120".into());
            opt("-r", r.rx_depth.to_string());
            opt("--srq-depth", r.srq_depth().to_string());
            opt("--pool-slots", r.pool_slots().to_string());
            opt("--provider", r.provider.name().into());
            opt("-c", r.consumers.to_string());
            opt("--hold", r.hold.to_string());
            if r.events {
                opt("-e", String::new());
            }
            if let Some(p) = r.prometheus {
                opt("--prometheus", p.to_string());
            }
        }
        v.retain(|x| !x.is_empty());
        v
    }

    fn messages(&self, line: &PerfLine) -> u64 {
        match self.send.duration {
            None => self.iters(line.bytes) * u64::from(self.send.qps),
            Some(d) => (line.mpps * 1e6 * d).round().max(1.0) as u64,
        }
    }

    fn run_perftest(&self, size: u32, rep: u32) -> anyhow::Result<Sample> {
        let prog = self.perftest_prog();
        let mut last_err = None;
        let mut zero = None;
        for attempt in 0..PERFTEST_ATTEMPTS {
            let port = self.perftest_port + attempt;
            // perftest writes through stdio, fully buffered into a pipe: make it line buffered
            // so that its "waiting" line arrives when it is printed.
            let server = Proc::spawn(
                "perftest server",
                Command::new("stdbuf")
                    .arg("-oL")
                    .arg(&prog)
                    .args(self.perftest_args(size, port, false)),
            )?;
            server.wait_for_line("Waiting for client", Duration::from_secs(60))?;
            // perftest prints that line just before it binds: give it a moment.
            std::thread::sleep(Duration::from_millis(400));
            let cpu0 = server.cpu_now()?;
            let rnr0 = crate::report::rnr_counter(&self.target.dev);
            let client = Proc::spawn(
                "perftest client",
                Command::new(&prog).args(self.perftest_args(size, port, true)),
            )?;
            let c = client.wait(self.timeout())?;
            if !c.status.success() {
                // The server is killed when it goes out of scope.
                last_err = Some(format!(
                    "{} client failed ({}):\n{}",
                    prog.display(),
                    c.status,
                    c.text()
                ));
                eprintln!(
                    "[compare] perftest client failed (attempt {}), retrying",
                    attempt + 1
                );
                continue;
            }
            let s = server.wait(self.timeout())?;
            if !s.status.success() {
                bail!(
                    "{} server failed ({}):\n{}",
                    prog.display(),
                    s.status,
                    s.text()
                );
            }
            let rnr = rnr_delta(rnr0, &self.target.dev);
            let sample = self.perftest_sample(size, rep, &s, &c, cpu0, rnr)?;
            if sample.bw_avg_mib_s > 0.0 && sample.msg_rate_mpps > 0.0 {
                return Ok(sample);
            }
            // perftest turns cycles into seconds with a CPU frequency it estimates at start;
            // when the estimate fails it says so (r^2 < 0.9) and reports 0. Run it again.
            let why = [s.text(), c.text()]
                .iter()
                .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
                .find(|l| l.contains("Correlation coefficient"))
                .unwrap_or_else(|| "no reason printed".into());
            eprintln!(
                "[compare] perftest reported no throughput at {size} B (attempt {} of \
                 {PERFTEST_ATTEMPTS}; its CPU frequency estimate: {}), retrying",
                attempt + 1,
                why.trim()
            );
            zero = Some(sample);
        }
        if let Some(s) = zero {
            eprintln!(
                "[compare] perftest reported no throughput at {size} B in {PERFTEST_ATTEMPTS} \
                 attempts: its figures for this run are 0"
            );
            return Ok(s);
        }
        bail!(last_err.unwrap_or_default())
    }

    fn perftest_sample(
        &self,
        size: u32,
        rep: u32,
        s: &Exit,
        c: &Exit,
        cpu0: Duration,
        rnr_naks: Option<u64>,
    ) -> anyhow::Result<Sample> {
        let parse = |e: &Exit, side: &str| {
            parse_perftest(&e.text()).with_context(|| {
                format!("no result line in perftest's {side} output:\n{}", e.text())
            })
        };
        let (cl, cline) = parse(c, "client")?;
        let (bw, peak, rate, sline) = match self.send.op {
            Op::Send => {
                let (sl, sline) = parse(s, "server")?;
                // The server (receiver) reports no peak; the client does.
                (
                    sl.avg_mib_s,
                    cl.peak_mib_s.max(sl.avg_mib_s),
                    sl.mpps,
                    sline,
                )
            }
            // ib_write_bw's server sees nothing: the client's figures are all there is.
            Op::WriteImm => (cl.avg_mib_s, cl.peak_mib_s, cl.mpps, String::new()),
        };
        if cl.bytes != size {
            bail!("perftest reported size {} for a {size} B run", cl.bytes);
        }
        let messages = self.messages(&cl);
        Ok(Sample {
            tool: "perftest",
            rep,
            bytes: size,
            messages,
            bw_avg_mib_s: bw,
            bw_peak_mib_s: peak,
            msg_rate_mpps: rate,
            rx_cpu_us_per_msg: per_msg(s.cpu.saturating_sub(cpu0), messages),
            rx_cpu_s: s.cpu.saturating_sub(cpu0).as_secs_f64(),
            rx_process_cpu_s: s.cpu.as_secs_f64(),
            rx_wall_s: s.wall.as_secs_f64(),
            tx_cpu_us_per_msg: per_msg(c.cpu, messages),
            rnr_naks,
            gdrx: None,
            perftest: Some((sline, cline)),
        })
    }

    fn run_gdrx(&self, size: u32, rep: u32) -> anyhow::Result<Sample> {
        let exe = std::env::current_exe().context("locating gdrx-bench")?;
        let port = self.target.port;
        let server = Proc::spawn(
            "gdrx-bench server",
            Command::new(&exe).args(self.gdrx_args(size, port, false)),
        )?;
        server.wait_for_line("listening on", Duration::from_secs(60))?;
        let cpu0 = server.cpu_now()?;
        let client = Proc::spawn(
            "gdrx-bench client",
            Command::new(&exe).args(self.gdrx_args(size, port, true)),
        )?;
        let c = client.wait(self.timeout())?;
        let s = server.wait(self.timeout())?;
        if !s.status.success() || !c.status.success() {
            bail!(
                "gdrx-bench failed at {size} B: server {}, client {}\nserver output:\n{}\nclient output:\n{}",
                s.status,
                c.status,
                s.text(),
                c.text()
            );
        }
        let row: RecvRow = s
            .output
            .iter()
            .find_map(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("no JSON row in gdrx-bench server's output:\n{}", s.text()))?;
        Ok(Sample {
            tool: "gdrx",
            rep,
            bytes: size,
            messages: row.messages,
            bw_avg_mib_s: row.bw_avg_mib_s,
            bw_peak_mib_s: row.bw_peak_mib_s,
            msg_rate_mpps: row.msg_rate_mpps,
            rx_cpu_us_per_msg: per_msg(s.cpu.saturating_sub(cpu0), row.messages),
            rx_cpu_s: s.cpu.saturating_sub(cpu0).as_secs_f64(),
            rx_process_cpu_s: s.cpu.as_secs_f64(),
            rx_wall_s: s.wall.as_secs_f64(),
            tx_cpu_us_per_msg: per_msg(c.cpu, row.messages),
            rnr_naks: row.rnr_naks,
            gdrx: Some(row),
            perftest: None,
        })
    }
}

fn per_msg(cpu: Duration, messages: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / messages.max(1) as f64
}

fn rnr_delta(before: Option<u64>, dev: &str) -> Option<u64> {
    Some(crate::report::rnr_counter(dev)?.saturating_sub(before?))
}

fn medians(samples: &[&Sample]) -> Medians {
    let m = |f: fn(&Sample) -> f64| median(samples.iter().map(|s| f(s)).collect());
    Medians {
        bw_avg_mib_s: m(|s| s.bw_avg_mib_s),
        bw_peak_mib_s: m(|s| s.bw_peak_mib_s),
        msg_rate_mpps: m(|s| s.msg_rate_mpps),
        rx_cpu_us_per_msg: m(|s| s.rx_cpu_us_per_msg),
        tx_cpu_us_per_msg: m(|s| s.tx_cpu_us_per_msg),
    }
}

/// Medians and ratios per size.
pub fn summarize(sizes: &[u32], samples: &[Sample]) -> Vec<SizeSummary> {
    sizes
        .iter()
        .map(|&b| {
            let of = |tool: &str| -> Vec<&Sample> {
                samples
                    .iter()
                    .filter(|s| s.bytes == b && s.tool == tool)
                    .collect()
            };
            let (p, g) = (of("perftest"), of("gdrx"));
            let (pm, gm) = (medians(&p), medians(&g));
            let rows: Vec<&RecvRow> = g.iter().filter_map(|s| s.gdrx.as_ref()).collect();
            let rnr = |v: &[&Sample]| -> Option<u64> { v.iter().map(|s| s.rnr_naks).sum() };
            SizeSummary {
                bytes: b,
                iters: 0,
                perftest: pm,
                gdrx: gm,
                bw_ratio: ratio(gm.bw_avg_mib_s, pm.bw_avg_mib_s),
                msg_rate_ratio: ratio(gm.msg_rate_mpps, pm.msg_rate_mpps),
                cpu_ratio: ratio(gm.rx_cpu_us_per_msg, pm.rx_cpu_us_per_msg),
                gdrx_lat_p50_us: median(rows.iter().map(|r| r.lat_p50_us).collect()),
                gdrx_lat_p99_us: median(rows.iter().map(|r| r.lat_p99_us).collect()),
                gdrx_pool_empty_events: rows.iter().map(|r| r.pool_empty_events).sum(),
                gdrx_rnr_naks: rnr(&g),
                perftest_rnr_naks: rnr(&p),
                gdrx_thread_cpu_us_per_msg: median(
                    rows.iter().map(|r| r.rx_cpu_us_per_msg).collect(),
                ),
            }
        })
        .collect()
}

/// The side-by-side table.
pub fn table(c: &Comparison) -> String {
    let mut t = String::new();
    let tool = c.op.perftest();
    let _ = writeln!(
        t,
        "gdrx-bench compare on {}: {} ({}) vs gdrx; {} runs per size and tool, medians; {}",
        c.device,
        tool,
        c.perftest_version,
        c.reps,
        match c.duration_s {
            Some(d) => format!("{d} s per run"),
            None => match c.iters {
                Some(n) => format!("{n} messages per connection"),
                None => format!(
                    "messages per connection: {}",
                    c.sizes
                        .iter()
                        .map(|s| format!("{} at {} B", s.iters, s.bytes))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        }
    );
    let _ = writeln!(t, "gdrx receiver: {}", c.gdrx_receiver);
    let _ = writeln!(
        t,
        "{:>8} | {:>10} {:>10} {:>6} | {:>10} {:>10} {:>6} | {:>9} {:>9} {:>6} | {:>8} {:>8} {:>6} {:>11}",
        "#bytes",
        "perftest",
        "gdrx",
        "ratio",
        "perftest",
        "gdrx",
        "ratio",
        "perftest",
        "gdrx",
        "ratio",
        "lat p50",
        "lat p99",
        "empty",
        "RNR NAKs"
    );
    let _ = writeln!(
        t,
        "{:>8} | {:>28} | {:>28} | {:>26} | {:>8} {:>8} {:>6} {:>11}",
        "",
        "BW average [MiB/s]",
        "message rate [Mpps]",
        "rx CPU [us/msg]",
        "[us]",
        "[us]",
        "pool",
        "perftest/gdrx"
    );
    for s in &c.sizes {
        let _ = writeln!(
            t,
            "{:>8} | {:>10.2} {:>10.2} {:>5.2}x | {:>10.5} {:>10.5} {:>5.2}x | {:>9.1} {:>9.1} {:>5.2}x | {:>8.1} {:>8.1} {:>6} {:>11}",
            s.bytes,
            s.perftest.bw_avg_mib_s,
            s.gdrx.bw_avg_mib_s,
            s.bw_ratio,
            s.perftest.msg_rate_mpps,
            s.gdrx.msg_rate_mpps,
            s.msg_rate_ratio,
            s.perftest.rx_cpu_us_per_msg,
            s.gdrx.rx_cpu_us_per_msg,
            s.cpu_ratio,
            s.gdrx_lat_p50_us,
            s.gdrx_lat_p99_us,
            s.gdrx_pool_empty_events,
            format!(
                "{}/{}",
                s.perftest_rnr_naks.map_or("-".into(), |n| n.to_string()),
                s.gdrx_rnr_naks.map_or("-".into(), |n| n.to_string())
            )
        );
    }
    let _ = writeln!(
        t,
        "ratios are gdrx / perftest: above 1 is better for bandwidth and rate, below 1 for CPU; \
         rx CPU is the receiving process's user+system time from ready to exit, per message"
    );
    let _ = writeln!(
        t,
        "sender CPU [us/msg], perftest/gdrx: {}",
        c.sizes
            .iter()
            .map(|s| format!(
                "{} B {:.1}/{:.1}",
                s.bytes, s.perftest.tx_cpu_us_per_msg, s.gdrx.tx_cpu_us_per_msg
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for line in targets(c) {
        let _ = writeln!(t, "{line}");
    }
    t
}

/// The issue's targets, as met / missed lines, for the sizes this comparison ran.
pub fn targets(c: &Comparison) -> Vec<String> {
    let mut v = Vec::new();
    let tool = c.op.perftest();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for s in &c.sizes {
        if s.bytes == 4096 || s.bytes == 65536 {
            v.push(format!(
                "target: avg BW at {} B >= 1.0x {tool}: {:.2}x ({})",
                s.bytes,
                s.bw_ratio,
                verdict(s.bw_ratio >= 1.0)
            ));
        }
        if s.bytes == 64 {
            v.push(format!(
                "target: message rate at 64 B >= 1.0x {tool}: {:.2}x ({})",
                s.msg_rate_ratio,
                verdict(s.msg_rate_ratio >= 1.0)
            ));
        }
    }
    if !c.sizes.is_empty() {
        let worst = c.sizes.iter().map(|s| s.cpu_ratio).fold(f64::NAN, f64::max);
        v.push(format!(
            "target: receiver CPU per message <= {tool}'s at every size: worst {worst:.2}x ({})",
            verdict(worst <= 1.0)
        ));
    }
    v
}

fn human(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.0}M", b / 1024.0 / 1024.0)
    } else if b >= 1024.0 {
        format!("{:.0}K", b / 1024.0)
    } else {
        format!("{b:.0}")
    }
}

/// Draws average bandwidth against message size for both tools.
///
/// # Errors
/// When the file cannot be written.
pub fn plot(path: &Path, c: &Comparison) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let pts = |f: fn(&SizeSummary) -> f64| -> Vec<(f64, f64)> {
        c.sizes.iter().map(|s| (f64::from(s.bytes), f(s))).collect()
    };
    let (p, g) = (
        pts(|s| s.perftest.bw_avg_mib_s),
        pts(|s| s.gdrx.bw_avg_mib_s),
    );
    let xmin = c.sizes.iter().map(|s| s.bytes).min().unwrap_or(1) as f64;
    let xmax = c.sizes.iter().map(|s| s.bytes).max().unwrap_or(2) as f64;
    let ymax = p
        .iter()
        .chain(&g)
        .map(|&(_, y)| y)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let root = SVGBackend::new(path, (960, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let tool = c.op.perftest();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "receive bandwidth vs message size on {}: gdrx vs {tool}",
                c.device
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("message size [bytes]")
        .y_desc("average bandwidth [MiB/s] (medians)")
        .x_label_formatter(&|v| human(*v))
        .draw()?;
    let series = [
        (format!("{tool} (perftest)"), p, RGBColor(200, 60, 40)),
        ("gdrx".to_string(), g, RGBColor(30, 90, 200)),
    ];
    for (label, data, color) in series {
        chart
            .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            data.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

fn perftest_version(prog: &Path) -> String {
    Command::new(prog)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&o.stderr).lines())
                .find(|l| l.to_lowercase().contains("version"))
                .unwrap_or("version unknown")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

/// Runs the comparison.
///
/// # Errors
/// When a tool cannot be started, fails, or prints no result.
pub fn run(a: &Args, sizes_given: bool, count_given: bool) -> anyhow::Result<()> {
    let mut a = a.clone();
    if !sizes_given {
        a.send.sizes = DEFAULT_SIZES.to_vec();
    }
    a.auto_iters = !count_given;
    a.send.validate()?;
    a.recv.validate()?;
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let sizes = a.send.sizes();
    let out = a.out.clone().unwrap_or_else(|| {
        std::env::var_os("GDRX_OUT")
            .map_or_else(|| PathBuf::from("target/testbed"), PathBuf::from)
            .join("compare")
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let prog = a.perftest_prog();
    let version = perftest_version(&prog);
    let mut samples = Vec::new();
    for rep in 1..=a.reps {
        for &size in &sizes {
            let perftest_first = rep % 2 == 1;
            for turn in 0..2 {
                let s = if (turn == 0) == perftest_first {
                    a.run_perftest(size, rep)
                        .with_context(|| format!("perftest at {size} B, run {rep}"))?
                } else {
                    a.run_gdrx(size, rep)
                        .with_context(|| format!("gdrx at {size} B, run {rep}"))?
                };
                eprintln!(
                    "[compare] run {rep}/{} {size:>7} B {:>8}: {:>10.2} MiB/s {:>9.5} Mpps {:>8.1} us CPU/msg",
                    a.reps, s.tool, s.bw_avg_mib_s, s.msg_rate_mpps, s.rx_cpu_us_per_msg
                );
                samples.push(s);
            }
        }
    }
    let r = &a.recv;
    let c = Comparison {
        device: a.target.dev.clone(),
        perftest: prog.display().to_string(),
        perftest_version: version,
        op: a.send.op,
        reps: a.reps,
        iters: (a.send.duration.is_none() && !a.auto_iters).then_some(a.send.iters),
        duration_s: a.send.duration,
        qps: a.send.qps,
        gdrx_receiver: format!(
            "{} provider, {} pool buffers, {} posted, SRQ {}, {} consumer thread(s) holding each lease {}, {}",
            r.provider.name(),
            r.pool_slots(),
            r.rx_depth,
            r.srq_depth(),
            r.consumers,
            r.hold,
            if r.events { "event mode" } else { "busy polling" }
        ),
        sizes: summarize(&sizes, &samples)
            .into_iter()
            .map(|s| SizeSummary {
                iters: if a.send.duration.is_some() {
                    0
                } else {
                    a.iters(s.bytes)
                },
                ..s
            })
            .collect(),
        samples,
        plot: out.join("bw_vs_size.svg"),
    };
    plot(&c.plot, &c).with_context(|| format!("drawing {}", c.plot.display()))?;
    let text = table(&c);
    std::fs::write(out.join("compare.txt"), &text)?;
    std::fs::write(out.join("compare.json"), serde_json::to_string_pretty(&c)?)?;
    if a.json {
        println!("{}", serde_json::to_string(&c)?);
    } else {
        print!("{text}");
        println!("plot: {}", c.plot.display());
        println!("data: {}", out.join("compare.json").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    // Output of perftest 6.06's ib_send_bw on rxe (server side, then client side).
    const SERVER: &str = "\
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 4096       2000             0.00               18.68  \t\t   0.004782
---------------------------------------------------------------------------------------
";
    const ZEROS: &str = "\
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
Correlation coefficient r^2: 0.667368 < 0.9
 65536      2000             0.00               0.00   \t\t   0.000000
";
    const CLIENT_GBITS: &str = "\
 #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]
 64         2000           0.000000            0.005918            0.011559
";

    #[test]
    fn perftest_result_lines_parse() {
        let (l, line) = parse_perftest(SERVER).unwrap();
        assert_eq!((l.bytes, l.iters), (4096, 2000));
        assert!((l.avg_mib_s - 18.68).abs() < 1e-9);
        assert!((l.mpps - 0.004782).abs() < 1e-12);
        assert!(line.starts_with("4096"));
        let (g, _) = parse_perftest(CLIENT_GBITS).unwrap();
        assert!(
            (g.avg_mib_s - 0.005918e9 / 8.0 / MIB).abs() < 1e-9,
            "Gb/s converted"
        );
        let (z, _) = parse_perftest(ZEROS).unwrap();
        assert_eq!(
            (z.bytes, z.avg_mib_s, z.mpps),
            (65536, 0.0, 0.0),
            "the warning is skipped"
        );
        assert!(parse_perftest("Couldn't connect to 10.77.0.1:18515").is_none());
        assert!(
            parse_perftest(" #bytes #iterations BW peak BW average MsgRate\n garbage\n").is_none()
        );
    }

    #[test]
    fn automatic_message_counts_scale_with_size() {
        assert_eq!(auto_iters(64), MAX_ITERS);
        assert_eq!(auto_iters(4096), 16384);
        assert_eq!(auto_iters(65536), MIN_ITERS);
        let mut a = args(&[]);
        a.auto_iters = true;
        assert!(a
            .perftest_args(4096, 1, false)
            .join(" ")
            .contains("-n 16384"));
        assert!(a.gdrx_args(4096, 1, true).join(" ").contains("-n 16384"));
        a.auto_iters = false;
        assert!(a.gdrx_args(4096, 1, true).join(" ").contains("-n 5000"));
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        let s = |tool, bw: f64| Sample {
            tool,
            rep: 1,
            bytes: 4096,
            messages: 100,
            bw_avg_mib_s: bw,
            bw_peak_mib_s: bw,
            msg_rate_mpps: bw / 4.0,
            rx_cpu_us_per_msg: 10.0 / bw,
            rx_cpu_s: 0.0,
            rx_process_cpu_s: 0.0,
            rx_wall_s: 0.0,
            tx_cpu_us_per_msg: 0.0,
            rnr_naks: None,
            gdrx: None,
            perftest: None,
        };
        let v = vec![
            s("perftest", 10.0),
            s("perftest", 30.0),
            s("perftest", 20.0),
            s("gdrx", 22.0),
            s("gdrx", 40.0),
            s("gdrx", 1.0),
        ];
        let sum = summarize(&[4096], &v);
        assert_eq!(sum[0].perftest.bw_avg_mib_s, 20.0);
        assert_eq!(sum[0].gdrx.bw_avg_mib_s, 22.0);
        assert!((sum[0].bw_ratio - 1.1).abs() < 1e-12);
        assert!((sum[0].cpu_ratio - (10.0 / 22.0) / (10.0 / 20.0)).abs() < 1e-12);
    }

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        a: Args,
    }

    fn args(extra: &[&str]) -> Args {
        let base = ["x", "--dev", "rxe0", "--ip", "10.77.0.1"];
        P::try_parse_from(base.iter().chain(extra)).unwrap().a
    }

    /// A stand-in ib_send_bw whose server reports 0 (with perftest's r^2 warning) for its first
    /// `zeros` runs: compare must run it again and take the first real result.
    fn fake_perftest(name: &str, zeros: u32) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("gdrx-fake-perftest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let script = format!(
            r#"#!/bin/sh
dir=$(dirname "$0")
hdr=" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
case "$*" in
*10.77.0.1*) echo "$hdr"; echo " 4096       300              18.00              15.25  		   0.003904";;
*) n=$(cat "$dir/runs" 2>/dev/null || echo 0); n=$((n+1)); echo $n >"$dir/runs"
   echo " Waiting for client to connect... *"; sleep 0.3; echo "$hdr"
   if [ $n -le {zeros} ]; then
       echo "Correlation coefficient r^2: 0.667368 < 0.9"
       echo " 4096       300              0.00               0.00   		   0.000000"
   else
       echo " 4096       300              0.00               14.50  		   0.003712"
   fi;;
esac
"#
        );
        let p = d.join("ib_send_bw");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn perftest_zero_results_are_run_again() {
        let d = fake_perftest("retry", 2);
        let a = args(&["-n", "300", "--perftest-dir", d.to_str().unwrap()]);
        let s = a.run_perftest(4096, 1).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("runs")).unwrap().trim(), "3");
        assert_eq!(s.bw_avg_mib_s, 14.5);
        assert_eq!(s.msg_rate_mpps, 0.003712);
        // Every attempt failing: the zero result is kept (and reported), not an error.
        let d = fake_perftest("allzero", 99);
        let a = args(&["-n", "300", "--perftest-dir", d.to_str().unwrap()]);
        let s = a.run_perftest(4096, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("runs")).unwrap().trim(),
            PERFTEST_ATTEMPTS.to_string()
        );
        assert_eq!(s.bw_avg_mib_s, 0.0);
    }

    #[test]
    fn both_tools_get_the_same_run() {
        let a = args(&[
            "-n", "300", "-q", "2", "-l", "4", "--hold", "50us", "-c", "2",
        ]);
        let p = a.perftest_args(4096, 18515, true);
        assert_eq!(
            p.join(" "),
            "-d rxe0 -s 4096 -F -R -p 18515 -n 300 -q 2 -l 4 10.77.0.1"
        );
        let ps = a.perftest_args(4096, 18515, false);
        assert!(
            !ps.contains(&"10.77.0.1".to_string()),
            "the server gets no address"
        );
        let g = a.gdrx_args(4096, 18516, true).join(" ");
        assert!(
            g.starts_with(
                "client --dev rxe0 --ip 10.77.0.1 --port 18516 --json -s 4096 -n 300 -q 2 -l 4"
            ),
            "{g}"
        );
        let gs = a.gdrx_args(4096, 18516, false);
        let hold = gs.iter().position(|x| x == "--hold").unwrap();
        assert_eq!(
            gs[hold + 1].parse::<crate::opts::Hold>().unwrap(),
            a.recv.hold,
            "the hold time survives the round trip"
        );
        assert!(gs.join(" ").contains("--runs 1"));
        let w = args(&["--op", "write-imm", "-D", "2.5", "-e"]);
        let wp = w.perftest_args(64, 1, false).join(" ");
        assert!(
            wp.contains("-D 3") && wp.contains("-e") && !wp.contains("-r "),
            "{wp}"
        );
        assert_eq!(w.perftest_prog(), PathBuf::from("ib_write_bw"));
    }

    #[test]
    fn the_plot_is_an_svg_with_both_series() {
        let dir = std::env::temp_dir().join(format!("gdrx-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = |bw| Medians {
            bw_avg_mib_s: bw,
            ..Medians::default()
        };
        let sz = |b, p, g| SizeSummary {
            bytes: b,
            iters: 100,
            perftest: m(p),
            gdrx: m(g),
            bw_ratio: g / p,
            msg_rate_ratio: 1.0,
            cpu_ratio: 1.0,
            gdrx_lat_p50_us: 1.0,
            gdrx_lat_p99_us: 2.0,
            gdrx_pool_empty_events: 0,
            gdrx_rnr_naks: None,
            perftest_rnr_naks: None,
            gdrx_thread_cpu_us_per_msg: 1.0,
        };
        let c = Comparison {
            device: "rxe0".into(),
            perftest: "ib_send_bw".into(),
            perftest_version: "Version: 6.06".into(),
            op: Op::Send,
            reps: 3,
            iters: Some(100),
            duration_s: None,
            qps: 1,
            gdrx_receiver: "host".into(),
            sizes: vec![
                sz(64, 0.7, 0.8),
                sz(4096, 18.0, 19.0),
                sz(65536, 30.0, 29.0),
            ],
            samples: vec![],
            plot: dir.join("p.svg"),
        };
        plot(&c.plot, &c).unwrap();
        let svg = std::fs::read_to_string(&c.plot).unwrap();
        assert!(svg.starts_with("<svg"), "an SVG document");
        assert!(svg.contains("gdrx") && svg.contains("ib_send_bw (perftest)"));
        assert!(
            svg.matches("<circle").count() >= 6,
            "a point per size and tool"
        );
        let t = table(&c);
        assert!(
            t.contains("avg BW at 65536 B >= 1.0x ib_send_bw: 0.97x (MISSED)"),
            "{t}"
        );
        assert!(t.contains("message rate at 64 B"), "{t}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
