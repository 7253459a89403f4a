//! [`Batch`]: what one poll of a pool hands out.

use std::fmt;

/// The events of one poll, in completion order; an iterator that takes them out of the pool's
/// buffer (no allocation per poll). Whatever is not taken is dropped with the batch: a dropped
/// lease goes back to its pool, so nothing leaks, but its message is gone.
pub struct Batch<'a, T> {
    events: std::vec::Drain<'a, T>,
}

impl<'a, T> Batch<'a, T> {
    /// Hands out everything in `events`, leaving it empty (and its capacity in place).
    pub fn drain(events: &'a mut Vec<T>) -> Batch<'a, T> {
        Batch {
            events: events.drain(..),
        }
    }

    /// Events not taken yet.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.events.len() == 0
    }

    /// The events not taken yet, to look at before taking them.
    pub fn as_slice(&self) -> &[T] {
        self.events.as_slice()
    }
}

impl<T> Iterator for Batch<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.events.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

impl<T> ExactSizeIterator for Batch<'_, T> {}

impl<T: fmt::Debug> fmt::Debug for Batch<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.events.as_slice()).finish()
    }
}

/// Where a poller gathers the events of its next [`Batch`], with the error that came after
/// some of them: that error waits for the next call, so the events go out first and none is
/// dropped. [`crate::Pool`] and gdrx-gpu's `GpuPool` poll through one.
#[derive(Debug)]
pub struct Outbox<T, E> {
    events: Vec<T>,
    deferred: Option<E>,
}

impl<T, E> Outbox<T, E> {
    /// Room for `n` events before it allocates.
    pub fn with_capacity(n: usize) -> Outbox<T, E> {
        Outbox {
            events: Vec::with_capacity(n),
            deferred: None,
        }
    }

    /// Adds an event to the next batch.
    pub fn push(&mut self, event: T) {
        self.events.push(event);
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The error kept by an earlier [`Outbox::settle`], if any: a poll starts with this.
    ///
    /// # Errors
    /// That error.
    pub fn take_deferred(&mut self) -> Result<(), E> {
        self.deferred.take().map_or(Ok(()), Err)
    }

    /// Settles a gathering step: an error with no event waiting is returned now; an error
    /// after events is kept for the next call. Returns the events waiting.
    ///
    /// # Errors
    /// `r`'s error, when no event waits.
    pub fn settle(&mut self, r: Result<usize, E>) -> Result<usize, E> {
        if let Err(e) = r {
            if self.events.is_empty() {
                return Err(e);
            }
            self.deferred = Some(e);
        }
        Ok(self.events.len())
    }

    /// Hands out everything waiting.
    pub fn batch(&mut self) -> Batch<'_, T> {
        Batch::drain(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_in_order_and_leaves_the_buffer_empty() {
        let mut v = vec![1, 2, 3];
        let cap = v.capacity();
        let mut b = Batch::drain(&mut v);
        assert_eq!(b.len(), 3);
        assert_eq!(b.next(), Some(1));
        assert_eq!(b.len(), 2);
        assert_eq!(format!("{b:?}"), "[2, 3]");
        drop(b);
        assert!(v.is_empty());
        assert_eq!(v.capacity(), cap);
    }

    #[test]
    fn what_is_not_taken_is_dropped_with_the_batch() {
        use std::rc::Rc;
        let token = Rc::new(());
        let mut v = vec![Rc::clone(&token), Rc::clone(&token)];
        let mut b = Batch::drain(&mut v);
        let first = b.next().unwrap();
        assert!(!b.is_empty());
        drop(b);
        assert_eq!(Rc::strong_count(&token), 2);
        drop(first);
        assert_eq!(Rc::strong_count(&token), 1);
    }

    #[test]
    fn an_error_after_events_waits_for_the_next_call() {
        let mut o: Outbox<u32, &str> = Outbox::with_capacity(4);
        // Nothing gathered: the error is returned at once.
        assert_eq!(o.settle(Err("cq")), Err("cq"));
        assert_eq!(o.take_deferred(), Ok(()));
        // Events first, then the error.
        o.push(1);
        o.push(2);
        assert_eq!(o.settle(Err("post")), Ok(2));
        assert_eq!(o.batch().collect::<Vec<_>>(), [1, 2]);
        assert!(o.is_empty());
        assert_eq!(o.take_deferred(), Err("post"));
        assert_eq!(o.take_deferred(), Ok(()));
        o.push(3);
        assert_eq!(o.settle(Ok(1)), Ok(1));
        assert_eq!(o.len(), 1);
    }
}
