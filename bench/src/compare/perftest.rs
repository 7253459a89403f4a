//! perftest's side of the comparison: its arguments, its runs (retried when perftest fails to
//! start or its CPU-frequency estimate failed), and its output.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{per_msg, rnr_delta, Args, Sample};
use crate::opts::Op;
use crate::proc::{Exit, Proc};
use crate::report::MIB;

/// How often a perftest run that failed to start or reported nothing is tried.
const PERFTEST_ATTEMPTS: u16 = 4;

/// A perftest result line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerfLine {
    /// Message size.
    pub bytes: u32,
    /// Iterations.
    pub iters: u64,
    /// Peak bandwidth, MiB/s.
    pub peak_mib_s: f64,
    /// Average bandwidth, MiB/s.
    pub avg_mib_s: f64,
    /// Message rate, Mpps.
    pub mpps: f64,
}

/// Finds the result line of a perftest BW report (`#bytes #iterations BW peak BW average
/// MsgRate`), converting Gb/s to MiB/s when perftest reported Gb/s. Returns the line too.
pub fn parse_perftest(text: &str) -> Option<(PerfLine, String)> {
    let mut lines = text.lines();
    while let Some(h) = lines.next() {
        if !(h.contains("#bytes") && h.contains("BW average")) {
            continue;
        }
        let scale = if h.contains("Gb/sec") {
            1e9 / 8.0 / MIB
        } else {
            1.0
        };
        // perftest may print a warning between the header and the numbers (e.g. "Correlation
        // coefficient r^2: 0.66 < 0.9" when its CPU frequency estimate failed).
        let row = lines.find(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|w| w.parse::<u32>().is_ok())
        })?;
        let f: Vec<&str> = row.split_whitespace().collect();
        if f.len() < 5 {
            return None;
        }
        return Some((
            PerfLine {
                bytes: f[0].parse().ok()?,
                iters: f[1].parse().ok()?,
                peak_mib_s: f[2].parse::<f64>().ok()? * scale,
                avg_mib_s: f[3].parse::<f64>().ok()? * scale,
                mpps: f[4].parse().ok()?,
            },
            row.trim().to_string(),
        ));
    }
    None
}

impl Args {
    pub(super) fn perftest_prog(&self) -> PathBuf {
        let name = self.send.op.perftest();
        self.perftest_dir
            .as_ref()
            .map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }

    /// perftest's arguments for one size; only what differs from perftest's defaults is
    /// passed, so the run is what a perftest user gets.
    pub fn perftest_args(&self, size: u32, port: u16, client: bool) -> Vec<String> {
        let s = &self.send;
        let mut v: Vec<String> = vec![
            "-d".into(),
            self.target.dev.clone(),
            "-s".into(),
            size.to_string(),
            "-F".into(),
            "-R".into(),
            "-p".into(),
            port.to_string(),
        ];
        let mut opt = |flag: &str, val: String| {
            v.push(flag.into());
            v.push(val);
        };
        match s.duration {
            Some(d) => opt("-D", (d.ceil() as u64).max(1).to_string()),
            None => opt("-n", self.iters(size).to_string()),
        }
        if s.qps != 1 {
            opt("-q", s.qps.to_string());
        }
        if s.tx_depth != 128 {
            opt("-t", s.tx_depth.to_string());
        }
        if s.cq_mod != 100 {
            opt("-Q", s.cq_mod.to_string());
        }
        if s.post_list != 1 {
            opt("-l", s.post_list.to_string());
        }
        if s.op == Op::Send && self.recv.rx_depth != 512 {
            opt("-r", self.recv.rx_depth.to_string());
        }
        if self.target.ib_port != 1 {
            opt("-i", self.target.ib_port.to_string());
        }
        if self.recv.events {
            v.push("-e".into());
        }
        if client {
            v.push(self.ip().to_string());
        }
        v
    }

    pub(super) fn run_perftest(&self, size: u32, rep: u32) -> anyhow::Result<Sample> {
        let prog = self.perftest_prog();
        let mut last_err = None;
        let mut zero = None;
        for attempt in 0..PERFTEST_ATTEMPTS {
            let port = self.perftest_port + attempt;
            // perftest writes through stdio, fully buffered into a pipe: make it line buffered
            // so that its "waiting" line arrives when it is printed.
            let server = Proc::spawn(
                "perftest server",
                Command::new("stdbuf")
                    .arg("-oL")
                    .arg(&prog)
                    .args(self.perftest_args(size, port, false)),
            )?;
            server.wait_for_line("Waiting for client", Duration::from_secs(60))?;
            // perftest prints that line just before it binds: give it a moment.
            std::thread::sleep(Duration::from_millis(400));
            let cpu0 = server.cpu_now()?;
            let rnr0 = crate::report::rnr_counter(&self.target.dev);
            let client = Proc::spawn(
                "perftest client",
                Command::new(&prog).args(self.perftest_args(size, port, true)),
            )?;
            let c = client.wait(self.timeout())?;
            if !c.status.success() {
                // The server is killed when it goes out of scope.
                last_err = Some(format!(
                    "{} client failed ({}):\n{}",
                    prog.display(),
                    c.status,
                    c.text()
                ));
                eprintln!(
                    "[compare] perftest client failed (attempt {}), retrying",
                    attempt + 1
                );
                continue;
            }
            let s = server.wait(self.timeout())?;
            if !s.status.success() {
                bail!(
                    "{} server failed ({}):\n{}",
                    prog.display(),
                    s.status,
                    s.text()
                );
            }
            let rnr = rnr_delta(rnr0, &self.target.dev);
            let sample = self.perftest_sample(size, rep, &s, &c, cpu0, rnr)?;
            if sample.bw_avg_mib_s > 0.0 && sample.msg_rate_mpps > 0.0 {
                return Ok(sample);
            }
            // perftest turns cycles into seconds with a CPU frequency it estimates at start;
            // when the estimate fails it says so (r^2 < 0.9) and reports 0. Run it again.
            let why = [s.text(), c.text()]
                .iter()
                .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
                .find(|l| l.contains("Correlation coefficient"))
                .unwrap_or_else(|| "no reason printed".into());
            eprintln!(
                "[compare] perftest reported no throughput at {size} B (attempt {} of \
                 {PERFTEST_ATTEMPTS}; its CPU frequency estimate: {}), retrying",
                attempt + 1,
                why.trim()
            );
            zero = Some(sample);
        }
        if let Some(s) = zero {
            eprintln!(
                "[compare] perftest reported no throughput at {size} B in {PERFTEST_ATTEMPTS} \
                 attempts: its figures for this run are 0"
            );
            return Ok(s);
        }
        bail!(last_err.unwrap_or_default())
    }

    fn perftest_sample(
        &self,
        size: u32,
        rep: u32,
        s: &Exit,
        c: &Exit,
        cpu0: Duration,
        rnr_naks: Option<u64>,
    ) -> anyhow::Result<Sample> {
        let parse = |e: &Exit, side: &str| {
            parse_perftest(&e.text()).with_context(|| {
                format!("no result line in perftest's {side} output:\n{}", e.text())
            })
        };
        let (cl, cline) = parse(c, "client")?;
        let (bw, peak, rate, sline) = match self.send.op {
            Op::Send => {
                let (sl, sline) = parse(s, "server")?;
                // The server (receiver) reports no peak; the client does.
                (
                    sl.avg_mib_s,
                    cl.peak_mib_s.max(sl.avg_mib_s),
                    sl.mpps,
                    sline,
                )
            }
            // ib_write_bw's server sees nothing: the client's figures are all there is.
            Op::WriteImm => (cl.avg_mib_s, cl.peak_mib_s, cl.mpps, String::new()),
        };
        if cl.bytes != size {
            bail!("perftest reported size {} for a {size} B run", cl.bytes);
        }
        let messages = self.messages(&cl);
        Ok(Sample {
            tool: "perftest",
            sender: "perftest",
            rep,
            turn: 0,
            bytes: size,
            messages,
            bw_avg_mib_s: bw,
            bw_peak_mib_s: peak,
            msg_rate_mpps: rate,
            rx_cpu_us_per_msg: per_msg(s.cpu.saturating_sub(cpu0), messages),
            rx_cpu_s: s.cpu.saturating_sub(cpu0).as_secs_f64(),
            rx_process_cpu_s: s.cpu.as_secs_f64(),
            rx_wall_s: s.wall.as_secs_f64(),
            tx_cpu_us_per_msg: per_msg(c.cpu, messages),
            rnr_naks,
            gdrx: None,
            perftest: Some((sline, cline)),
        })
    }
}

/// perftest's version line (`--version`), or why there is none.
pub(super) fn perftest_version(prog: &Path) -> String {
    Command::new(prog)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .chain(String::from_utf8_lossy(&o.stderr).lines())
                .find(|l| l.to_lowercase().contains("version"))
                .unwrap_or("version unknown")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "not found".into())
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::*;

    // Output of perftest 6.06's ib_send_bw on rxe (server side, then client side).
    const SERVER: &str = "\
---------------------------------------------------------------------------------------
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
 4096       2000             0.00               18.68  \t\t   0.004782
---------------------------------------------------------------------------------------
";
    const ZEROS: &str = "\
 #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]
Correlation coefficient r^2: 0.667368 < 0.9
 65536      2000             0.00               0.00   \t\t   0.000000
";
    const CLIENT_GBITS: &str = "\
 #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]
 64         2000           0.000000            0.005918            0.011559
";

    #[test]
    fn perftest_result_lines_parse() {
        let (l, line) = parse_perftest(SERVER).unwrap();
        assert_eq!((l.bytes, l.iters), (4096, 2000));
        assert!((l.avg_mib_s - 18.68).abs() < 1e-9);
        assert!((l.mpps - 0.004782).abs() < 1e-12);
        assert!(line.starts_with("4096"));
        let (g, _) = parse_perftest(CLIENT_GBITS).unwrap();
        assert!(
            (g.avg_mib_s - 0.005918e9 / 8.0 / MIB).abs() < 1e-9,
            "Gb/s converted"
        );
        let (z, _) = parse_perftest(ZEROS).unwrap();
        assert_eq!(
            (z.bytes, z.avg_mib_s, z.mpps),
            (65536, 0.0, 0.0),
            "the warning is skipped"
        );
        assert!(parse_perftest("Couldn't connect to 10.77.0.1:18515").is_none());
        assert!(
            parse_perftest(" #bytes #iterations BW peak BW average MsgRate\n garbage\n").is_none()
        );
    }

    /// A stand-in ib_send_bw whose server reports 0 (with perftest's r^2 warning) for its first
    /// `zeros` runs: compare must run it again and take the first real result.
    fn fake_perftest(name: &str, zeros: u32) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("gdrx-fake-perftest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let script = format!(
            r#"#!/bin/sh
dir=$(dirname "$0")
hdr=" #bytes     #iterations    BW peak[MB/sec]    BW average[MB/sec]   MsgRate[Mpps]"
case "$*" in
*10.77.0.1*) echo "$hdr"; echo " 4096       300              18.00              15.25  		   0.003904";;
*) n=$(cat "$dir/runs" 2>/dev/null || echo 0); n=$((n+1)); echo $n >"$dir/runs"
   echo " Waiting for client to connect... *"; sleep 0.3; echo "$hdr"
   if [ $n -le {zeros} ]; then
       echo "Correlation coefficient r^2: 0.667368 < 0.9"
       echo " 4096       300              0.00               0.00   		   0.000000"
   else
       echo " 4096       300              0.00               14.50  		   0.003712"
   fi;;
esac
"#
        );
        let p = d.join("ib_send_bw");
        std::fs::write(&p, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    #[test]
    fn perftest_zero_results_are_run_again() {
        let d = fake_perftest("retry", 2);
        let a = args(&["-n", "300", "--perftest-dir", d.to_str().unwrap()]);
        let s = a.run_perftest(4096, 1).unwrap();
        assert_eq!(std::fs::read_to_string(d.join("runs")).unwrap().trim(), "3");
        assert_eq!(s.bw_avg_mib_s, 14.5);
        assert_eq!(s.msg_rate_mpps, 0.003712);
        // Every attempt failing: the zero result is kept (and reported), not an error.
        let d = fake_perftest("allzero", 99);
        let a = args(&["-n", "300", "--perftest-dir", d.to_str().unwrap()]);
        let s = a.run_perftest(4096, 1).unwrap();
        assert_eq!(
            std::fs::read_to_string(d.join("runs")).unwrap().trim(),
            PERFTEST_ATTEMPTS.to_string()
        );
        assert_eq!(s.bw_avg_mib_s, 0.0);
    }
}
