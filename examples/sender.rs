//! A sender: connects to a gdrx receiver (such as `receiver.rs`) with a Hello, checks the
//! Welcome, sends `COUNT` messages of `SIZE` bytes (SEND_WITH_IMM, the immediate data is the
//! sequence number, up to 8 in flight) from one registered buffer, and disconnects.
//!
//! ```text
//! sender DEVICE ADDR:PORT [COUNT] [SIZE] [TAG]     e.g.  sender rxe0 10.0.0.1:7471 1000 4096
//! ```

use std::sync::Arc;

use gdrx_core::wire::{Hello, Welcome};
use gdrx_core::{
    Access, ConnectionSpec, Cq, Device, HostMemory, QpConfig, SendBatch, SendFlags, SendOp,
    WorkCompletion,
};

const IN_FLIGHT: usize = 8;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device, addr, rest @ ..] = args.as_slice() else {
        return Err("usage: sender DEVICE ADDR:PORT [COUNT] [SIZE] [TAG]".into());
    };
    let num = |i: usize, default: u32| rest.get(i).map_or(Ok(default), |s| s.parse::<u32>());
    let (count, size, tag) = (num(0, 1000)?, num(1, 4096)?, num(2, 0)?);

    let dev = Device::open(device)?;
    let pd = dev.alloc_pd()?;
    let cq = Cq::new(&dev, 64)?;
    let qp = QpConfig {
        max_send_wr: IN_FLIGHT as u32,
        max_recv_wr: 1,
        ..QpConfig::default()
    };
    let spec = ConnectionSpec::new(&pd, &cq, &cq, None).qp(qp);
    let hello = Hello {
        flags: 0,
        conn_tag: tag,
        max_msg: size,
    };
    let mut conn = gdrx_core::connect(addr.parse()?, None, &spec, &hello.encode())?;
    let welcome = Welcome::decode(conn.peer_private_data())?;
    if size > welcome.recv_buf {
        return Err(format!("the receiver takes at most {} bytes", welcome.recv_buf).into());
    }
    let mr = pd.register(
        Arc::new(HostMemory::new(size.max(1) as usize)?),
        Access::recv(),
    )?;
    let sge = mr
        .sge(0, size as usize)
        .ok_or("the message lies in the MR")?;

    let (mut batch, mut wcs) = (SendBatch::with_capacity(1, 1), WorkCompletion::buffer(16));
    let mut in_flight = 0;
    for seq in 0..=count {
        // Reap completions while the window is full, and all of them at the end.
        while in_flight == IN_FLIGHT || (seq == count && in_flight > 0) {
            let n = cq.poll(&mut wcs)?;
            for wc in &wcs[..n] {
                wc.result()?; // a typed error: e.g. the receiver went away
            }
            in_flight -= n;
        }
        if seq == count {
            break;
        }
        batch.clear();
        batch.push(
            u64::from(seq),
            SendOp::SendWithImm(seq),
            &[sge],
            SendFlags::SIGNALED,
        )?;
        // SAFETY: the SGE lies in `mr`, which lives until every send has completed (the loop
        // reaps them all), and nothing writes the buffer while sends read it.
        unsafe { conn.qp().post_send(&mut batch)? };
        in_flight += 1;
    }
    conn.disconnect()?;
    println!(
        "sent {count} messages, {} bytes",
        u64::from(count) * u64::from(size)
    );
    Ok(())
}
