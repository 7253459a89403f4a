//! The epoch plan: which rank gets which sample, in which order.
//!
//! The samples of a dataset are numbered `0..N` shard by shard (shard 0's items, then shard
//! 1's, ...). Epoch `e` visits them in the order of a permutation `P(seed, e)` of `0..N`:
//! position `p` of the epoch holds sample `P(p)`. Rank `r` of `W` takes the positions `r`,
//! `r + W`, `r + 2W`, ..., so every sample is visited exactly once per epoch across the ranks,
//! and ranks differ by at most one sample (no padding, no duplicates). A rank's progress is one
//! number, its [`Cursor`]: the count of its samples consumed; a restarted rank resumes there.
//!
//! The permutation is a keyed Feistel network over the next power of four at or above `N`, with
//! cycle walking, so `P(p)` is computed in O(1) for any `p` (a resume costs nothing, and no
//! table of `N` entries is kept). Its keys come from SplitMix64 of the seed and the epoch. The
//! construction is fixed here and covered by a test of known values: the order of a seed is the
//! same on every machine, restart and release.

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// World size 0, or a rank outside it.
    #[error("rank {rank} is not in a world of {world} ranks")]
    Rank {
        /// The rank.
        rank: u32,
        /// The world size.
        world: u32,
    },
    /// More samples than a plan can number.
    #[error("{0} samples: more than 2^62")]
    TooMany(u128),
}

/// Where a rank is in an epoch: the next of its samples to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cursor {
    /// The epoch.
    pub epoch: u32,
    /// How many of the rank's samples of the epoch were consumed.
    pub next: u64,
}

/// One planned sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// Its position in the epoch's global order (the `index` of its sample header): unique per
    /// epoch, across ranks.
    pub index: u64,
    /// The shard it lies in.
    pub shard: u32,
    /// Its position in the shard.
    pub item: u64,
    /// Its number in the dataset (`0..N`).
    pub sample: u64,
}

/// One rank's plan for one epoch; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct EpochPlan {
    /// `starts[s]`: the number of shard `s`'s first sample; one more entry holds `N`.
    starts: Vec<u64>,
    perm: Option<Feistel>,
    epoch: u32,
    world: u32,
    rank: u32,
}

impl EpochPlan {
    /// The plan of `rank` (of `world`) in `epoch`, over shards of `shard_sizes` samples,
    /// shuffled with `seed` (`None`: the dataset's own order).
    ///
    /// # Errors
    /// [`PlanError`] for a rank outside the world, or more than 2^62 samples.
    pub fn new(
        shard_sizes: &[u64],
        seed: Option<u64>,
        epoch: u32,
        world: u32,
        rank: u32,
    ) -> Result<EpochPlan, PlanError> {
        if rank >= world {
            return Err(PlanError::Rank { rank, world });
        }
        let total: u128 = shard_sizes.iter().map(|&s| u128::from(s)).sum();
        if total > 1 << 62 {
            return Err(PlanError::TooMany(total));
        }
        let mut starts = Vec::with_capacity(shard_sizes.len() + 1);
        let mut at = 0u64;
        for &s in shard_sizes {
            starts.push(at);
            at += s;
        }
        starts.push(at);
        Ok(EpochPlan {
            perm: seed.map(|s| Feistel::new(at, s, epoch)),
            starts,
            epoch,
            world,
            rank,
        })
    }

    /// The epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Samples in the dataset.
    pub fn total(&self) -> u64 {
        *self.starts.last().expect("starts holds N")
    }

    /// Samples this rank gets this epoch.
    pub fn len(&self) -> u64 {
        let (n, w, r) = (self.total(), u64::from(self.world), u64::from(self.rank));
        if n <= r {
            0
        } else {
            (n - r).div_ceil(w)
        }
    }

    /// Whether this rank gets no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rank's `k`-th sample of the epoch, if it has that many.
    pub fn get(&self, k: u64) -> Option<Planned> {
        if k >= self.len() {
            return None;
        }
        let index = u64::from(self.rank) + k * u64::from(self.world);
        let sample = self.perm.as_ref().map_or(index, |p| p.apply(index));
        // The last shard starting at or before `sample` (empty shards are passed over).
        let shard = self.starts.partition_point(|&s| s <= sample) - 1;
        Some(Planned {
            index,
            shard: shard as u32,
            item: sample - self.starts[shard],
            sample,
        })
    }

    /// The rank's samples from `cursor.next` on (the cursor's epoch must be this plan's).
    pub fn from_cursor(&self, cursor: Cursor) -> impl Iterator<Item = Planned> + '_ {
        debug_assert_eq!(cursor.epoch, self.epoch);
        (cursor.next..self.len()).map(move |k| self.get(k).expect("k < len"))
    }
}

/// The feeder (of `feeders`) that serves `rank`.
pub fn feeder_of(rank: u32, feeders: u32) -> u32 {
    rank % feeders.max(1)
}

/// The ranks (of `world`) that feeder `feeder` (of `feeders`) serves.
pub fn ranks_of(feeder: u32, feeders: u32, world: u32) -> impl Iterator<Item = u32> {
    (0..world).filter(move |&r| feeder_of(r, feeders) == feeder)
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A permutation of `0..n`: a 4-round balanced Feistel network on `2 * half` bits, walked
/// until it lands below `n`.
#[derive(Debug, Clone)]
struct Feistel {
    n: u64,
    half: u32,
    keys: [u64; 4],
}

impl Feistel {
    fn new(n: u64, seed: u64, epoch: u32) -> Feistel {
        // The smallest even bit count with 2^bits >= n (at least 2): 2^bits < 4n, so a walk
        // takes fewer than 4 steps on average.
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(2);
        let half = bits.div_ceil(2);
        let base = splitmix64(seed ^ splitmix64(u64::from(epoch) ^ 0x6764_7278_6665_6564));
        let mut keys = [0u64; 4];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = splitmix64(base.wrapping_add(i as u64));
        }
        Feistel { n, half, keys }
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half) - 1;
        let (mut l, mut r) = (x >> self.half, x & mask);
        for k in self.keys {
            let f = splitmix64(r ^ k) & mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half) | r
    }

    fn apply(&self, p: u64) -> u64 {
        debug_assert!(p < self.n);
        let mut y = self.encrypt(p);
        while y >= self.n {
            y = self.encrypt(y);
        }
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(plan: &EpochPlan) -> Vec<Planned> {
        plan.from_cursor(Cursor {
            epoch: plan.epoch(),
            next: 0,
        })
        .collect()
    }

    #[test]
    fn every_sample_exactly_once_per_epoch_across_ranks() {
        let shards = [7, 0, 13, 1, 30];
        for world in [1, 2, 3, 8, 60] {
            for seed in [None, Some(1), Some(42)] {
                let mut seen = vec![0u32; 51];
                let mut indexes = vec![];
                for rank in 0..world {
                    let p = EpochPlan::new(&shards, seed, 3, world, rank).unwrap();
                    let lens = p.len();
                    assert!(lens == 51 / u64::from(world) || lens == 51 / u64::from(world) + 1);
                    for s in all(&p) {
                        seen[s.sample as usize] += 1;
                        indexes.push(s.index);
                        // (shard, item) names the sample.
                        let start: u64 = shards[..s.shard as usize].iter().sum();
                        assert!(s.item < shards[s.shard as usize]);
                        assert_eq!(start + s.item, s.sample);
                    }
                }
                assert!(
                    seen.iter().all(|&c| c == 1),
                    "world {world} seed {seed:?}: {seen:?}"
                );
                indexes.sort_unstable();
                assert_eq!(indexes, (0..51).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn the_order_depends_on_seed_and_epoch_and_nothing_else() {
        let a = all(&EpochPlan::new(&[1000], Some(9), 0, 4, 1).unwrap());
        let b = all(&EpochPlan::new(&[1000], Some(9), 0, 4, 1).unwrap());
        let c = all(&EpochPlan::new(&[1000], Some(9), 1, 4, 1).unwrap());
        let d = all(&EpochPlan::new(&[1000], Some(10), 0, 4, 1).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        // Shuffled: far from the identity.
        let in_place = a.iter().filter(|s| s.sample == s.index).count();
        assert!(in_place < 20, "{in_place} of 250 in place");
        // Unshuffled: the dataset's order, strided by rank.
        let u = all(&EpochPlan::new(&[1000], None, 0, 4, 1).unwrap());
        assert!(u
            .iter()
            .enumerate()
            .all(|(k, s)| s.sample == 1 + 4 * k as u64));
    }

    #[test]
    fn the_permutation_is_pinned() {
        // Known values: a change of the construction changes every user's order; it must be a
        // deliberate, versioned change.
        let p = EpochPlan::new(&[10, 10], Some(2026), 1, 1, 0).unwrap();
        let order: Vec<u64> = all(&p).iter().map(|s| s.sample).collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(order, PINNED);
    }

    const PINNED: [u64; 20] = [
        18, 4, 3, 0, 8, 15, 6, 13, 10, 7, 16, 17, 14, 5, 19, 1, 11, 12, 9, 2,
    ];

    #[test]
    fn a_cursor_resumes_where_it_stopped() {
        let p = EpochPlan::new(&[100, 57], Some(5), 2, 3, 2).unwrap();
        let whole = all(&p);
        let tail: Vec<_> = p.from_cursor(Cursor { epoch: 2, next: 20 }).collect();
        assert_eq!(&whole[20..], &tail[..]);
        assert_eq!(
            p.from_cursor(Cursor {
                epoch: 2,
                next: p.len()
            })
            .count(),
            0
        );
        assert_eq!(p.get(p.len()), None);
    }

    #[test]
    fn edge_cases() {
        assert_eq!(
            EpochPlan::new(&[5], None, 0, 2, 2).unwrap_err(),
            PlanError::Rank { rank: 2, world: 2 }
        );
        assert!(EpochPlan::new(&[5], None, 0, 0, 0).is_err());
        assert!(EpochPlan::new(&[u64::MAX, 1], None, 0, 1, 0).is_err());
        let empty = EpochPlan::new(&[], Some(1), 0, 2, 0).unwrap();
        assert!(empty.is_empty() && empty.get(0).is_none());
        // More ranks than samples: the last ranks get none.
        let p = EpochPlan::new(&[3], Some(1), 0, 5, 4).unwrap();
        assert!(p.is_empty());
        let one = EpochPlan::new(&[1], Some(1), 0, 1, 0).unwrap();
        assert_eq!(all(&one)[0].sample, 0);
    }

    #[test]
    fn feeders_split_the_ranks() {
        let mut all: Vec<u32> = (0..3).flat_map(|f| ranks_of(f, 3, 8)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(ranks_of(1, 3, 8).collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(feeder_of(5, 0), 0, "0 feeders reads as 1");
    }
}
