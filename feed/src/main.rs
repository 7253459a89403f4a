//! `gdrx-feed`: streams a dataset's samples to one training rank over RDMA.
//!
//! ```text
//! gdrx-feed --data DIR --to IP:PORT --rank R --world W [--seed S | --no-shuffle]
//!           [--epochs N] [--from-epoch E] [--from K] [--device DEV] [--timeout SECS]
//!           [--batch-size B] [--no-credits]
//! ```
//!
//! It opens the dataset (`.npy` shards or WebDataset tar shards), plans rank `R`'s samples of
//! each epoch (gdrx-feed's plan: every sample once per epoch across the `W` ranks, shuffled by
//! the seed and the epoch), connects to the rank's `gdrx.Receiver` (tag = `R`) and sends each
//! part of each sample as a typed message (a 64-byte sample header, then the bytes), from epoch
//! `E` position `K` to the end of epoch `N - 1`. With `--batch-size B` it collates up to `B`
//! consecutive samples of the plan into one message per part (a batch, stacked along a new
//! first dimension; an epoch's last batch may be shorter). The feeder sends no more than the credits the
//! rank grants (its free buffers; `--no-credits` leaves that to RNR NAKs): a rank whose consumer
//! holds every buffer stalls the feeder (back-pressure), for at most `--timeout` seconds per
//! message. It prints one JSON
//! line: what it sent and the cursor it stopped at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use gdrx_feed::send::{feed, FeedOptions};
use gdrx_feed::{Cursor, Dataset, StreamSpec};

#[derive(Parser, Debug)]
#[command(
    name = "gdrx-feed",
    version,
    about = "Streams dataset shards to a training rank over RDMA"
)]
struct Args {
    /// The dataset: a directory of .npy shards or WebDataset .tar shards.
    #[arg(long)]
    data: PathBuf,
    /// The rank's receiver address (its gdrx.Receiver's `address`).
    #[arg(long)]
    to: SocketAddr,
    /// The rank to feed.
    #[arg(long)]
    rank: u32,
    /// Ranks in the job.
    #[arg(long)]
    world: u32,
    /// Shuffle seed (the same seed gives the same order on every run).
    #[arg(long, default_value_t = 0, conflicts_with = "no_shuffle")]
    seed: u64,
    /// Keep the dataset's order.
    #[arg(long)]
    no_shuffle: bool,
    /// Epochs to send (the last one sent is N - 1).
    #[arg(long, default_value_t = 1)]
    epochs: u32,
    /// The epoch to start in.
    #[arg(long, default_value_t = 0)]
    from_epoch: u32,
    /// The rank's position in the first epoch (samples it already consumed).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// RDMA device (default: the one the route to --to leaves by).
    #[arg(long)]
    device: Option<String>,
    /// Seconds a message may wait for the rank (and the connection may take).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Samples per message: more than 1 collates that many consecutive samples into one batch
    /// per part (every sample's part must then have one dtype and shape).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Ignore the rank's credits (flow control by RNR NAKs alone, to measure what credits save).
    #[arg(long)]
    no_credits: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    if a.world == 0 || a.rank >= a.world {
        bail!("--rank {} is not in a world of {} ranks", a.rank, a.world);
    }
    let ds = Dataset::open(&a.data).context("opening the dataset")?;
    let spec = StreamSpec {
        rank: a.rank,
        world: a.world,
        seed: (!a.no_shuffle).then_some(a.seed),
        from: Cursor {
            epoch: a.from_epoch,
            next: a.from,
        },
        until_epoch: a.epochs,
        batch: a.batch_size,
    };
    let opts = FeedOptions {
        device: a.device.clone(),
        timeout: Duration::from_secs_f64(a.timeout.max(0.001)),
        credits: !a.no_credits,
    };
    let r = feed(&ds, spec, a.to, &opts, || true, None)?;
    let credits = r.credits.map_or_else(
        || "null".to_owned(),
        |c| {
            format!(
                "{{\"grant\":{},\"reads\":{},\"waits\":{}}}",
                c.grant, c.reads, c.waits
            )
        },
    );
    println!(
        "{{\"rank\":{},\"messages\":{},\"bytes\":{},\"secs\":{:.6},\
         \"cursor\":{{\"epoch\":{},\"next\":{}}},\"credits\":{credits}}}",
        a.rank, r.messages, r.bytes, r.secs, r.cursor.epoch, r.cursor.next
    );
    Ok(())
}
