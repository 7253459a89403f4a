//! A raw SRQ receiver, without the pool: one MR carved into slots, all posted on an SRQ,
//! reposted as their completions are read. It accepts one gdrx sender and exits once it left.
//!
//! ```text
//! srq_receiver ADDR:PORT [SLOTS] [SLOT_SIZE]      e.g.  srq_receiver 10.0.0.1:7471 64 16384
//! ```

use std::sync::Arc;
use std::time::Duration;

use gdrx_core::wire::{Hello, Welcome};
use gdrx_core::{
    Access, ConnEvent, ConnectionSpec, Cq, Device, HostMemory, Listener, RecvBatch, Srq, SrqConfig,
    WorkCompletion,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .ok_or("usage: srq_receiver ADDR:PORT [SLOTS] [SLOT_SIZE]")?;
    let num = |i: usize, default: usize| args.get(i).map_or(Ok(default), |s| s.parse());
    let (slots, size) = (num(1, 64)?, num(2, 16384)?);

    let mut listener = Listener::bind(addr.parse()?, 8)?;
    println!("listening on {}", listener.local_addr());
    let dev = Device::open(
        &listener
            .device_name()
            .ok_or("bind an RDMA device's address")?,
    )?;
    let pd = dev.alloc_pd()?;
    let cq = Cq::with_events(&dev, slots as u32 + 16)?;
    // Declared before the SRQ, so the SRQ (and its posted receives) goes first.
    let mr = pd.register(Arc::new(HostMemory::new(slots * size)?), Access::recv())?;
    let srq = Srq::new(&pd, SrqConfig::new(slots as u32, 1))?;
    let mut batch = RecvBatch::with_capacity(slots, slots);
    for i in 0..slots {
        batch.push(i as u64, &[mr.sge(i * size, size).ok_or("slot in the MR")?])?;
    }
    // SAFETY: every slot lies in `mr`, which outlives the SRQ, and nothing reads a slot until
    // its completion is polled.
    unsafe { srq.post_recv(&mut batch)? };

    let spec = ConnectionSpec::new(&pd, &cq, &cq, Some(&srq));
    let req = listener
        .next_request(None)?
        .ok_or("no connection request")?;
    let hello = Hello::decode(req.private_data())?;
    let welcome = Welcome {
        flags: 0,
        recv_buf: size as u32,
        window: None,
        credits: None,
    };
    let mut conn = req.accept(&spec, &welcome.encode())?;
    let (mut wcs, mut messages, mut bytes) = (WorkCompletion::buffer(32), 0u64, 0u64);
    loop {
        // Event mode: sleeps on the completion channel, 100 ms at most.
        let n = cq.poll_blocking(&mut wcs, Some(Duration::from_millis(100)))?;
        batch.clear();
        for wc in &wcs[..n] {
            wc.result()?; // a typed error, e.g. a message larger than the slots
            messages += 1;
            bytes += u64::from(wc.byte_len());
            let i = wc.wr_id() as usize; // the slot's bytes are ours until reposted
            batch.push(
                wc.wr_id(),
                &[mr.sge(i * size, size).ok_or("slot in the MR")?],
            )?;
        }
        if n > 0 {
            // SAFETY: as above; these slots' completions were just polled.
            unsafe { srq.post_recv(&mut batch)? };
        } else if let Some(ConnEvent::Disconnected) = conn.poll_event(Some(Duration::ZERO))? {
            break; // every completion was drained first
        }
    }
    println!(
        "received {messages} messages, {bytes} bytes from peer {}",
        hello.conn_tag
    );
    Ok(())
}
