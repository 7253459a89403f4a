//! # gdrx-core
//!
//! The facade over gdrx's receive-path layers, the RDMA receive path into GPU, huge-page and
//! host memory. Each layer is its own crate, and a lower one never imports a higher one:
//!
//! | crate | what it holds | depends on (gdrx) |
//! |---|---|---|
//! | `gdrx-ring` | the lock-free recycle ring and validated slot returns (FFI-free, loom-tested) | - |
//! | `gdrx-wire` | the private-data handshake (FFI-free) | - |
//! | `gdrx-verbs` | device, PD, MR, CQ, SRQ, QP, RDMA CM, work requests, async events, the verbs [`Error`] | wire |
//! | `gdrx-pool` | the [`Provider`]/[`Region`] traits, the [`Pool`] (an FFI-free state machine, `pool::state`, and its verbs executor), [`Lease`]s and returns, [`PoolError`], pool metrics | verbs, ring |
//!
//! This crate re-exports all of them under one name (the modules keep their paths:
//! [`cm`], [`cq`], ..., [`pool`], [`provider`], [`wire`]), so a user depends on one crate, and
//! adds the [`Receiver`]: the common case (listen, accept gdrx senders, keep an SRQ fed from a
//! pool, one stream of events) in one object.
//!
//! ## Examples
//!
//! Runnable programs live in [`examples/`](https://github.com/gdrx/gdrx/tree/main/examples)
//! (crate `gdrx-examples`; the rxe suite runs each against a real sender):
//! [`receiver.rs`](https://github.com/gdrx/gdrx/blob/main/examples/receiver.rs) is a
//! [`Receiver`] counting what its senders send;
//! [`srq_receiver.rs`](https://github.com/gdrx/gdrx/blob/main/examples/srq_receiver.rs) does the
//! same with the verbs by hand (an SRQ, an MR carved into slots, reposting);
//! [`sender.rs`](https://github.com/gdrx/gdrx/blob/main/examples/sender.rs) connects with a
//! Hello and sends SEND_WITH_IMM messages.
//!
//! ## Quick start: the verbs by hand
//!
//! A receiver on one SRQ without the pool or the [`Receiver`], accepting connections on
//! `10.77.0.1:7471`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use gdrx_core::{Access, ConnectionSpec, Cq, Device, HostMemory, Listener, RecvBatch, Srq, SrqConfig};
//!
//! # fn main() -> gdrx_core::Result<()> {
//! let dev = Device::open("rxe0")?;
//! println!("{}", dev.capabilities()?);
//! let pd = dev.alloc_pd()?;
//! let cq = Cq::with_events(&dev, 4096)?;
//! let srq = Srq::new(&pd, SrqConfig::new(1024, 1))?;
//! let mem = Arc::new(HostMemory::new(1024 * 4096)?);
//! let mr = pd.register(mem, Access::recv())?; // LOCAL_WRITE only
//! let mut batch = RecvBatch::with_capacity(1024, 1024);
//! for i in 0..1024 {
//!     batch.push(i as u64, &[mr.sge(i * 4096, 4096).unwrap()]).unwrap();
//! }
//! // SAFETY: the slots lie in `mr`, which outlives the SRQ here, and nothing reads them until
//! // their completions are polled.
//! unsafe { srq.post_recv(&mut batch)? };
//! let spec = ConnectionSpec::new(&pd, &cq, &cq, Some(&srq));
//! let mut listener = Listener::bind("10.77.0.1:7471".parse().unwrap(), 64)?;
//! let conn = listener.next_request(None)?.unwrap().accept(&spec, b"")?;
//! let mut wcs = gdrx_core::WorkCompletion::buffer(32);
//! let n = cq.poll_blocking(&mut wcs, None)?;
//! for wc in &wcs[..n] {
//!     wc.result()?; // typed error, e.g. LocalLength for a message larger than its buffer
//!     println!("slot {} got {} bytes from QP {:#x}", wc.wr_id(), wc.byte_len(), wc.qp_num());
//! }
//! # drop(conn); Ok(()) }
//! ```
//!
//! ## Features
//! None yet. The crates build without RDMA libraries installed: libibverbs and librdmacm are
//! loaded at run time, and their absence is reported as [`Error::NoRdma`].
//!
//! See `gdrx-verbs` for thread safety, resource cleanup and the unsafe posting API, and
//! [`pool`] for the buffer pool's design and the `metrics` it records.

#![forbid(unsafe_code)]

pub use gdrx_pool as pool;
pub use gdrx_pool::provider;
pub use gdrx_verbs::{cm, cq, device, error, event, mem, mr, mw, pd, qp, srq, wait, wr};
pub use gdrx_wire as wire;

pub mod accept;
pub mod credits;
pub mod receiver;
pub use gdrx_verbs::sender;
pub use gdrx_verbs::Sender;
pub use receiver::Receiver;

pub use gdrx_pool::{
    AllocError, Attempt, Batch, ConfigError, HeaderSplit, Lease, MessageMeta, Outbox, Pool,
    PoolConfig, PoolError, PoolReport, PoolStats, RawLease, RecvEvent, RecvQueue, RegistrationPath,
    RegistrationPolicy, Returner, TeardownReport,
};
pub use gdrx_pool::{DmabufView, MemoryKind, Provider, ProviderCheck, Region, RegionDesc};
pub use gdrx_verbs::{
    connect, device_names, page_size, Access, AsyncEvent, BatchFull, Capabilities, ConnEvent,
    ConnectRequest, Connection, ConnectionSpec, Cq, Device, DeviceKind, DmabufSupport, Error,
    GidInfo, GidKind, HostMemory, Listener, MemlockLimit, MemoryWindow, Mr, MrKind, ObjectId, Pd,
    PortInfo, PortState, PostError, QpCaps, QpConfig, QpEventKind, QpState, QueuePair, RecvBatch,
    Result, SendBatch, SendFlags, SendOp, Sge, Srq, SrqConfig, WcError, WcOpcode, WcStatus,
    WorkCompletion,
};
