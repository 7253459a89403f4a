//! `gdrx-testpeer`: the sending process of gdrx's two-process rxe tests.
//!
//! Takes a JSON [`gdrx_tests::peer::Plan`] (`--plan '{...}'`), runs it, prints a JSON report on
//! stdout, and exits 0 only when everything went as planned. With `--stall IP:PORT` it is
//! instead a sender that never completes its handshake ([`gdrx_tests::stall`]): it prints
//! `replied` or `no reply`, then holds the half-open request for `--hold` seconds.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Sending side of the gdrx rxe tests")]
struct Args {
    /// The plan, as JSON (see gdrx_tests::peer::Plan).
    #[arg(long, required_unless_present = "stall")]
    plan: Option<String>,
    /// Be a sender that sends a gdrx Hello to this receiver and never completes the handshake.
    #[arg(long)]
    stall: Option<std::net::SocketAddr>,
    /// With --stall: seconds to hold the half-open request before exiting.
    #[arg(long, default_value_t = 30.0)]
    hold: f64,
}

fn main() -> anyhow::Result<()> {
    gdrx_tests::init_logging();
    let args = Args::parse();
    if let Some(addr) = args.stall {
        let hello = gdrx_core::wire::Hello {
            flags: 0,
            conn_tag: 99,
            max_msg: 64,
        };
        let s = gdrx_tests::stall::stall(addr, &hello.encode(), std::time::Duration::from_secs(30));
        println!("{}", if s.replied { "replied" } else { "no reply" });
        std::thread::sleep(std::time::Duration::from_secs_f64(args.hold));
        return Ok(());
    }
    let plan: gdrx_tests::peer::Plan = serde_json::from_str(args.plan.as_deref().expect("--plan"))?;
    let report = gdrx_tests::peer::run(&plan)?;
    let bad: Vec<_> = report
        .conns
        .iter()
        .filter(|c| !c.errors.is_empty())
        .collect();
    if !bad.is_empty() {
        anyhow::bail!("unexpected send errors: {bad:?}");
    }
    if let Some(c) = report
        .conns
        .iter()
        .find(|c| c.oversize_rejected == Some(false))
    {
        anyhow::bail!(
            "connection {}: the oversize message was not rejected by the receiver",
            c.tag
        );
    }
    Ok(())
}
