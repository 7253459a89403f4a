//! # gdrx-feed
//!
//! The data side of gdrx's data service, free of RDMA so that it is tested in-process:
//!
//! - [`plan`]: which rank gets which sample in which epoch. Every sample exactly once per epoch
//!   across the ranks, in an order shuffled by `(seed, epoch)` that is the same on every restart,
//!   and a cursor per rank that a restarted rank (or feeder) resumes from.
//! - [`npy`]: the `.npy` header (dtype, shape, where the data starts).
//! - [`dataset`]: a dataset of shards, either a directory of `.npy` shards or WebDataset-style
//!   tar shards, indexed once, read by (shard, item).
//! - [`stream`]: one rank's messages (a sample header and a part's bytes each), epoch by epoch
//!   from a cursor.
//!
//! Several feeders serving one job split the ranks, not the shards: feeder `f` of `F` serves
//! the ranks `r` with `r % F == f`, each over one ordered stream, so a rank's order and cursor do
//! not depend on how many feeders there are. Each feeder reads every shard its ranks need (the
//! shards sit on shared storage or are replicated).
//!
//! With the default feature `rdma`, the `send` module feeds a rank over RDMA (gdrx-core's
//! `Sender`), and the `gdrx-feed` binary runs it; `default-features = false` leaves the FFI-free
//! library alone.
#![forbid(unsafe_code)]

pub mod dataset;
pub mod npy;
pub mod plan;
#[cfg(feature = "rdma")]
pub mod send;
pub mod stream;

pub use dataset::{Dataset, DatasetError, Part, Sample};
pub use npy::{NpyError, NpyHeader};
pub use plan::{Cursor, EpochPlan, PlanError, Planned};
pub use stream::{Message, RankStream, StreamError, StreamSpec};
