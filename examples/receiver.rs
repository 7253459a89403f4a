//! A pool receiver: accepts gdrx senders on an address, counts what they send into host memory,
//! and exits once `PEERS` senders have come and gone. The README's "Using the library" shows
//! its loop (a test keeps the two the same).
//!
//! ```text
//! receiver ADDR:PORT [PEERS]      e.g.  receiver 10.0.0.1:7471 2
//! ```
//! It prints `listening on ADDR` first and `received N messages, B bytes from P peers` last.

use std::sync::Arc;

use gdrx_core::receiver::{Event, Receiver};
use gdrx_core::RecvEvent;
use gdrx_providers::HostProvider;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "0.0.0.0:7471".into())
        .parse()?;
    let peers: usize = args.next().map_or(Ok(1), |p| p.parse())?;
    let (mut messages, mut bytes, mut gone) = (0u64, 0u64, 0);

    // README: begin
    let mut rx = Receiver::builder(addr, Arc::new(HostProvider::new()))
        .slots(16 << 10, 256) // 256 buffers of 16 KiB: the largest message accepted
        .build()?;
    println!("listening on {}", rx.local_addr());
    while gone < peers {
        // Blocks until something happens (the Receiver is also an epoll fd: AsRawFd).
        match rx.next(None)? {
            Event::Batch(batch) => {
                for ev in batch {
                    if let RecvEvent::Message(lease) = ev {
                        messages += 1;
                        bytes += lease.len() as u64; // dropping the lease reposts its buffer
                    }
                }
            }
            Event::Gone(_) => gone += 1, // after every batch holding that peer's messages
            other => eprintln!("{other:?}"), // Connected, Refused, Timeout
        }
    }
    // README: end
    println!("received {messages} messages, {bytes} bytes from {gone} peers");
    Ok(())
}
