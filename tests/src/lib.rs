//! # gdrx-tests
//!
//! The soft-RoCE integration suite of gdrx and its harness: message framing with sequence
//! numbers and checksums ([`frame`]), a receiver ([`recv`]), a receiver through the buffer pool
//! ([`poolrecv`]), a sender that runs in a second process ([`peer`], binary `gdrx-testpeer`),
//! the per-process RDMA resource counts used as a leak check ([`res`]), and a peer that never
//! completes its RDMA CM handshake ([`stall`]).
//!
//! The tests in `tests/rxe.rs` need a real rxe device: they are `#[ignore]`d in a plain
//! `cargo test` and run by `deploy/testbed.sh` (via `deploy/run-tests.sh`), which exports
//! `GDRX_RDMA_DEV` and `GDRX_RDMA_IP`. Told to use a device that is missing, they fail.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod env;
pub mod frame;
pub mod peer;
pub mod poolrecv;
pub mod recv;
pub mod res;
pub mod stall;

pub use env::RxeEnv;

/// Installs a `tracing` subscriber reading `GDRX_LOG` (default `warn`), once.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GDRX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // No colour codes in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
