//! `gdrx-testpeer`: the sending process of gdrx's two-process rxe tests.
//!
//! Takes a JSON [`gdrx_tests::peer::Plan`] (`--plan '{...}'`), runs it, prints a JSON report on
//! stdout, and exits 0 only when everything went as planned.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Sending side of the gdrx rxe tests")]
struct Args {
    /// The plan, as JSON (see gdrx_tests::peer::Plan).
    #[arg(long)]
    plan: String,
}

fn main() -> anyhow::Result<()> {
    gdrx_tests::init_logging();
    let args = Args::parse();
    let plan: gdrx_tests::peer::Plan = serde_json::from_str(&args.plan)?;
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
