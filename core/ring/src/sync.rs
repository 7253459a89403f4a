//! Atomics shim: `std` atomics normally, loom's model-checked ones under `cfg(loom)`.
//!
//! Every atomic in the crate comes from here, so one `RUSTFLAGS="--cfg loom"` build runs the
//! real ring and slot table under loom's exhaustive scheduler (tokio and crossbeam do the same).
//! `Arc` is deliberately not switched: the public API takes `self: &Arc<Self>`, which stable Rust
//! allows only for `std::sync::Arc`, and the protocol's orderings live in the atomics, not in the
//! reference count.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
