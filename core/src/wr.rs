//! Work requests: scatter/gather entries and pre-allocated, chainable batches of receive and send
//! work requests.
//!
//! A batch owns its `ibv_recv_wr` / `ibv_send_wr` array and its SGE array, allocated once with a
//! fixed capacity; pushing links each work request to the previous one, so a whole batch is posted
//! with a single `ibv_post_*` call and no allocation on the data path.

use std::fmt;
use std::ptr;

use rdma_mummy_sys::{
    ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wr_opcode,
    imm_data_invalidated_rkey_union_t, qp_type_t, rdma_t, wr_t, xrc_t,
};

/// One scatter/gather entry: `length` bytes at `addr`, in the MR with local key `lkey`.
///
/// Same layout as `struct ibv_sge`. Build them with [`crate::Mr::sge`], which checks bounds and
/// uses the address the MR was registered at (the IOVA for dma-buf MRs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Sge {
    /// Address as the NIC sees it (virtual address, or IOVA for dma-buf MRs).
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the MR.
    pub lkey: u32,
}

const _: () = {
    assert!(std::mem::size_of::<Sge>() == std::mem::size_of::<ibv_sge>());
    assert!(std::mem::align_of::<Sge>() == std::mem::align_of::<ibv_sge>());
    assert!(std::mem::offset_of!(Sge, addr) == std::mem::offset_of!(ibv_sge, addr));
    assert!(std::mem::offset_of!(Sge, length) == std::mem::offset_of!(ibv_sge, length));
    assert!(std::mem::offset_of!(Sge, lkey) == std::mem::offset_of!(ibv_sge, lkey));
};

/// A batch is full (too many work requests or SGEs for its capacity). Hands nothing back: the
/// caller still holds what it tried to push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("work request batch is full ({wrs} work requests, {sges} SGEs)")]
pub struct BatchFull {
    /// Work request capacity.
    pub wrs: usize,
    /// SGE capacity.
    pub sges: usize,
}

/// A reusable chain of receive work requests.
pub struct RecvBatch {
    wrs: Vec<ibv_recv_wr>,
    sges: Vec<Sge>,
    wr_cap: usize,
    sge_cap: usize,
}

// SAFETY: the raw pointers inside the work requests point only into this batch's own heap
// buffers (which never reallocate: capacity is fixed), so the batch can move between threads.
unsafe impl Send for RecvBatch {}

impl fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecvBatch")
            .field("len", &self.wrs.len())
            .field("sges", &self.sges.len())
            .field("wr_capacity", &self.wr_cap)
            .finish()
    }
}

impl RecvBatch {
    /// A batch for up to `wrs` work requests carrying up to `sges` SGEs in total.
    pub fn with_capacity(wrs: usize, sges: usize) -> RecvBatch {
        RecvBatch {
            wrs: Vec::with_capacity(wrs),
            sges: Vec::with_capacity(sges),
            wr_cap: wrs,
            sge_cap: sges,
        }
    }

    /// Appends a work request with id `wr_id` scattering into `sges` (1..N entries, N at most the
    /// queue's `max_sge`).
    ///
    /// # Errors
    /// [`BatchFull`] when the batch has no room for it.
    pub fn push(&mut self, wr_id: u64, sges: &[Sge]) -> Result<(), BatchFull> {
        if self.wrs.len() == self.wr_cap || self.sges.len() + sges.len() > self.sge_cap {
            return Err(BatchFull {
                wrs: self.wr_cap,
                sges: self.sge_cap,
            });
        }
        let start = self.sges.len();
        self.sges.extend_from_slice(sges);
        self.wrs.push(ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            // Pointers are fixed up by `chain` right before posting.
            sg_list: start as *mut ibv_sge,
            num_sge: sges.len() as i32,
        });
        Ok(())
    }

    /// Number of work requests in the batch.
    pub fn len(&self) -> usize {
        self.wrs.len()
    }

    /// True when the batch holds no work request.
    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }

    /// True when no further work request fits.
    pub fn is_full(&self) -> bool {
        self.wrs.len() == self.wr_cap
    }

    /// The id of work request `i`.
    pub fn wr_id(&self, i: usize) -> u64 {
        self.wrs[i].wr_id
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.wrs.clear();
        self.sges.clear();
    }

    /// Drops the first `n` work requests (the ones a partial post accepted), keeping the rest.
    pub fn consume_front(&mut self, n: usize) {
        if n >= self.wrs.len() {
            self.clear();
            return;
        }
        let sge_start = self.wrs[n].sg_list as usize;
        self.wrs.drain(..n);
        self.sges.drain(..sge_start);
        for wr in &mut self.wrs {
            wr.sg_list = (wr.sg_list as usize - sge_start) as *mut ibv_sge;
        }
    }

    /// Links the work requests and resolves SGE pointers; returns the head, or null when empty.
    /// The returned pointers are valid until the batch is next modified. `unchain` must be called
    /// after the post to restore the index form.
    pub(crate) fn chain(&mut self) -> *mut ibv_recv_wr {
        let n = self.wrs.len();
        if n == 0 {
            return ptr::null_mut();
        }
        let sge_base = self.sges.as_mut_ptr().cast::<ibv_sge>();
        let wr_base = self.wrs.as_mut_ptr();
        for i in 0..n {
            let wr = &mut self.wrs[i];
            // SAFETY: the stored index is < sges.len() (push checked it), so the pointer is in
            // bounds of the SGE buffer.
            wr.sg_list = unsafe { sge_base.add(wr.sg_list as usize) };
            wr.next = if i + 1 < n {
                // SAFETY: i + 1 < n, in bounds of the WR buffer.
                unsafe { wr_base.add(i + 1) }
            } else {
                ptr::null_mut()
            };
        }
        wr_base
    }

    /// Converts pointers back to indices after a post; returns the index of `bad`, or `len()` when
    /// `bad` is null.
    pub(crate) fn unchain(&mut self, bad: *const ibv_recv_wr) -> usize {
        let sge_base = self.sges.as_ptr() as usize;
        let wr_base = self.wrs.as_ptr() as usize;
        for wr in &mut self.wrs {
            wr.sg_list =
                ((wr.sg_list as usize - sge_base) / std::mem::size_of::<Sge>()) as *mut ibv_sge;
            wr.next = ptr::null_mut();
        }
        if bad.is_null() {
            self.wrs.len()
        } else {
            (bad as usize - wr_base) / std::mem::size_of::<ibv_recv_wr>()
        }
    }
}

/// What a send work request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: consumes one receive work request at the peer.
    Send,
    /// SEND with 32 bits of immediate data, delivered in the peer's receive completion.
    SendWithImm(u32),
    /// RDMA WRITE into the peer's memory at `remote_addr` (an address in an MR registered with
    /// remote write access, `rkey` its remote key). No completion at the peer.
    RdmaWrite {
        /// Peer address.
        remote_addr: u64,
        /// Peer MR's remote key.
        rkey: u32,
    },
    /// RDMA WRITE with immediate data: writes like [`SendOp::RdmaWrite`], then consumes one
    /// receive work request at the peer, whose completion carries `imm`.
    RdmaWriteWithImm {
        /// Peer address.
        remote_addr: u64,
        /// Peer MR's remote key.
        rkey: u32,
        /// Immediate data (host order; sent in network order).
        imm: u32,
    },
}

/// Flags of a send work request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendFlags {
    /// Generate a completion on the send CQ (otherwise only errors complete).
    pub signaled: bool,
    /// Copy the payload into the work request (payload at most the QP's `max_inline_data`); the
    /// buffer may be reused as soon as the post returns.
    pub inline: bool,
    /// Set the solicited-event bit, waking a peer armed for solicited events only.
    pub solicited: bool,
}

impl SendFlags {
    /// Just `signaled`.
    pub const SIGNALED: SendFlags = SendFlags {
        signaled: true,
        inline: false,
        solicited: false,
    };
}

/// A reusable chain of send work requests.
pub struct SendBatch {
    wrs: Vec<ibv_send_wr>,
    sges: Vec<Sge>,
    wr_cap: usize,
    sge_cap: usize,
}

// SAFETY: as for RecvBatch: pointers only into the batch's own fixed-capacity buffers.
unsafe impl Send for SendBatch {}

impl fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendBatch")
            .field("len", &self.wrs.len())
            .field("sges", &self.sges.len())
            .field("wr_capacity", &self.wr_cap)
            .finish()
    }
}

impl SendBatch {
    /// A batch for up to `wrs` work requests carrying up to `sges` SGEs in total.
    pub fn with_capacity(wrs: usize, sges: usize) -> SendBatch {
        SendBatch {
            wrs: Vec::with_capacity(wrs),
            sges: Vec::with_capacity(sges),
            wr_cap: wrs,
            sge_cap: sges,
        }
    }

    /// Appends a send work request.
    ///
    /// # Errors
    /// [`BatchFull`] when the batch has no room for it.
    pub fn push(
        &mut self,
        wr_id: u64,
        op: SendOp,
        sges: &[Sge],
        flags: SendFlags,
    ) -> Result<(), BatchFull> {
        if self.wrs.len() == self.wr_cap || self.sges.len() + sges.len() > self.sge_cap {
            return Err(BatchFull {
                wrs: self.wr_cap,
                sges: self.sge_cap,
            });
        }
        let start = self.sges.len();
        self.sges.extend_from_slice(sges);
        let (opcode, imm, remote) = match op {
            SendOp::Send => (ibv_wr_opcode::IBV_WR_SEND, 0, None),
            SendOp::SendWithImm(imm) => (ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, imm, None),
            SendOp::RdmaWrite { remote_addr, rkey } => (
                ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                0,
                Some((remote_addr, rkey)),
            ),
            SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            } => (
                ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
                imm,
                Some((remote_addr, rkey)),
            ),
        };
        let mut send_flags = 0u32;
        if flags.signaled {
            send_flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if flags.inline {
            send_flags |= ibv_send_flags::IBV_SEND_INLINE.0;
        }
        if flags.solicited {
            send_flags |= ibv_send_flags::IBV_SEND_SOLICITED.0;
        }
        let (remote_addr, rkey) = remote.unwrap_or((0, 0));
        // SAFETY: ibv_send_wr is a plain C struct of integers, pointers and unions of them; all
        // zeroes is a valid value for every field.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = start as *mut ibv_sge;
        wr.num_sge = sges.len() as i32;
        wr.opcode = opcode;
        wr.send_flags = send_flags;
        wr.imm_data_invalidated_rkey_union = imm_data_invalidated_rkey_union_t {
            imm_data: imm.to_be(),
        };
        wr.wr = wr_t {
            rdma: rdma_t { remote_addr, rkey },
        };
        wr.qp_type = qp_type_t {
            xrc: xrc_t { remote_srqn: 0 },
        };
        self.wrs.push(wr);
        Ok(())
    }

    /// Number of work requests in the batch.
    pub fn len(&self) -> usize {
        self.wrs.len()
    }

    /// True when the batch holds no work request.
    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.wrs.clear();
        self.sges.clear();
    }

    /// Drops the first `n` work requests (the ones a partial post accepted), keeping the rest.
    pub fn consume_front(&mut self, n: usize) {
        if n >= self.wrs.len() {
            self.clear();
            return;
        }
        let sge_start = self.wrs[n].sg_list as usize;
        self.wrs.drain(..n);
        self.sges.drain(..sge_start);
        for wr in &mut self.wrs {
            wr.sg_list = (wr.sg_list as usize - sge_start) as *mut ibv_sge;
        }
    }

    pub(crate) fn chain(&mut self) -> *mut ibv_send_wr {
        let n = self.wrs.len();
        if n == 0 {
            return ptr::null_mut();
        }
        let sge_base = self.sges.as_mut_ptr().cast::<ibv_sge>();
        let wr_base = self.wrs.as_mut_ptr();
        for i in 0..n {
            let wr = &mut self.wrs[i];
            // SAFETY: stored index < sges.len(), checked by push.
            wr.sg_list = unsafe { sge_base.add(wr.sg_list as usize) };
            wr.next = if i + 1 < n {
                // SAFETY: in bounds of the WR buffer.
                unsafe { wr_base.add(i + 1) }
            } else {
                ptr::null_mut()
            };
        }
        wr_base
    }

    pub(crate) fn unchain(&mut self, bad: *const ibv_send_wr) -> usize {
        let sge_base = self.sges.as_ptr() as usize;
        let wr_base = self.wrs.as_ptr() as usize;
        for wr in &mut self.wrs {
            wr.sg_list =
                ((wr.sg_list as usize - sge_base) / std::mem::size_of::<Sge>()) as *mut ibv_sge;
            wr.next = ptr::null_mut();
        }
        if bad.is_null() {
            self.wrs.len()
        } else {
            (bad as usize - wr_base) / std::mem::size_of::<ibv_send_wr>()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sge(a: u64) -> Sge {
        Sge {
            addr: a,
            length: 8,
            lkey: 1,
        }
    }

    #[test]
    fn recv_batch_chains_and_unchains() {
        let mut b = RecvBatch::with_capacity(3, 4);
        b.push(10, &[sge(0)]).unwrap();
        b.push(11, &[sge(100), sge(200)]).unwrap();
        b.push(12, &[sge(300)]).unwrap();
        assert!(b.is_full());
        assert_eq!(b.push(13, &[sge(1)]), Err(BatchFull { wrs: 3, sges: 4 }));
        let head = b.chain();
        // SAFETY: the chain was just built from live buffers and nothing modified the batch.
        unsafe {
            let w0 = &*head;
            assert_eq!(w0.wr_id, 10);
            assert_eq!((*w0.sg_list).addr, 0);
            let w1 = &*w0.next;
            assert_eq!(w1.wr_id, 11);
            assert_eq!(w1.num_sge, 2);
            assert_eq!((*w1.sg_list.add(1)).addr, 200);
            let w2 = &*w1.next;
            assert_eq!((*w2.sg_list).addr, 300);
            assert!(w2.next.is_null());
        }
        // A post that failed at the third work request.
        // SAFETY: index 2 is in bounds.
        let bad = unsafe { head.add(2) };
        assert_eq!(b.unchain(bad), 2);
        b.consume_front(2);
        assert_eq!(b.len(), 1);
        assert_eq!(b.wr_id(0), 12);
        let head = b.chain();
        // SAFETY: as above.
        unsafe {
            assert_eq!((*(*head).sg_list).addr, 300);
            assert!((*head).next.is_null());
        }
        assert_eq!(b.unchain(ptr::null()), 1);
        b.clear();
        assert!(b.is_empty());
        assert!(b.chain().is_null());
    }

    #[test]
    fn sge_budget_is_enforced() {
        let mut b = RecvBatch::with_capacity(4, 2);
        b.push(1, &[sge(0), sge(1)]).unwrap();
        assert!(b.push(2, &[sge(2)]).is_err());
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn send_batch_encodes_ops() {
        let mut b = SendBatch::with_capacity(3, 3);
        b.push(
            1,
            SendOp::SendWithImm(0x01020304),
            &[sge(0)],
            SendFlags::SIGNALED,
        )
        .unwrap();
        b.push(
            2,
            SendOp::RdmaWriteWithImm {
                remote_addr: 0xdead_0000,
                rkey: 77,
                imm: 5,
            },
            &[sge(8)],
            SendFlags::default(),
        )
        .unwrap();
        b.push(
            3,
            SendOp::Send,
            &[sge(16)],
            SendFlags {
                inline: true,
                ..Default::default()
            },
        )
        .unwrap();
        let head = b.chain();
        // SAFETY: chain just built; batch unmodified.
        unsafe {
            let w0 = &*head;
            assert_eq!(w0.opcode, ibv_wr_opcode::IBV_WR_SEND_WITH_IMM);
            assert_eq!(
                u32::from_be(w0.imm_data_invalidated_rkey_union.imm_data),
                0x01020304
            );
            assert_eq!(w0.send_flags, ibv_send_flags::IBV_SEND_SIGNALED.0);
            let w1 = &*w0.next;
            assert_eq!(w1.opcode, ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM);
            assert_eq!(w1.wr.rdma.remote_addr, 0xdead_0000);
            assert_eq!(w1.wr.rdma.rkey, 77);
            assert_eq!(w1.send_flags, 0);
            let w2 = &*w1.next;
            assert_eq!(w2.opcode, ibv_wr_opcode::IBV_WR_SEND);
            assert_eq!(w2.send_flags, ibv_send_flags::IBV_SEND_INLINE.0);
            assert!(w2.next.is_null());
        }
        assert_eq!(b.unchain(ptr::null()), 3);
    }
}
