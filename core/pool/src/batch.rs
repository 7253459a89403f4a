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
}
