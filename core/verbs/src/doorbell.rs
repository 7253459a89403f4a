//! [`Doorbell`]: an eventfd one thread sleeps on while another may have work for it, written
//! only while the sleeper said it waits.
//!
//! The pool's poller uses it when every buffer is lent: nothing can complete until a lease
//! comes back, so it arms the doorbell and sleeps on it, and the thread whose return it waits
//! for rings it. Returns while nobody waits cost one relaxed load of the armed flag; there is
//! no system call on the return path unless the poller is asleep.
//!
//! Ordering: the sleeper arms, then checks for work once more, then sleeps; the ringer
//! publishes its work, then reads the flag. That is the store-buffering pattern: without a
//! full fence on both sides each can miss the other's store, and the ringer's publishing ends
//! with a plain release store that a later load may pass, on x86 too. A fence on every return
//! would cost more than the rare sleep it serves, so the flag is read `Relaxed` and a ring can
//! be missed; a sleeper must therefore always pass a bounded timeout (the pool uses 1 ms, the
//! back-off it had before), which bounds what a missed ring costs.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys::wait_readable;

/// An armed-only eventfd wake-up; see the module docs.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
    armed: AtomicBool,
    rings: AtomicU64,
}

impl Doorbell {
    /// A new, unarmed doorbell (a non-blocking, close-on-exec eventfd).
    ///
    /// # Errors
    /// [`Error::Os`] when `eventfd` fails (file descriptor limit).
    pub fn new() -> Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a new descriptor we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(Error::Os {
                op: "eventfd",
                source: io::Error::last_os_error(),
            });
        }
        Ok(Doorbell {
            // SAFETY: `fd` is a fresh descriptor nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            armed: AtomicBool::new(false),
            rings: AtomicU64::new(0),
        })
    }

    /// The sleeper: from now on a [`Doorbell::ring`] writes the eventfd. Check for work once
    /// more after arming, then [`Doorbell::wait`].
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// The sleeper, when it found work after arming: no write is wanted any more.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
        self.clear();
    }

    /// Any thread, after it published work: wakes the sleeper if it is armed (one write per
    /// arming, however many ring). Returns whether it wrote.
    pub fn ring(&self) -> bool {
        if !self.armed.load(Ordering::Relaxed) || !self.armed.swap(false, Ordering::AcqRel) {
            return false;
        }
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to our eventfd. A full counter
        // (EAGAIN) already wakes the sleeper, so the result needs no handling.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        self.rings.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The sleeper: waits until rung or `timeout` passes (pass a bounded one; see the module
    /// docs), then disarms. Returns whether it was rung.
    ///
    /// # Errors
    /// [`Error::Os`] when `poll` fails.
    pub fn wait(&self, timeout: Duration) -> Result<bool> {
        let rung = wait_readable(self.fd.as_raw_fd(), Some(timeout), "poll(doorbell)")?;
        self.disarm();
        Ok(rung)
    }

    /// Writes so far (each woke, or would have woken, a sleeper).
    pub fn rings(&self) -> u64 {
        self.rings.load(Ordering::Relaxed)
    }

    /// The eventfd, for a caller that polls it with other descriptors.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Resets the eventfd's counter (a non-blocking read; nothing to read is fine).
    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer from our eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn unarmed_rings_write_nothing() {
        let d = Doorbell::new().unwrap();
        assert!(!d.ring());
        assert_eq!(d.rings(), 0);
        assert!(!d.wait(Duration::from_millis(20)).unwrap(), "nothing rang");
    }

    #[test]
    fn an_armed_doorbell_wakes_its_sleeper_once_per_arming() {
        let d = Arc::new(Doorbell::new().unwrap());
        d.arm();
        let ringer = {
            let d = Arc::clone(&d);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                (d.ring(), d.ring())
            })
        };
        let t = Instant::now();
        assert!(
            d.wait(Duration::from_secs(10)).unwrap(),
            "woken by the ring"
        );
        assert!(t.elapsed() < Duration::from_secs(5), "not by the timeout");
        assert_eq!(
            ringer.join().unwrap(),
            (true, false),
            "one write per arming"
        );
        assert_eq!(d.rings(), 1);
        // Disarmed and cleared: the next wait times out.
        assert!(!d.wait(Duration::from_millis(20)).unwrap());
        d.arm();
        d.disarm();
        assert!(!d.ring(), "disarmed");
    }
}
