//! The runnable examples (`examples/`) against the test peer, as separate processes.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gdrx_tests::peer::{OpKind, Plan};
use gdrx_tests::recv::{finish_peer, spawn_peer, Peer};

use super::{env, PEER};

fn example(name: &str) -> std::path::PathBuf {
    super::workspace_bin(
        &format!("examples/{name}"),
        &format!("GDRX_EXAMPLE_{}", name.to_uppercase()),
        "cargo build --release -p gdrx-examples --examples",
    )
}

/// A receiving example (`name`, started with `args`): the process (killed if the test fails
/// early), the address it printed, and its stdout and stderr as they will read once it exits.
struct RunningReceiver {
    proc: Peer,
    addr: SocketAddr,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl RunningReceiver {
    fn start(name: &str, args: &[String]) -> RunningReceiver {
        let child = Command::new(example(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the {name} example: {e}"));
        let mut proc = Peer(child);
        let mut out = BufReader::new(proc.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        out.read_line(&mut first)
            .expect("the receiver's first line");
        let addr: SocketAddr = first
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {first:?}"))
            .parse()
            .expect("a socket address");
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let mut err = proc.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        RunningReceiver {
            proc,
            addr,
            stdout,
            stderr,
        }
    }

    /// Waits for it to exit on its own (all its senders left) and returns its last stdout
    /// line and its stderr.
    fn finish(mut self) -> (String, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(st) = self.proc.try_wait().expect("waiting for the receiver") {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver example did not exit after its senders left"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = self.stdout.join().unwrap_or_default();
        let stderr = self.stderr.join().unwrap_or_default();
        assert!(status.success(), "receiver example: {status}; {stderr}");
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        println!("receiver example: {last}\n{stderr}");
        (last, stderr)
    }
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn receiver_example_counts_every_message_of_two_senders() {
    let env = env();
    let mtu = super::port_mtu(&env);
    let rx = RunningReceiver::start(
        "receiver",
        &[SocketAddr::new(env.ip, 0).to_string(), "2".into()],
    );

    let plan = Plan {
        dev: env.dev.clone(),
        server: rx.addr,
        conns: 2,
        messages: 600,
        mtu,
        max: 16 << 10,
        op: OpKind::SendImm,
        window: 16,
        oversize_after: None,
        bad_hello: false,
        first_tag: 0,
    };
    let mut peer = spawn_peer(PEER.as_ref(), &plan).expect("spawning the test peer");
    // The peer sends everything, reports, and disconnects once its stdin is closed.
    let report = finish_peer(&mut peer).expect("the test peer's report");
    let sent: u64 = report.conns.iter().map(|c| u64::from(c.sent)).sum();
    let sent_bytes: u64 = report.conns.iter().map(|c| c.bytes).sum();
    assert!(
        report.conns.iter().all(|c| c.errors.is_empty()),
        "{:?}",
        report.conns
    );
    assert_eq!(sent, 1200, "every message's send completed");

    let (last, stderr) = rx.finish();
    assert_eq!(
        last,
        format!("received {sent} messages, {sent_bytes} bytes from 2 peers"),
        "stderr: {stderr}"
    );
    assert_eq!(stderr.matches("Connected(").count(), 2, "{stderr}");
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn sender_example_feeds_the_receiver_example() {
    let env = env();
    let rx = RunningReceiver::start(
        "receiver",
        &[SocketAddr::new(env.ip, 0).to_string(), "1".into()],
    );
    let out = Command::new(example("sender"))
        .args([&env.dev, &rx.addr.to_string(), "300", "4096", "7"])
        .output()
        .expect("running the sender example");
    let sent = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sender example: {}; {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sent.trim(), "sent 300 messages, 1228800 bytes");
    let (last, stderr) = rx.finish();
    assert_eq!(last, "received 300 messages, 1228800 bytes from 1 peers");
    assert!(
        stderr.contains("tag: 7"),
        "the Hello's tag reached the receiver: {stderr}"
    );
}

#[test]
#[ignore = "needs a soft-RoCE device: run through deploy/testbed.sh (deploy/run-tests.sh)"]
fn sender_example_feeds_the_raw_srq_receiver_example() {
    let env = env();
    // 16 slots for 500 messages: every slot is reposted many times.
    let rx = RunningReceiver::start(
        "srq_receiver",
        &[
            SocketAddr::new(env.ip, 0).to_string(),
            "16".into(),
            "8192".into(),
        ],
    );
    let out = Command::new(example("sender"))
        .args([&env.dev, &rx.addr.to_string(), "500", "8192", "3"])
        .output()
        .expect("running the sender example");
    assert!(
        out.status.success(),
        "sender example: {}; {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "sent 500 messages, 4096000 bytes"
    );
    let (last, _) = rx.finish();
    assert_eq!(last, "received 500 messages, 4096000 bytes from peer 3");
}
