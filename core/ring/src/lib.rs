//! # gdrx-ring
//!
//! The lock-free recycle protocol of gdrx's receive buffer pool, kept free of FFI (the
//! quinn-proto / quinn-udp split) so it runs under loom and plain-thread stress tests:
//!
//! - [`RecycleRing`]: a bounded lock-free MPSC queue of `u64` below 2^63 (producers claim by CAS,
//!   each entry's top bit is its lap's parity, the one consumer never writes an entry).
//! - [`SlotTable`]: each slot's [`SlotState`] and generation in one atomic word; validates
//!   returns and counts the rejected ones ([`ReturnError`]).
//! - [`Recycler`]: the two composed, as the pool in `gdrx-core` uses them; the poller drains
//!   it through its [`RecycleConsumer`].
//!
//! # Quick start
//!
//! ```
//! use std::sync::Arc;
//! use gdrx_ring::{Recycler, ReturnError};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The pool's maximum slot count; the poller's one consumer handle comes with it.
//! let (recycler, mut poller) = Recycler::new(64);
//!
//! // Poller: slot 5 goes into a receive work request, then its completion arrives.
//! recycler.slots().mark_posted(5)?;
//! let gen = recycler.slots().lend(5)?; // the lease is (5, gen)
//!
//! // Any thread: the lease is dropped, and the slot goes back.
//! let r = Arc::clone(&recycler);
//! std::thread::spawn(move || r.give_back(5, gen)).join().unwrap()?;
//! // Returning the same lease again is rejected (and counted); nothing is queued twice.
//! assert_eq!(recycler.give_back(5, gen), Err(ReturnError::Duplicate { slot: 5, gen }));
//!
//! // Poller: drain returned slots (now Free) and post them again.
//! let mut repost = Vec::new();
//! poller.drain(32, |slot| repost.push(slot));
//! assert_eq!(repost, [5]);
//! for slot in repost {
//!     recycler.slots().mark_posted(slot)?;
//! }
//! assert_eq!(recycler.slots().rejected().duplicate, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # The protocol
//!
//! ```text
//!              mark_posted                 lend (gen += 1)
//!     Free ─────────────────▶ Posted ─────────────────────▶ Lent(gen)
//!      ▲   ◀─────────────────                                   │
//!      │        unpost                                          │ give_back(slot, gen)
//!      │   (error/flush completion,                             │ any thread; exactly one
//!      │    SRQ destroyed)                                      ▼ of concurrent returns wins
//!      └───────────── reclaim ◀──── ring ◀──── push ◀──── Returned(gen)
//!         (RecycleConsumer::drain, poller; then the pool reposts: mark_posted)
//! ```
//!
//! Only the poller moves a slot out of `Free`, `Posted` and `Returned`; any thread may move it
//! out of `Lent`, and only with the lease's generation. Each `lend` increments the generation
//! (never to 0), so an old lease, a forged id or a second return of the same lease is rejected
//! with [`ReturnError::Stale`] or [`ReturnError::Duplicate`] (an id beyond the table with
//! [`ReturnError::OutOfRange`]); rejected returns change nothing, are counted
//! ([`SlotTable::rejected`]) and never allocate. A validated return is queued in the ring,
//! which holds an entry per slot, so it is never full ([`ReturnError::RingFull`] cannot occur).
//!
//! Memory ordering: `give_back` releases the lease holder's reads of the buffer and `reclaim`
//! acquires them, so the buffer is never reposted (and overwritten by the NIC) while a consumer
//! could still read it. Every `Ordering` in the source carries a comment saying why.
//!
//! # Features
//!
//! None. The only switch is `cfg(loom)` (see [Testing with loom](#testing-with-loom)); the sole
//! dependency is `crossbeam-utils` (cache-line padding).
//!
//! # Thread safety
//!
//! [`RecycleRing`], [`SlotTable`] and [`Recycler`] are `Send + Sync` and meant to be shared
//! through an `Arc`: pushes and returns come from any thread. Popping needs the single consumer
//! handle ([`RingConsumer`], [`RecycleConsumer`]): `Send` so it can live on the poller thread,
//! but not `Sync` or `Clone`, and exactly one exists per ring: it is made with the ring
//! ([`RecycleRing::with_capacity`], [`Recycler::new`]). Nothing locks; nothing allocates after
//! construction. The crate has no `unsafe` code.
//!
//! # Resource cleanup
//!
//! Everything is plain memory freed when the last `Arc` goes. Each ring has exactly one consumer
//! handle; once it is dropped nothing pops that ring again (producers then fill it and get
//! [`Full`]).
//!
//! # Testing with loom
//!
//! The atomics come from a small shim that switches to [loom](https://docs.rs/loom) under
//! `cfg(loom)`; the model tests in `tests/loom.rs` run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p gdrx-ring --release --target-dir target/loom --test loom
//! ```
//!
//! (a separate target dir keeps the `--cfg loom` build from invalidating the normal one).
//! `tests/stress.rs` hammers the same code with real threads (`GDRX_STRESS_SCALE=10` for a
//! longer run), and `cargo bench -p gdrx-ring --bench ring` compares the ring with crossbeam's
//! `ArrayQueue` and rtrb.

#![forbid(unsafe_code)]

pub mod recycler;
pub mod ring;
pub mod slots;
pub(crate) mod sync;

pub use recycler::{RecycleConsumer, Recycler};
pub use ring::{Full, RecycleRing, RingConsumer, MAX_CAPACITY, MAX_VALUE};
pub use slots::{RejectCounts, ReturnError, SlotCounts, SlotState, SlotTable, StateError};
