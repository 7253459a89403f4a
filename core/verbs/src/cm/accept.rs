//! Admitting connect requests: a server decides about each request from its private data (an
//! [`Admission`]: accept with a reply, or refuse with a reply and a reason), and a [`Gather`]
//! collects the connections of a run until it is complete, a deadline passes, or an idle check
//! fails (the sender process exited, say).
//!
//! The decision is the server's protocol (gdrx's `Hello`, gdrx-bench's run descriptor); this
//! module is the loop around it, written once: requests are taken from the listener, each is
//! decided and executed, refusals are counted with their reasons, and waiting never outlasts the
//! deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

use super::{ConnectRequest, Connection, ConnectionSpec, Listener, MAX_REJECT_PRIVATE_DATA};

/// What a server decided about one connect request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<P> {
    /// Accept, sending `reply` as the accept's private data; `peer` is what the server keeps
    /// about the connection (its decoded request, its tag...).
    Accept {
        /// The accept's private data (at most 196 bytes).
        reply: Vec<u8>,
        /// The server's record of the peer.
        peer: P,
    },
    /// Refuse, sending `reply` as the reject's private data (at most 148 bytes; a sender
    /// shows it in its connection error, so it should say why).
    Refuse {
        /// The reject's private data.
        reply: Vec<u8>,
        /// Why, for the server's own log and events.
        reason: String,
    },
}

impl<P> Admission<P> {
    /// A refusal whose reply is `prefix: reason`, cut to what a reject carries: the sender reads
    /// the same reason the server logs.
    pub fn refuse(prefix: &str, reason: impl Into<String>) -> Admission<P> {
        let reason = reason.into();
        let mut reply = format!("{prefix}: {reason}").into_bytes();
        if reply.len() > MAX_REJECT_PRIVATE_DATA {
            let mut end = MAX_REJECT_PRIVATE_DATA;
            // Cut on a character boundary so the sender can print what arrives.
            while end > 0 && (reply[end] & 0xC0) == 0x80 {
                end -= 1;
            }
            reply.truncate(end);
        }
        Admission::Refuse { reply, reason }
    }
}

/// A refused connect request: who asked, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The peer's address, when known.
    pub addr: Option<SocketAddr>,
    /// The reason given by the [`Admission`].
    pub reason: String,
}

/// The outcome of [`ConnectRequest::admit`].
#[derive(Debug)]
pub enum Admitted<P> {
    /// The connection is established.
    Accepted(Connection, P),
    /// The request was rejected.
    Refused(Refusal),
}

impl ConnectRequest {
    /// Rejects the request with the reply `prefix: reason` (see [`Admission::refuse`]).
    ///
    /// # Errors
    /// Those of [`ConnectRequest::reject`].
    pub fn refuse(self, prefix: &str, reason: impl Into<String>) -> Result<Refusal> {
        match Admission::<()>::refuse(prefix, reason) {
            Admission::Refuse { reply, reason } => self.reject_saying(&reply, reason),
            Admission::Accept { .. } => unreachable!("Admission::refuse refuses"),
        }
    }

    fn reject_saying(self, reply: &[u8], reason: String) -> Result<Refusal> {
        let addr = self.peer_addr();
        tracing::warn!(?addr, "refusing a connection request: {reason}");
        self.reject(reply)?;
        Ok(Refusal { addr, reason })
    }

    /// Executes `admission`: accepts with its reply (building the QP from `spec`) or rejects
    /// with its reply.
    ///
    /// # Errors
    /// Those of [`ConnectRequest::accept`] and [`ConnectRequest::reject`].
    pub fn admit<P>(self, spec: &ConnectionSpec, admission: Admission<P>) -> Result<Admitted<P>> {
        match admission {
            Admission::Accept { reply, peer } => {
                Ok(Admitted::Accepted(self.accept(spec, &reply)?, peer))
            }
            Admission::Refuse { reply, reason } => {
                Ok(Admitted::Refused(self.reject_saying(&reply, reason)?))
            }
        }
    }
}

/// The connections of a run (or a job) as they are admitted: the accepted ones with the
/// server's record of each, and the refusals.
#[derive(Debug)]
pub struct Gather<P> {
    /// Accepted connections, in the order they were accepted.
    pub accepted: Vec<(Connection, P)>,
    /// Refused requests, in order.
    pub refused: Vec<Refusal>,
}

impl<P> Default for Gather<P> {
    fn default() -> Self {
        Gather {
            accepted: Vec::new(),
            refused: Vec::new(),
        }
    }
}

/// How long [`Gather::collect`] waits for one request before calling its idle check.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

impl<P> Gather<P> {
    /// An empty gathering.
    pub fn new() -> Gather<P> {
        Gather::default()
    }

    /// Requests decided so far, accepted or refused.
    pub fn decided(&self) -> usize {
        self.accepted.len() + self.refused.len()
    }

    /// Executes `admission` for `req` and records the outcome.
    ///
    /// # Errors
    /// Those of [`ConnectRequest::admit`].
    pub fn admit(
        &mut self,
        req: ConnectRequest,
        spec: &ConnectionSpec,
        admission: Admission<P>,
    ) -> Result<()> {
        match req.admit(spec, admission)? {
            Admitted::Accepted(conn, peer) => self.accepted.push((conn, peer)),
            Admitted::Refused(r) => self.refused.push(r),
        }
        Ok(())
    }

    /// Takes requests from `listener`, decides each with `decide` (which sees what was gathered
    /// so far) and executes the decision, until `done` says the gathering is complete. While no
    /// request arrives it calls `idle` every [`IDLE_TICK`]; an error from `idle` or `decide`
    /// ends the gathering with that error.
    ///
    /// # Errors
    /// [`Error::Timeout`] (converted into `E`) when `deadline` passes first; RDMA CM errors
    /// taking, accepting or rejecting requests; the errors of `decide` and `idle`.
    pub fn collect<E: From<Error>>(
        &mut self,
        listener: &mut Listener,
        spec: &ConnectionSpec,
        deadline: Instant,
        mut done: impl FnMut(&Gather<P>) -> bool,
        mut decide: impl FnMut(&ConnectRequest, &Gather<P>) -> std::result::Result<Admission<P>, E>,
        mut idle: impl FnMut(&Gather<P>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let start = Instant::now();
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout {
                    what: "the connection requests of a run",
                    after: start.elapsed(),
                }
                .into());
            }
            match listener.next_request(Some(left.min(IDLE_TICK)))? {
                Some(req) => {
                    let admission = decide(&req, self)?;
                    self.admit(req, spec, admission)?;
                }
                None => idle(self)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reply_says_why_and_fits_a_reject() {
        let a: Admission<()> = Admission::refuse("gdrx", "max_peers reached");
        assert_eq!(
            a,
            Admission::Refuse {
                reply: b"gdrx: max_peers reached".to_vec(),
                reason: "max_peers reached".into()
            }
        );
        // A long reason is cut to 148 bytes, on a character boundary.
        let long = "é".repeat(200);
        let Admission::<()>::Refuse { reply, reason } = Admission::refuse("gdrx", long.clone())
        else {
            unreachable!()
        };
        assert_eq!(reason, long, "the server keeps the whole reason");
        assert!(reply.len() <= MAX_REJECT_PRIVATE_DATA, "{}", reply.len());
        assert!(reply.len() >= MAX_REJECT_PRIVATE_DATA - 1);
        let text = String::from_utf8(reply).expect("cut on a character boundary");
        assert!(text.starts_with("gdrx: éé"));
    }

    #[test]
    fn an_empty_gathering_has_decided_nothing() {
        let g: Gather<u32> = Gather::new();
        assert_eq!(g.decided(), 0);
        assert!(g.accepted.is_empty() && g.refused.is_empty());
    }
}
