//! `gdrx-bench`: gdrx's receive-path benchmark.
//!
//! Today it has one mode, `loopback`: a receiver (one SRQ, pre-posted buffers reposted as they
//! complete) and a sender in the same process, connected through RDMA CM over a real RDMA device
//! (soft-RoCE in the testbed), printing a perftest-style table. The comparison with perftest and
//! the server/client roles come with the benchmark issue.

use clap::Parser;

mod loopback;

#[derive(Parser, Debug)]
#[command(name = "gdrx-bench", version, about = "gdrx receive-path benchmark")]
enum Cmd {
    /// Send and receive within one process over RDMA CM and report bandwidth and message rate.
    Loopback(loopback::Args),
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDRX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cmd::parse() {
        Cmd::Loopback(a) => loopback::run(&a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cmd::command().debug_assert();
    }

    fn loopback(extra: &[&str]) -> Result<loopback::Args, clap::Error> {
        let base = ["gdrx-bench", "loopback", "--dev", "d", "--ip", "10.0.0.1"];
        let Cmd::Loopback(a) = Cmd::try_parse_from(base.iter().chain(extra))?;
        Ok(a)
    }

    #[test]
    fn loopback_defaults_and_sweep() {
        assert_eq!(loopback(&[]).unwrap().sizes(), vec![65536]);
        assert_eq!(
            loopback(&["-a", "--max-size", "8192"]).unwrap().sizes(),
            vec![2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
        );
        assert!(
            loopback(&["--ip", "nope"]).is_err(),
            "a malformed IP is refused"
        );
        assert!(
            loopback(&["-s", "0"]).unwrap().validate().is_err(),
            "size 0 is refused"
        );
        assert!(
            loopback(&["-n", "0"]).unwrap().validate().is_err(),
            "0 iterations are refused"
        );
    }
}
