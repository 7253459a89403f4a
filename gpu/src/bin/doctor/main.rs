//! `gdrx-doctor`: what this machine offers the RDMA receive path, and which path a GPU pool
//! would take here and why.
//!
//! It reports the system (kernel, RLIMIT_MEMLOCK, huge pages, `/dev/udmabuf`, the kernel's RDMA
//! support, the memory providers' checks), each RDMA device (kind, ports, the dma-buf MR probe),
//! nvidia-peermem, each GPU (attributes and a real dma-buf export), and for each RDMA device and
//! GPU the path under each [`GpuPolicy`] with the visibility rule, then a summary of findings
//! with what to do. A missing RDMA stack or GPU is a finding, not a failure: the exit status is
//! 0 whenever the report could be made, 2 for a bad option or a `--device` that does not exist.
//!
//! ```text
//! gdrx-doctor [--json] [--device NAME] [--policy require-dmabuf|prefer-dmabuf|allow-staging]
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use gdrx_gpu::GpuPolicy;

mod report;
mod summary;
mod system;
mod text;

use report::{Doctor, GpuSection, RdmaSection, Report};
use system::System;

/// Command line.
#[derive(Parser, Debug, PartialEq, Eq)]
#[command(
    name = "gdrx-doctor",
    version,
    about = "Reports what this machine offers gdrx's RDMA receive path: RDMA devices and their \
             dma-buf support, GPUs, nvidia-peermem, locked-memory and huge page limits, and the \
             path a GPU pool would take from each RDMA device into each GPU, and why"
)]
struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Report only this RDMA device (an error, exit status 2, when it does not exist).
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Report only this policy: require-dmabuf, prefer-dmabuf or allow-staging (default: all
    /// three; allow-staging is the default policy of a GPU pool).
    #[arg(long, value_name = "NAME", value_parser = parse_policy)]
    policy: Option<GpuPolicy>,
}

fn parse_policy(s: &str) -> Result<GpuPolicy, String> {
    GpuPolicy::parse(s).ok_or_else(|| {
        format!(
            "unknown policy `{s}`: one of {}",
            GpuPolicy::ALL.map(GpuPolicy::name).join(", ")
        )
    })
}

/// The report, or the message to exit with (status 2).
fn collect(args: &Args) -> Result<Report, String> {
    let policies = args
        .policy
        .map_or_else(|| GpuPolicy::ALL.to_vec(), |p| vec![p]);
    // RDMA first: a `--device` that does not exist stops here, before the slower probes.
    let rdma = RdmaSection::probe(args.device.as_deref())?;
    let system = System::probe();
    let peermem = gdrx_gpu::peermem::detect();
    let gpus = GpuSection::new(gdrx_gpu::probe_gpus());
    let paths = report::paths(&rdma, &gpus, peermem.as_ref(), &policies);
    let affinity = report::affinity(&rdma, &gpus);
    let mut r = Report {
        doctor: Doctor::new(&policies),
        system,
        rdma,
        peermem,
        gpus,
        paths,
        affinity,
        summary: Vec::new(),
        findings: Vec::new(),
    };
    r.summarize();
    Ok(r)
}

fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let r = match collect(args) {
        Ok(r) => r,
        Err(msg) => {
            eprintln!("gdrx-doctor: {msg}");
            return Ok(ExitCode::from(2));
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        report::write_json(&r, &mut out).context("writing the JSON report")?;
    } else {
        out.write_all(text::render(&r).as_bytes())
            .context("writing the report")?;
    }
    out.flush().context("writing the report")?;
    Ok(ExitCode::SUCCESS)
}

/// True when `e` is a closed stdout (`gdrx-doctor | head`): not worth a message.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDRX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gdrx-doctor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("gdrx-doctor").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_report_everything_as_text() {
        assert_eq!(
            parse(&[]).unwrap(),
            Args {
                json: false,
                device: None,
                policy: None
            }
        );
    }

    #[test]
    fn options_parse() {
        let a = parse(&["--json", "--device", "rxe0", "--policy", "prefer-dmabuf"]).unwrap();
        assert!(a.json);
        assert_eq!(a.device.as_deref(), Some("rxe0"));
        assert_eq!(a.policy, Some(GpuPolicy::PreferDmabuf));
        for p in GpuPolicy::ALL {
            assert_eq!(parse(&["--policy", p.name()]).unwrap().policy, Some(p));
        }
    }

    #[test]
    fn a_bad_policy_is_refused_with_the_valid_names() {
        let e = parse(&["--policy", "dmabuf"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        assert!(
            msg.contains("unknown policy `dmabuf`")
                && msg.contains("require-dmabuf, prefer-dmabuf, allow-staging"),
            "{msg}"
        );
        assert!(parse(&["--device"]).is_err());
        assert!(parse(&["--frobnicate"]).is_err());
    }
}
