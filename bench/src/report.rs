//! What a run measured and how it is printed: the receiver's row per size (a perftest-like
//! table, or JSON), the sender's row, CPU clocks and the device's RNR counters.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The version of the JSON rows' layout: bumped when a field changes meaning or goes away.
pub const SCHEMA: u32 = 1;

/// The receiver's measurements of one run (one size), with the run's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecvRow {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Message size.
    pub bytes: u32,
    /// Operation (`send` or `write-imm`).
    pub op: String,
    /// Connections.
    pub qps: u16,
    /// Messages received (all connections).
    pub messages: u64,
    /// Seconds from the first completion to the last.
    pub secs: f64,
    /// Average bandwidth, MiB/s (2^20 bytes), as perftest prints it.
    pub bw_avg_mib_s: f64,
    /// Highest bandwidth over a 20 ms window (the average when the run is shorter).
    pub bw_peak_mib_s: f64,
    /// Average bandwidth, Gb/s (10^9 bits).
    pub bw_avg_gbit_s: f64,
    /// Messages per second, in millions.
    pub msg_rate_mpps: f64,
    /// CPU time of the receiving threads (poller and consumers) per message, microseconds,
    /// measured over the run.
    pub rx_cpu_us_per_msg: f64,
    /// Completion-to-consumer latency: from the poller taking the completion to the consumer
    /// receiving the lease, microseconds.
    pub lat_p50_us: f64,
    /// 99th percentile of the same.
    pub lat_p99_us: f64,
    /// Largest.
    pub lat_max_us: f64,
    /// Times every pool buffer was lent out with nothing left to post.
    pub pool_empty_events: u64,
    /// RNR NAKs the receiving device sent during the run (`send_rnr_err` on rxe), when the
    /// device has such a counter.
    pub rnr_naks: Option<u64>,
    /// Most leases out at once.
    pub max_leases_out: u64,
    /// Messages whose payload, length or sequence number was wrong (with --verify; sequence
    /// numbers are always checked).
    pub verify_errors: u64,
    /// Messages verified byte for byte.
    pub verified: u64,
    /// Consumer threads (0: inline on the poller).
    pub consumers: u32,
    /// Hold time per lease.
    pub hold: String,
    /// Event mode.
    pub events: bool,
    /// Memory provider.
    pub provider: String,
    /// How the pool's memory was registered.
    pub registration: String,
    /// The page size the pool's memory got (the provider's report).
    pub page_size: u64,
}

/// The sender's measurements of one run, with the run's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendRow {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Operation (`send` or `write-imm`).
    pub op: String,
    /// Connections.
    pub qps: u16,
    /// Sends kept in flight per connection.
    pub tx_depth: u32,
    /// Message size.
    pub bytes: u32,
    /// Messages sent (all connections).
    pub messages: u64,
    /// Seconds from the first post to the last completion.
    pub secs: f64,
    /// Average bandwidth, MiB/s.
    pub bw_avg_mib_s: f64,
    /// Messages per second, in millions.
    pub msg_rate_mpps: f64,
    /// Sender thread CPU per message, microseconds.
    pub tx_cpu_us_per_msg: f64,
    /// Post calls.
    pub post_calls: u64,
}

/// Bytes per MiB.
pub const MIB: f64 = 1_048_576.0;

/// Header of the receiver table.
pub fn recv_header() -> String {
    format!(
        "{:>9} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8}",
        "#bytes",
        "#msgs",
        "BWpeak",
        "BWavg",
        "BWavg",
        "MsgRate",
        "rxCPU",
        "lat p50",
        "lat p99",
        "empty",
        "RNR",
        "page",
        "reg"
    ) + &format!(
        "\n{:>9} {:>9} {:>10} {:>10} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>8}",
        "",
        "",
        "[MiB/s]",
        "[MiB/s]",
        "[Gb/s]",
        "[Mpps]",
        "[us/msg]",
        "[us]",
        "[us]",
        "pool",
        "NAKs",
        "",
        ""
    )
}

/// A page size as the table shows it (4K, 2M, 1G).
fn page(p: u64) -> String {
    match p {
        0 => "-".into(),
        p if p >= 1 << 30 && p % (1 << 30) == 0 => format!("{}G", p >> 30),
        p if p >= 1 << 20 && p % (1 << 20) == 0 => format!("{}M", p >> 20),
        p if p >= 1 << 10 && p % (1 << 10) == 0 => format!("{}K", p >> 10),
        p => p.to_string(),
    }
}

/// One receiver table line.
pub fn recv_line(r: &RecvRow) -> String {
    format!(
        "{:>9} {:>9} {:>10.2} {:>10.2} {:>9.3} {:>10.5} {:>9.2} {:>9.1} {:>9.1} {:>7} {:>7} {:>6} {:>8}",
        r.bytes,
        r.messages,
        r.bw_peak_mib_s,
        r.bw_avg_mib_s,
        r.bw_avg_gbit_s,
        r.msg_rate_mpps,
        r.rx_cpu_us_per_msg,
        r.lat_p50_us,
        r.lat_p99_us,
        r.pool_empty_events,
        r.rnr_naks.map_or("-".to_string(), |n| n.to_string()),
        page(r.page_size),
        r.registration
    )
}

/// Header of the sender table.
pub fn send_header() -> String {
    format!(
        "{:>9} {:>9} {:>12} {:>12} {:>14} {:>10}",
        "#bytes", "#msgs", "BWavg[MiB/s]", "MsgRate[Mpps]", "txCPU[us/msg]", "posts"
    )
}

/// One sender table line.
pub fn send_line(r: &SendRow) -> String {
    format!(
        "{:>9} {:>9} {:>12.2} {:>12.5} {:>14.2} {:>10}",
        r.bytes, r.messages, r.bw_avg_mib_s, r.msg_rate_mpps, r.tx_cpu_us_per_msg, r.post_calls
    )
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the thread CPU-time clock always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Counters that count RNR NAKs a receiving device sent: rxe's `send_rnr_err`; mlx5's
/// `out_of_buffer` (receives dropped for want of a posted WQE) where rxe's is absent.
const RNR_COUNTERS: [&str; 2] = ["send_rnr_err", "out_of_buffer"];

/// Reads the device's RNR counter (port 1), when it has one.
pub fn rnr_counter(dev: &str) -> Option<u64> {
    RNR_COUNTERS.iter().find_map(|name| {
        std::fs::read_to_string(format!(
            "/sys/class/infiniband/{dev}/ports/1/hw_counters/{name}"
        ))
        .ok()?
        .trim()
        .parse()
        .ok()
    })
}

/// Peak bandwidth over fixed windows.
#[derive(Debug)]
pub struct Peak {
    window: Duration,
    start: Option<Instant>,
    bytes: u64,
    best: f64,
}

impl Peak {
    /// Windows of `window`.
    pub fn new(window: Duration) -> Peak {
        Peak {
            window,
            start: None,
            bytes: 0,
            best: 0.0,
        }
    }

    /// Adds `bytes` received at `now`.
    pub fn add(&mut self, now: Instant, bytes: u64) {
        let start = *self.start.get_or_insert(now);
        let dt = now.duration_since(start);
        if dt >= self.window {
            self.best = self.best.max(self.bytes as f64 / dt.as_secs_f64());
            self.start = Some(now);
            self.bytes = 0;
        }
        self.bytes += bytes;
    }

    /// Highest bytes/s over a complete window, if any window completed.
    pub fn best(&self) -> Option<f64> {
        (self.best > 0.0).then_some(self.best)
    }
}

/// Progress of a run on stderr. On a terminal, a bar that updates in place (indicatif), with
/// the percentage and the time left when the run's message count is known, and the rate;
/// otherwise, with `--progress`, a plain line once a second (a log file gets no control codes).
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    last: Instant,
    what: String,
    total: Option<u64>,
}

impl Progress {
    /// Progress for `what`, a run of `total` messages when known: a bar on a terminal, plain
    /// lines when `force` and stderr is not a terminal, else nothing.
    pub fn new(force: bool, what: String, total: Option<u64>) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    indicatif::ProgressBar::new(n),
                    "  {prefix} [{bar:30}] {percent:>3}% {pos}/{len} messages, {msg}, ETA {eta}",
                ),
                None => (
                    indicatif::ProgressBar::new_spinner(),
                    "  {prefix} {spinner} {pos} messages, {msg}, {elapsed}",
                ),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(template)
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what.clone());
            bar.set_message("waiting for the first message");
            bar
        });
        Progress {
            bar,
            lines: force && !tty,
            last: Instant::now(),
            what,
            total,
        }
    }

    /// No progress at all.
    pub fn off() -> Progress {
        Progress {
            bar: None,
            lines: false,
            last: Instant::now(),
            what: String::new(),
            total: None,
        }
    }

    /// True when progress is shown.
    pub fn is_on(&self) -> bool {
        self.bar.is_some() || self.lines
    }

    /// Shows `messages` and the bandwidth since `t0` (the bar at most every 100 ms, a line at
    /// most once a second).
    pub fn tick(&mut self, t0: Instant, messages: u64, bytes: u64) {
        let every = if self.bar.is_some() {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        };
        if !self.is_on() || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = t0.elapsed().as_secs_f64().max(1e-9);
        let rate = format!("{:.2} MiB/s", bytes as f64 / secs / MIB);
        if let Some(bar) = &self.bar {
            bar.set_position(messages);
            bar.set_message(rate);
        } else {
            let pct = self.total.map_or_else(String::new, |n| {
                format!(" ({:.0} %)", 100.0 * messages as f64 / n.max(1) as f64)
            });
            let _ = writeln!(
                std::io::stderr(),
                "  [{}] {:.0} s: {} messages{pct}, {rate}",
                self.what,
                secs,
                messages,
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // The table row follows: leave no bar behind it.
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_a_bar_on_a_terminal_and_lines_only_when_asked_elsewhere() {
        let tty = std::io::stderr().is_terminal();
        let p = Progress::new(false, "64 B".into(), Some(1000));
        assert_eq!(p.is_on(), tty, "on by default only on a terminal");
        assert_eq!(p.bar.is_some(), tty);
        let mut p = Progress::new(true, "64 B".into(), Some(1000));
        assert!(p.is_on(), "--progress");
        assert_eq!(p.lines, !tty, "plain lines where there is no terminal");
        p.last -= Duration::from_secs(2);
        p.tick(Instant::now() - Duration::from_secs(1), 500, 32_000);
        assert!(p.last.elapsed() < Duration::from_secs(1), "ticked");
    }

    #[test]
    fn peak_takes_the_best_complete_window() {
        let t0 = Instant::now();
        let mut p = Peak::new(Duration::from_millis(10));
        assert_eq!(p.best(), None);
        p.add(t0, 100);
        p.add(t0 + Duration::from_millis(5), 100);
        assert_eq!(p.best(), None, "no window complete yet");
        p.add(t0 + Duration::from_millis(10), 1000); // closes [0,10): 200 B in 10 ms
        assert!((p.best().unwrap() - 20_000.0).abs() < 1.0);
        p.add(t0 + Duration::from_millis(20), 0); // closes [10,20): 1000 B in 10 ms
        assert!((p.best().unwrap() - 100_000.0).abs() < 1.0);
    }

    #[test]
    fn table_lines_line_up_with_the_header() {
        let r = RecvRow {
            schema: SCHEMA,
            bytes: 65536,
            op: "send".into(),
            qps: 1,
            messages: 2000,
            secs: 1.0,
            bw_avg_mib_s: 28.5,
            bw_peak_mib_s: 31.0,
            bw_avg_gbit_s: 0.239,
            msg_rate_mpps: 0.00046,
            rx_cpu_us_per_msg: 800.0,
            lat_p50_us: 3.0,
            lat_p99_us: 40.0,
            lat_max_us: 90.0,
            pool_empty_events: 0,
            rnr_naks: Some(12),
            max_leases_out: 3,
            verify_errors: 0,
            verified: 0,
            consumers: 1,
            hold: "0ns".into(),
            events: false,
            provider: "host".into(),
            registration: "address".into(),
            page_size: 2 << 20,
        };
        let h = recv_header();
        let first = h.lines().next().unwrap();
        assert_eq!(first.len(), recv_line(&r).len());
        assert!(
            recv_line(&r).ends_with("     2M  address"),
            "{}",
            recv_line(&r)
        );
        let back: RecvRow = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            (page(4096), page(1 << 30), page(0), page(100)),
            ("4K".into(), "1G".into(), "-".into(), "100".into())
        );
    }
}
