//! The credits a [`Receiver`](crate::Receiver) grants its senders: one 8-byte grant word per
//! connected sender, in one small region registered for RDMA READ, which each sender reads (see
//! [`gdrx_wire::CreditWord`]).
//!
//! The rule: a sender `p` may have sent `grant_p = received_p + posted / n` messages in all,
//! where `received_p` counts the messages of `p` the receiver has handed out, `posted` is the
//! receives posted on the shared SRQ and `n` the senders granted credits. Each sender's messages
//! in flight are then at most its share of the posted receives, so together they never find the
//! SRQ empty: no RNR NAK, no retry timer. A consumer that holds buffers stops reposts, so the
//! grants stop growing and the senders wait at the source, each on its own grant: a slow rank
//! slows only its own stream. The grant only grows; a share that shrinks (a new sender joined)
//! takes effect as the older senders use up what they were granted.
//!
//! Computed from the pool's own counts at each poll rather than from the SRQ limit event: that
//! event is one-shot, needs an `ibv_modify_srq` to re-arm, and says only "low", while the grant
//! needs the count.

use std::sync::Arc;

use gdrx_verbs::{Error, Pd, ReadWords};
use gdrx_wire::CreditWord;

/// One sender's credit state.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerCredit {
    slot: usize,
    /// Its messages handed out.
    pub(crate) received: u64,
    /// The grant published.
    pub(crate) granted: u64,
}

impl PeerCredit {
    /// Credits granted and not used yet (an upper bound on its messages in flight).
    fn outstanding(&self) -> u64 {
        self.granted.saturating_sub(self.received)
    }
}

/// The grant words.
#[derive(Debug)]
pub(crate) struct CreditTable {
    words: ReadWords,
    free: Vec<usize>,
}

impl CreditTable {
    /// Room for `peers` senders.
    pub(crate) fn new(pd: &Arc<Pd>, peers: usize) -> Result<CreditTable, Error> {
        Ok(CreditTable {
            words: ReadWords::new(pd, peers.max(1))?,
            free: (0..peers).rev().collect(),
        })
    }

    /// Claims a word for a new sender, granting `initial`; `None` when every word is taken.
    pub(crate) fn claim(&mut self, initial: u32) -> Option<(PeerCredit, CreditWord)> {
        let slot = self.free.pop()?;
        self.words.store(slot, u64::from(initial));
        let (addr, rkey) = self.words.remote(slot);
        let word = CreditWord {
            addr,
            rkey,
            initial,
        };
        let credit = PeerCredit {
            slot,
            received: 0,
            granted: u64::from(initial),
        };
        Some((credit, word))
    }

    /// Gives a departed (or refused) sender's word back.
    pub(crate) fn release(&mut self, c: PeerCredit) {
        self.words.store(c.slot, 0);
        self.free.push(c.slot);
    }

    /// The first grant of a sender joining `peers`, with `posted` receives posted: its share,
    /// but no more than what the others' grants leave.
    pub(crate) fn initial<'a>(posted: u32, peers: impl Iterator<Item = &'a PeerCredit>) -> u32 {
        let (mut n, mut outstanding) = (1u64, 0u64);
        for p in peers {
            n += 1;
            outstanding += p.outstanding();
        }
        let posted = u64::from(posted);
        let share = (posted / n).min(posted.saturating_sub(outstanding));
        u32::try_from(share).unwrap_or(u32::MAX)
    }

    /// Raises the senders' grants ([`raise_grants`]) and publishes the new ones; true when a
    /// sender is left with no credit.
    pub(crate) fn raise(&self, peers: &mut [&mut PeerCredit], posted: u32) -> bool {
        raise_grants(peers, posted, |p| self.words.store(p.slot, p.granted))
    }
}

/// Raises each sender's grant towards `received + posted / n`, giving out no more than the
/// posted receives that the grants outstanding leave, and calls `raised` for each grant that
/// grew. Together the senders can then never have more messages on their way than there are
/// receives posted, even while the shares change (a sender joined, and an older one still
/// holds a larger share). Returns true when a sender is left with no credit.
fn raise_grants(
    peers: &mut [&mut PeerCredit],
    posted: u32,
    mut raised: impl FnMut(&PeerCredit),
) -> bool {
    let n = peers.len() as u64;
    if n == 0 {
        return false;
    }
    let posted = u64::from(posted);
    // At least one each while receives are posted, so that more senders than receives do not
    // stall all of them (`spare` still bounds the total).
    let share = (posted / n).max(u64::from(posted > 0));
    let held: u64 = peers.iter().map(|p| p.outstanding()).sum();
    let mut spare = posted.saturating_sub(held);
    for p in peers.iter_mut() {
        let more = (p.received + share).saturating_sub(p.granted).min(spare);
        if more > 0 {
            spare -= more;
            p.granted += more;
            raised(p);
        }
    }
    peers.iter().any(|p| p.outstanding() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(received: u64, granted: u64) -> PeerCredit {
        PeerCredit {
            slot: 0,
            received,
            granted,
        }
    }

    #[test]
    fn a_newcomer_gets_its_share_but_not_what_others_hold() {
        assert_eq!(CreditTable::initial(256, [].iter()), 256);
        // One peer holding 100 of 256: the newcomer's share is 128.
        assert_eq!(CreditTable::initial(256, [peer(0, 100)].iter()), 128);
        // One peer holding all 256 outstanding: nothing until it uses them up.
        assert_eq!(CreditTable::initial(256, [peer(10, 266)].iter()), 0);
        assert_eq!(CreditTable::initial(256, [peer(0, 200)].iter()), 56);
    }

    #[test]
    fn grants_never_add_up_to_more_than_the_receives_posted() {
        let raise = |peers: &mut [PeerCredit], posted: u32| {
            let mut refs: Vec<&mut PeerCredit> = peers.iter_mut().collect();
            let mut n = 0;
            raise_grants(&mut refs, posted, |_| n += 1);
            n
        };
        let starved = |peers: &mut [PeerCredit], posted: u32| {
            let mut refs: Vec<&mut PeerCredit> = peers.iter_mut().collect();
            raise_grants(&mut refs, posted, |_| {})
        };
        let held = |peers: &[PeerCredit]| peers.iter().map(PeerCredit::outstanding).sum::<u64>();
        // An old sender holds all 8 posted receives; a new one gets nothing until they arrive.
        let mut peers = [peer(0, 8), peer(0, 0)];
        assert_eq!(raise(&mut peers, 8), 0);
        assert_eq!((peers[0].granted, peers[1].granted), (8, 0));
        // 6 of the old sender's messages arrived and their slots came back: 8 posted, 2 held.
        peers[0].received = 6;
        assert_eq!(raise(&mut peers, 8), 2);
        assert_eq!((peers[0].granted, peers[1].granted), (10, 4));
        assert!(held(&peers) <= 8);
        // A consumer holding buffers (2 posted): nobody gets more.
        peers[1].received = 4;
        assert_eq!(raise(&mut peers, 2), 0);
        // Everything back: each gets its share of 8.
        peers[0].received = 10;
        assert_eq!(raise(&mut peers, 8), 2);
        assert_eq!((peers[0].granted, peers[1].granted), (14, 8));
        assert_eq!(held(&peers), 8);
        // Nobody to grant: nothing happens.
        assert_eq!(raise(&mut [], 8), 0);
        // More senders than receives posted: one each while they last, not a stall.
        let mut many = [peer(0, 0), peer(0, 0), peer(0, 0)];
        assert_eq!(raise(&mut many, 2), 2);
        assert_eq!(held(&many), 2);
        assert!(starved(&mut many, 2), "the third sender has no credit");
        assert!(!starved(&mut [peer(0, 4)], 8));
        assert_eq!(
            many.iter().map(|p| p.granted).collect::<Vec<_>>(),
            [1, 1, 0]
        );
    }
}
