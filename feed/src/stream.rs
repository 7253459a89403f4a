//! One rank's stream: the messages a feeder sends it, epoch by epoch, from a cursor on.
//!
//! Each planned sample becomes one message per part (an image and its label: two), each led by
//! a [`SampleHeader`] with the part's dtype and shape, the sample's epoch index, shard and item,
//! and `part`/`parts`. The receiving side (`gdrx.tensors` in Python) groups the parts again.
//!
//! With a batch size `B > 1` ([`StreamSpec::batch`]) the stream collates: up to `B` consecutive
//! samples of the rank's plan (never across an epoch's end, so an epoch's last batch may be
//! shorter) become one message per part, the parts stacked along a new first dimension, the way
//! torch's `default_collate` stacks them. Its header has the [`SampleHeader::BATCH`] flag,
//! `count` samples, shape `[count, ...]`, and the first sample's `index`, `shard` and `item`.
//! The rank takes a whole batch into its training loop, zero copy, and counts `count` samples
//! consumed; the batch boundaries follow from the cursor (`B`, `2B`, ... after it).

use gdrx_wire::SampleHeader;

use crate::dataset::{Dataset, DatasetError, Part, Sample};
use crate::plan::{Cursor, EpochPlan, PlanError, Planned};

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
    /// Samples per message: 0 or 1 sends each sample as it is, `B > 1` collates up to `B`
    /// consecutive samples into one batch per part (see the [module docs](self)).
    pub batch: u32,
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
            let first = self.cursor.next;
            let n = u64::from(self.spec.batch.max(1)).min(plan.len().saturating_sub(first));
            if n > 0 {
                let planned: Vec<Planned> = (first..first + n)
                    .map(|k| plan.get(k).expect("k < len"))
                    .collect();
                let samples = planned
                    .iter()
                    .map(|p| self.ds.read(p.shard, p.item))
                    .collect::<Result<Vec<_>, _>>()?;
                let batched = self.spec.batch > 1;
                let p = planned[0];
                let bad = |part: usize, why: String| StreamError::Header {
                    shard: p.shard,
                    item: p.item,
                    part,
                    why,
                };
                let item = u32::try_from(p.item)
                    .map_err(|_| bad(0, "its item number is over u32::MAX".into()))?;
                let tensors =
                    collate(samples, &planned, batched).map_err(|(part, why)| bad(part, why))?;
                let nparts = u8::try_from(tensors.len())
                    .map_err(|_| bad(0, format!("{} parts (at most 255)", tensors.len())))?;
                for (i, t) in tensors.into_iter().enumerate() {
                    let mut h =
                        SampleHeader::new(t.dtype, &t.shape).map_err(|e| bad(i, e.to_string()))?;
                    h.index = p.index;
                    h.epoch = plan.epoch();
                    h.shard = p.shard;
                    h.item = item;
                    h.part = i as u8;
                    h.parts = nparts;
                    if batched {
                        h.flags |= SampleHeader::BATCH;
                        // n <= spec.batch, a u32.
                        h.count = n as u32;
                    }
                    self.queue.push_back(Message {
                        header: h,
                        payload: t.data,
                    });
                }
                self.cursor.next += n;
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

/// The parts of `samples` as one tensor each: the sample's own parts when not `batched`, else
/// each part stacked along a new first dimension (`[n, ...]`, C order: the samples' bytes one
/// after the other). Every sample must have the same parts, each of one dtype and shape;
/// otherwise the part's number and why. `planned[k]` is where `samples[k]` comes from.
fn collate(
    samples: Vec<Sample>,
    planned: &[Planned],
    batched: bool,
) -> Result<Vec<Part>, (usize, String)> {
    let n = samples.len() as u64;
    let mut it = samples.into_iter();
    let Some(first) = it.next() else {
        return Ok(Vec::new());
    };
    if !batched {
        return Ok(first.parts);
    }
    let mut out = first.parts;
    for t in &mut out {
        t.data.reserve(t.data.len() * (n as usize - 1));
    }
    for (s, p) in it.zip(&planned[1..]) {
        let which = format!("shard {} item {}", p.shard, p.item);
        if s.parts.len() != out.len() {
            return Err((
                0,
                format!(
                    "{which} has {} parts, the batch's first {}",
                    s.parts.len(),
                    out.len()
                ),
            ));
        }
        for (i, (t, part)) in out.iter_mut().zip(s.parts).enumerate() {
            if part.dtype != t.dtype || part.shape != t.shape {
                return Err((
                    i,
                    format!(
                        "cannot batch samples of different dtypes or shapes: {which} is {} {:?}, \
                         the batch's first {} {:?} (send them one by one: batch size 1)",
                        part.dtype.name().unwrap_or("?"),
                        part.shape,
                        t.dtype.name().unwrap_or("?"),
                        t.shape
                    ),
                ));
            }
            t.data.extend_from_slice(&part.data);
        }
    }
    for t in &mut out {
        t.shape.insert(0, n);
    }
    Ok(out)
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
        dataset_of(tag, [2, 2])
    }

    /// Shards 0 (5 items) and 1 (3 items): x float32 `[width[s]]`, y uint8.
    fn dataset_of(tag: &str, width: [u64; 2]) -> (std::path::PathBuf, Dataset) {
        let dir =
            std::env::temp_dir().join(format!("gdrx-feed-stream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (s, n) in [(0u8, 5u64), (1, 3)] {
            let w = width[usize::from(s)];
            let mut x = encode_header("<f4", &[n, w]);
            for i in 0..n * w {
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
                batch: 1,
            };
            let msgs = stream(&ds, spec);
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
            batch: 1,
        };
        let whole = stream(&ds, spec);
        // Rank 1 of 3 over 8 samples: 3 per epoch, 2 messages each.
        assert_eq!(whole.len(), 12);
        let resumed = StreamSpec {
            from: Cursor { epoch: 0, next: 2 },
            ..spec
        };
        let tail = stream(&ds, resumed);
        assert_eq!(&whole[4..], &tail[..]);
        let none = StreamSpec {
            from: Cursor { epoch: 2, next: 0 },
            ..spec
        };
        assert_eq!(RankStream::new(&ds, none).unwrap().count(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn stream(ds: &Dataset, spec: StreamSpec) -> Vec<Message> {
        RankStream::new(ds, spec)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn batches_stack_consecutive_planned_samples_within_each_epoch() {
        let (dir, ds) = dataset("batch");
        for rank in 0..2 {
            let one = StreamSpec {
                rank,
                world: 2,
                seed: Some(3),
                from: Cursor::default(),
                until_epoch: 2,
                batch: 1,
            };
            let singles = stream(&ds, one);
            let batches = stream(&ds, StreamSpec { batch: 3, ..one });
            // 4 samples per rank and epoch: batches of 3 and 1, two parts each.
            let counts: Vec<(u32, u32)> = batches
                .chunks(2)
                .map(|b| (b[0].header.epoch, b[0].header.count))
                .collect();
            assert_eq!(counts, [(0, 3), (0, 1), (1, 3), (1, 1)]);
            let mut samples = singles.chunks(2);
            for b in batches.chunks(2) {
                let (x, y) = (&b[0].header, &b[1].header);
                let n = x.count as usize;
                let group: Vec<&[Message]> = samples.by_ref().take(n).collect();
                for (h, part) in [(x, 0u8), (y, 1)] {
                    assert_eq!(h.flags & SampleHeader::BATCH, SampleHeader::BATCH);
                    assert_eq!((h.count as usize, h.part, h.parts), (n, part, 2));
                    // The first sample's place in the plan and the dataset.
                    let first = &group[0][usize::from(part)].header;
                    assert_eq!((h.index, h.epoch), (first.index, first.epoch));
                    assert_eq!((h.shard, h.item), (first.shard, first.item));
                }
                assert_eq!(x.shape(), [n as u32, 2]);
                assert_eq!(y.shape(), [n as u32]);
                // The payloads are the samples' bytes one after the other, in plan order.
                for (part, msg) in b.iter().enumerate() {
                    let want: Vec<u8> =
                        group.iter().flat_map(|s| s[part].payload.clone()).collect();
                    assert_eq!(msg.payload, want);
                }
            }
            assert!(samples.next().is_none(), "every sample is in a batch");
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn batches_resume_at_the_cursor() {
        let (dir, ds) = dataset("batch-resume");
        let spec = StreamSpec {
            rank: 0,
            world: 1,
            seed: Some(5),
            from: Cursor { epoch: 0, next: 3 },
            until_epoch: 1,
            batch: 4,
        };
        let singles = stream(&ds, StreamSpec { batch: 1, ..spec });
        let batches = stream(&ds, spec);
        // 8 samples, 5 left from the cursor: a batch of 4, then 1.
        assert_eq!(batches.len(), 4);
        assert_eq!((batches[0].header.count, batches[2].header.count), (4, 1));
        let xs: Vec<u8> = singles
            .iter()
            .step_by(2)
            .flat_map(|m| m.payload.clone())
            .collect();
        let got: Vec<u8> = batches
            .iter()
            .step_by(2)
            .flat_map(|m| m.payload.clone())
            .collect();
        assert_eq!(got, xs);
        assert_eq!(batches[0].header.index, singles[0].header.index);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_batch_of_samples_of_different_shapes_is_refused_naming_them() {
        let (dir, ds) = dataset_of("batch-shapes", [2, 3]);
        let spec = StreamSpec {
            rank: 0,
            world: 1,
            seed: None,
            from: Cursor::default(),
            until_epoch: 1,
            batch: 8,
        };
        let err = RankStream::new(&ds, spec)
            .unwrap()
            .find_map(Result::err)
            .expect("shard 1's x is [3], shard 0's [2]");
        let msg = err.to_string();
        assert!(
            msg.contains("shard 0 item 0 part 0")
                && msg.contains("shard 1 item 0 is float32 [3]")
                && msg.contains("batch size 1"),
            "{msg}"
        );
        // One by one they go.
        assert_eq!(stream(&ds, StreamSpec { batch: 1, ..spec }).len(), 16);
        let _ = std::fs::remove_dir_all(dir);
    }
}
