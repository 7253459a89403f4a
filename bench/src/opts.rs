//! Command-line options shared by the roles, named after perftest's where they mean the same
//! (`-s`, `-a`, `-n`, `-D`, `-q`, `-l`, `-r`, `-t`, `-Q`, `-e`), and the small parsers behind
//! them (durations, hold-time distributions). No device is touched here.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};

/// The default RDMA CM port of `gdrx-bench server` (perftest's is 18515).
pub const DEFAULT_PORT: u16 = 18516;

/// Where the RDMA device is. The flags are perftest's where they mean the same: `-d`/`--ib-dev`,
/// `-i`/`--ib-port`, `-x`/`--gid-index`, `-p`/`--port`.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// RDMA device (perftest -d; default: $GDRX_RDMA_DEV, set by deploy/testbed.sh).
    #[arg(short = 'd', long, visible_alias = "ib-dev", env = "GDRX_RDMA_DEV")]
    pub dev: String,
    /// IP address of the device's interface: the server listens on it, the client connects to
    /// it unless the server's address is given as the last argument, as with perftest
    /// (default: $GDRX_RDMA_IP, else the address of the GID -x).
    #[arg(long, env = "GDRX_RDMA_IP")]
    pub ip: Option<IpAddr>,
    /// RDMA CM port (perftest -p).
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Port of the device (perftest -i).
    #[arg(short = 'i', long, default_value_t = 1)]
    pub ib_port: u8,
    /// GID index (perftest -x). RDMA CM picks the GID from the IP address, so this picks the
    /// address instead: the IP address of that GID table entry (`gdrx-doctor` lists them).
    /// The server listens on it; the client sends from it.
    #[arg(short = 'x', long)]
    pub gid_index: Option<u32>,
}

impl Target {
    /// The address of GID entry `-x` of port `-i`, when `-x` is given.
    ///
    /// # Errors
    /// When the device cannot be read, or the entry is missing or link-local.
    pub fn gid_ip(&self) -> anyhow::Result<Option<IpAddr>> {
        let Some(x) = self.gid_index else {
            return Ok(None);
        };
        let dev = gdrx_core::Device::open(&self.dev)?;
        let port = dev.port(self.ib_port)?;
        let Some(g) = port.gids.iter().find(|g| g.index == x) else {
            let have: Vec<String> = port
                .gids
                .iter()
                .map(|g| format!("{} = {}", g.index, g.ip()))
                .collect();
            bail!(
                "-x {x}: port {} of {} has no GID entry {x} (it has: {})",
                self.ib_port,
                self.dev,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            );
        };
        let ip = g.ip();
        if let IpAddr::V6(v6) = ip {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                bail!(
                    "-x {x}: GID entry {x} of {} is the link-local address {v6}, which RDMA CM \
                     cannot use without an interface scope; pick the entry of the interface's \
                     IPv4 or global address (`gdrx-doctor` lists them)",
                    self.dev
                );
            }
        }
        Ok(Some(ip))
    }

    /// This side's address: `--ip`, else the address of GID `-x`.
    ///
    /// # Errors
    /// When neither is given, or they disagree.
    pub fn local_ip(&self) -> anyhow::Result<IpAddr> {
        match (self.ip, self.gid_ip()?) {
            (Some(ip), Some(g)) if ip != g => bail!(
                "--ip {ip} and -x {} ({g}) name different addresses: give one of them",
                self.gid_index.unwrap_or_default()
            ),
            (Some(ip), _) | (None, Some(ip)) => Ok(ip),
            (None, None) => bail!(
                "no address: give --ip (or set $GDRX_RDMA_IP), or -x with a GID index of {}",
                self.dev
            ),
        }
    }

    /// The address to listen on.
    ///
    /// # Errors
    /// As [`Target::local_ip`].
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(SocketAddr::new(self.local_ip()?, self.port))
    }
}

/// SEND or RDMA WRITE with immediate data.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// SEND_WITH_IMM into the pool's posted buffers (compared with perftest's ib_send_bw).
    Send,
    /// RDMA WRITE_WITH_IMM into a window the receiver advertises; each write consumes one
    /// posted receive (compared with perftest's ib_write_bw).
    WriteImm,
}

impl Op {
    /// Wire code.
    pub fn code(self) -> u8 {
        match self {
            Op::Send => 1,
            Op::WriteImm => 2,
        }
    }

    /// From the wire code.
    pub fn from_code(c: u8) -> Option<Op> {
        match c {
            1 => Some(Op::Send),
            2 => Some(Op::WriteImm),
            _ => None,
        }
    }

    /// The name on the command line (`--op`) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::Send => "send",
            Op::WriteImm => "write-imm",
        }
    }

    /// The perftest program measuring the same operation.
    pub fn perftest(self) -> &'static str {
        match self {
            Op::Send => "ib_send_bw",
            Op::WriteImm => "ib_write_bw",
        }
    }
}

/// What the sender does: sizes, counts, queue depths (the client's options).
#[derive(clap::Args, Debug, Clone)]
pub struct SendOpts {
    /// Message size in bytes.
    #[arg(short = 's', long, default_value_t = 65536)]
    pub size: u32,
    /// Sweep sizes 2, 4, 8, ... up to --max-size: 64 KiB by default, where perftest's -a goes
    /// to 8 MiB (the pool keeps -r x (connections + 1) buffers of the message size: raise
    /// --max-size, and lower -r, for larger).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Smallest size of a sweep.
    #[arg(long, default_value_t = 2)]
    pub min_size: u32,
    /// Largest size of a sweep.
    #[arg(long, default_value_t = 65536)]
    pub max_size: u32,
    /// Explicit list of sizes, comma separated (overrides -s and -a), e.g. 64,4096,65536.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<u32>,
    /// Messages per connection and size (perftest -n).
    #[arg(short = 'n', long, default_value_t = 5000)]
    pub iters: u64,
    /// Run each size for this many seconds instead of -n messages (perftest -D).
    #[arg(short = 'D', long)]
    pub duration: Option<f64>,
    /// Connections (RC QPs), all feeding the receiver's one SRQ (perftest -q).
    #[arg(short = 'q', long, default_value_t = 1)]
    pub qps: u16,
    /// Send work requests per post call (perftest -l, --post_list).
    #[arg(short = 'l', long, default_value_t = 1)]
    pub post_list: u32,
    /// Sends in flight per connection (perftest -t).
    #[arg(short = 't', long, default_value_t = 128)]
    pub tx_depth: u32,
    /// Signal one send completion every this many sends (perftest -Q, --cq-mod; at most
    /// --tx-depth).
    #[arg(short = 'Q', long, default_value_t = 100)]
    pub cq_mod: u32,
    /// The operation.
    #[arg(long, value_enum, default_value_t = Op::Send)]
    pub op: Op,
    /// Fill every message with a pattern the receiver checks (sequence, length and bytes).
    #[arg(long)]
    pub verify: bool,
    /// Seconds to keep retrying the first connection while the server is not listening yet.
    #[arg(long, default_value_t = 20.0)]
    pub connect_timeout: f64,
}

impl SendOpts {
    /// The sizes to run, in order.
    pub fn sizes(&self) -> Vec<u32> {
        if !self.sizes.is_empty() {
            self.sizes.clone()
        } else if self.all {
            std::iter::successors(Some(self.min_size.max(1)), |s| s.checked_mul(2))
                .take_while(|&s| s <= self.max_size)
                .collect()
        } else {
            vec![self.size]
        }
    }

    /// Signal interval actually used: `cq_mod`, at most `tx_depth` (perftest clamps it too).
    pub fn signal_every(&self) -> u32 {
        self.cq_mod.clamp(1, self.tx_depth.max(1))
    }

    /// Checks the options.
    ///
    /// # Errors
    /// When a value is out of range, with what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        let sizes = self.sizes();
        if sizes.is_empty() {
            bail!(
                "no message sizes: --min-size {} is above --max-size {}",
                self.min_size,
                self.max_size
            );
        }
        if sizes.contains(&0) {
            bail!("message size must be at least 1 byte");
        }
        if let Some(&s) = sizes.iter().find(|&&s| s > MAX_SIZE) {
            bail!("message size {s} is above the {MAX_SIZE} B this benchmark supports");
        }
        match self.duration {
            Some(d) if !(d.is_finite() && d > 0.0 && d <= 86_400.0) => {
                bail!("--duration must be between 0 and 86400 seconds, not {d}")
            }
            None if self.iters == 0 => bail!("--iters must be at least 1"),
            _ => {}
        }
        if !(self.connect_timeout.is_finite() && (0.0..=3600.0).contains(&self.connect_timeout)) {
            bail!("--connect-timeout must be between 0 and 3600 seconds");
        }
        if self.iters > u64::from(SEQ_MASK) {
            bail!("--iters is at most {SEQ_MASK} per connection");
        }
        if self.qps == 0 || self.tx_depth == 0 || self.post_list == 0 || self.cq_mod == 0 {
            bail!("--qps, --tx-depth, --post-list and --cq-mod must be positive");
        }
        if self.post_list > self.tx_depth {
            bail!(
                "--post-list {} exceeds --tx-depth {}: a post list cannot be larger than the send queue",
                self.post_list,
                self.tx_depth
            );
        }
        Ok(())
    }
}

/// Largest message size (1 GiB; perftest's limit is 8 MiB per default).
pub const MAX_SIZE: u32 = 1 << 30;
/// Sequence numbers travel in the low 31 bits of the immediate data.
pub const SEQ_MASK: u32 = 0x7fff_ffff;

/// Where the receiver's buffers come from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// Anonymous host pages.
    Host,
    /// Huge pages (1 GiB, then 2 MiB hugetlb, then THP, then 4 KiB; each step reported).
    Hugepage,
    /// A udmabuf (memfd -> /dev/udmabuf): a real dma-buf without a GPU.
    Udmabuf,
}

impl ProviderKind {
    /// The name on the command line (`--provider`) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Host => "host",
            ProviderKind::Hugepage => "hugepage",
            ProviderKind::Udmabuf => "udmabuf",
        }
    }
}

/// The connection type (perftest's `-c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// Reliable connection, the only one gdrx-bench speaks.
    Rc,
}

/// Parses `-c`: `RC`, with a pointer to `-C` for a number (the consumer count's old letter).
fn parse_connection(s: &str) -> Result<Connection, String> {
    match s.to_ascii_uppercase().as_str() {
        "RC" => Ok(Connection::Rc),
        "UC" | "UD" | "XRC" | "DC" | "SRD" => Err(format!(
            "gdrx-bench speaks RC only (an SRQ-fed receive pool over RDMA CM), not {s}"
        )),
        _ if s.parse::<u32>().is_ok() => Err(
            "-c is the connection type, as in perftest (RC); consumer threads are -C/--consumers"
                .to_string(),
        ),
        _ => Err(format!("`{s}` is not a connection type (RC)")),
    }
}

/// What the receiver does: receive queue, memory, consumers (the server's options).
#[derive(clap::Args, Debug, Clone)]
pub struct RecvOpts {
    /// Receives kept posted per connection (perftest -r, which posts that many on each QP):
    /// a run's SRQ keeps --rx-depth x connections posted, so that the senders' sends in flight
    /// always find a receive.
    #[arg(short = 'r', long, default_value_t = 512)]
    pub rx_depth: u32,
    /// SRQ size (max_wr); default: --rx-depth x the run's connections.
    #[arg(long)]
    pub srq_depth: Option<u32>,
    /// Buffers in the pool (posted + lent to consumers); default: the receives posted plus
    /// --rx-depth, so that consumers can hold one connection's depth of leases while the SRQ
    /// stays full (twice --rx-depth with one connection).
    #[arg(long)]
    pub pool_slots: Option<u32>,
    /// Sleep on the completion channel instead of busy polling (perftest -e).
    #[arg(short = 'e', long)]
    pub events: bool,
    /// Memory provider of the pool.
    #[arg(long, value_enum, default_value_t = ProviderKind::Host)]
    pub provider: ProviderKind,
    /// Consumer threads the leases are handed to over a channel; 0 consumes on the polling
    /// thread itself. (Not -c: that is perftest's connection type, below.)
    #[arg(short = 'C', long, default_value_t = 1)]
    pub consumers: u32,
    /// Connection type (perftest -c): RC only, the transport an SRQ-fed pool needs here.
    #[arg(short = 'c', long, default_value = "RC", value_parser = parse_connection)]
    pub connection: Connection,
    /// How long a consumer holds each lease before dropping it: a fixed time (0, 50us, 2ms),
    /// `uniform:MIN-MAX` or `exp:MEAN` (exponential distribution).
    #[arg(long, default_value = "0")]
    pub hold: Hold,
    /// Most connections a run may have (the client announces them; they size the SRQ, the
    /// pool and the WRITE windows).
    #[arg(long, default_value_t = 64)]
    pub max_qps: u16,
    /// Most memory, in MiB, a run's pool and WRITE windows may take (the client's size, QPs
    /// and tx depth decide it; a run that needs more is refused at its handshake). Default:
    /// half of this machine's memory.
    #[arg(long)]
    pub max_memory_mib: Option<u64>,
    /// Seconds a run's handshake may go without progress (a connection established) before
    /// the run is abandoned and the next sender is served; runs of other senders that arrive
    /// meanwhile wait, they are not refused.
    #[arg(long, default_value_t = 10.0)]
    pub handshake_timeout: f64,
    /// Expose the pool metrics at this address (`http://ADDR/metrics`, Prometheus format)
    /// while it runs.
    #[arg(long)]
    pub prometheus: Option<SocketAddr>,
}

impl RecvOpts {
    /// SRQ size for a run of `qps` connections.
    pub fn srq_depth(&self, qps: u16) -> u32 {
        self.srq_depth
            .unwrap_or_else(|| self.rx_depth.saturating_mul(u32::from(qps.max(1))))
    }

    /// Receives kept posted in a run of `qps` connections.
    pub fn depth(&self, qps: u16) -> u32 {
        self.rx_depth
            .saturating_mul(u32::from(qps.max(1)))
            .min(self.srq_depth(qps))
    }

    /// Pool buffers for a run of `qps` connections.
    pub fn pool_slots(&self, qps: u16) -> u32 {
        self.pool_slots
            .unwrap_or_else(|| self.depth(qps).saturating_add(self.rx_depth))
    }

    /// The memory limit of a run, in bytes (`--max-memory-mib`, or half of physical memory).
    pub fn max_memory(&self) -> u64 {
        self.max_memory_mib.map_or_else(
            || {
                // SAFETY: sysconf reads constants; no memory is passed.
                let (pages, page) = unsafe {
                    (
                        libc::sysconf(libc::_SC_PHYS_PAGES),
                        libc::sysconf(libc::_SC_PAGESIZE),
                    )
                };
                (u64::try_from(pages).unwrap_or(0) * u64::try_from(page).unwrap_or(0)) / 2
            },
            |m| m.saturating_mul(1 << 20),
        )
    }

    /// How long a run's handshake may go without progress.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.handshake_timeout)
    }

    /// Checks the options.
    ///
    /// # Errors
    /// When a value is out of range, with what to change.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(self.handshake_timeout.is_finite() && (0.1..=3600.0).contains(&self.handshake_timeout))
        {
            bail!("--handshake-timeout must be between 0.1 and 3600 seconds");
        }
        if self.rx_depth == 0 {
            bail!("--rx-depth must be positive");
        }
        if self.srq_depth(1) < self.rx_depth {
            bail!(
                "--srq-depth {} is below --rx-depth {}: the SRQ cannot hold that many receives",
                self.srq_depth(1),
                self.rx_depth
            );
        }
        if self.pool_slots(1) < self.rx_depth {
            bail!(
                "--pool-slots {} is below --rx-depth {}: the pool needs a buffer per posted receive",
                self.pool_slots(1),
                self.rx_depth
            );
        }
        if self.consumers > 256 {
            bail!("--consumers is at most 256");
        }
        if self.consumers == 0 && !self.hold.is_zero() {
            tracing::warn!(
                "--consumers 0 with --hold: the polling thread itself holds every lease"
            );
        }
        Ok(())
    }
}

/// Output options.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutOpts {
    /// One JSON object per size on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Progress on stderr. On a terminal (the default there) a bar that updates in place, with
    /// the percentage and time left when -n is known; with this flag, plain lines once a
    /// second also when stderr is a file or a pipe.
    #[arg(long)]
    pub progress: bool,
}

/// Parses `0`, `250ns`, `50us`, `2ms`, `1.5s` (a bare number is microseconds).
///
/// # Errors
/// When the text is not a non-negative duration.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("`{s}` is not a duration (e.g. 0, 50us, 2ms, 1.5s)"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "" | "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        u => bail!("unknown unit `{u}` in `{s}` (use ns, us, ms or s)"),
    };
    let secs = v * scale;
    if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) {
        bail!("`{s}` is out of range (0 to 1 hour)");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How long a consumer holds a lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Hold {
    /// Always the same time (zero: drop at once).
    Fixed(Duration),
    /// Uniformly distributed in `[min, max]`.
    Uniform(Duration, Duration),
    /// Exponentially distributed with this mean.
    Exp(Duration),
}

impl Hold {
    /// True for "drop at once".
    pub fn is_zero(&self) -> bool {
        matches!(self, Hold::Fixed(d) if d.is_zero())
    }

    /// Draws one hold time.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Hold::Fixed(d) => d,
            Hold::Uniform(a, b) => a + (b - a).mul_f64(rng.f64()),
            Hold::Exp(mean) => {
                // Inverse transform; 1 - u is in (0, 1], so the log is finite. Capped at 20
                // means so one draw cannot stall a run.
                let x = -(1.0 - rng.f64()).ln();
                mean.mul_f64(x.min(20.0))
            }
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Fixed(d) => write!(f, "{d:?}"),
            Hold::Uniform(a, b) => write!(f, "uniform:{a:?}-{b:?}"),
            Hold::Exp(m) => write!(f, "exp:{m:?}"),
        }
    }
}

impl FromStr for Hold {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Hold> {
        if let Some(r) = s.strip_prefix("uniform:") {
            let (a, b) = r
                .split_once('-')
                .with_context(|| format!("`{s}`: write uniform:MIN-MAX, e.g. uniform:0-2ms"))?;
            let (a, b) = (parse_duration(a)?, parse_duration(b)?);
            if a > b {
                bail!("`{s}`: MIN is above MAX");
            }
            Ok(Hold::Uniform(a, b))
        } else if let Some(m) = s.strip_prefix("exp:") {
            Ok(Hold::Exp(parse_duration(m)?))
        } else {
            Ok(Hold::Fixed(parse_duration(s)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_command_line_names() {
        use clap::ValueEnum;
        for op in Op::value_variants() {
            assert_eq!(op.name(), op.to_possible_value().unwrap().get_name());
        }
        for p in ProviderKind::value_variants() {
            assert_eq!(p.name(), p.to_possible_value().unwrap().get_name());
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ns").unwrap(), Duration::from_nanos(250));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_micros(7));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("-1ms").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("2h").is_err());
    }

    #[test]
    fn holds_parse_and_sample_in_range() {
        assert!("0".parse::<Hold>().unwrap().is_zero());
        assert_eq!(
            "100us".parse::<Hold>().unwrap(),
            Hold::Fixed(Duration::from_micros(100))
        );
        let u: Hold = "uniform:1ms-3ms".parse().unwrap();
        assert_eq!(
            u,
            Hold::Uniform(Duration::from_millis(1), Duration::from_millis(3))
        );
        assert!("uniform:3ms-1ms".parse::<Hold>().is_err());
        assert!("uniform:3ms".parse::<Hold>().is_err());
        let e: Hold = "exp:100us".parse().unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut sum = Duration::ZERO;
        for _ in 0..20_000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(3));
            let x = e.sample(&mut rng);
            assert!(x <= Duration::from_millis(2), "capped at 20 means");
            sum += x;
        }
        let mean = sum / 20_000;
        assert!(
            mean > Duration::from_micros(90) && mean < Duration::from_micros(110),
            "exp:100us has mean {mean:?}"
        );
    }

    fn send(extra: &[&str]) -> SendOpts {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            s: SendOpts,
        }
        use clap::Parser;
        P::try_parse_from(std::iter::once("x").chain(extra.iter().copied()))
            .unwrap()
            .s
    }

    #[test]
    fn sizes_and_validation() {
        assert_eq!(send(&[]).sizes(), vec![65536]);
        assert_eq!(
            send(&["-a", "--max-size", "64"]).sizes(),
            vec![2, 4, 8, 16, 32, 64]
        );
        assert_eq!(
            send(&["-a", "--min-size", "1024", "--max-size", "4096"]).sizes(),
            vec![1024, 2048, 4096]
        );
        assert_eq!(
            send(&["-a", "--sizes", "64,4096"]).sizes(),
            vec![64, 4096],
            "--sizes wins"
        );
        assert!(send(&["-s", "0"]).validate().is_err());
        assert!(send(&["-n", "0"]).validate().is_err());
        assert!(
            send(&["-n", "0", "-D", "2"]).validate().is_ok(),
            "duration mode"
        );
        assert!(send(&["-D", "0"]).validate().is_err());
        assert!(send(&["-D", "nan"]).validate().is_err());
        assert!(send(&["-l", "200", "-t", "128"]).validate().is_err());
        assert!(send(&["-q", "0"]).validate().is_err());
        assert!(send(&["-a", "--min-size", "8", "--max-size", "4"])
            .validate()
            .is_err());
        assert_eq!(send(&["-Q", "500", "-t", "64"]).signal_every(), 64);
        assert_eq!(send(&[]).signal_every(), 100);
    }
}
