//! Memory regions: registered memory, its keys, and bounds-checked scatter/gather entries.
//!
//! An [`Mr`] deregisters on drop, before it releases the memory it keeps alive (fields drop in
//! declaration order), and holds an `Arc<Pd>` so the PD outlives it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::AccessFlags;

use crate::error::{Error, Result};
use crate::pd::Pd;
use crate::wr::Sge;

/// MR access rights (`IBV_ACCESS_*`). Local read is always allowed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Access(u32);

impl Access {
    /// The NIC may write the memory on behalf of local receives. What receive buffers need.
    pub const LOCAL_WRITE: Access = Access(1);
    /// A peer may RDMA WRITE into the memory (requires LOCAL_WRITE).
    pub const REMOTE_WRITE: Access = Access(2);
    /// A peer may RDMA READ the memory.
    pub const REMOTE_READ: Access = Access(4);
    /// Memory windows may be bound to the memory ([`crate::MemoryWindow`]).
    pub const MW_BIND: Access = Access(1 << 4);
    /// The NIC may reorder writes into the memory (PCIe relaxed ordering).
    pub const RELAXED_ORDERING: Access = Access(1 << 20);

    /// No access beyond local read: what send-only buffers need.
    pub const fn none() -> Access {
        Access(0)
    }

    /// Receive buffers: LOCAL_WRITE only.
    pub const fn recv() -> Access {
        Access::LOCAL_WRITE
    }

    /// Buffers a peer writes with RDMA WRITE (WITH_IMM): LOCAL_WRITE | REMOTE_WRITE.
    pub const fn remote_write() -> Access {
        Access(Access::LOCAL_WRITE.0 | Access::REMOTE_WRITE.0)
    }

    /// True when every flag in `other` is set in `self`.
    pub const fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw bits (`IBV_ACCESS_*`).
    pub const fn bits(self) -> u32 {
        self.0
    }

    pub(crate) fn validate(self) -> Result<()> {
        if self.contains(Access::REMOTE_WRITE) && !self.contains(Access::LOCAL_WRITE) {
            return Err(Error::InvalidConfig(
                "REMOTE_WRITE access requires LOCAL_WRITE (verbs rule)".into(),
            ));
        }
        Ok(())
    }

    pub(crate) fn to_sideway(self) -> AccessFlags {
        let mut f = AccessFlags::none();
        if self.contains(Access::LOCAL_WRITE) {
            f |= AccessFlags::LocalWrite;
        }
        if self.contains(Access::REMOTE_WRITE) {
            f |= AccessFlags::RemoteWrite;
        }
        if self.contains(Access::REMOTE_READ) {
            f |= AccessFlags::RemoteRead;
        }
        if self.contains(Access::MW_BIND) {
            f |= AccessFlags::MemoryWindowBind;
        }
        if self.contains(Access::RELAXED_ORDERING) {
            f |= AccessFlags::RelaxedOrdering;
        }
        f
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = vec!["LOCAL_READ"];
        if self.contains(Access::LOCAL_WRITE) {
            parts.push("LOCAL_WRITE");
        }
        if self.contains(Access::REMOTE_WRITE) {
            parts.push("REMOTE_WRITE");
        }
        if self.contains(Access::REMOTE_READ) {
            parts.push("REMOTE_READ");
        }
        if self.contains(Access::MW_BIND) {
            parts.push("MW_BIND");
        }
        if self.contains(Access::RELAXED_ORDERING) {
            parts.push("RELAXED_ORDERING");
        }
        write!(f, "{}", parts.join("|"))
    }
}

/// How an MR was registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MrKind {
    /// `ibv_reg_mr` on a virtual address range.
    Virtual,
    /// `ibv_reg_dmabuf_mr` on a dma-buf, at `offset` inside it.
    DmaBuf {
        /// Offset of the registered range inside the dma-buf.
        offset: u64,
    },
}

/// A registered memory region.
pub struct Mr {
    // Drop order matters: deregister (inner) first, then release the PD and the memory.
    _inner: Arc<MemoryRegion>,
    pd: Arc<Pd>,
    iova: u64,
    len: usize,
    lkey: u32,
    rkey: u32,
    access: Access,
    kind: MrKind,
    _keepalive: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Mr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mr")
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("access", &self.access)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Mr {
    pub(crate) fn new(
        inner: Arc<MemoryRegion>,
        pd: Arc<Pd>,
        iova: u64,
        len: usize,
        access: Access,
        kind: MrKind,
        keepalive: Option<Arc<dyn Any + Send + Sync>>,
    ) -> Mr {
        let (lkey, rkey) = (inner.lkey(), inner.rkey());
        Mr {
            _inner: inner,
            pd,
            iova,
            len,
            lkey,
            rkey,
            access,
            kind,
            _keepalive: keepalive,
        }
    }

    /// Local key, for SGEs.
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Remote key, for peers doing RDMA WRITE/READ (only meaningful with remote access).
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// The address work requests use for the first byte: the virtual address for
    /// [`MrKind::Virtual`], the registered IOVA for [`MrKind::DmaBuf`].
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Registered length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a zero-length registration.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Access rights.
    pub fn access(&self) -> Access {
        self.access
    }

    /// How it was registered.
    pub fn kind(&self) -> MrKind {
        self.kind
    }

    /// The raw `ibv_mr`, valid while `self` lives.
    pub(crate) fn raw(&self) -> *mut rdma_mummy_sys::ibv_mr {
        // SAFETY: sideway returns the pointer it owns; we use it only while `self` is alive.
        unsafe { self._inner.mr().as_ptr() }
    }

    /// The PD it belongs to.
    pub fn pd(&self) -> &Arc<Pd> {
        &self.pd
    }

    /// The window of `len` bytes at `offset` into the region, to advertise to a peer for RDMA
    /// WRITE (e.g. in `gdrx_wire::Welcome::window`); `None` when it is out of bounds or empty,
    /// or the MR was not registered with REMOTE_WRITE access.
    pub fn remote_window(&self, offset: u64, len: u64) -> Option<gdrx_wire::RemoteWindow> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len as u64 || !self.access.contains(Access::REMOTE_WRITE) {
            return None;
        }
        Some(gdrx_wire::RemoteWindow {
            addr: self.iova + offset,
            len,
            rkey: self.rkey(),
        })
    }

    /// An SGE for `len` bytes at `offset` into the region, or `None` when out of bounds or longer
    /// than an SGE can describe (4 GiB).
    pub fn sge(&self, offset: usize, len: usize) -> Option<Sge> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let length = u32::try_from(len).ok()?;
        Some(Sge {
            addr: self.iova + offset as u64,
            length,
            lkey: self.lkey,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_rules() {
        assert!(Access::recv().contains(Access::LOCAL_WRITE));
        assert!(!Access::recv().contains(Access::REMOTE_WRITE));
        assert!(Access::remote_write().contains(Access::LOCAL_WRITE | Access::REMOTE_WRITE));
        assert!(Access::REMOTE_WRITE.validate().is_err());
        assert!(Access::remote_write().validate().is_ok());
        assert_eq!(format!("{:?}", Access::recv()), "LOCAL_READ|LOCAL_WRITE");
        assert_eq!(Access::recv().to_sideway(), AccessFlags::LocalWrite);
    }
}
