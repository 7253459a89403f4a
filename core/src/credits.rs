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

/// What the grant rules need to know of the senders granted credits: how many they are, and the
/// credits they hold (granted, not used yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    n: u64,
    held: u64,
}

impl Tally {
    pub(crate) fn of<'a>(peers: impl Iterator<Item = &'a PeerCredit>) -> Tally {
        peers.fold(Tally::default(), |t, p| Tally {
            n: t.n + 1,
            held: t.held + p.outstanding(),
        })
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

    /// The first grant of a sender joining the senders of `others`, with `posted` receives
    /// posted: its share, but no more than what the others' grants leave.
    pub(crate) fn initial(posted: u32, others: Tally) -> u32 {
        let posted = u64::from(posted);
        let share = (posted / (others.n + 1)).min(posted.saturating_sub(others.held));
        u32::try_from(share).unwrap_or(u32::MAX)
    }

    /// Raises the grants of `peers` (whose [`Tally`] is `tally`; see [`raise_grants`]) and
    /// publishes the new ones; true when a sender is left with no credit.
    pub(crate) fn raise<'a>(
        &self,
        peers: impl Iterator<Item = &'a mut PeerCredit>,
        tally: Tally,
        posted: u32,
    ) -> bool {
        raise_grants(peers, tally, posted, |p| {
            self.words.store(p.slot, p.granted)
        })
    }
}

/// Raises each sender's grant towards `received + posted / n`, giving out no more than the
/// posted receives that the grants outstanding leave, and calls `raised` for each grant that
/// grew. Together the senders can then never have more messages on their way than there are
/// receives posted, even while the shares change (a sender joined, and an older one still
/// holds a larger share). Returns true when a sender is left with no credit.
fn raise_grants<'a>(
    peers: impl Iterator<Item = &'a mut PeerCredit>,
    tally: Tally,
    posted: u32,
    mut raised: impl FnMut(&PeerCredit),
) -> bool {
    if tally.n == 0 {
        return false;
    }
    let posted = u64::from(posted);
    // At least one each while receives are posted, so that more senders than receives do not
    // stall all of them (`spare` still bounds the total).
    let share = (posted / tally.n).max(u64::from(posted > 0));
    let mut spare = posted.saturating_sub(tally.held);
    let mut starved = false;
    for p in peers {
        let more = (p.received + share).saturating_sub(p.granted).min(spare);
        if more > 0 {
            spare -= more;
            p.granted += more;
            raised(p);
        }
        starved |= p.outstanding() == 0;
    }
    starved
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
        let initial =
            |posted, others: &[PeerCredit]| CreditTable::initial(posted, Tally::of(others.iter()));
        assert_eq!(initial(256, &[]), 256);
        // One peer holding 100 of 256: the newcomer's share is 128.
        assert_eq!(initial(256, &[peer(0, 100)]), 128);
        // One peer holding all 256 outstanding: nothing until it uses them up.
        assert_eq!(initial(256, &[peer(10, 266)]), 0);
        assert_eq!(initial(256, &[peer(0, 200)]), 56);
    }

    #[test]
    fn grants_never_add_up_to_more_than_the_receives_posted() {
        let raise = |peers: &mut [PeerCredit], posted: u32| {
            let tally = Tally::of(peers.iter());
            let mut n = 0;
            raise_grants(peers.iter_mut(), tally, posted, |_| n += 1);
            n
        };
        let starved = |peers: &mut [PeerCredit], posted: u32| {
            let tally = Tally::of(peers.iter());
            raise_grants(peers.iter_mut(), tally, posted, |_| {})
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
