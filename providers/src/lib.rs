//! # gdrx-providers
//!
//! Memory providers for gdrx's receive buffer pool, in the spirit of Linux page_pool memory
//! providers (devmem TCP, io_uring zero-copy receive): each provider allocates regions of one kind
//! of memory and says how the NIC should register them.
//!
//! Planned providers (see the project's issue on providers and the pool):
//! - **host**: page-aligned anonymous memory ([`gdrx_core::HostMemory`] is its building block);
//! - **hugepage**: `MAP_HUGETLB` 1 GiB, then 2 MiB, then transparent huge pages, then 4 KiB, each
//!   step reported;
//! - **udmabuf**: memfd -> `/dev/udmabuf` -> dma-buf fd, registered with `ibv_reg_dmabuf_mr` where
//!   the NIC supports it and through its CPU mapping otherwise, so the dma-buf path runs without a
//!   GPU.
//!
//! The crate is a placeholder until the provider trait lands in `gdrx-core`; it exists now so the
//! workspace layout is final.

#![deny(unsafe_op_in_unsafe_fn)]

/// The providers this crate will offer, by name, as accepted on command lines.
pub const PLANNED_PROVIDERS: &[&str] = &["host", "hugepage", "udmabuf"];
