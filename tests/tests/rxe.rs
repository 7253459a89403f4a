//! The soft-RoCE (rxe) integration suite: real verbs, real RDMA CM, two processes.
//!
//! Every test here is `#[ignore]`d in a plain `cargo test` (there is no RDMA device on a build
//! machine) and is run by `deploy/testbed.sh` with `--ignored`, which provides an rxe device and
//! exports `GDRX_RDMA_DEV` / `GDRX_RDMA_IP`. A test told to use a device that does not exist
//! fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gdrx_core::wire::{Hello, Welcome};
use gdrx_core::Region;
use gdrx_core::{
    Access, AsyncEvent, ConnectionSpec, Cq, Device, DeviceKind, DmabufSupport, Error, GidKind,
    HostMemory, Listener, MrKind, PortState, RecvBatch, SendBatch, SendFlags, SendOp, Srq,
    SrqConfig, WcStatus, WorkCompletion,
};
use gdrx_providers::UdmabufProvider;
use gdrx_tests::peer::OpKind;
use gdrx_tests::recv::{
    assert_clean, assert_coverage, run_two_process, RecvConfig, RecvReport, DOOMED_TAG,
};
use gdrx_tests::{res, RxeEnv};

const PEER: &str = env!("CARGO_BIN_EXE_gdrx-testpeer");

/// Asserts that `$r` is an `Err` matching `$pat` whose message contains every needle, and
/// returns the error.
macro_rules! expect_err {
    ($r:expr, $pat:pat $(, $needle:expr)* $(,)?) => {
        match $r {
            Err(e @ $pat) => {
                let _msg = e.to_string();
                $(
                    let needle = &$needle;
                    let needle: &str = needle.as_ref();
                    assert!(_msg.contains(needle), "the message names {needle:?}: {_msg}");
                )*
                e
            }
            other => panic!("expected {}, got {other:?}", stringify!($pat)),
        }
    };
}

#[path = "rxe/pool.rs"]
mod pool;

#[path = "rxe/bench.rs"]
mod bench;

#[path = "rxe/doctor.rs"]
mod doctor;

#[path = "rxe/examples.rs"]
mod examples;

#[path = "rxe/receiver.rs"]
mod receiver;

fn env() -> RxeEnv {
    gdrx_tests::init_logging();
    RxeEnv::from_env()
}

/// The active MTU of the testbed device's port 1.
fn port_mtu(env: &RxeEnv) -> u32 {
    gdrx_core::Device::open(&env.dev)
        .and_then(|d| d.require_active_port(1))
        .expect("the rxe port")
        .active_mtu
}

/// A workspace binary the rxe tests run: `$var` when set, else `name` beside this test's own
/// target directory (`target/release/<name>`, which `deploy/run-tests.sh` builds with `build`).
fn workspace_bin(name: &str, var: &str, build: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test binary path");
    let p = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        p.exists(),
        "{} does not exist: build it with `{build}` (deploy/run-tests.sh does) or set {var}",
        p.display()
    );
    p
}

fn summary(name: &str, r: &RecvReport) {
    println!(
        "rxe suite [{name}] device {} (mtu {}): verified {} messages ({} connections: {:?}), {:.1} MiB in \
         {:.1} s ({:.1} MiB/s); size classes {:?}; receive errors {}; events {}; reposts {} (largest chained \
         post {})",
        r.device,
        r.mtu,
        r.total(),
        r.received.len(),
        r.received,
        r.bytes() as f64 / (1 << 20) as f64,
        r.secs,
        r.bytes() as f64 / (1 << 20) as f64 / r.secs.max(1e-9),
        r.classes,
        r.wc_errors.len(),
        r.events,
        r.reposts,
        r.max_repost_batch,
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn capability_report_and_roce_v2_gid() {
    let env = env();
    let dev = env.open();
    let caps = dev.capabilities().expect("capability report");
    println!("{caps}");
    assert_eq!(caps.kind, DeviceKind::SoftRoce, "{} is not rxe", env.dev);
    assert!(caps.max_srq_wr >= 4096, "max_srq_wr {}", caps.max_srq_wr);
    assert!(caps.max_srq_sge >= 2, "max_srq_sge {}", caps.max_srq_sge);
    assert!(
        caps.max_sge >= 2 && caps.max_qp_wr >= 1024 && caps.max_cqe >= 4096,
        "{caps:?}"
    );
    let port = &caps.ports[0];
    assert_eq!(port.state, PortState::Active);
    assert_eq!(port.link_layer, "Ethernet");
    assert!(
        port.active_mtu.is_power_of_two() && (256..=4096).contains(&port.active_mtu),
        "{port:?}"
    );
    let gid = port
        .select_roce_v2_gid(Some(env.ip))
        .expect("a RoCE v2 GID for the device's IP");
    assert_eq!(gid.kind, GidKind::RoceV2);
    assert_eq!(gid.ip(), env.ip);
    assert_eq!(
        port.select_roce_v2_gid(None).map(|g| g.index),
        Some(gid.index)
    );
    println!(
        "RoCE v2 GID for {}: index {} ({})",
        env.ip, gid.index, gid.gid
    );
    assert!(dev.require_active_port(1).is_ok());
    assert!(gdrx_core::device_names().unwrap().contains(&env.dev));
    // The error lists the devices present.
    let e = expect_err!(
        Device::open("gdrx_no_such_dev"),
        Error::DeviceNotFound { .. },
        env.dev
    );
    println!("typed error for a missing device: {e}");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn dmabuf_mr_on_rxe_is_typed_unsupported() {
    let env = env();
    let dev = env.open();
    let pd = dev.alloc_pd().unwrap();
    let probe = pd.probe_dmabuf();
    println!("dma-buf probe on {}: {probe}", env.dev);
    assert!(
        matches!(probe, DmabufSupport::Unsupported { errno, .. } if errno == libc::EOPNOTSUPP),
        "rxe has no dma-buf MRs, the probe must say so: {probe:?}"
    );
    // A real dma-buf, made from a memfd through /dev/udmabuf (the pool's udmabuf provider).
    let size = 2 << 20;
    let ub = Arc::new(UdmabufProvider::new().alloc_region(size).expect(
        "udmabuf: the testbed kernel has CONFIG_UDMABUF; on a host without it, `modprobe udmabuf`",
    ));
    assert_eq!(
        ub.exporter().as_deref(),
        Some("udmabuf"),
        "fdinfo names the exporter"
    );
    // SAFETY: nothing reads or writes the CPU mapping while this (expected to fail) MR exists.
    let r = unsafe { pd.register_dmabuf(ub.dmabuf_fd(), 0, size, 0x10_0000, Access::recv(), None) };
    // The reason (rxe) and the fallback (ibv_reg_mr) are named.
    let e = expect_err!(r, Error::Unsupported { .. }, "rxe", "ibv_reg_mr");
    assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
    println!("typed error for ibv_reg_dmabuf_mr on rxe: {e}");
    // The fallback path: register the CPU mapping of the same pages with ibv_reg_mr. (The
    // dma-buf fd's own mmap is a PFN mapping that ibv_reg_mr cannot pin: EFAULT. The memfd's
    // mapping, which the region exposes as its address, is the one to register.)
    let p = ub
        .desc()
        .addr
        .expect("the udmabuf region has a CPU mapping")
        .as_ptr();
    // SAFETY: the region keeps its mapping alive and the MR keeps the region (keepalive);
    // nothing references its bytes.
    let mr = unsafe { pd.register_raw(p, size, Access::recv(), Some(Arc::clone(&ub) as _)) }
        .expect("ibv_reg_mr on the CPU mapping");
    assert_eq!(mr.kind(), MrKind::Virtual);
    assert_eq!(
        mr.access(),
        Access::recv(),
        "receive MRs get LOCAL_WRITE only"
    );
    println!(
        "fallback: the udmabuf's memfd mapping registered with ibv_reg_mr, lkey {:#x}",
        mr.lkey()
    );
}

fn big_config(events: bool, sges: u32) -> RecvConfig {
    RecvConfig {
        events,
        sges,
        slots: 512,
        slot_size: 65536,
        conns: 4,
        messages: 5000,
        op: OpKind::SendImm,
        oversize_after: None,
        bad_hello: false,
        kill_peer_after: None,
        timeout: Duration::from_secs(1200),
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn two_processes_20k_mixed_messages_busy_poll() {
    let env = env();
    let cfg = big_config(false, 1);
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary("busy-poll, 1 SGE, SEND_WITH_IMM", &r);
    assert_clean(&r, &cfg);
    assert_coverage(&r);
    assert!(r.wc_errors.is_empty(), "{:?}", r.wc_errors);
    assert_eq!(r.total(), 20_000);
    assert_eq!(r.events, 0, "busy polling reads no completion events");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn two_processes_20k_mixed_messages_event_mode_two_sges() {
    let env = env();
    let cfg = big_config(true, 2);
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary(
        "event mode, 2 SGEs (64 B header + payload), SEND_WITH_IMM",
        &r,
    );
    assert_clean(&r, &cfg);
    assert_coverage(&r);
    assert!(r.wc_errors.is_empty(), "{:?}", r.wc_errors);
    assert_eq!(r.total(), 20_000);
    assert!(
        r.events > 0,
        "event mode slept on the completion channel at least once"
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn oversize_message_is_a_typed_error_and_other_connections_go_on() {
    let env = env();
    let cfg = RecvConfig {
        messages: 800,
        oversize_after: Some(25),
        bad_hello: true,
        ..big_config(false, 1)
    };
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary("oversize message + malformed hello", &r);
    assert_clean(&r, &cfg);
    let oversize_tag = cfg.conns;
    assert_eq!(
        r.received.get(&oversize_tag),
        Some(&25),
        "messages before the oversize one were delivered"
    );
    assert_eq!(
        r.wc_errors.len(),
        1,
        "exactly one receive error: {:?}",
        r.wc_errors
    );
    let e = r.wc_errors[0];
    // rxe completes an overflowing receive with LocalQpOperation (it treats it as a malformed
    // WQE); hardware NICs and the IB spec use LocalLength. Both are typed and explained.
    assert!(e.status.is_receive_overflow(), "{e}");
    let text = Error::from(e).to_string();
    assert!(
        text.contains("larger than the posted receive buffer"),
        "{text}"
    );
    println!("receive side typed error ({:?}): {text}", e.status);
    let peer = r.peer.as_ref().unwrap();
    let ov = peer.conns.iter().find(|c| c.tag == oversize_tag).unwrap();
    assert_eq!(
        ov.oversize_rejected,
        Some(true),
        "sender saw the overflow NAK: {ov:?}"
    );
    println!(
        "send side: oversize SEND completed with {}",
        ov.oversize_status.as_deref().unwrap_or("?")
    );
    assert_eq!(ov.sent, 25);
    assert_eq!(
        r.rejected.len(),
        1,
        "the malformed hello was rejected: {:?}",
        r.rejected
    );
    assert!(r.rejected[0].contains("malformed"), "{}", r.rejected[0]);
    let bh = peer
        .bad_hello
        .as_deref()
        .expect("sender tried a malformed hello");
    assert!(
        bh.contains("REJECTED"),
        "sender got a typed rejection: {bh}"
    );
    assert!(
        bh.contains("the peer said: gdrx: malformed hello"),
        "the receiver's reason reached the sender: {bh}"
    );
    println!(
        "malformed hello: receiver said `{}`; sender saw `{bh}`",
        r.rejected[0]
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn a_sender_that_dies_is_a_disconnect_and_the_others_go_on() {
    let env = env();
    let cfg = RecvConfig {
        conns: 3,
        messages: 1500,
        kill_peer_after: Some(300),
        ..big_config(true, 1)
    };
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary("one sender process SIGKILLed mid-stream", &r);
    assert_clean(&r, &cfg);
    let killed_after = r.killed_after.expect("the doomed sender was killed");
    let from_doomed = r.received[&DOOMED_TAG];
    assert!(
        from_doomed >= killed_after,
        "messages verified before the kill stay verified"
    );
    assert!(
        r.disconnected.contains(&DOOMED_TAG),
        "typed Disconnected event: {:?}",
        r.disconnected
    );
    assert!(
        r.disconnected.iter().all(|&t| t == DOOMED_TAG),
        "only the dead sender's connection dropped: {:?}",
        r.disconnected
    );
    println!(
        "killed the second sender after {killed_after} verified messages; {from_doomed} verified in total \
         from it, all in order; Disconnected seen; receive errors on its QP: {:?}",
        r.wc_errors
    );
    for e in &r.wc_errors {
        assert_eq!(
            e.status,
            WcStatus::WrFlush,
            "only flushes of the dead connection's QP: {e}"
        );
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn rdma_write_with_imm_lands_in_the_advertised_window() {
    let env = env();
    let cfg = RecvConfig {
        events: true,
        slots: 128,
        slot_size: 16384,
        conns: 2,
        messages: 400,
        op: OpKind::WriteImm,
        ..big_config(true, 1)
    };
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary("RDMA WRITE_WITH_IMM", &r);
    assert_clean(&r, &cfg);
    assert_coverage(&r);
    assert!(r.wc_errors.is_empty(), "{:?}", r.wc_errors);

    // Only memory registered for remote write is advertised, and only within its bounds.
    let pd = env.open().alloc_pd().expect("pd");
    let mem = Arc::new(HostMemory::new(8192).expect("memory"));
    let local = pd.register(Arc::clone(&mem), Access::recv()).expect("mr");
    assert!(
        local.remote_window(0, 4096).is_none(),
        "a LOCAL_WRITE-only MR"
    );
    let mr = pd.register(mem, Access::remote_write()).expect("mr");
    let w = mr.remote_window(4096, 4096).expect("the second half");
    assert_eq!((w.addr, w.len, w.rkey), (mr.iova() + 4096, 4096, mr.rkey()));
    assert!(mr.remote_window(4096, 4097).is_none(), "past the end");
    assert!(mr.remote_window(0, 0).is_none(), "empty");
    assert!(mr.remote_window(u64::MAX, 2).is_none(), "overflow");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn plain_send_without_immediate_data() {
    let env = env();
    let cfg = RecvConfig {
        conns: 1,
        messages: 1500,
        op: OpKind::Send,
        ..big_config(false, 1)
    };
    let r = run_two_process(&env, &cfg, PEER.as_ref()).expect("two-process run");
    summary("SEND", &r);
    assert_clean(&r, &cfg);
    assert!(r.wc_errors.is_empty(), "{:?}", r.wc_errors);
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn teardown_with_work_requests_posted_is_clean() {
    let env = env();
    let before = res::counts(&env.dev).expect("rdma resource counts");
    let during;
    {
        let dev = env.open();
        let pd = dev.alloc_pd().unwrap();
        let rcq = Cq::with_events(&dev, 256).unwrap();
        let srq = Srq::new(&pd, SrqConfig::new(64, 1)).unwrap();
        let rmem = Arc::new(HostMemory::new(64 * 4096).unwrap());
        let rmr = pd.register(Arc::clone(&rmem), Access::recv()).unwrap();
        let mut batch = RecvBatch::with_capacity(64, 64);
        for i in 0..16u64 {
            batch
                .push(i, &[rmr.sge(i as usize * 4096, 4096).unwrap()])
                .unwrap();
        }
        // SAFETY: slots lie in `rmr`, which outlives the SRQ; nothing reads them here.
        unsafe { srq.post_recv(&mut batch) }.unwrap();
        // Low watermark: an async event once fewer than 4 receives remain.
        srq.set_limit(4).unwrap();
        while dev.take_async_event().unwrap().is_some() {}
        let mut listener = Listener::bind(std::net::SocketAddr::new(env.ip, 0), 8).unwrap();
        let server = listener.local_addr();

        // The sending side, in this process on its own PD and CQ.
        let spd = dev.alloc_pd().unwrap();
        let scq = Cq::new(&dev, 256).unwrap();
        let sspec = ConnectionSpec::new(&spd, &scq, &scq, None);
        let client = std::thread::spawn(move || {
            let hello = Hello {
                flags: 0,
                conn_tag: 0,
                max_msg: 4096,
            };
            gdrx_core::connect(server, None, &sspec, &hello.encode()).expect("connect")
        });
        let req = listener
            .next_request(Some(Duration::from_secs(60)))
            .unwrap()
            .expect("a request");
        let rspec = ConnectionSpec::new(&pd, &rcq, &rcq, Some(&srq));
        let welcome = Welcome {
            flags: 0,
            recv_buf: 4096,
            window: None,
            credits: None,
        };
        let rconn = req.accept(&rspec, &welcome.encode()).unwrap();
        let mut sconn = client.join().unwrap();

        // 64 signaled sends against 16 posted receives: 16 complete, 48 wait in RNR retry.
        let smem = Arc::new(HostMemory::new(64 * 4096).unwrap());
        let smr = spd.register(Arc::clone(&smem), Access::none()).unwrap();
        let mut sb = SendBatch::with_capacity(64, 64);
        for i in 0..64u64 {
            sb.push(
                i,
                SendOp::SendWithImm(i as u32),
                &[smr.sge(i as usize * 4096, 1024).unwrap()],
                SendFlags::SIGNALED,
            )
            .unwrap();
        }
        // SAFETY: SGEs lie in `smr`, which lives until every completion (success or flush) is
        // polled below.
        unsafe { sconn.qp().post_send(&mut sb) }.expect("one chained post of 64 sends");
        let mut wcs = WorkCompletion::buffer(64);
        let mut received = 0;
        let t = Instant::now();
        while received < 16 && t.elapsed() < Duration::from_secs(60) {
            let n = rcq
                .poll_blocking(&mut wcs, Some(Duration::from_millis(200)))
                .unwrap();
            for wc in &wcs[..n] {
                wc.result().expect("receive ok");
                received += 1;
            }
        }
        assert_eq!(received, 16, "the 16 posted receives were consumed");
        let ev = dev.wait_async_event(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(
            ev,
            Some(AsyncEvent::SrqLimitReached {
                srq: srq.object_id()
            }),
            "the SRQ's low-watermark event"
        );
        println!("async event after draining the SRQ: {}", ev.unwrap());
        let mut ok = 0;
        let t = Instant::now();
        while ok < 16 && t.elapsed() < Duration::from_secs(60) {
            let n = scq.poll(&mut wcs).unwrap();
            for wc in &wcs[..n] {
                assert!(
                    wc.is_ok(),
                    "before teardown only successes complete: {wc:?}"
                );
                ok += 1;
            }
        }
        assert_eq!(ok, 16);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            scq.poll(&mut wcs).unwrap(),
            0,
            "the other 48 sends are stuck in RNR retry"
        );
        during = res::counts(&env.dev).expect("rdma resource counts");
        println!("resources while connected: {during:?}");

        // Tear the sender down: its QP goes to the error state and the 48 waiting sends flush.
        sconn.disconnect().unwrap();
        let mut flushed = 0;
        let mut other = 0;
        let t = Instant::now();
        while flushed + other < 48 && t.elapsed() < Duration::from_secs(60) {
            let n = scq.poll(&mut wcs).unwrap();
            for wc in &wcs[..n] {
                if wc.status() == WcStatus::WrFlush {
                    flushed += 1;
                } else {
                    other += 1;
                }
            }
        }
        println!("after disconnect: {flushed} sends flushed, {other} other completions");
        assert_eq!(flushed + other, 48, "every outstanding send came back");
        assert_eq!(flushed, 48, "they came back flushed");
        // Receives that nobody will consume, left posted on the SRQ at teardown.
        for i in 16..40u64 {
            batch
                .push(i, &[rmr.sge(i as usize * 4096, 4096).unwrap()])
                .unwrap();
        }
        // SAFETY: as above.
        unsafe { srq.post_recv(&mut batch) }.unwrap();
        assert!(
            srq.query().unwrap().max_wr >= 64,
            "SRQ depth at least as created"
        );
        drop(sconn);
        drop(rconn);
        drop(rspec);
        drop(srq); // 24 receive work requests still posted
        drop(rmr);
        drop(smr);
        rcq.close()
            .expect("event-mode CQ destroyed: all events acknowledged");
        scq.close().expect("send CQ destroyed");
        drop(listener);
        drop((pd, spd, dev));
    }
    let after = res::counts(&env.dev).expect("rdma resource counts");
    println!("resources before {before:?}, after teardown {after:?}");
    for k in ["qp", "cq", "mr", "srq"] {
        assert!(
            during[k] > before[k],
            "the leak check sees {k}s: during {during:?}"
        );
    }
    assert_eq!(after, before, "nothing leaked");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn connection_errors_are_typed() {
    let env = env();
    let dev = env.open();
    let pd = dev.alloc_pd().unwrap();
    let cq = Cq::new(&dev, 64).unwrap();
    let mut spec = ConnectionSpec::new(&pd, &cq, &cq, None);
    spec.timeout = Duration::from_secs(30);
    // Nobody listens on this port.
    let dst = std::net::SocketAddr::new(env.ip, 1);
    let e = expect_err!(
        gdrx_core::connect(dst, None, &spec, b""),
        Error::Connection { .. } | Error::Timeout { .. }
    );
    println!("no listener: {e}");
    // Loopback is not an RDMA address.
    let lo = "127.0.0.1:7471".parse().unwrap();
    let e = expect_err!(
        gdrx_core::connect(lo, None, &spec, b""),
        Error::Connection { .. } | Error::Cm { .. } | Error::DeviceMismatch { .. }
    );
    println!("loopback: {e}");
    // Oversized private data is refused before anything is sent.
    let big = [0u8; 57];
    assert!(matches!(
        gdrx_core::connect(dst, None, &spec, &big),
        Err(Error::InvalidConfig(_))
    ));
    // An SRQ larger than the device allows names the limit.
    let caps = dev.capabilities().unwrap();
    let too_deep = SrqConfig::new(caps.max_srq_wr + 1, 1);
    expect_err!(
        Srq::new(&pd, too_deep),
        Error::InvalidConfig(_),
        "max_srq_wr"
    );
}

#[test]
fn a_missing_device_fails_rather_than_skips() {
    // Runs everywhere (no device needed): told to use a device that does not exist, the suite's
    // device helper panics, failing the test that called it.
    let env = RxeEnv {
        dev: "gdrx_missing0".into(),
        ip: "10.77.0.1".parse().unwrap(),
    };
    let r = std::panic::catch_unwind(|| env.open());
    let msg = r
        .err()
        .and_then(|p| p.downcast::<String>().ok())
        .expect("open() panicked");
    assert!(msg.contains("gdrx_missing0"), "{msg}");
}

/// Removes CAP_IPC_LOCK from this thread's effective set (root bypasses RLIMIT_MEMLOCK with it)
/// and lowers RLIMIT_MEMLOCK; restores both on drop.
struct MemlockSqueeze {
    caps: [u32; 6],
    rlimit: libc::rlimit,
}

const CAP_IPC_LOCK: u32 = 14;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn capget() -> [u32; 6] {
    let mut hdr = [LINUX_CAPABILITY_VERSION_3, 0u32];
    let mut data = [0u32; 6];
    // SAFETY: capget with a v3 header and room for two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capget, hdr.as_mut_ptr(), data.as_mut_ptr()) };
    assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
    data
}

fn capset(data: &[u32; 6]) {
    let mut hdr = [LINUX_CAPABILITY_VERSION_3, 0u32];
    // SAFETY: capset on the calling thread (pid 0) with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, hdr.as_mut_ptr(), data.as_ptr()) };
    assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
}

impl MemlockSqueeze {
    fn new(limit: u64) -> MemlockSqueeze {
        let caps = capget();
        let mut lowered = caps;
        lowered[0] &= !(1 << CAP_IPC_LOCK); // effective set of the first 32 capabilities
        capset(&lowered);
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(
            // SAFETY: valid out-pointer.
            unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rlimit) },
            0
        );
        let new = libc::rlimit {
            rlim_cur: limit,
            rlim_max: rlimit.rlim_max,
        };
        // SAFETY: valid rlimit; lowering the soft limit is always allowed.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &new) }, 0);
        MemlockSqueeze { caps, rlimit }
    }
}

impl Drop for MemlockSqueeze {
    fn drop(&mut self) {
        // SAFETY: restoring the limit read before (the hard limit never changed).
        unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &self.rlimit) };
        capset(&self.caps);
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn memlock_limit_is_named_when_pinning_fails() {
    let env = env();
    let dev = env.open();
    let pd = dev.alloc_pd().unwrap();
    let mem = Arc::new(HostMemory::new(4 << 20).unwrap());
    {
        let _squeeze = MemlockSqueeze::new(64 << 10);
        let e = expect_err!(
            pd.register(Arc::clone(&mem), Access::recv()),
            Error::MemoryLock { .. },
            "RLIMIT_MEMLOCK is soft 64 KiB",
            "ulimit -l"
        );
        assert_eq!(e.raw_os_error(), Some(libc::ENOMEM));
        println!("typed error: {e}");
    }
    let mr = pd
        .register(mem, Access::recv())
        .expect("registers once the limit is restored");
    assert_eq!(mr.len(), 4 << 20);
}

/// Brings the veth peer of the rxe interface down (the rxe port loses carrier) and back up.
struct CarrierOff(String);

impl CarrierOff {
    fn new(peer: &str) -> CarrierOff {
        let st = std::process::Command::new("ip")
            .args(["link", "set", peer, "down"])
            .status()
            .unwrap();
        assert!(st.success(), "ip link set {peer} down");
        CarrierOff(peer.to_owned())
    }
}

impl Drop for CarrierOff {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", &self.0, "up"])
            .status();
    }
}

/// The other end of a veth interface, from sysfs.
fn veth_peer(netdev: &str) -> String {
    let iflink = std::fs::read_to_string(format!("/sys/class/net/{netdev}/iflink")).unwrap();
    for e in std::fs::read_dir("/sys/class/net").unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let idx =
            std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).unwrap_or_default();
        if idx.trim() == iflink.trim() && name != netdev {
            return name;
        }
    }
    panic!("{netdev} is not a veth interface with a peer (the testbed uses one)");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn port_down_is_an_event_and_a_typed_error() {
    let env = env();
    let dev = env.open();
    let port = dev.require_active_port(1).unwrap();
    let netdev = port
        .select_roce_v2_gid(Some(env.ip))
        .and_then(|g| g.netdev.clone())
        .expect("the GID names its network interface");
    let peer = veth_peer(&netdev);
    while dev.take_async_event().unwrap().is_some() {}
    {
        let _off = CarrierOff::new(&peer);
        let mut seen = None;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            match dev.wait_async_event(Some(Duration::from_secs(1))).unwrap() {
                Some(AsyncEvent::PortError { port }) => {
                    seen = Some(port);
                    break;
                }
                Some(other) => println!("(async event {other})"),
                None => {}
            }
        }
        assert_eq!(seen, Some(1), "PORT_ERR async event after {peer} went down");
        // The error names the interface.
        let e = expect_err!(
            dev.require_active_port(1),
            Error::PortDown { .. },
            format!("`{netdev}`")
        );
        println!("typed error: {e}");
    }
    let t = Instant::now();
    let mut active = false;
    while t.elapsed() < Duration::from_secs(20) && !active {
        if let Some(AsyncEvent::PortActive { port: 1 }) =
            dev.wait_async_event(Some(Duration::from_secs(1))).unwrap()
        {
            active = true;
        }
    }
    assert!(active, "PORT_ACTIVE async event after {peer} came back");
    assert_eq!(dev.require_active_port(1).unwrap().state, PortState::Active);
    println!("{peer} down: PortError event + typed PortDown; up again: PortActive");
}
