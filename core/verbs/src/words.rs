//! [`ReadWords`]: 64-bit words the CPU publishes and peers RDMA READ, such as the credit grants
//! a receiver gives its senders (`gdrx_wire::CreditWord`).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::{Access, HostMemory, Mr, Pd};

/// `n` little-endian u64 words in their own page(s), registered for RDMA READ only.
///
/// Only this type touches the memory: the CPU through atomic stores and loads, the NIC by
/// reading it for peers (the MR has no write access, so nothing else writes it). A peer's READ
/// of 8 aligned bytes is not promised to be atomic by the verbs specification; what the words
/// mean must tolerate a torn read (a credit grant does: see `gdrx_wire::CreditWord`).
pub struct ReadWords {
    // The MR first: deregistered before the memory is unmapped.
    mr: Mr,
    mem: Arc<HostMemory>,
    n: usize,
}

impl fmt::Debug for ReadWords {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadWords")
            .field("n", &self.n)
            .field("mr", &self.mr)
            .finish()
    }
}

impl ReadWords {
    /// `n` words (at least one), zeroed, registered on `pd` with REMOTE_READ access.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for `n == 0`; the mapping's and the registration's errors.
    pub fn new(pd: &Arc<Pd>, n: usize) -> Result<ReadWords> {
        if n == 0 {
            return Err(Error::InvalidConfig("ReadWords of 0 words".into()));
        }
        let bytes = n
            .checked_mul(8)
            .ok_or_else(|| Error::InvalidConfig(format!("{n} words overflow")))?;
        let mem = Arc::new(HostMemory::new(bytes)?);
        let mr = pd.register(Arc::clone(&mem), Access::REMOTE_READ)?;
        Ok(ReadWords { mr, mem, n })
    }

    /// Words.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (a `ReadWords` has at least one word).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.n, "word {i} of {}", self.n);
        // SAFETY: `i < n`, so the 8 bytes at `i * 8` lie in the mapping (page-aligned, hence
        // 8-aligned), which lives as long as `self`; the CPU only reaches them through this
        // atomic and the NIC only reads them (the MR is REMOTE_READ only).
        unsafe { &*self.mem.as_ptr().add(i * 8).cast::<AtomicU64>() }
    }

    /// Publishes `v` in word `i` (little-endian, release order). Panics when `i` is out of range.
    pub fn store(&self, i: usize, v: u64) {
        self.word(i).store(v.to_le(), Ordering::Release);
    }

    /// Word `i`'s value.
    pub fn load(&self, i: usize) -> u64 {
        u64::from_le(self.word(i).load(Ordering::Acquire))
    }

    /// The address (as registered) and remote key a peer READs word `i` at.
    pub fn remote(&self, i: usize) -> (u64, u32) {
        assert!(i < self.n, "word {i} of {}", self.n);
        (self.mr.iova() + (i * 8) as u64, self.mr.rkey())
    }
}
