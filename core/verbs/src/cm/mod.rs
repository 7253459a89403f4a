//! RDMA CM connections: a [`Listener`] on IP:port that accepts many peers, a connector
//! ([`connect`]), and [`Connection`]s whose RC queue pairs can all draw receives from one SRQ.
//!
//! librdmacm's `rdma_create_qp` would create the QP on the CM's own verbs context; gdrx creates
//! it on the context of the [`Pd`] the caller chose (so one SRQ, CQ and set of MRs serve every
//! connection) and drives the INIT -> RTR -> RTS transitions itself, with attributes from
//! `rdma_init_qp_attr`. The RDMA CM only carries the handshake: addresses, route, QP numbers and
//! up to 56 (connect) / 196 (accept) bytes of private data each way. Private data arrives
//! zero-padded to those sizes, so messages carried in it must say their own length (see
//! `gdrx-wire`).
//!
//! Each accepted connection is migrated to its own event channel, so its disconnect events go to
//! its own fd and never block the listener. [`Connection`] moves its QP to the error state and
//! disconnects on drop; outstanding send work requests then complete with `WrFlush`.

mod accept;
mod address;
mod connect;
mod listener;
mod raw;

pub use accept::{Admission, Admitted, Gather, Refusal, IDLE_TICK};
pub use address::to_sockaddr;
pub use connect::{connect, ConnEvent, Connection};
pub use listener::{ConnectRequest, Listener};

use std::sync::Arc;
use std::time::Duration;

use crate::cq::Cq;
use crate::error::{Error, Result};
use crate::pd::Pd;
use crate::qp::{QpConfig, QueuePair};
use crate::srq::Srq;

/// Most private data a connect request carries (RDMA CM, TCP port space).
pub const MAX_CONNECT_PRIVATE_DATA: usize = 56;
/// Most private data an accept carries.
pub const MAX_ACCEPT_PRIVATE_DATA: usize = 196;
/// Most private data a reject carries.
pub const MAX_REJECT_PRIVATE_DATA: usize = 148;

/// What to build for each connection: the QP's PD, CQs and SRQ, its sizes, and the transport's
/// retry behaviour.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionSpec {
    /// PD the QP is created on (its device must be the one the address maps to).
    pub pd: Arc<Pd>,
    /// Send CQ.
    pub send_cq: Arc<Cq>,
    /// Receive CQ.
    pub recv_cq: Arc<Cq>,
    /// SRQ the QP takes receives from; `None` gives the QP its own receive queue.
    pub srq: Option<Arc<Srq>>,
    /// Queue sizes.
    pub qp: QpConfig,
    /// RNR NAK timer this side advertises, as the 5-bit IB encoding (12 = 0.64 ms, 14 = 1.28
    /// ms). When this side's receive queue is empty, the sender waits this long before retrying.
    pub min_rnr_timer: u8,
    /// How often this side's sends are retried after an RNR NAK (7 = forever). A receive path
    /// whose consumer may hold every buffer wants 7: senders stall instead of failing.
    pub rnr_retry: u8,
    /// Transport retries before `RetryExceeded` (0..=7).
    pub retry_count: u8,
    /// Outstanding RDMA READ/atomic operations this side initiates and accepts.
    pub rd_atomic: u8,
    /// How long each handshake step may take.
    pub timeout: Duration,
}

impl ConnectionSpec {
    /// A spec with gdrx's defaults: RNR retry forever, 0.64 ms RNR timer, 7 transport retries,
    /// 1 outstanding READ, 20 s per handshake step (soft-RoCE under emulation is slow).
    pub fn new(pd: &Arc<Pd>, send_cq: &Arc<Cq>, recv_cq: &Arc<Cq>, srq: Option<&Arc<Srq>>) -> Self {
        ConnectionSpec {
            pd: Arc::clone(pd),
            send_cq: Arc::clone(send_cq),
            recv_cq: Arc::clone(recv_cq),
            srq: srq.cloned(),
            qp: QpConfig::default(),
            min_rnr_timer: 12,
            rnr_retry: 7,
            retry_count: 7,
            rd_atomic: 1,
            timeout: Duration::from_secs(20),
        }
    }

    /// Queue sizes of the connection's QP.
    #[must_use]
    pub fn qp(mut self, qp: QpConfig) -> Self {
        self.qp = qp;
        self
    }

    /// The RNR NAK timer this side advertises (5-bit IB encoding; checked at connect).
    #[must_use]
    pub fn min_rnr_timer(mut self, timer: u8) -> Self {
        self.min_rnr_timer = timer;
        self
    }

    /// Retries after an RNR NAK (7 = forever).
    #[must_use]
    pub fn rnr_retry(mut self, retries: u8) -> Self {
        self.rnr_retry = retries;
        self
    }

    /// Transport retries before `RetryExceeded` (0..=7).
    #[must_use]
    pub fn retry_count(mut self, retries: u8) -> Self {
        self.retry_count = retries;
        self
    }

    /// Outstanding RDMA READ/atomic operations.
    #[must_use]
    pub fn rd_atomic(mut self, n: u8) -> Self {
        self.rd_atomic = n;
        self
    }

    /// How long each handshake step may take.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn validate(&self) -> Result<()> {
        if self.min_rnr_timer > 31 {
            return Err(Error::InvalidConfig(format!(
                "min_rnr_timer {} is not a 5-bit IB encoding (0..=31)",
                self.min_rnr_timer
            )));
        }
        if self.rnr_retry > 7 || self.retry_count > 7 {
            return Err(Error::InvalidConfig(format!(
                "rnr_retry {} / retry_count {}: both are 3-bit (0..=7)",
                self.rnr_retry, self.retry_count
            )));
        }
        Ok(())
    }

    pub(crate) fn create_qp(&self) -> Result<QueuePair> {
        QueuePair::new_rc(
            &self.pd,
            &self.send_cq,
            &self.recv_cq,
            self.srq.as_ref(),
            self.qp,
        )
    }

    fn effective_rd_atomic(&self) -> u8 {
        let max = self.pd.device().limits().max_qp_rd_atom.min(u8::MAX as u32) as u8;
        self.rd_atomic.min(max)
    }
}

pub(crate) fn check_private_len(len: usize, max: usize, what: &str) -> Result<()> {
    if len > max {
        return Err(Error::InvalidConfig(format!(
            "{len} bytes of {what} private data: RDMA CM carries at most {max}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_data_limits() {
        assert!(check_private_len(56, MAX_CONNECT_PRIVATE_DATA, "connect").is_ok());
        let e = check_private_len(57, MAX_CONNECT_PRIVATE_DATA, "connect").unwrap_err();
        assert!(e.to_string().contains("at most 56"), "{e}");
    }
}
