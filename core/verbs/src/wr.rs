//! Work requests: scatter/gather entries and pre-allocated, chainable batches of receive and send
//! work requests.
//!
//! A batch owns its `ibv_recv_wr` / `ibv_send_wr` array and its SGE array, allocated once with a
//! fixed capacity; pushing links each work request to the previous one, so a whole batch is posted
//! with a single `ibv_post_*` call and no allocation on the data path.

use std::fmt;
use std::ptr;

use crate::error::PostError;

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

/// A work request struct that links to the next one and points at its SGEs.
pub(crate) trait Linked: Sized {
    /// The SGE list pointer and the next pointer.
    fn link(&mut self) -> (&mut *mut ibv_sge, &mut *mut Self);
}

impl Linked for ibv_recv_wr {
    fn link(&mut self) -> (&mut *mut ibv_sge, &mut *mut Self) {
        (&mut self.sg_list, &mut self.next)
    }
}

impl Linked for ibv_send_wr {
    fn link(&mut self) -> (&mut *mut ibv_sge, &mut *mut Self) {
        (&mut self.sg_list, &mut self.next)
    }
}

/// Fixed-capacity storage for a chain of work requests and their SGEs.
///
/// Between posts, each work request's `sg_list` holds the *index* of its first SGE and `next` is
/// null, so the batch can move freely; [`Chain::post`] turns indices into pointers for the one
/// `ibv_post_*` call and back afterwards. Capacity never grows, so no allocation happens after
/// construction.
struct Chain<W> {
    wrs: Vec<W>,
    sges: Vec<Sge>,
    wr_cap: usize,
    sge_cap: usize,
}

impl<W: Linked> Chain<W> {
    fn with_capacity(wrs: usize, sges: usize) -> Self {
        Chain {
            wrs: Vec::with_capacity(wrs),
            sges: Vec::with_capacity(sges),
            wr_cap: wrs,
            sge_cap: sges,
        }
    }

    /// Appends `sges`, then the work request `make` builds from the index of its first SGE.
    fn push(
        &mut self,
        sges: &[Sge],
        make: impl FnOnce(*mut ibv_sge) -> W,
    ) -> Result<(), BatchFull> {
        if self.wrs.len() == self.wr_cap || self.sges.len() + sges.len() > self.sge_cap {
            return Err(BatchFull {
                wrs: self.wr_cap,
                sges: self.sge_cap,
            });
        }
        let start = self.sges.len();
        self.sges.extend_from_slice(sges);
        self.wrs.push(make(start as *mut ibv_sge));
        Ok(())
    }

    fn clear(&mut self) {
        self.wrs.clear();
        self.sges.clear();
    }

    /// Drops the first `n` work requests and their SGEs, keeping the rest (in index form).
    fn consume_front(&mut self, n: usize) {
        if n >= self.wrs.len() {
            self.clear();
            return;
        }
        let sge_start = *self.wrs[n].link().0 as usize;
        self.wrs.drain(..n);
        self.sges.drain(..sge_start);
        for wr in &mut self.wrs {
            let sg = wr.link().0;
            *sg = (*sg as usize - sge_start) as *mut ibv_sge;
        }
    }

    /// Links the work requests and resolves SGE pointers; returns the head (null when empty).
    fn chain(&mut self) -> *mut W {
        let n = self.wrs.len();
        if n == 0 {
            return ptr::null_mut();
        }
        let sge_base = self.sges.as_mut_ptr().cast::<ibv_sge>();
        let wr_base = self.wrs.as_mut_ptr();
        for i in 0..n {
            let (sg, next) = self.wrs[i].link();
            // SAFETY: the stored index is within the SGE buffer (push checked it).
            *sg = unsafe { sge_base.add(*sg as usize) };
            *next = if i + 1 < n {
                // SAFETY: i + 1 < n: in bounds of the WR buffer.
                unsafe { wr_base.add(i + 1) }
            } else {
                ptr::null_mut()
            };
        }
        wr_base
    }

    /// Back to index form after a post; returns the index of `bad` (`len()` for null).
    fn unchain(&mut self, bad: *const W) -> usize {
        let sge_base = self.sges.as_ptr() as usize;
        let wr_base = self.wrs.as_ptr() as usize;
        for wr in &mut self.wrs {
            let (sg, next) = wr.link();
            *sg = ((*sg as usize - sge_base) / std::mem::size_of::<Sge>()) as *mut ibv_sge;
            *next = ptr::null_mut();
        }
        if bad.is_null() {
            self.wrs.len()
        } else {
            (bad as usize - wr_base) / std::mem::size_of::<W>()
        }
    }

    /// Posts the whole chain with `post(head, &mut bad) -> ret` (an `ibv_post_*` call). On
    /// success the chain is emptied; on failure the accepted work requests are removed and the
    /// error says how many there were.
    ///
    /// # Safety
    /// `post` must be the matching `ibv_post_*` verb on a live queue; the memory obligations of
    /// that verb are the caller's.
    unsafe fn post(
        &mut self,
        verb: &'static str,
        post: impl FnOnce(*mut W, *mut *mut W) -> i32,
    ) -> Result<(), PostError> {
        let head = self.chain();
        if head.is_null() {
            return Ok(());
        }
        let mut bad: *mut W = ptr::null_mut();
        let ret = post(head, &mut bad);
        let accepted = self.unchain(if ret == 0 { ptr::null() } else { bad });
        if ret == 0 {
            self.clear();
            return Ok(());
        }
        self.consume_front(accepted);
        Err(PostError {
            verb,
            posted: accepted,
            errno: ret.abs(),
        })
    }
}

/// The methods `RecvBatch` and `SendBatch` share, delegating to their [`Chain`].
macro_rules! batch_common {
    ($batch:ident, $wr:ty) => {
        impl fmt::Debug for $batch {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($batch))
                    .field("len", &self.0.wrs.len())
                    .field("sges", &self.0.sges.len())
                    .field("wr_capacity", &self.0.wr_cap)
                    .finish()
            }
        }

        impl $batch {
            /// A batch for up to `wrs` work requests carrying up to `sges` SGEs in total.
            pub fn with_capacity(wrs: usize, sges: usize) -> $batch {
                $batch(Chain::with_capacity(wrs, sges))
            }

            /// Number of work requests in the batch.
            pub fn len(&self) -> usize {
                self.0.wrs.len()
            }

            /// True when the batch holds no work request.
            pub fn is_empty(&self) -> bool {
                self.0.wrs.is_empty()
            }

            /// True when no further work request fits.
            pub fn is_full(&self) -> bool {
                self.0.wrs.len() == self.0.wr_cap
            }

            /// Empties the batch, keeping its buffers.
            pub fn clear(&mut self) {
                self.0.clear();
            }

            /// Drops the first `n` work requests (the ones a partial post accepted), keeping
            /// the rest.
            pub fn consume_front(&mut self, n: usize) {
                self.0.consume_front(n);
            }

            /// See [`Chain::post`].
            ///
            /// # Safety
            /// As [`Chain::post`].
            pub(crate) unsafe fn post(
                &mut self,
                verb: &'static str,
                post: impl FnOnce(*mut $wr, *mut *mut $wr) -> i32,
            ) -> Result<(), PostError> {
                // SAFETY: forwarded from the caller.
                unsafe { self.0.post(verb, post) }
            }
        }
    };
}

/// A reusable chain of receive work requests.
pub struct RecvBatch(Chain<ibv_recv_wr>);

// SAFETY: the raw pointers inside the work requests are indices or point only into this batch's
// own fixed-capacity buffers, so the batch can move between threads.
unsafe impl Send for RecvBatch {}

batch_common!(RecvBatch, ibv_recv_wr);

impl RecvBatch {
    /// Appends a work request with id `wr_id` scattering into `sges` (1..N entries, N at most the
    /// queue's `max_sge`).
    ///
    /// # Errors
    /// [`BatchFull`] when the batch has no room for it.
    pub fn push(&mut self, wr_id: u64, sges: &[Sge]) -> Result<(), BatchFull> {
        self.0.push(sges, |sg_list| ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list,
            num_sge: sges.len() as i32,
        })
    }

    /// The id of work request `i`.
    pub fn wr_id(&self, i: usize) -> u64 {
        self.0.wrs[i].wr_id
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
    /// RDMA READ of the peer's memory at `remote_addr` (an MR registered with remote read
    /// access) into the local SGEs (memory registered with local write access). Needs an
    /// outstanding-READ allowance on both sides ([`crate::ConnectionSpec::rd_atomic`]).
    RdmaRead {
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
pub struct SendBatch(Chain<ibv_send_wr>);

// SAFETY: as for RecvBatch: indices or pointers into the batch's own fixed-capacity buffers.
unsafe impl Send for SendBatch {}

batch_common!(SendBatch, ibv_send_wr);

impl SendBatch {
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
        let (opcode, imm, (remote_addr, rkey)) = match op {
            SendOp::Send => (ibv_wr_opcode::IBV_WR_SEND, 0, (0, 0)),
            SendOp::SendWithImm(imm) => (ibv_wr_opcode::IBV_WR_SEND_WITH_IMM, imm, (0, 0)),
            SendOp::RdmaWrite { remote_addr, rkey } => {
                (ibv_wr_opcode::IBV_WR_RDMA_WRITE, 0, (remote_addr, rkey))
            }
            SendOp::RdmaRead { remote_addr, rkey } => {
                (ibv_wr_opcode::IBV_WR_RDMA_READ, 0, (remote_addr, rkey))
            }
            SendOp::RdmaWriteWithImm {
                remote_addr,
                rkey,
                imm,
            } => (
                ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
                imm,
                (remote_addr, rkey),
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
        self.0.push(sges, |sg_list| {
            // SAFETY: ibv_send_wr is a plain C struct of integers, pointers and unions of them;
            // all zeroes is a valid value for every field.
            let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = wr_id;
            wr.sg_list = sg_list;
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
            wr
        })
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
        let head = b.0.chain();
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
        assert_eq!(b.0.unchain(bad), 2);
        b.consume_front(2);
        assert_eq!(b.len(), 1);
        assert_eq!(b.wr_id(0), 12);
        let head = b.0.chain();
        // SAFETY: as above.
        unsafe {
            assert_eq!((*(*head).sg_list).addr, 300);
            assert!((*head).next.is_null());
        }
        assert_eq!(b.0.unchain(ptr::null()), 1);
        b.clear();
        assert!(b.is_empty());
        assert!(b.0.chain().is_null());
    }

    #[test]
    fn partial_post_keeps_the_refused_tail() {
        let mut b = RecvBatch::with_capacity(3, 3);
        for i in 0..3 {
            b.push(i, &[sge(i * 100)]).unwrap();
        }
        // A provider that accepts the first two work requests and refuses the third.
        let refuse_third = |head: *mut ibv_recv_wr, bad: *mut *mut ibv_recv_wr| {
            // SAFETY: `head` is the 3-element chain post() built; `bad` is its out-pointer.
            unsafe { *bad = (*(*head).next).next };
            libc::ENOMEM
        };
        // SAFETY: the closure stands in for ibv_post_srq_recv and only reads the chain.
        let r = unsafe { b.post("ibv_post_srq_recv", refuse_third) };
        assert_eq!(
            r,
            Err(PostError {
                verb: "ibv_post_srq_recv",
                posted: 2,
                errno: libc::ENOMEM
            })
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b.wr_id(0), 2);
        // SAFETY: a provider that accepts everything.
        let r = unsafe { b.post("ibv_post_srq_recv", |_, _| 0) };
        assert_eq!(r, Ok(()));
        assert!(b.is_empty());
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
        let head = b.0.chain();
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
        assert_eq!(b.0.unchain(ptr::null()), 3);
    }
}
