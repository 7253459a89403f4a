//! The one blocking-poll loop of gdrx.
//!
//! "Blocking poll" means the same thing on a [`crate::Cq`], a receive pool and a GPU pool:
//! *wait up to `timeout` (forever for `None`) until at least one event is available; return how
//! many, or 0 once the timeout has passed.* How a poller waits between attempts (sleeping on a
//! completion channel in event mode, spinning in busy mode, napping while every buffer is lent)
//! is its own [`Waiter::wait`]; the deadline arithmetic is [`wait_for`]'s alone.

use std::time::{Duration, Instant};

/// A poller that [`wait_for`] can drive.
pub trait Waiter {
    /// Its error.
    type Error;
    /// One attempt that never blocks: how many events it found.
    fn attempt(&mut self) -> Result<usize, Self::Error>;
    /// Waits for a reason to attempt again, for at most `left` (`None`: no limit). It may find
    /// events itself (e.g. when polling after arming a CQ) and return how many.
    fn wait(&mut self, left: Option<Duration>) -> Result<usize, Self::Error>;
}

/// Attempts until `w` finds at least one event or `timeout` passes; returns the count, or 0 on
/// timeout. A zero timeout makes exactly one attempt.
///
/// # Errors
/// The first error of [`Waiter::attempt`] or [`Waiter::wait`].
pub fn wait_for<W: Waiter + ?Sized>(
    w: &mut W,
    timeout: Option<Duration>,
) -> Result<usize, W::Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let n = w.attempt()?;
        if n > 0 {
            return Ok(n);
        }
        let left = match deadline {
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(l) if !l.is_zero() => Some(l),
                _ => return Ok(0),
            },
            None => None,
        };
        let n = w.wait(left)?;
        if n > 0 {
            return Ok(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finds an event on the `ready`-th attempt; counts attempts and waits.
    struct Script {
        ready: usize,
        attempts: usize,
        waits: Vec<Option<Duration>>,
        found_in_wait: bool,
        nap: Duration,
    }

    impl Waiter for Script {
        type Error = &'static str;
        fn attempt(&mut self) -> Result<usize, &'static str> {
            self.attempts += 1;
            if self.attempts == 7 {
                return Err("boom");
            }
            Ok(usize::from(self.attempts == self.ready))
        }
        fn wait(&mut self, left: Option<Duration>) -> Result<usize, &'static str> {
            self.waits.push(left);
            std::thread::sleep(self.nap);
            Ok(usize::from(self.found_in_wait))
        }
    }

    fn script(ready: usize) -> Script {
        Script {
            ready,
            attempts: 0,
            waits: Vec::new(),
            found_in_wait: false,
            nap: Duration::ZERO,
        }
    }

    #[test]
    fn returns_as_soon_as_an_attempt_finds_something() {
        let mut s = script(3);
        assert_eq!(wait_for(&mut s, None), Ok(1));
        assert_eq!((s.attempts, s.waits.len()), (3, 2));
        assert_eq!(s.waits, [None, None]);
    }

    #[test]
    fn events_found_while_waiting_count() {
        let mut s = Script {
            found_in_wait: true,
            ..script(0)
        };
        assert_eq!(wait_for(&mut s, None), Ok(1));
        assert_eq!((s.attempts, s.waits.len()), (1, 1));
    }

    #[test]
    fn a_zero_timeout_attempts_once_and_never_waits() {
        let mut s = script(0);
        assert_eq!(wait_for(&mut s, Some(Duration::ZERO)), Ok(0));
        assert_eq!((s.attempts, s.waits.len()), (1, 0));
    }

    #[test]
    fn the_timeout_bounds_every_wait_and_ends_the_loop() {
        let mut s = Script {
            nap: Duration::from_millis(4),
            ..script(0)
        };
        let t = Duration::from_millis(10);
        let start = Instant::now();
        assert_eq!(wait_for(&mut s, Some(t)), Ok(0));
        assert!(start.elapsed() >= t);
        assert!(!s.waits.is_empty());
        assert!(s.waits.iter().all(|l| l.is_some_and(|l| l <= t)));
    }

    #[test]
    fn an_error_stops_the_loop() {
        let mut s = script(0);
        assert_eq!(wait_for(&mut s, None), Err("boom"));
        assert_eq!(s.attempts, 7);
    }
}
