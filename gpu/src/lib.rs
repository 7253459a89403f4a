//! # gdrx-gpu
//!
//! The GPU memory provider for gdrx, behind the `cuda` feature: device memory exported by CUDA as
//! a dma-buf (`cuMemGetHandleForAddressRange`) and registered with `ibv_reg_dmabuf_mr`, with a
//! reported fallback chain (dma-buf -> nvidia_peermem -> host staging) and a `doctor` report that
//! says which path a GPU pool would take and why.
//!
//! The crate is a placeholder until the provider trait lands in `gdrx-core`. What the verbs layer
//! already offers for this path: [`gdrx_core::Pd::register_dmabuf`] (posting with the registered
//! IOVA) and [`gdrx_core::Pd::probe_dmabuf`] (the NIC-side dma-buf probe).

#![deny(unsafe_op_in_unsafe_fn)]

/// True when this build includes the CUDA provider.
pub const CUDA_ENABLED: bool = cfg!(feature = "cuda");
