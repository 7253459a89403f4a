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
//!
//! Several feeders serving one job split the ranks, not the shards: feeder `f` of `F` serves
//! the ranks `r` with `r % F == f`, each over one ordered stream, so a rank's order and cursor do
//! not depend on how many feeders there are. Each feeder reads every shard its ranks need (the
//! shards sit on shared storage or are replicated).
#![forbid(unsafe_code)]

pub mod dataset;
pub mod npy;
pub mod plan;

pub use dataset::{Dataset, DatasetError, Part, Sample};
pub use npy::{NpyError, NpyHeader};
pub use plan::{Cursor, EpochPlan, PlanError};
