//! `gdrx-bench`: gdrx's receive-path benchmark, side by side with perftest.
//!
//! - `server`: the receiver. One SRQ fed by a gdrx buffer pool from a memory provider (host,
//!   hugepage, udmabuf), every connection of a run on it, leases handed to consumer threads that
//!   hold them for a fixed or random time; prints one row per message size: average and peak
//!   bandwidth, message rate, receiver CPU time per message, completion-to-consumer latency
//!   (p50/p99, hdrhistogram), pool-empty events and RNR NAKs.
//! - `client`: the sender, built like perftest's `ib_send_bw` client (tx depth, post lists,
//!   selective signaling), SEND_WITH_IMM or RDMA WRITE_WITH_IMM, over RDMA CM.
//! - `loopback`: both in one process.
//! - `compare`: runs perftest's `ib_send_bw` (or `ib_write_bw`) and gdrx's server and client as
//!   separate processes on the same device, sizes and counts, several times, and prints the
//!   medians side by side with their ratios; writes a JSON file and a BW-vs-size SVG.
//!
//! `--prometheus ADDR` exposes the pool metrics (`gdrx_pool_*`) while it runs.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};

mod compare;
mod opts;
mod perftest_wire;
mod proc;
mod proto;
mod recv;
mod report;
mod send;

use opts::{OutOpts, RecvOpts, SendOpts, Target};

#[derive(Parser, Debug)]
#[command(
    name = "gdrx-bench",
    version,
    about = "gdrx receive-path benchmark (server, client, loopback, and a comparison with perftest)"
)]
enum Cmd {
    /// Receive runs from `gdrx-bench client` and report each (the receiver under test).
    Server(ServerArgs),
    /// Send runs to a `gdrx-bench server`.
    Client(ClientArgs),
    /// Server and client in one process, over RDMA CM on the device's address.
    Loopback(LoopbackArgs),
    /// Run perftest and gdrx on the same device and sizes, print medians and gdrx/perftest
    /// ratios, and plot bandwidth against size.
    Compare(compare::Args),
}

/// `gdrx-bench server`.
#[derive(clap::Args, Debug)]
struct ServerArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    recv: RecvOpts,
    #[command(flatten)]
    out: OutOpts,
    /// Exit after this many runs (default: after the client's last run).
    #[arg(long)]
    runs: Option<u32>,
    /// Give up when no run starts within this many seconds (default: wait forever).
    #[arg(long)]
    idle_timeout: Option<f64>,
    /// Be fed by perftest's own client, `ib_send_bw -R` (RDMA CM), instead of `gdrx-bench
    /// client`: the same sender perftest's server gets, into gdrx's pool. One run per client
    /// (no -a, no -b); --runs counts clients (default 1).
    #[arg(long)]
    perftest: bool,
    /// With --perftest: the client's message size (its -s; every message must have it).
    #[arg(short = 's', long, default_value_t = 65536, requires = "perftest")]
    size: u32,
    /// With --perftest: the client's messages per QP (its -n), checked when given.
    #[arg(short = 'n', long, requires = "perftest")]
    iters: Option<u64>,
    /// With --perftest: the client's QPs (its -q): sizes the SRQ (--rx-depth per QP) and is
    /// checked against the data connections that arrive.
    #[arg(short = 'q', long, default_value_t = 1, requires = "perftest")]
    qps: u16,
}

/// `gdrx-bench client`.
#[derive(clap::Args, Debug)]
struct ClientArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    send: SendOpts,
    #[command(flatten)]
    out: OutOpts,
    /// The server's address, as perftest takes it (default: --ip).
    server: Option<std::net::IpAddr>,
}

/// `gdrx-bench loopback`.
#[derive(clap::Args, Debug)]
struct LoopbackArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    send: SendOpts,
    #[command(flatten)]
    recv: RecvOpts,
    #[command(flatten)]
    out: OutOpts,
}

fn install_prometheus(addr: Option<SocketAddr>) -> anyhow::Result<()> {
    if let Some(addr) = addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the Prometheus endpoint on {addr}"))?;
        eprintln!("gdrx-bench: pool metrics at http://{addr}/metrics");
    }
    Ok(())
}

fn server(a: &ServerArgs) -> anyhow::Result<()> {
    install_prometheus(a.recv.prometheus)?;
    let mut rx = recv::Receiver::bind(&a.target.dev, a.target.ib_port, a.target.addr()?, &a.recv)?;
    // `compare` waits for this line before it starts the client.
    eprintln!(
        "gdrx-bench server: listening on {} ({}, {})",
        rx.local_addr(),
        rx.device().name(),
        rx.device().kind()
    );
    let idle = a.idle_timeout.map(Duration::from_secs_f64);
    if a.perftest {
        let p = recv::PerftestRun {
            size: a.size,
            iters: a.iters,
            qps: a.qps,
        };
        rx.serve_perftest(p, a.runs, idle, &a.out)?;
    } else {
        rx.serve(a.runs, idle, &a.out, false)?;
    }
    Ok(())
}

fn client(a: &ClientArgs) -> anyhow::Result<()> {
    let Some(ip) = a.server.or(a.target.ip) else {
        anyhow::bail!(
            "no server address: give it as the last argument, as with perftest, or with --ip \
             (or $GDRX_RDMA_IP)"
        );
    };
    let tx = send::Sender::open(&a.target.dev, a.target.ib_port, a.target.gid_ip()?)?;
    tx.run_all(SocketAddr::new(ip, a.target.port), &a.send, &a.out, false)?;
    Ok(())
}

fn loopback(a: &LoopbackArgs) -> anyhow::Result<()> {
    a.send.validate()?;
    recv::check_runs(&a.recv, &a.send).context("receiver")?;
    install_prometheus(a.recv.prometheus)?;
    let ip = a.target.local_ip()?;
    let mut rx = recv::Receiver::bind(
        &a.target.dev,
        a.target.ib_port,
        SocketAddr::new(ip, 0),
        &a.recv,
    )?;
    let addr = rx.local_addr();
    if !a.out.json {
        println!(
            "gdrx-bench loopback on {} ({}), {} receiver, {} consumer thread(s), hold {}, provider {}, op {}",
            rx.device().name(),
            rx.device().kind(),
            if a.recv.events { "event-mode" } else { "busy-polling" },
            a.recv.consumers,
            a.recv.hold,
            a.recv.provider.name(),
            a.send.op.name()
        );
    }
    let (dev, send, out) = (a.target.dev.clone(), a.send.clone(), a.out.clone());
    let port = a.target.ib_port;
    let sender = std::thread::Builder::new()
        .name("gdrx-sender".into())
        .spawn(move || -> anyhow::Result<()> {
            let tx = send::Sender::open(&dev, port, None)?;
            tx.run_all(addr, &send, &out, true)?;
            Ok(())
        })?;
    let served = rx.serve(None, Some(Duration::from_secs(60)), &a.out, true);
    if let Err(e) = &served {
        // A receiver that failed while the sender is still at work (connecting, or waiting for
        // its run to be accepted) failed on its own, e.g. allocating its pool: say so now rather
        // than after the sender's connect timeout. (Returning ends the process and the sender.)
        if !sender.is_finished() {
            std::thread::sleep(Duration::from_millis(200));
            if !sender.is_finished() {
                return Err(anyhow::anyhow!("{e:#}")).context("receiver");
            }
        }
    }
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))?;
    // Otherwise the sender's error is usually the cause of the receiver's.
    sent.context("sender")?;
    served.context("receiver")?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Errors are reports for people: no backtrace unless asked for with RUST_LIB_BACKTRACE
    // (RUST_BACKTRACE=1, often set for the tests, keeps giving panics theirs).
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDRX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let matches = Cmd::command().get_matches();
    let cmd = Cmd::from_arg_matches(&matches)?;
    match &cmd {
        Cmd::Server(a) => server(a),
        Cmd::Client(a) => client(a),
        Cmd::Loopback(a) => loopback(a),
        Cmd::Compare(a) => {
            let sub = matches.subcommand_matches("compare").expect("compare");
            let given = |ids: &[&str]| {
                ids.iter().any(|id| {
                    sub.value_source(id)
                        .is_some_and(|s| s != clap::parser::ValueSource::DefaultValue)
                })
            };
            compare::run(
                a,
                given(&["size", "all", "sizes"]),
                given(&["iters", "duration"]),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cmd::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cmd::try_parse_from(std::iter::once("gdrx-bench").chain(args.iter().copied()))
    }

    #[test]
    fn roles_parse_with_perftest_style_options() {
        let base = ["--dev", "rxe0", "--ip", "10.0.0.1"];
        let Cmd::Client(c) = parse(
            &[
                &["client"],
                &base[..],
                &["-s", "4096", "-n", "100", "-q", "4", "-l", "8"],
            ]
            .concat(),
        )
        .unwrap() else {
            panic!("client")
        };
        assert_eq!(
            (c.send.size, c.send.iters, c.send.qps, c.send.post_list),
            (4096, 100, 4, 8)
        );
        assert_eq!(c.target.port, opts::DEFAULT_PORT);
        let Cmd::Server(s) = parse(
            &[
                &["server"],
                &base[..],
                &[
                    "-r",
                    "256",
                    "-C",
                    "4",
                    "--hold",
                    "exp:50us",
                    "-e",
                    "--provider",
                    "hugepage",
                ],
            ]
            .concat(),
        )
        .unwrap() else {
            panic!("server")
        };
        assert_eq!(s.recv.rx_depth, 256);
        assert_eq!(s.recv.pool_slots(1), 512);
        assert_eq!(
            s.recv.pool_slots(4),
            1280,
            "posted for 4 connections, plus one connection's depth"
        );
        assert_eq!(
            s.recv.depth(4),
            1024,
            "-r per connection, as perftest posts it per QP"
        );
        assert_eq!(s.recv.consumers, 4);
        assert!(s.recv.events);
        assert_eq!(s.recv.provider, opts::ProviderKind::Hugepage);
        assert!(parse(&[&["server"], &base[..], &["--hold", "soon"]].concat()).is_err());
        assert!(parse(&[&["client"], &base[..], &["--op", "read"]].concat()).is_err());
        assert!(parse(&["client", "--dev", "d", "--ip", "not-an-ip"]).is_err());
        let Cmd::Loopback(l) = parse(
            &[
                &["loopback"],
                &base[..],
                &["--op", "write-imm", "--prometheus", "127.0.0.1:9464"],
            ]
            .concat(),
        )
        .unwrap() else {
            panic!("loopback")
        };
        assert_eq!(l.send.op, opts::Op::WriteImm);
        assert_eq!(l.recv.prometheus, Some("127.0.0.1:9464".parse().unwrap()));
        let Cmd::Server(s) = parse(
            &[
                &["server"],
                &base[..],
                &["-r", "512", "--pool-slots", "100"],
            ]
            .concat(),
        )
        .unwrap() else {
            panic!("server")
        };
        assert!(s.recv.validate().is_err(), "fewer pool slots than receives");
    }

    #[test]
    fn perftests_habits_parse() {
        // -d / --ib-dev, -i, -x, and the server's address last, as perftest takes them.
        let Cmd::Client(c) = parse(&[
            "client",
            "-d",
            "mlx5_0",
            "-i",
            "2",
            "-x",
            "3",
            "-s",
            "64",
            "192.168.1.10",
        ])
        .unwrap() else {
            panic!("client")
        };
        assert_eq!(c.target.dev, "mlx5_0");
        assert_eq!((c.target.ib_port, c.target.gid_index), (2, Some(3)));
        assert_eq!(c.server, Some("192.168.1.10".parse().unwrap()));
        let Cmd::Server(s) = parse(&["server", "--ib-dev", "rxe0", "--ip", "10.0.0.1"]).unwrap()
        else {
            panic!("server")
        };
        assert_eq!(s.target.dev, "rxe0");
        assert_eq!(s.target.ib_port, 1);
        assert_eq!(s.recv.connection, opts::Connection::Rc);
        // -c is perftest's connection type; the consumer count moved to -C.
        let base = ["server", "-d", "rxe0", "--ip", "10.0.0.1"];
        let Cmd::Server(s) = parse(&[&base[..], &["-c", "RC", "-C", "3"]].concat()).unwrap() else {
            panic!("server")
        };
        assert_eq!(s.recv.consumers, 3);
        let e = parse(&[&base[..], &["-c", "2"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("consumer threads are -C/--consumers"), "{e}");
        let e = parse(&[&base[..], &["-c", "UD"]].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("RC only"), "{e}");
    }

    #[test]
    fn limits_and_handshake_patience_parse_and_are_checked() {
        let base = ["server", "-d", "rxe0", "--ip", "10.0.0.1"];
        let Cmd::Server(s) = parse(
            &[
                &base[..],
                &["--max-memory-mib", "256", "--handshake-timeout", "2.5"],
            ]
            .concat(),
        )
        .unwrap() else {
            panic!("server")
        };
        assert_eq!(s.recv.max_memory(), 256 << 20);
        assert_eq!(s.recv.handshake_timeout(), Duration::from_millis(2500));
        assert!(s.recv.validate().is_ok());
        let Cmd::Server(s) = parse(&base).unwrap() else {
            panic!("server")
        };
        assert!(
            s.recv.max_memory() > 0,
            "default: half of this machine's memory"
        );
        for bad in ["0", "nan", "-1"] {
            let Ok(Cmd::Server(s)) = parse(&[&base[..], &["--handshake-timeout", bad]].concat())
            else {
                continue; // clap refused it already
            };
            assert!(s.recv.validate().is_err(), "--handshake-timeout {bad}");
        }
    }
}
