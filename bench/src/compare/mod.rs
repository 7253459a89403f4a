//! `gdrx-bench compare`: perftest and gdrx on the same device, sizes, message counts and queue
//! depths, in one go (so: the same testbed boot), several times in a shuffled order, reported
//! as min / median / max with gdrx/perftest ratios of the medians, a JSON file and an SVG plot.
//!
//! Every run is two processes, a receiver and a sender, exactly as users run them. Each size
//! and repetition has three runs:
//! - perftest: `ib_send_bw` (or `ib_write_bw` for `--op write-imm`) server and client with RDMA
//!   CM (`-R`);
//! - same sender: `gdrx-bench server --perftest` fed by the same, unchanged `ib_send_bw -R`
//!   client, so that only the receiver differs (SEND only: perftest's RDMA WRITE completes
//!   nothing at the receiver);
//! - tool against tool: `gdrx-bench server --runs 1` fed by `gdrx-bench client`.
//!
//! Bandwidth and message rate are the
//! receiver's figures for SEND (perftest's server report, gdrx's server row) and, for WRITE,
//! perftest's client report (its server does not see writes) against gdrx's server row. The
//! receiver CPU time is measured the same way for both: the receiving process's user + system
//! time (`wait4`), divided by the messages it received. Repetitions alternate which tool goes
//! first, so that a warming or cooling machine favours neither.

mod output;
mod perftest;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::opts::{Op, RecvOpts, SendOpts, Target};
use crate::proc::Proc;
use crate::report::RecvRow;

pub use output::Figures;
use output::{plot, summarize, table};
use perftest::perftest_version;
use perftest::PerfLine;

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

/// The version of `compare.json`'s layout.
pub const SCHEMA: u32 = 2;

/// The seed of the run order (fixed, so that a comparison can be rerun in the same order).
pub const ORDER_SEED: u64 = 0x0067_6472_7814;

/// Which gdrx runs a table sets against perftest's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// gdrx's receiver fed by perftest's client.
    SameSender,
    /// gdrx's receiver fed by gdrx-bench's client.
    ToolVsTool,
}

impl Mode {
    /// The sender of this mode's gdrx runs ([`Sample::sender`]).
    pub fn gdrx_sender(self) -> &'static str {
        match self {
            Mode::SameSender => "perftest",
            Mode::ToolVsTool => "gdrx-bench",
        }
    }
}

/// One run of a size and repetition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Perftest,
    Gdrx(Mode),
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
    /// Repetitions of every size and receiver (min, median and max are reported).
    #[arg(long, default_value_t = 5)]
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
    /// The receiver: `perftest` or `gdrx`.
    pub tool: &'static str,
    /// The sender: `perftest` (its client) or `gdrx-bench` (its client).
    pub sender: &'static str,
    /// Repetition, from 1.
    pub rep: u32,
    /// Position of this run among its size and repetition's runs (the order is shuffled).
    pub turn: u32,
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
    /// Receiving process wall seconds, from its start to its exit.
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

/// One size, both tools.
#[derive(Debug, Clone, Serialize)]
pub struct SizeSummary {
    /// Message size.
    pub bytes: u32,
    /// Messages per connection and run (0 in duration mode).
    pub iters: u64,
    /// perftest's figures.
    pub perftest: Figures,
    /// gdrx's figures.
    pub gdrx: Figures,
    /// gdrx / perftest median average bandwidth (higher is better for gdrx).
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

/// One table: perftest's runs against one mode's gdrx runs, per size.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Which gdrx runs.
    pub mode: Mode,
    /// Per size.
    pub sizes: Vec<SizeSummary>,
}

/// How the comparison was run: everything needed to run it again.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Message sizes.
    pub sizes: Vec<u32>,
    /// Repetitions per size and receiver.
    pub reps: u32,
    /// Messages per connection at each size (empty in duration mode).
    pub iters: Vec<(u32, u64)>,
    /// Seconds per run, in duration mode.
    pub duration_s: Option<f64>,
    /// Connections (QPs).
    pub qps: u16,
    /// Work requests per post (`-l`).
    pub post_list: u32,
    /// Sends in flight per connection (`-t`).
    pub tx_depth: u32,
    /// Completion moderation (`-Q`).
    pub cq_mod: u32,
    /// Receives posted (`-r`).
    pub rx_depth: u32,
    /// gdrx's SRQ depth.
    pub srq_depth: u32,
    /// gdrx's pool buffers.
    pub pool_slots: u32,
    /// gdrx's memory provider.
    pub provider: String,
    /// gdrx's consumer threads (0: inline).
    pub consumers: u32,
    /// How long gdrx's consumers hold each lease.
    pub hold: String,
    /// Event mode (`-e`) for both receivers.
    pub events: bool,
    /// The gdrx receiver's settings in words.
    pub gdrx_receiver: String,
    /// The seed of the run order.
    pub order_seed: u64,
}

/// Everything `compare` measured.
#[derive(Debug, Serialize)]
pub struct Comparison {
    /// [`SCHEMA`].
    pub schema: u32,
    /// How it was run.
    pub config: Config,
    /// Device.
    pub device: String,
    /// The perftest program.
    pub perftest: String,
    /// perftest's version line.
    pub perftest_version: String,
    /// Operation.
    pub op: Op,
    /// Why the figures are not a real NIC's, when they are not (a software RDMA device, an
    /// emulated CPU).
    pub emulation: Option<String>,
    /// perftest's receiver against gdrx's, both fed by perftest's client (SEND only).
    pub same_sender: Option<Table>,
    /// perftest's receiver fed by perftest's client against gdrx's fed by gdrx's.
    pub tool_vs_tool: Table,
    /// Every run.
    pub samples: Vec<Sample>,
    /// The SVG plot.
    pub plot: PathBuf,
}

impl Args {
    /// The device's address, resolved by [`run`].
    fn ip(&self) -> std::net::IpAddr {
        self.target.ip.expect("resolved before the runs")
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

    /// gdrx-bench's arguments for one size.
    pub fn gdrx_args(&self, size: u32, port: u16, client: bool) -> Vec<String> {
        let (s, r) = (&self.send, &self.recv);
        let mut v: Vec<String> = vec![
            if client { "client" } else { "server" }.into(),
            "--dev".into(),
            self.target.dev.clone(),
            "--ip".into(),
            self.ip().to_string(),
            "--port".into(),
            port.to_string(),
            "--json".into(),
        ];
        let mut opt = |flag: &str, val: String| {
            v.push(flag.into());
            v.push(val);
        };
        if self.target.ib_port != 1 {
            opt("--ib-port", self.target.ib_port.to_string());
        }
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
            if let Some(d) = r.srq_depth {
                opt("--srq-depth", d.to_string());
            }
            if let Some(n) = r.pool_slots {
                opt("--pool-slots", n.to_string());
            }
            opt("--provider", r.provider.name().into());
            opt("-C", r.consumers.to_string());
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

    /// `gdrx-bench server`'s arguments when perftest's client feeds it.
    pub fn gdrx_perftest_server_args(&self, size: u32, port: u16) -> Vec<String> {
        let mut v = self.gdrx_args(size, port, false);
        v.extend(["--perftest".into(), "-s".into(), size.to_string()]);
        v.extend(["-q".into(), self.send.qps.to_string()]);
        if self.send.duration.is_none() {
            v.extend(["-n".into(), self.iters(size).to_string()]);
        }
        v
    }

    fn run_gdrx(&self, size: u32, rep: u32, mode: Mode) -> anyhow::Result<Sample> {
        let exe = std::env::current_exe().context("locating gdrx-bench")?;
        let port = self.target.port;
        let server_args = match mode {
            Mode::ToolVsTool => self.gdrx_args(size, port, false),
            Mode::SameSender => self.gdrx_perftest_server_args(size, port),
        };
        let server = Proc::spawn("gdrx-bench server", Command::new(&exe).args(server_args))?;
        server.wait_for_line("listening on", Duration::from_secs(60))?;
        let cpu0 = server.cpu_now()?;
        let rnr0 = crate::report::rnr_counter(&self.target.dev);
        let client = match mode {
            Mode::ToolVsTool => Proc::spawn(
                "gdrx-bench client",
                Command::new(&exe).args(self.gdrx_args(size, port, true)),
            )?,
            Mode::SameSender => Proc::spawn(
                "perftest client",
                Command::new(self.perftest_prog()).args(self.perftest_args(size, port, true)),
            )?,
        };
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
        // The perftest client's own report, when it fed the run.
        let client_line = perftest::parse_perftest(&c.text()).map(|(_, l)| (String::new(), l));
        Ok(Sample {
            tool: "gdrx",
            sender: mode.gdrx_sender(),
            rep,
            turn: 0,
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
            rnr_naks: row.rnr_naks.or_else(|| rnr_delta(rnr0, &self.target.dev)),
            gdrx: Some(row),
            perftest: client_line,
        })
    }
}

/// Why figures measured on `dev` here are not a real NIC's: a software RDMA device (its sysfs
/// entry names a `parent` netdev, as rxe and siw do), a CPU QEMU emulates.
fn emulation(dev: &str) -> Option<String> {
    let mut why = Vec::new();
    if std::path::Path::new(&format!("/sys/class/infiniband/{dev}/parent")).exists() {
        why.push(format!("{dev} is a software RDMA device"));
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if let Some(model) = cpu
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .filter(|m| m.contains("QEMU"))
    {
        why.push(format!("the CPU is {}", model.trim()));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

fn per_msg(cpu: Duration, messages: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / messages.max(1) as f64
}

fn rnr_delta(before: Option<u64>, dev: &str) -> Option<u64> {
    Some(crate::report::rnr_counter(dev)?.saturating_sub(before?))
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
    // Resolved once (-x or --ip): both tools get the address.
    a.target.ip = Some(a.target.local_ip()?);
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
    let same = a.send.op == Op::Send;
    let kinds: Vec<RunKind> = [
        Some(RunKind::Perftest),
        same.then_some(RunKind::Gdrx(Mode::SameSender)),
        Some(RunKind::Gdrx(Mode::ToolVsTool)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut rng = fastrand::Rng::with_seed(ORDER_SEED);
    for rep in 1..=a.reps {
        for &size in &sizes {
            let mut order = kinds.clone();
            rng.shuffle(&mut order);
            for (turn, kind) in order.into_iter().enumerate() {
                let mut s = match kind {
                    RunKind::Perftest => a
                        .run_perftest(size, rep)
                        .with_context(|| format!("perftest at {size} B, run {rep}"))?,
                    RunKind::Gdrx(mode) => a.run_gdrx(size, rep, mode).with_context(|| {
                        format!("gdrx fed by {} at {size} B, run {rep}", mode.gdrx_sender())
                    })?,
                };
                s.turn = turn as u32;
                eprintln!(
                    "[compare] run {rep}/{} {size:>7} B {:>8} fed by {:>10}: {:>10.2} MiB/s {:>9.5} Mpps {:>8.1} us CPU/msg",
                    a.reps, s.tool, s.sender, s.bw_avg_mib_s, s.msg_rate_mpps, s.rx_cpu_us_per_msg
                );
                samples.push(s);
            }
        }
    }
    let r = &a.recv;
    let table_of = |mode: Mode| Table {
        mode,
        sizes: summarize(&sizes, &samples, mode)
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
    };
    let config = Config {
        sizes: sizes.clone(),
        reps: a.reps,
        iters: if a.send.duration.is_some() {
            Vec::new()
        } else {
            sizes.iter().map(|&b| (b, a.iters(b))).collect()
        },
        duration_s: a.send.duration,
        qps: a.send.qps,
        post_list: a.send.post_list,
        tx_depth: a.send.tx_depth,
        cq_mod: a.send.cq_mod,
        rx_depth: r.rx_depth,
        srq_depth: r.srq_depth(a.send.qps),
        pool_slots: r.pool_slots(a.send.qps),
        provider: r.provider.name().into(),
        consumers: r.consumers,
        hold: r.hold.to_string(),
        events: r.events,
        order_seed: ORDER_SEED,
        gdrx_receiver: format!(
            "{} provider, {} pool buffers, {} posted, SRQ {}, {} consumer thread(s) holding each lease {}, {}",
            r.provider.name(),
            r.pool_slots(a.send.qps),
            r.depth(a.send.qps),
            r.srq_depth(a.send.qps),
            r.consumers,
            r.hold,
            if r.events { "event mode" } else { "busy polling" }
        ),
    };
    let c = Comparison {
        schema: SCHEMA,
        config,
        device: a.target.dev.clone(),
        perftest: prog.display().to_string(),
        perftest_version: version,
        op: a.send.op,
        emulation: emulation(&a.target.dev),
        same_sender: same.then(|| table_of(Mode::SameSender)),
        tool_vs_tool: table_of(Mode::ToolVsTool),
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

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        a: Args,
    }

    pub(crate) fn args(extra: &[&str]) -> Args {
        let base = ["x", "--dev", "rxe0", "--ip", "10.77.0.1"];
        P::try_parse_from(base.iter().chain(extra)).unwrap().a
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
    fn both_tools_get_the_same_run() {
        let a = args(&[
            "-n", "300", "-q", "2", "-l", "4", "--hold", "50us", "-C", "2",
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
    fn the_same_sender_run_tells_gdrx_what_perftest_will_send() {
        let a = args(&["-n", "300", "-q", "2"]);
        let g = a.gdrx_perftest_server_args(4096, 18516).join(" ");
        assert!(g.starts_with("server --dev rxe0"), "{g}");
        assert!(g.ends_with("--perftest -s 4096 -q 2 -n 300"), "{g}");
        let d = args(&["-D", "2"]);
        let g = d.gdrx_perftest_server_args(64, 1).join(" ");
        assert!(
            g.ends_with("--perftest -s 64 -q 1"),
            "no count in duration mode: {g}"
        );
        assert_eq!(Mode::SameSender.gdrx_sender(), "perftest");
    }
}
