//! # gdrx-verbs
//!
//! The verbs layer of gdrx, the RDMA receive path into GPU, huge-page and host memory: safe,
//! owning types for RDMA devices, protection domains, memory regions (virtual-address and
//! dma-buf), completion queues (busy polling and event mode), shared receive queues, RC queue
//! pairs and RDMA CM connections. Built on [`sideway`] (devices, PDs, MRs) and its raw crate
//! `rdma-mummy-sys` (everything sideway lacks: SRQ, CQ events, QPs on an SRQ, RDMA CM with
//! private data).
//!
//! It knows nothing of buffer pools or memory providers: those live in `gdrx-pool`, one layer
//! up; the only gdrx crate below it is `gdrx-wire` (the FFI-free handshake format, whose
//! [`RemoteWindow`] an [`Mr`] hands out). `gdrx-core` re-exports every layer.
//!
//! ## Quick start
//!
//! A receiver on one SRQ, accepting connections on `10.77.0.1:7471`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use gdrx_verbs::{Access, ConnectionSpec, Cq, Device, HostMemory, Listener, RecvBatch, Srq, SrqConfig};
//!
//! # fn main() -> gdrx_verbs::Result<()> {
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
//! let mut wcs = gdrx_verbs::WorkCompletion::buffer(32);
//! let n = cq.poll_blocking(&mut wcs, None)?;
//! for wc in &wcs[..n] {
//!     wc.result()?; // typed error, e.g. LocalLength for a message larger than its buffer
//!     println!("slot {} got {} bytes from QP {:#x}", wc.wr_id(), wc.byte_len(), wc.qp_num());
//! }
//! # drop(conn); Ok(()) }
//! ```
//!
//! ## Features
//! None yet. The crate builds without RDMA libraries installed: libibverbs and librdmacm are
//! loaded at run time, and their absence is reported as [`Error::NoRdma`].
//!
//! ## Thread safety
//! Devices, PDs, MRs, CQs, SRQs and QPs are `Send + Sync` (the verbs they call are thread-safe).
//! Posting and polling take `&self`. RDMA CM objects ([`Listener`], [`Connection`]) read their
//! event channels through `&mut self`.
//!
//! ## Resource cleanup
//! Every object holds an `Arc` of its parent (MR and SRQ -> PD -> device; QP -> PD, CQs, SRQ), so
//! verbs objects are destroyed children first whatever order the user drops them in. `Drop`
//! never panics: a failing destroy verb is logged with `tracing`; [`Cq::close`] reports it
//! instead. Dropping a [`Connection`] moves its QP to the error state (outstanding sends
//! complete with `WrFlush`) and disconnects. Receive work requests still posted on an SRQ are
//! discarded when the SRQ is destroyed.
//!
//! ## Unsafe
//! Posting work requests is `unsafe`: the caller promises the SGEs lie in registered memory that
//! nothing else touches until the completion comes back. The buffer pool (`gdrx-pool`) wraps this:
//! a slot moves into the posted request and comes back as a lease with the completion, so
//! safe code never touches memory the NIC owns.
//!
//!
//! ## Examples
//! [`examples/srq_receiver.rs`](https://github.com/gdrx/gdrx/blob/main/examples/srq_receiver.rs)
//! (an SRQ fed by hand) and
//! [`examples/sender.rs`](https://github.com/gdrx/gdrx/blob/main/examples/sender.rs) use this
//! layer directly; the rxe suite runs them against each other.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod cm;
pub mod cq;
pub mod device;
pub mod doorbell;
pub mod error;
pub mod event;
pub mod mem;
pub mod mr;
pub mod mw;
pub mod pd;
pub mod qp;
pub mod sender;
pub mod srq;
mod sys;
pub mod wait;
pub mod words;
pub mod wr;

pub use cm::{connect, ConnEvent, ConnectRequest, Connection, ConnectionSpec, Listener};
pub use cq::{Cq, WorkCompletion};
pub use device::{
    device_names, Capabilities, Device, DeviceKind, GidInfo, GidKind, PortInfo, PortState,
};
pub use doorbell::Doorbell;
pub use error::{Error, MemlockLimit, PostError, Result, WcError, WcOpcode, WcStatus};
pub use event::{AsyncEvent, ObjectId, QpEventKind};
pub use gdrx_wire::RemoteWindow;
pub use mem::{page_size, HostMemory, MemoryKind};
pub use mr::{Access, Mr, MrKind};
pub use mw::MemoryWindow;
pub use pd::{DmabufSupport, Pd};
pub use qp::{QpCaps, QpConfig, QpState, QueuePair};
pub use sender::{CreditStats, Sender};
pub use srq::{Srq, SrqConfig};
pub use wait::{wait_for, Waiter};
pub use words::ReadWords;
pub use wr::{BatchFull, RecvBatch, SendBatch, SendFlags, SendOp, Sge};

// The handshake's messages fit in what RDMA CM carries.
const _: () = assert!(gdrx_wire::Hello::LEN <= cm::MAX_CONNECT_PRIVATE_DATA);
const _: () = assert!(gdrx_wire::Welcome::LEN <= cm::MAX_ACCEPT_PRIVATE_DATA);
