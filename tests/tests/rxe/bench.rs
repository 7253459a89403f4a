//! `gdrx-bench` on real rxe: the comparison with perftest (both tools ran, their numbers are
//! consistent), payload verification for SEND and WRITE_WITH_IMM over a size sweep with every
//! provider kind, the Prometheus endpoint scraped while a run goes on, a consumer that holds
//! every buffer, a sender that dies mid-run and a server that is not there. No timing
//! thresholds: performance figures are printed, not asserted.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::env;

/// The `gdrx-bench` binary (`$GDRX_BENCH_BIN`, else `target/release/gdrx-bench`).
fn bench() -> PathBuf {
    super::workspace_bin(
        "gdrx-bench",
        "GDRX_BENCH_BIN",
        "cargo build --release -p gdrx-bench",
    )
}

fn out_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("GDRX_OUT").map_or_else(std::env::temp_dir, PathBuf::from);
    let d = base.join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("output folder");
    d
}

fn common(args: &mut Vec<String>) {
    let e = env();
    e.open();
    args.extend(["--dev".into(), e.dev, "--ip".into(), e.ip.to_string()]);
}

fn cmd(sub: &str, extra: &[&str]) -> Command {
    let mut args = vec![sub.to_string()];
    common(&mut args);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut c = Command::new(bench());
    c.args(args).env("RUST_BACKTRACE", "0");
    c
}

/// Runs gdrx-bench to completion; panics with its output unless it succeeded.
fn run_ok(sub: &str, extra: &[&str]) -> Output {
    let o = cmd(sub, extra).output().expect("running gdrx-bench");
    assert!(
        o.status.success(),
        "gdrx-bench {sub} {extra:?} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l}: {e}")))
        .collect()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing or not a number in {v}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing or not an integer in {v}"))
}

/// Bandwidth and message rate come from one clock: bw = rate x size, whatever the speed.
fn assert_consistent(what: &str, bw_mib_s: f64, mpps: f64, size: u64) {
    assert!(
        bw_mib_s > 0.0 && mpps > 0.0,
        "{what}: no throughput ({bw_mib_s} MiB/s, {mpps} Mpps)"
    );
    let implied = mpps * 1e6 * size as f64 / 1_048_576.0;
    assert!(
        (implied - bw_mib_s).abs() / bw_mib_s < 0.02,
        "{what}: {bw_mib_s} MiB/s but {mpps} Mpps x {size} B = {implied} MiB/s"
    );
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_compare_with_perftest_runs_both_tools() {
    let out = out_dir("compare-test");
    let o = run_ok(
        "compare",
        &[
            "--sizes",
            "64,4096",
            "-n",
            "300",
            "--reps",
            "1",
            "--json",
            "--out",
            out.to_str().expect("utf-8 path"),
        ],
    );
    let c = json_lines(&o).pop().expect("the comparison's JSON");
    let text = std::fs::read_to_string(out.join("compare.txt")).expect("compare.txt");
    println!("{text}");
    assert!(
        c["perftest_version"]
            .as_str()
            .is_some_and(|v| v.contains("6.") || v.contains("5.") || v.contains("4.")),
        "perftest's version was read: {}",
        c["perftest_version"]
    );
    assert_eq!(u(&c, "schema"), 2, "compare.json's layout version");
    let cfg = &c["config"];
    assert_eq!(u(cfg, "reps"), 1);
    assert_eq!(cfg["sizes"], serde_json::json!([64, 4096]));
    assert_eq!(cfg["iters"], serde_json::json!([[64, 300], [4096, 300]]));
    assert!(cfg["gdrx_receiver"]
        .as_str()
        .is_some_and(|r| r.contains("pool buffers")));
    let samples = c["samples"].as_array().expect("samples");
    assert_eq!(
        samples.len(),
        6,
        "2 sizes x 3 runs (perftest, gdrx fed by perftest, gdrx fed by gdrx) x 1 repetition"
    );
    for s in samples {
        let (tool, size) = (s["tool"].as_str().expect("tool"), u(s, "bytes"));
        let sender = s["sender"].as_str().expect("sender");
        let what = format!("{tool} fed by {sender} at {size} B");
        assert!(
            f(s, "rx_wall_s") >= 0.05,
            "{what}: the receiver's wall time runs from its start ({})",
            f(s, "rx_wall_s")
        );
        assert_eq!(u(s, "messages"), 300, "{what}");
        assert_consistent(&what, f(s, "bw_avg_mib_s"), f(s, "msg_rate_mpps"), size);
        assert!(
            f(s, "bw_peak_mib_s") >= f(s, "bw_avg_mib_s") * 0.999,
            "{what}: peak >= avg"
        );
        assert!(f(s, "rx_cpu_s") > 0.0, "{what}: the receiver used CPU time");
        assert!(
            f(s, "rx_process_cpu_s") >= f(s, "rx_cpu_s"),
            "{what}: the window is part of the process's life"
        );
        assert!(f(s, "tx_cpu_us_per_msg") > 0.0, "{what}: sender CPU");
        match tool {
            "perftest" => {
                let lines = s["perftest"].as_array().expect("perftest's result lines");
                let server = lines[0].as_str().expect("server line");
                assert!(server.starts_with(&size.to_string()), "{what}: {server}");
            }
            "gdrx" => {
                let row = &s["gdrx"];
                assert_eq!(u(row, "messages"), 300, "{what}");
                assert_eq!(u(row, "verify_errors"), 0, "{what}");
                assert!(f(row, "lat_p99_us") >= f(row, "lat_p50_us"), "{what}");
                if sender == "perftest" {
                    let client = s["perftest"][1].as_str().expect("the client's own line");
                    assert!(client.starts_with(&size.to_string()), "{what}: {client}");
                } else {
                    assert_eq!(sender, "gdrx-bench");
                }
            }
            t => panic!("unknown tool {t}"),
        }
    }
    for table in ["same_sender", "tool_vs_tool"] {
        assert_eq!(c[table]["mode"], table.replace('_', "-"));
        let sizes = c[table]["sizes"].as_array().expect("per-size summary");
        assert_eq!(sizes.len(), 2, "{table}");
        for s in sizes {
            for k in ["bw_ratio", "msg_rate_ratio", "cpu_ratio"] {
                let r = f(s, k);
                assert!(
                    r.is_finite() && r > 0.0,
                    "{table}: {k} = {r} at {} B",
                    u(s, "bytes")
                );
            }
            let bw = &s["gdrx"]["bw_avg_mib_s"];
            assert!(
                f(bw, "min") <= f(bw, "median") && f(bw, "median") <= f(bw, "max"),
                "{table}: min <= median <= max: {bw}"
            );
        }
    }
    assert!(
        text.find("SAME SENDER") < text.find("TOOL AGAINST TOOL"),
        "the same-sender table comes first"
    );
    for needle in [
        "target (same sender): avg BW at 64 B >= 1.10x ib_send_bw's receiver",
        "target (same sender): avg BW at 4096 B >= 1.10x ib_send_bw's receiver",
        "target (same sender): receiver CPU per message <= 0.8x",
        "measured under emulation",
    ] {
        assert!(text.contains(needle), "compare.txt has `{needle}`");
    }
    let svg = std::fs::read_to_string(out.join("bw_vs_size.svg"))
        .expect("the plot")
        .replace("&apos;", "'");
    assert!(svg.starts_with("<svg"), "an SVG document");
    for label in [
        "ib_send_bw's receiver (perftest)",
        "gdrx's receiver, fed by ib_send_bw",
        "gdrx's receiver, fed by gdrx-bench client",
    ] {
        assert!(
            svg.lines().filter(|l| l.trim() == label).count() == 3,
            "each panel's legend names `{label}`"
        );
    }
    assert!(
        svg.matches("<circle").count() >= 2 * 3 * 3,
        "a point per size, series and panel"
    );
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_verifies_send_and_write_imm_over_a_sweep_with_every_provider() {
    for (extra, what, per_size) in [
        (
            &[
                "--sizes",
                "1,4095,4096,4097,65536",
                "-n",
                "200",
                "-q",
                "2",
                "--verify",
                "-e",
                "--provider",
                "udmabuf",
                // 2 x 256 posted + 256 to hold, 48 MiB at 64 KiB: under udmabuf's 64 MiB limit.
                "-r",
                "256",
                "-C",
                "3",
                "--hold",
                "exp:20us",
            ][..],
            "SEND, event mode, udmabuf, 3 consumers",
            400,
        ),
        (
            &[
                "--sizes",
                "8,4096,16384",
                "-n",
                "500",
                "-q",
                "3",
                "--verify",
                "--op",
                "write-imm",
                "--provider",
                "hugepage",
                "-C",
                "0",
                "-l",
                "4",
            ][..],
            "WRITE_WITH_IMM, hugepage, inline consumer, post lists of 4",
            1500,
        ),
    ] {
        let o = run_ok("loopback", &[extra, &["--json"]].concat());
        let rows = json_lines(&o);
        println!("[{what}]\n{}", String::from_utf8_lossy(&o.stdout));
        assert!(!rows.is_empty());
        for r in &rows {
            let size = u(r, "bytes");
            let n = u(r, "messages");
            assert_eq!(u(r, "verify_errors"), 0, "{what} at {size} B");
            assert_eq!(
                u(r, "verified"),
                n,
                "{what} at {size} B: every payload checked"
            );
            assert_eq!(
                n, per_size,
                "{what} at {size} B: every connection's messages arrived"
            );
            assert_consistent(what, f(r, "bw_avg_mib_s"), f(r, "msg_rate_mpps"), size);
            // Every row says its layout version and how its memory was had.
            assert_eq!(u(r, "schema"), 1, "{what}: {r}");
            assert!(
                u(r, "page_size") >= 4096,
                "{what}: the page size obtained: {r}"
            );
            let reg = r["registration"].as_str().unwrap_or_default();
            assert!(
                reg == "address" || reg == "dmabuf",
                "{what}: registration path {reg:?}"
            );
        }
    }
    // The table shows them too.
    let table = run_ok(
        "loopback",
        &["-s", "4096", "-n", "100", "--provider", "hugepage"],
    );
    let text = String::from_utf8_lossy(&table.stdout);
    let header = text
        .lines()
        .find(|l| l.contains("#bytes"))
        .unwrap_or_default();
    assert!(
        header.ends_with("   page      reg"),
        "page and registration columns: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("4096") && l.ends_with(" address")),
        "a row with its registration path: {text}"
    );
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l.contains("pool=\"gdrx-bench\""))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_exposes_pool_metrics_to_prometheus_while_it_runs() {
    let addr = "127.0.0.1:19464";
    let child = cmd(
        "loopback",
        &[
            "-s",
            "4096",
            "-D",
            "5",
            "--verify",
            "-C",
            "2",
            "--hold",
            "uniform:0-50us",
            "--prometheus",
            addr,
            "--json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("starting gdrx-bench");
    let t0 = Instant::now();
    let mut seen = None;
    while t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(300));
        if let Some(body) = scrape(addr) {
            if let Some(n) = metric(&body, "gdrx_pool_completions_total") {
                if n > 0.0 {
                    seen = Some(body);
                    break;
                }
            }
        }
    }
    let o = child.wait_with_output().expect("gdrx-bench");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let body = seen.expect("the endpoint served gdrx_pool_completions_total > 0 during the run");
    println!(
        "scraped during the run:\n{}",
        body.lines()
            .filter(|l| l.starts_with("gdrx_pool"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for m in [
        "gdrx_pool_slots_posted",
        "gdrx_pool_bytes_received_total",
        "gdrx_pool_recycles_total",
    ] {
        assert!(metric(&body, m).is_some(), "{m} is exported");
    }
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 1);
    assert_eq!(u(&rows[0], "verify_errors"), 0);
    assert!(u(&rows[0], "messages") > 0);
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_consumer_holding_every_buffer_is_counted_and_loses_nothing() {
    let o = run_ok(
        "loopback",
        &[
            "-s",
            "1024",
            "-n",
            "400",
            "-r",
            "32",
            "--pool-slots",
            "64",
            "-C",
            "1",
            "--hold",
            "5ms",
            "--verify",
            "--json",
        ],
    );
    let r = &json_lines(&o)[0];
    println!("{r}");
    assert_eq!(u(r, "messages"), 400, "every message arrived");
    assert_eq!(u(r, "verify_errors"), 0);
    assert!(
        u(r, "pool_empty_events") >= 1,
        "a 5 ms hold per lease drains a 64-buffer pool"
    );
    assert!(
        u(r, "max_leases_out") >= 60,
        "the consumer held (nearly) every buffer"
    );
    let rnr = r["rnr_naks"].as_u64().expect("rxe counts RNR NAKs");
    assert!(rnr > 0, "the sender stalled on RNR NAKs");
}

/// `gdrx-bench server` for one run on `port`, once it listens; its stderr, the rest of which
/// says how the run ended.
fn one_run_server(port: &str) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    server_with(port, &[])
}

/// The same, with more arguments.
fn server_with(
    port: &str,
    extra: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    server_runs(port, "1", extra)
}

/// A server for `runs` runs, with more arguments.
fn server_runs(
    port: &str,
    runs: &str,
    extra: &[&str],
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut args = vec!["--port", port, "--runs", runs, "--idle-timeout", "60"];
    args.extend(extra);
    let mut server = cmd("server", &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("server");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    while !line.contains("listening on") {
        line.clear();
        assert!(
            err.read_line(&mut line).expect("server stderr") > 0,
            "server ended early"
        );
    }
    (server, err)
}

/// perftest's own client, `ib_send_bw -R`, to `port` (killed after 120 s: it has no timeouts).
fn perftest_client(port: &str, args: &[&str]) -> Output {
    let e = env();
    Command::new("timeout")
        .args(["120", "ib_send_bw", "-d", &e.dev, "-F", "-R", "-p", port])
        .args(args)
        .arg(e.ip.to_string())
        .output()
        .expect("running ib_send_bw (deploy/install-deps.sh installs perftest)")
}

/// `ib_send_bw -R` with `client` against `gdrx-bench server --perftest` with `server` on
/// `port`, for a run the server must fail: asserts that it failed and that the client ended
/// without being killed (it has no timeouts: the server answers it to the end of its run).
/// Returns the server's stderr, which says why.
fn perftest_run_fails(port: &str, server: &[&str], client: &[&str], what: &str) -> String {
    let mut args = vec!["--perftest"];
    args.extend(server);
    let (mut server, mut err) = server_with(port, &args);
    let c = perftest_client(port, client);
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("server stderr");
    let st = server.wait().expect("server");
    println!("{what}: server:\n{rest}\nclient: {}", c.status);
    assert!(!st.success(), "{what}: the server fails the run");
    assert_ne!(
        c.status.code(),
        Some(124),
        "{what}: the client did not hang until killed"
    );
    rest
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_is_fed_by_perftests_own_client() {
    // Two QPs, so that the data connections are counted from the requests.
    let port = "18611";
    let (server, mut err) = server_with(
        port,
        &["--perftest", "-s", "4096", "-n", "500", "-q", "2", "--json"],
    );
    let c = perftest_client(port, &["-s", "4096", "-n", "500", "-q", "2"]);
    let client = String::from_utf8_lossy(&c.stdout).into_owned();
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("server stderr");
    let o = server.wait_with_output().expect("server");
    println!(
        "ib_send_bw:\n{client}{}\ngdrx-bench server:\n{rest}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(
        c.status.success(),
        "ib_send_bw -R finished against gdrx's receiver"
    );
    assert!(o.status.success(), "the server finished the run");
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 1, "one run");
    let r = &rows[0];
    assert_eq!(u(r, "messages"), 1000, "500 messages on each of 2 QPs");
    assert_eq!(u(r, "qps"), 2);
    assert_eq!(u(r, "bytes"), 4096);
    assert_eq!(u(r, "verify_errors"), 0, "every message was 4096 B");
    assert_consistent(
        "gdrx fed by ib_send_bw",
        f(r, "bw_avg_mib_s"),
        f(r, "msg_rate_mpps"),
        4096,
    );
    assert!(
        client
            .lines()
            .any(|l| l.trim_start().starts_with("4096")
                && l.split_whitespace().nth(1) == Some("1000")),
        "the client reports its 4096 B run of 2 x 500 iterations (it counts all its QPs): {client}"
    );

    // A client that sends more than the server was told: the run fails, naming the count.
    let rest = perftest_run_fails(
        "18612",
        &["-s", "4096", "-n", "400"],
        &["-s", "4096", "-n", "500"],
        "told 400, sent 500",
    );
    assert!(
        // Caught in the run ("connection 0 sent more than the 400 messages announced") or
        // after its 400th ("sent 100 messages more than the 400 per QP announced").
        rest.contains("more than the 400") && rest.contains("announced (-n)"),
        "and says why: {rest}"
    );

    // Without -n the run ends with the client's closing exchange.
    let port = "18614";
    let (server, _err) = server_with(port, &["--perftest", "-s", "512", "--json"]);
    let c = perftest_client(port, &["-s", "512", "-n", "300"]);
    let o = server.wait_with_output().expect("server");
    assert!(
        c.status.success() && o.status.success(),
        "a run of unknown count"
    );
    let rows = json_lines(&o);
    assert_eq!(
        u(&rows[0], "messages"),
        300,
        "every message, counted to the close"
    );

    // More QPs than the server was told: measured and answered to the end, then failed
    // naming -q.
    let rest = perftest_run_fails(
        "18615",
        &["-s", "512", "-q", "1"],
        &["-s", "512", "-n", "200", "-q", "2"],
        "told -q 1, opened 2",
    );
    assert!(
        rest.contains("opened 2 data connections (its -q) but this server was told -q 1"),
        "and says why: {rest}"
    );

    // Messages of another size than -s are counted and fail the run.
    let rest = perftest_run_fails(
        "18613",
        &["-s", "4096", "-n", "200"],
        &["-s", "1024", "-n", "200"],
        "told 4096 B, sent 1024 B",
    );
    assert!(
        rest.contains("were not 4096 B long"),
        "and says why: {rest}"
    );
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_reports_a_sender_that_dies_and_a_missing_server() {
    let port = "18601";
    let (mut server, mut err) = one_run_server(port);
    let mut client = cmd("client", &["--port", port, "-s", "4096", "-D", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("client");
    std::thread::sleep(Duration::from_secs(3));
    client.kill().expect("SIGKILL the client");
    let _ = client.wait();
    let t0 = Instant::now();
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("server stderr");
    let st = server.wait().expect("server");
    println!("server after the sender died ({:?}):\n{rest}", t0.elapsed());
    assert!(!st.success(), "the server fails the run");
    assert!(rest.contains("disconnected after"), "and says why: {rest}");

    let t0 = Instant::now();
    let o = cmd(
        "client",
        &["--port", "18602", "-n", "10", "--connect-timeout", "1"],
    )
    .output()
    .expect("client");
    let msg = String::from_utf8_lossy(&o.stderr);
    println!("client without a server ({:?}): {msg}", t0.elapsed());
    assert!(!o.status.success());
    assert!(
        msg.contains("is `gdrx-bench server` running there?"),
        "{msg}"
    );
}

/// A connect request's private data for the benchmark's run descriptor, as bench/src/proto.rs
/// lays it out after the Hello: magic "GBEN" | run_id u32 | qps u16 | op u8 (1 = send,
/// 2 = write-imm) | flags u8 (2 = the client's last run) | iters u64 | duration_ms u32 |
/// tx_depth u32. Written out here, not with gdrx-bench's own encoder: these are foreign peers.
fn descriptor(
    run_id: u32,
    conn: u32,
    qps: u16,
    op: u8,
    size: u32,
    iters: u64,
    tx_depth: u32,
) -> Vec<u8> {
    use gdrx_core::wire::Hello;
    let mut private = Hello {
        flags: 0,
        conn_tag: conn,
        max_msg: size,
    }
    .encode()
    .to_vec();
    private.extend_from_slice(b"GBEN");
    private.extend_from_slice(&run_id.to_le_bytes());
    private.extend_from_slice(&qps.to_le_bytes());
    private.extend_from_slice(&[op, 2]);
    private.extend_from_slice(&iters.to_le_bytes());
    private.extend_from_slice(&0u32.to_le_bytes());
    private.extend_from_slice(&tx_depth.to_le_bytes());
    private
}

/// A foreign peer's connection (or its refusal) to the server on `port` with `private`.
fn rogue_connect(
    port: u16,
    private: &[u8],
) -> anyhow::Result<(
    gdrx_core::Connection,
    Arc<gdrx_core::Pd>,
    Arc<gdrx_core::Cq>,
)> {
    use gdrx_core::{ConnectionSpec, Cq, QpConfig};
    let e = env();
    let dev = e.open();
    let pd = dev.alloc_pd()?;
    let cq = Cq::new(&dev, 64)?;
    let spec = ConnectionSpec::new(&pd, &cq, &cq, None).qp(QpConfig {
        max_send_wr: 8,
        max_recv_wr: 1,
        ..QpConfig::default()
    });
    let addr = std::net::SocketAddr::new(e.ip, port);
    let conn = gdrx_core::connect(addr, None, &spec, private)?;
    Ok((conn, pd, cq))
}

/// A sender that speaks the benchmark's handshake but not its promise: it announces `iters`
/// messages and sends `count`, flagging message `last_at` (1-based) as the last, or none.
fn rogue_sender(port: u16, iters: u64, count: u32, last_at: Option<u32>) -> anyhow::Result<()> {
    use gdrx_core::WorkCompletion;
    use gdrx_core::{Access, HostMemory, SendBatch, SendFlags, SendOp};

    let (mut conn, pd, cq) = rogue_connect(port, &descriptor(7, 0, 1, 1, 64, iters, 8))?;
    let mr = pd.register(Arc::new(HostMemory::new(64)?), Access::recv())?;
    let sge = mr.sge(0, 64).expect("in the MR");
    let (mut batch, mut wcs) = (SendBatch::with_capacity(1, 1), WorkCompletion::buffer(8));
    for seq in 0..count {
        let last = last_at == Some(seq + 1);
        batch.clear();
        batch.push(
            u64::from(seq),
            SendOp::SendWithImm(seq | if last { 1 << 31 } else { 0 }),
            &[sge],
            SendFlags::SIGNALED,
        )?;
        // SAFETY: the SGE lies in `mr`, which outlives the send: each send is reaped below
        // before the next is posted.
        unsafe { conn.qp().post_send(&mut batch)? };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n = cq.poll(&mut wcs)?;
            if n > 0 {
                wcs[0].result()?;
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "no send completion in 30 s");
        }
    }
    // Give the server time to see it all before the disconnect.
    std::thread::sleep(Duration::from_millis(500));
    let _ = conn.disconnect();
    Ok(())
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_fails_a_run_whose_sender_breaks_its_announced_count() {
    let cases: [(&str, u64, u32, Option<u32>, &str); 3] = [
        (
            "18611",
            20,
            10,
            Some(10),
            "announced 20 messages but flagged message 10 as its last",
        ),
        (
            "18612",
            20,
            30,
            None,
            "sent more than the 20 messages its run descriptor announced",
        ),
        (
            "18613",
            20,
            25,
            Some(20),
            "connection 0 sent a message (sequence 20) after the one it flagged as its last",
        ),
    ];
    for (port, iters, count, last_at, want) in cases {
        let (mut server, mut err) = one_run_server(port);
        // The rogue's own errors (the server may drop it first) do not matter here.
        let sent = rogue_sender(port.parse().unwrap(), iters, count, last_at);
        let mut rest = String::new();
        err.read_to_string(&mut rest).expect("server stderr");
        let st = server.wait().expect("server");
        println!("rogue {count} of {iters}, last at {last_at:?} (sender: {sent:?}):\n{rest}");
        assert!(!st.success(), "the server fails the run: {rest}");
        assert!(rest.contains(want), "and says why ({want}): {rest}");
    }
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_loopback_reports_a_pool_it_cannot_build_at_once_naming_the_flags() {
    // 1024 buffers of 8 MiB (-r 512 gives twice as many pool slots): 8 GiB, over the memory
    // limit (--max-memory-mib, half the VM's memory), which loopback checks before it starts.
    let t0 = Instant::now();
    let o = cmd("loopback", &["-s", "8388608", "-n", "10"])
        .output()
        .expect("loopback");
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("loopback with an 8 GiB pool ({took:?}): {err}");
    assert!(!o.status.success());
    assert!(
        err.contains("receiver") && err.contains("1024 buffers of 8388608 B (8192.0 MiB)"),
        "the receiver's error, with the total: {err}"
    );
    assert!(
        err.contains("lower --pool-slots, or -r/--rx-depth"),
        "names the flags: {err}"
    );
    // The receiver's own error, not the sender's connect timeout that used to come first.
    assert!(
        !err.contains("sender") && !err.to_lowercase().contains("timed out"),
        "the receiver's error alone, at once ({took:?}): {err}"
    );
}

/// The server's peak resident memory (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_refuses_oversized_announcements_before_allocating_and_serves_on() {
    let port = "18621";
    let (mut server, mut err) = server_with(port, &["-r", "64"]);
    // (label, qps, op, size, tx depth, what the refusal must name)
    let cases: [(&str, u16, u8, u32, u32, &str); 3] = [
        ("10,000 QPs", 10_000, 1, 64, 8, "at most 64 (--max-qps)"),
        ("1 GiB messages", 1, 1, 1 << 30, 8, "(--max-memory-mib)"),
        (
            "tx depth 2^20 (WRITE windows)",
            2,
            2,
            65536,
            1 << 20,
            "WRITE windows of 2 x (192 + tx depth 1048576) x 65536 B",
        ),
    ];
    for (i, (label, qps, op, size, depth, want)) in cases.into_iter().enumerate() {
        let r = rogue_connect(
            port.parse().unwrap(),
            &descriptor(100 + i as u32, 0, qps, op, size, 10, depth),
        );
        let e = match r {
            Ok(_) => panic!("{label}: the server accepted it"),
            Err(e) => format!("{e:#}"),
        };
        println!("{label}: {e}");
        assert!(
            e.contains("the peer said: gdrx-bench:"),
            "{label}: the server's reason: {e}"
        );
        assert!(
            e.contains(want),
            "{label}: names the limit and its flag ({want}): {e}"
        );
    }
    // Nothing was allocated for them: the 1 GiB case alone would have asked for 128 GiB.
    let rss = peak_rss_mib(server.id());
    println!("server peak RSS after the refusals: {rss:.1} MiB");
    assert!(rss < 128.0, "RSS bounded: {rss:.1} MiB");
    // The server is alive and serves the next, well-behaved sender.
    let o = run_ok(
        "client",
        &[
            "--port", port, "-s", "4096", "-n", "2000", "--verify", "--json",
        ],
    );
    let st = server.wait().expect("server");
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("server stderr");
    let mut out = String::new();
    server
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("server stdout");
    println!(
        "server stderr:\n{rest}\nserver stdout:\n{out}\nclient: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        st.success(),
        "the good run after the refusals succeeds: {rest}"
    );
    assert_eq!(
        rest.matches("refusing a connection request").count(),
        3,
        "each refusal is logged: {rest}"
    );
    assert!(out.contains(" 4096 "), "the good run's row: {out}");
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_abandons_a_stalled_handshake_and_serves_the_sender_that_waited() {
    let e = env();
    // Two stalls, each while a good sender arrives: a peer that never completes RDMA CM's
    // handshake (no RTU after the server's reply), and one that announces a run of 2
    // connections and opens 1. A server each (the good client's run is its last).
    for (kind, port) in [("no RTU", "18622"), ("1 of 2 connections", "18623")] {
        let (mut server, mut err) = server_with(port, &["-r", "64", "--handshake-timeout", "3"]);
        let addr = std::net::SocketAddr::new(e.ip, port.parse().unwrap());
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let stalled = match kind {
            "no RTU" => std::thread::spawn(move || {
                let s = gdrx_tests::stall::stall(
                    addr,
                    &descriptor(400, 0, 1, 1, 64, 10, 8),
                    Duration::from_secs(30),
                );
                let _ = done_rx.recv_timeout(Duration::from_secs(60));
                s.replied
            }),
            _ => std::thread::spawn(move || {
                let c = rogue_connect(addr.port(), &descriptor(401, 0, 2, 1, 64, 10, 8))
                    .expect("the stalled run's first connection is accepted");
                let _ = done_rx.recv_timeout(Duration::from_secs(60));
                drop(c);
                true
            }),
        };
        std::thread::sleep(Duration::from_millis(500));
        // A good sender arrives while that run stalls: held, then served.
        let t0 = Instant::now();
        let o = run_ok(
            "client",
            &[
                "--port", port, "-s", "4096", "-n", "2000", "--verify", "--json",
            ],
        );
        let took = t0.elapsed();
        let _ = done_tx.send(());
        let replied = stalled.join().expect("the stalled peer's thread");
        println!(
            "{kind}: the good sender was served after {took:?} (the stalled peer got a reply: \
             {replied}); client: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(replied, "{kind}: the server answered the stalled request");
        let row: Value = serde_json::from_slice(&o.stdout).expect("the client's JSON row");
        assert_eq!(row["messages"], 2000, "{row}");
        // It waited for the stalled run's timeout, not for its own connect timeout (20 s).
        assert!(took < Duration::from_secs(18), "{kind}: {took:?}");
        let st = server.wait().expect("server");
        let mut rest = String::new();
        err.read_to_string(&mut rest).expect("server stderr");
        println!("{kind}: server stderr:\n{rest}");
        assert!(
            st.success(),
            "{kind}: a stalled run is not a failed run: {rest}"
        );
        assert_eq!(
            rest.matches("abandoned the 64 B run").count(),
            1,
            "{kind}: the stall is reported: {rest}"
        );
        let cause = if kind == "no RTU" {
            "0 of its 1 connections arrived"
        } else {
            "1 of its 2 connections arrived: no new connection for 3s (--handshake-timeout)"
        };
        assert!(
            rest.contains(cause),
            "{kind}: with its cause ({cause}): {rest}"
        );
    }
}

/// The GID table index of the device's entry for `ip` (IPv4-mapped), read from sysfs.
fn gid_index_of(dev: &str, ip: std::net::IpAddr) -> u32 {
    let std::net::IpAddr::V4(v4) = ip else {
        panic!("the testbed's address is IPv4")
    };
    let want = v4.to_ipv6_mapped();
    (0..64)
        .find(|i| {
            std::fs::read_to_string(format!("/sys/class/infiniband/{dev}/ports/1/gids/{i}"))
                .ok()
                .and_then(|g| g.trim().parse::<std::net::Ipv6Addr>().ok())
                .is_some_and(|g| g == want)
        })
        .expect("a GID entry for the testbed's address")
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_takes_perftests_device_port_gid_and_address_flags() {
    let e = env();
    e.open();
    let x = gid_index_of(&e.dev, e.ip);
    // No $GDRX_RDMA_IP: the server's address comes from -x, the client's target is the last
    // argument, as with ib_send_bw.
    let bare = |args: &[&str]| {
        let mut c = Command::new(bench());
        c.args(args)
            .env_remove("GDRX_RDMA_IP")
            .env_remove("GDRX_RDMA_DEV")
            .env("RUST_BACKTRACE", "0");
        c
    };
    let xs = x.to_string();
    let mut server = bare(&[
        "server",
        "--ib-dev",
        &e.dev,
        "-i",
        "1",
        "-x",
        &xs,
        "-p",
        "18631",
        "--runs",
        "1",
        "--idle-timeout",
        "60",
        "--json",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("server");
    let mut err = BufReader::new(server.stderr.take().expect("stderr"));
    let mut line = String::new();
    err.read_line(&mut line).expect("server stderr");
    println!("server -x {x}: {line}");
    assert!(
        line.contains(&format!("listening on {}:18631", e.ip)),
        "-x {x} picks the address {}: {line}",
        e.ip
    );
    let ip = e.ip.to_string();
    let c = bare(&[
        "client", "-d", &e.dev, "-p", "18631", "-s", "512", "-n", "500", "--verify", &ip,
    ])
    .output()
    .expect("client");
    let o = server.wait_with_output().expect("server");
    println!(
        "client: {}{}\nserver: {}",
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&c.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(c.status.success() && o.status.success());
    let row: Value = serde_json::from_slice(&o.stdout).expect("server JSON row");
    assert_eq!(u(&row, "messages"), 500);
    // No address at all, a link-local GID, a GID that does not exist, a port that does not:
    // each says what to give instead.
    let cases: [(&[&str], &str); 4] = [
        (
            &["server", "-d", &e.dev],
            "give --ip (or set $GDRX_RDMA_IP), or -x",
        ),
        (
            &["client", "-d", &e.dev],
            "give it as the last argument, as with perftest",
        ),
        (
            &["server", "-d", &e.dev, "-x", "999"],
            "has no GID entry 999 (it has: ",
        ),
        (
            &["server", "-d", &e.dev, "--ip", &ip, "-i", "7"],
            "has 1 port(s), numbered from 1: there is no port 7",
        ),
    ];
    for (args, want) in cases {
        let o = bare(args).output().expect("gdrx-bench");
        let msg = String::from_utf8_lossy(&o.stderr);
        println!("{args:?}: {msg}");
        assert!(!o.status.success(), "{args:?}");
        assert!(msg.contains(want), "{args:?} says {want}: {msg}");
    }
    // Entry 0 of a RoCE port is the link-local address derived from the MAC.
    let g0 = std::fs::read_to_string(format!("/sys/class/infiniband/{}/ports/1/gids/0", e.dev))
        .unwrap_or_default();
    if g0.starts_with("fe80") {
        let o = bare(&["server", "-d", &e.dev, "-x", "0"])
            .output()
            .expect("gdrx-bench");
        let msg = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && msg.contains("link-local"), "{msg}");
    } else {
        panic!(
            "GID 0 of {} is not link-local ({g0}): the test needs another case",
            e.dev
        );
    }
}

/// bench/src/proto.rs's payload pattern, written out for this foreign peer: byte k of message
/// (conn, seq) is byte k % 8 of the little-endian word (conn, seq, k / 8).
fn pattern(conn: u16, seq: u32, len: usize) -> Vec<u8> {
    let word = |w: u64| {
        let mut z = ((u64::from(conn) << 32) | u64::from(seq))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(w.wrapping_mul(0xd1b5_4a32_d192_ed03));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..len)
        .map(|k| word(k as u64 / 8).to_le_bytes()[k % 8])
        .collect()
}

/// Posts one signaled send work request on `conn` and returns its completion's result.
fn send_one(
    conn: &gdrx_core::Connection,
    cq: &gdrx_core::Cq,
    op: gdrx_core::SendOp,
    sges: &[gdrx_core::Sge],
) -> Result<(), gdrx_core::WcError> {
    use gdrx_core::{SendBatch, SendFlags, WorkCompletion};
    let mut batch = SendBatch::with_capacity(1, 1);
    batch.push(1, op, sges, SendFlags::SIGNALED).expect("room");
    // SAFETY: the SGEs lie in MRs the caller keeps alive until this returns, after the
    // completion was polled.
    unsafe { conn.qp().post_send(&mut batch).expect("post") };
    let mut wcs = WorkCompletion::buffer(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if cq.poll(&mut wcs).expect("poll") == 1 {
            return wcs[0].result();
        }
        assert!(Instant::now() < deadline, "no send completion in 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[ignore = "needs an rxe device: run through deploy/testbed.sh"]
fn bench_server_isolates_each_connections_write_window() {
    use gdrx_core::wire::Welcome;
    use gdrx_core::{Access, HostMemory, SendOp, WcStatus};

    let port = "18641";
    let (mut server, mut err) = server_runs(port, "2", &["-r", "16"]);
    // Two attacks, one run each: connection 0 writes into connection 1's window with
    // connection 1's rkey, and with its own rkey at connection 1's address.
    for (run, own_rkey) in [(300u32, false), (301, true)] {
        let what = if own_rkey {
            "its own rkey"
        } else {
            "the victim's rkey"
        };
        // A WRITE_WITH_IMM run of 2 connections, 1 message of 64 B each, verified.
        let desc = |conn| {
            let mut d = descriptor(run, conn, 2, 2, 64, 1, 8);
            d[16 + 11] = 1; // FLAG_VERIFY, and not the client's last run
            d
        };
        let mut connect = |conn| match rogue_connect(port.parse().unwrap(), &desc(conn)) {
            Ok(c) => c,
            Err(e) => {
                let _ = server.kill();
                let mut rest = String::new();
                let _ = err.read_to_string(&mut rest);
                panic!("{what}: connection {conn}: {e:#}; server stderr:\n{rest}");
            }
        };
        let (c0, pd0, cq0) = connect(0);
        let (c1, pd1, cq1) = connect(1);
        let window = |c: &gdrx_core::Connection| {
            Welcome::decode(c.peer_private_data())
                .expect("a Welcome")
                .window
                .expect("a WRITE window")
        };
        let (w0, w1) = (window(&c0), window(&c1));
        println!("{what}: window 0 {w0:?}, window 1 {w1:?}");
        assert_ne!(w0.rkey, w1.rkey, "a key per connection");
        // -r 16 on 2 connections: 48 pool buffers, plus the sender's tx depth of 8: 56 slots of
        // 64 B, exactly (the sender derives its slot count from the length).
        assert_eq!((w0.len, w1.len), (56 * 64, 56 * 64), "{w0:?} {w1:?}");
        // The victim writes its message's payload into slot 0 of its window.
        let good = Arc::new(HostMemory::new(64).unwrap());
        // SAFETY: nothing else refers to the fresh mapping.
        unsafe { std::slice::from_raw_parts_mut(good.as_ptr(), 64) }
            .copy_from_slice(&pattern(1, 0, 64));
        let good_mr = pd1.register(good, Access::recv()).unwrap();
        let write = |rkey| SendOp::RdmaWrite {
            remote_addr: w1.addr,
            rkey,
        };
        send_one(&c1, &cq1, write(w1.rkey), &[good_mr.sge(0, 64).unwrap()])
            .expect("the victim writes its own window");
        // The intruder tries to overwrite it.
        let junk = pd0
            .register(Arc::new(HostMemory::new(64).unwrap()), Access::recv())
            .unwrap();
        let rkey = if own_rkey { w0.rkey } else { w1.rkey };
        let e = send_one(&c0, &cq0, write(rkey), &[junk.sge(0, 64).unwrap()])
            .expect_err("the intruding write must fail");
        println!("{what}: the intruder's write: {e}");
        assert_eq!(e.status, WcStatus::RemoteAccess, "{e}");
        // The victim's message completes with a write into slot 1 of its window (the server
        // checks the length, and the payload of message 0 in slot 0): what is checked is slot
        // 0 as the write before the intrusion left it.
        let zeros = pd1
            .register(Arc::new(HostMemory::new(64).unwrap()), Access::recv())
            .unwrap();
        send_one(
            &c1,
            &cq1,
            SendOp::RdmaWriteWithImm {
                remote_addr: w1.addr + 64,
                rkey: w1.rkey,
                imm: 1 << 31, // sequence 0, the last
            },
            &[zeros.sge(0, 64).unwrap()],
        )
        .expect("the victim's message");
        std::thread::sleep(Duration::from_millis(500));
        drop((c0, c1));
    }
    let st = server.wait().expect("server");
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("server stderr");
    println!("server stderr:\n{rest}");
    // Each run fails for the intruder, and says the victim's data held.
    assert!(!st.success());
    let failed: Vec<&str> = rest
        .lines()
        .filter(|l| l.starts_with("gdrx-bench server: run failed:"))
        .collect();
    assert_eq!(failed.len(), 2, "{rest}");
    for l in failed {
        assert!(
            l.contains("the sender of connection 0 disconnected")
                && l.contains(
                    "messages per connection [0, 1], 1 payloads verified, 0 failed verification"
                ),
            "the intruder's run fails, and the victim's message arrived and verified: {l}"
        );
    }
}
