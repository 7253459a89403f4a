//! Feeding one rank over RDMA: a [`RankStream`] sent with gdrx-core's [`Sender`] (feature
//! `rdma`). The `gdrx-feed` binary and Python's `gdrx.Feeder` both run [`feed`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gdrx_core::sender::{CreditStats, SenderError};
use gdrx_core::Sender;
use gdrx_wire::{SampleHeader, END_OF_STREAM};

use crate::dataset::Dataset;
use crate::plan::Cursor;
use crate::stream::{RankStream, StreamError, StreamSpec};

/// Why feeding stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The stream could not be read.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// Connecting or sending failed (the rank went away, refused the feeder, ...).
    #[error("rank {rank} at {to}: {source}")]
    Send {
        /// The rank.
        rank: u32,
        /// Its address.
        to: SocketAddr,
        /// What failed.
        #[source]
        source: Box<SenderError>,
    },
    /// The rank took no message within the timeout.
    #[error(
        "rank {rank} took no message for {secs:.1} s (epoch {epoch}, index {index}): is its \
         consumer holding every buffer, or has it stopped?"
    )]
    Stalled {
        /// The rank.
        rank: u32,
        /// The timeout.
        secs: f64,
        /// The epoch of the message that waited.
        epoch: u32,
        /// Its index.
        index: u64,
    },
    /// `keep_going` said stop.
    #[error("stopped at epoch {} position {}", .0.epoch, .0.next)]
    Stopped(Cursor),
    /// The rank disconnected after it was sent its whole stream, before it said it was done
    /// with it (it died, or was restarted, holding samples it had not consumed).
    #[error(
        "rank {rank} at {to} disconnected before it was done with its stream (it had been sent \
         everything up to epoch {} position {}): it may have died holding unconsumed samples; \
         it resumes from the cursor it publishes when it comes back",
        .cursor.epoch, .cursor.next
    )]
    Gone {
        /// The rank.
        rank: u32,
        /// Its address.
        to: SocketAddr,
        /// Where the stream it was sent ended.
        cursor: Cursor,
    },
}

/// How to reach the rank.
#[derive(Debug, Clone)]
pub struct FeedOptions {
    /// RDMA device (`None`: the route's).
    pub device: Option<String>,
    /// Bound on connecting and on each message's wait for the rank.
    pub timeout: Duration,
    /// Use the credits the rank grants (on by default in gdrx-feed and `gdrx.Feeder`):
    /// never more messages in flight than the rank has buffers posted, so a slow rank makes
    /// the feeder wait at the source instead of in RNR NAK retries.
    pub credits: bool,
}

/// What a feed sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedReport {
    /// Messages (sample parts) sent.
    pub messages: u64,
    /// Bytes sent, headers included.
    pub bytes: u64,
    /// Seconds from the first send to the last completion.
    pub secs: f64,
    /// Where the stream ended.
    pub cursor: Cursor,
    /// What the rank's credits did (`None`: off, or the rank grants none).
    pub credits: Option<CreditStats>,
}

/// Connects to the rank at `to` (tag = the rank) and sends its stream, then the end-of-stream
/// message ([`END_OF_STREAM`]); `keep_going` is asked between messages (every 64) and stops the
/// feed when it returns false.
///
/// With `until_done`, the feed then keeps the connection until the rank is done with the
/// stream: the rank may still hold, unconsumed, much of what it was sent, and die before it
/// consumes it. `until_done` is asked about every 250 ms (and `keep_going` with it) and ends
/// the feed when it returns true (the rank said it is done, or it came back under a new
/// identity); a rank that disconnects before that is [`FeedError::Gone`].
///
/// # Errors
/// [`FeedError`].
pub fn feed(
    ds: &Dataset,
    spec: StreamSpec,
    to: SocketAddr,
    opts: &FeedOptions,
    mut keep_going: impl FnMut() -> bool,
    mut until_done: Option<&mut dyn FnMut() -> bool>,
) -> Result<FeedReport, FeedError> {
    let send_err = |source| FeedError::Send {
        rank: spec.rank,
        to,
        source: Box::new(source),
    };
    let mut stream = RankStream::new(ds, spec)?;
    let max_msg = ds
        .max_part_bytes()
        .checked_mul(u64::from(spec.batch.max(1)))
        .and_then(|b| u32::try_from(b + SampleHeader::LEN as u64).ok())
        .unwrap_or(u32::MAX);
    let mut b = Sender::builder(to, max_msg)
        .tag(spec.rank)
        .timeout(opts.timeout)
        .credits(opts.credits);
    if let Some(d) = &opts.device {
        b = b.device(d);
    }
    let mut tx = b.connect().map_err(send_err)?;
    let (mut messages, mut bytes) = (0u64, 0u64);
    let t0 = Instant::now();
    while let Some(msg) = stream.next() {
        let msg = msg?;
        if messages % 64 == 0 && !keep_going() {
            return Err(FeedError::Stopped(stream.cursor()));
        }
        let sent = tx
            .send_parts(
                &[&msg.header.encode(), &msg.payload],
                None,
                Some(opts.timeout),
            )
            .map_err(send_err)?;
        if !sent {
            return Err(FeedError::Stalled {
                rank: spec.rank,
                secs: opts.timeout.as_secs_f64(),
                epoch: msg.header.epoch,
                index: msg.header.index,
            });
        }
        messages += 1;
        bytes += (SampleHeader::LEN + msg.payload.len()) as u64;
    }
    // The end of the stream, so that the rank tells it from a feeder that died.
    let stalled_at_end = |c: Cursor| FeedError::Stalled {
        rank: spec.rank,
        secs: opts.timeout.as_secs_f64(),
        epoch: c.epoch,
        index: c.next,
    };
    if !tx
        .send(&[], Some(END_OF_STREAM), Some(opts.timeout))
        .map_err(send_err)?
    {
        return Err(stalled_at_end(stream.cursor()));
    }
    if let Some(done) = until_done.as_mut() {
        // Every message delivered first: then only the rank's own end remains to wait for.
        if !tx.flush(Some(opts.timeout)).map_err(send_err)? {
            return Err(stalled_at_end(stream.cursor()));
        }
        while !done() {
            if tx
                .wait_disconnected(Duration::from_millis(250))
                .map_err(send_err)?
            {
                // A rank that finished and closed its receiver says so before it closes.
                if done() {
                    break;
                }
                return Err(FeedError::Gone {
                    rank: spec.rank,
                    to,
                    cursor: stream.cursor(),
                });
            }
            if !keep_going() {
                return Err(FeedError::Stopped(stream.cursor()));
            }
        }
    }
    let credits = tx.credits();
    tx.close(Some(opts.timeout)).map_err(send_err)?;
    Ok(FeedReport {
        messages,
        bytes,
        secs: t0.elapsed().as_secs_f64(),
        cursor: stream.cursor(),
        credits,
    })
}
