//! The `Receiver` in this process, in busy mode, against the test peer: a malformed Hello is
//! refused as an event, both senders are accepted, every message is verified in order, and each
//! sender's `Gone` comes after its last message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gdrx_core::receiver::{Event, Receiver};
use gdrx_core::RecvEvent;
use gdrx_providers::HostProvider;
use gdrx_tests::frame;
use gdrx_tests::peer::{OpKind, Plan};
use gdrx_tests::recv::{finish_peer, spawn_peer};

use super::{env, PEER};

/// A busy-mode receiver on the testbed's address with 64 buffers of `max` bytes.
fn busy_receiver(env: &gdrx_tests::RxeEnv, max: u32, handshake: Option<Duration>) -> Receiver {
    let b = Receiver::builder(SocketAddr::new(env.ip, 0), Arc::new(HostProvider::new()))
        .slots(max, 64)
        .event_mode(false);
    let b = match handshake {
        Some(t) => b.handshake_timeout(t),
        None => b,
    };
    b.build().expect("a busy-mode receiver")
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn receiver_busy_mode_refuses_a_bad_hello_and_verifies_two_senders() {
    let env = env();
    let mtu = super::port_mtu(&env);
    let max = 8u32 << 10;
    let mut rx = busy_receiver(&env, max, None);
    assert!(rx.as_raw_fd() >= 0);
    assert_eq!(rx.max_message(), max);
    // Nothing to do yet: a short timeout is a Timeout event.
    assert!(matches!(
        rx.next(Some(Duration::from_millis(20))).unwrap(),
        Event::Timeout
    ));

    let plan = Plan {
        dev: env.dev.clone(),
        server: rx.local_addr(),
        conns: 2,
        messages: 800,
        mtu,
        max,
        op: OpKind::SendImm,
        window: 16,
        oversize_after: None,
        bad_hello: true,
        first_tag: 0,
    };
    let mut peer = spawn_peer(PEER.as_ref(), &plan).expect("spawning the test peer");
    let expected = 2 * u64::from(plan.messages);
    let mut by_qp: HashMap<u32, (u32, u32)> = HashMap::new();
    let (mut verified, mut refused, mut gone) = (0u64, Vec::new(), Vec::new());
    let mut finished = false;
    let deadline = Instant::now() + Duration::from_secs(180);
    while gone.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{verified} of {expected} messages, gone {gone:?}"
        );
        if verified == expected && !finished {
            // Everything arrived: let the senders disconnect.
            let report = finish_peer(&mut peer).expect("the test peer's report");
            let said = report.bad_hello.as_deref().unwrap_or_default();
            assert!(
                said.contains("the peer said: gdrx: malformed hello"),
                "the peer saw its bad Hello refused, with the receiver's reason: {said:?}"
            );
            let sent: u64 = report.conns.iter().map(|c| u64::from(c.sent)).sum();
            assert_eq!(sent, expected);
            finished = true;
        }
        match rx.next(Some(Duration::from_millis(200))).expect("receiver") {
            Event::Batch(batch) => {
                for ev in batch {
                    let lease = match ev {
                        RecvEvent::Message(l) => l,
                        other => panic!("unexpected pool event {other:?}"),
                    };
                    let (tag, next) = by_qp
                        .get_mut(&lease.qp_num())
                        .expect("a message on a connected QP");
                    let (want, _) = frame::size_for(*tag, *next, mtu, max);
                    frame::verify(
                        lease.payload().unwrap(),
                        *tag,
                        *next,
                        want,
                        lease.imm(),
                        true,
                    )
                    .unwrap_or_else(|e| panic!("connection {tag} message {next}: {e}"));
                    *next += 1;
                    verified += 1;
                }
            }
            Event::Connected(p) => {
                by_qp.insert(p.qp_num, (p.tag, 0));
            }
            Event::Refused { reason, .. } => refused.push(reason),
            Event::Gone(p) => {
                let (_, next) = by_qp[&p.qp_num];
                assert_eq!(next, plan.messages, "Gone after the last message of {p:?}");
                gone.push(p.tag);
            }
            Event::Timeout => {}
        }
    }
    assert_eq!(verified, expected);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("not a gdrx Hello"), "{}", refused[0]);
    gone.sort_unstable();
    assert_eq!(gone, [0, 1]);
    assert_eq!(rx.peers().count(), 0);
    let stats = rx.pool().stats();
    assert_eq!(stats.completions, expected);
    assert_eq!(stats.completion_errors, 0);
    println!(
        "receiver (busy mode): {verified} messages verified from 2 senders, 1 refused: {}",
        refused[0]
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn receiver_refuses_a_sender_that_never_completes_its_handshake_and_serves_the_next() {
    use gdrx_core::wire::Hello;
    let env = env();
    let mtu = super::port_mtu(&env);
    let max = 8u32 << 10;
    let mut rx = busy_receiver(&env, max, Some(Duration::from_secs(2)));
    let addr = rx.local_addr();
    // A sender whose connect request carries a good Hello, and which never sends the RTU after
    // the receiver's reply: held until the good sender is done.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stalled = std::thread::spawn(move || {
        let hello = Hello {
            flags: 0,
            conn_tag: 99,
            max_msg: 64,
        }
        .encode();
        let s = gdrx_tests::stall::stall(addr, &hello, Duration::from_secs(30));
        let replied = s.replied;
        let _ = done_rx.recv_timeout(Duration::from_secs(120));
        replied
    });
    std::thread::sleep(Duration::from_millis(500));
    let plan = Plan {
        dev: env.dev.clone(),
        server: addr,
        conns: 1,
        messages: 300,
        mtu,
        max,
        op: OpKind::SendImm,
        window: 16,
        oversize_after: None,
        bad_hello: false,
        first_tag: 0,
    };
    let mut peer = spawn_peer(PEER.as_ref(), &plan).expect("spawning the test peer");
    let (mut next, mut refused, mut gone) = (0u32, Vec::new(), false);
    let mut finished = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gone {
        assert!(
            Instant::now() < deadline,
            "{next} messages, refused {refused:?}"
        );
        if next == plan.messages && !finished {
            finish_peer(&mut peer).expect("the test peer's report");
            finished = true;
        }
        match rx
            .next(Some(Duration::from_millis(200)))
            .expect("a stalled sender is not the receiver's error")
        {
            Event::Batch(batch) => {
                for ev in batch {
                    let RecvEvent::Message(lease) = ev else {
                        panic!("unexpected pool event {ev:?}")
                    };
                    let (want, _) = frame::size_for(0, next, mtu, max);
                    frame::verify(lease.payload().unwrap(), 0, next, want, lease.imm(), true)
                        .unwrap_or_else(|e| panic!("message {next}: {e}"));
                    next += 1;
                }
            }
            Event::Refused { reason, .. } => refused.push(reason),
            Event::Gone(p) => {
                assert_eq!(p.tag, 0, "only the good sender was ever connected");
                gone = true;
            }
            Event::Connected(p) => assert_eq!(p.tag, 0, "the stalled sender is never connected"),
            Event::Timeout => {}
        }
    }
    let _ = done_tx.send(());
    let replied = stalled.join().expect("the stalled sender's thread");
    if !finished {
        let report = finish_peer(&mut peer);
        println!("the test peer, which left early: {report:?}");
    }
    println!("stalled sender (replied to: {replied}) refused: {refused:?}; {next} messages from the good one");
    assert!(
        replied,
        "the receiver answered the stalled sender's request"
    );
    assert_eq!(next, plan.messages, "every message of the good sender");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("accepting it failed"), "{}", refused[0]);
    assert_eq!(rx.peers().count(), 0);
}
