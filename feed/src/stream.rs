//! One rank's stream: the messages a feeder sends it, epoch by epoch, from a cursor on.
//!
//! Each planned sample becomes one message per part (an image and its label: two), each led by
//! a [`SampleHeader`] with the part's dtype and shape, the sample's epoch index, shard and item,
//! and `part`/`parts`. The receiving side (`gdrx.tensors` in Python) groups the parts again.

use gdrx_wire::SampleHeader;

use crate::dataset::{Dataset, DatasetError};
use crate::plan::{Cursor, EpochPlan, PlanError};

/// Why a stream stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The plan could not be made.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// A sample could not be read.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// A part that a sample header cannot describe.
    #[error("shard {shard} item {item} part {part}: {why}")]
    Header {
        /// The shard.
        shard: u32,
        /// The item.
        item: u64,
        /// The part.
        part: usize,
        /// Why.
        why: String,
    },
}

/// One message of a stream: a header and the part's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sample header.
    pub header: SampleHeader,
    /// The part's bytes.
    pub payload: Vec<u8>,
}

/// Where a stream starts and what it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSpec {
    /// The rank.
    pub rank: u32,
    /// Ranks in the job.
    pub world: u32,
    /// Shuffle seed (`None`: the dataset's order).
    pub seed: Option<u64>,
    /// The first epoch and the rank's position in it.
    pub from: Cursor,
    /// The epoch after the last one.
    pub until_epoch: u32,
}

/// The messages of one rank from `spec.from` to the end of epoch `spec.until_epoch - 1`.
#[derive(Debug)]
pub struct RankStream<'a> {
    ds: &'a Dataset,
    spec: StreamSpec,
    sizes: Vec<u64>,
    plan: Option<EpochPlan>,
    cursor: Cursor,
    queue: std::collections::VecDeque<Message>,
}

impl<'a> RankStream<'a> {
    /// A stream over `ds`.
    ///
    /// # Errors
    /// [`StreamError::Plan`] for a rank outside the world.
    pub fn new(ds: &'a Dataset, spec: StreamSpec) -> Result<RankStream<'a>, StreamError> {
        let sizes = ds.shard_sizes();
        let plan = EpochPlan::new(&sizes, spec.seed, spec.from.epoch, spec.world, spec.rank)?;
        Ok(RankStream {
            ds,
            spec,
            sizes,
            plan: (spec.from.epoch < spec.until_epoch).then_some(plan),
            cursor: spec.from,
            queue: Default::default(),
        })
    }

    /// Where the stream is: the next sample to be read (messages of the current sample may
    /// still be queued).
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn refill(&mut self) -> Result<bool, StreamError> {
        loop {
            let Some(plan) = &self.plan else {
                return Ok(false);
            };
            if let Some(p) = plan.get(self.cursor.next) {
                let sample = self.ds.read(p.shard, p.item)?;
                let parts = sample.parts.len();
                let bad = |part: usize, why: String| StreamError::Header {
                    shard: p.shard,
                    item: p.item,
                    part,
                    why,
                };
                let item = u32::try_from(p.item)
                    .map_err(|_| bad(0, "its item number is over u32::MAX".into()))?;
                let nparts = u8::try_from(parts)
                    .map_err(|_| bad(0, format!("{parts} parts (at most 255)")))?;
                for (i, part) in sample.parts.into_iter().enumerate() {
                    let mut h = SampleHeader::new(part.dtype, &part.shape)
                        .map_err(|e| bad(i, e.to_string()))?;
                    h.index = p.index;
                    h.epoch = plan.epoch();
                    h.shard = p.shard;
                    h.item = item;
                    h.part = i as u8;
                    h.parts = nparts;
                    self.queue.push_back(Message {
                        header: h,
                        payload: part.data,
                    });
                }
                self.cursor.next += 1;
                return Ok(true);
            }
            // The epoch is done: the next one, or the end.
            let epoch = self.cursor.epoch + 1;
            self.cursor = Cursor { epoch, next: 0 };
            self.plan = if epoch < self.spec.until_epoch {
                Some(EpochPlan::new(
                    &self.sizes,
                    self.spec.seed,
                    epoch,
                    self.spec.world,
                    self.spec.rank,
                )?)
            } else {
                None
            };
        }
    }
}

impl Iterator for RankStream<'_> {
    type Item = Result<Message, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.queue.is_empty() {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
        self.queue.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npy::encode_header;

    fn dataset(tag: &str) -> (std::path::PathBuf, Dataset) {
        let dir =
            std::env::temp_dir().join(format!("gdrx-feed-stream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (s, n) in [(0u8, 5u64), (1, 3)] {
            let mut x = encode_header("<f4", &[n, 2]);
            for i in 0..n * 2 {
                x.extend_from_slice(&((u64::from(s) * 100 + i) as f32).to_le_bytes());
            }
            std::fs::write(dir.join(format!("{s}.x.npy")), x).unwrap();
            let mut y = encode_header("|u1", &[n]);
            y.extend((0..n).map(|i| s * 10 + i as u8));
            std::fs::write(dir.join(format!("{s}.y.npy")), y).unwrap();
        }
        let ds = Dataset::open(&dir).unwrap();
        (dir, ds)
    }

    #[test]
    fn two_epochs_of_two_ranks_cover_each_sample_once_per_epoch() {
        let (dir, ds) = dataset("cover");
        let mut seen = std::collections::HashMap::new();
        for rank in 0..2 {
            let spec = StreamSpec {
                rank,
                world: 2,
                seed: Some(3),
                from: Cursor::default(),
                until_epoch: 2,
            };
            let msgs: Vec<Message> = RankStream::new(&ds, spec)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for pair in msgs.chunks(2) {
                let (x, y) = (&pair[0], &pair[1]);
                assert_eq!((x.header.part, y.header.part, x.header.parts), (0, 1, 2));
                assert_eq!(x.header.index, y.header.index);
                assert_eq!(x.header.shape(), [2]);
                assert_eq!(x.header.dtype.name(), Some("float32"));
                assert_eq!(y.header.shape(), [] as [u32; 0]);
                // The payload is the sample the header names.
                let (s, i) = (x.header.shard, u64::from(x.header.item));
                let first = (u64::from(s) * 100 + 2 * i) as f32;
                assert_eq!(x.payload[..4], first.to_le_bytes());
                assert_eq!(y.payload, [s as u8 * 10 + i as u8]);
                *seen.entry((x.header.epoch, s, i)).or_insert(0) += 1;
            }
        }
        assert_eq!(seen.len(), 16, "8 samples, 2 epochs");
        assert!(seen.values().all(|&c| c == 1));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_stream_resumes_at_its_cursor() {
        let (dir, ds) = dataset("resume");
        let spec = StreamSpec {
            rank: 1,
            world: 3,
            seed: Some(8),
            from: Cursor::default(),
            until_epoch: 2,
        };
        let whole: Vec<Message> = RankStream::new(&ds, spec)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // Rank 1 of 3 over 8 samples: 3 per epoch, 2 messages each.
        assert_eq!(whole.len(), 12);
        let resumed = StreamSpec {
            from: Cursor { epoch: 0, next: 2 },
            ..spec
        };
        let tail: Vec<Message> = RankStream::new(&ds, resumed)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(&whole[4..], &tail[..]);
        let none = StreamSpec {
            from: Cursor { epoch: 2, next: 0 },
            ..spec
        };
        assert_eq!(RankStream::new(&ds, none).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }
}
