//! Child processes for `compare`: spawned with their output captured line by line, waited for
//! with a deadline, and reaped with `wait4` so that their CPU time (user + system, every thread)
//! is known: the receiver CPU time of perftest and of gdrx is measured the same way.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Captured output of a child.
#[derive(Debug, Default)]
struct Captured {
    lines: Vec<String>,
    eof: u32,
}

/// A running child process.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    out: Arc<(Mutex<Captured>, Condvar)>,
    reaped: bool,
    /// When it was spawned.
    started: Instant,
}

/// How a child ended.
#[derive(Debug, Clone)]
pub struct Exit {
    /// Exit status.
    pub status: ExitStatus,
    /// User + system CPU time of the process and its threads.
    pub cpu: Duration,
    /// Wall time from spawn to exit.
    pub wall: Duration,
    /// stdout and stderr lines, interleaved as they arrived.
    pub output: Vec<String>,
}

impl Exit {
    /// The output as one string.
    pub fn text(&self) -> String {
        self.output.join("\n")
    }
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr captured.
    ///
    /// # Errors
    /// When the program cannot be started (with its name and what to install).
    pub fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Proc> {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {name} ({:?}): is it installed? (deploy/install-deps.sh installs perftest)",
                    cmd.get_program()
                )
            })?;
        let out = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        let pipes: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        for pipe in pipes {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let (m, cv) = &*out;
                    m.lock().expect("lock").lines.push(line);
                    cv.notify_all();
                }
                let (m, cv) = &*out;
                m.lock().expect("lock").eof += 1;
                cv.notify_all();
            });
        }
        Ok(Proc {
            name: name.to_string(),
            child,
            out,
            reaped: false,
            started,
        })
    }

    /// Waits until a line containing `pat` was printed.
    ///
    /// # Errors
    /// When the process closes its output first, or `timeout` passes.
    pub fn wait_for_line(&self, pat: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().expect("lock");
        loop {
            if g.lines.iter().any(|l| l.contains(pat)) {
                return Ok(());
            }
            if g.eof == 2 {
                bail!(
                    "{} ended before printing `{pat}`:\n{}",
                    self.name,
                    g.lines.join("\n")
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "{} did not print `{pat}` within {timeout:?}:\n{}",
                    self.name,
                    g.lines.join("\n")
                );
            }
            g = cv.wait_timeout(g, left).expect("lock").0;
        }
    }

    /// CPU time (user + system) the process used so far, from `/proc/PID/stat` (clock-tick
    /// resolution, normally 10 ms).
    ///
    /// # Errors
    /// When the file cannot be read or parsed (the process is gone).
    pub fn cpu_now(&self) -> anyhow::Result<Duration> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        cpu_from_stat(&stat).with_context(|| format!("parsing {path}: {stat}"))
    }

    /// Waits for the process to exit, killing it after `timeout`.
    ///
    /// # Errors
    /// When `wait4` fails, or the process had to be killed.
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<Exit> {
        let t0 = Instant::now();
        let pid = self.child.id() as libc::pid_t;
        let mut killed = false;
        let (status, ru) = loop {
            let mut status = 0;
            // SAFETY: rusage is plain old data; all-zero is a valid value.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let flags = if killed { 0 } else { libc::WNOHANG };
            // SAFETY: `pid` is our child, not reaped yet (std's Child has not waited on it: we
            // never call its wait methods after this point); the out-pointers are valid.
            let r = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
            if r == pid {
                break (ExitStatus::from_raw(status), ru);
            }
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e).with_context(|| format!("waiting for {}", self.name));
            }
            if t0.elapsed() > timeout && !killed {
                let _ = self.child.kill();
                killed = true;
                continue;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.reaped = true;
        let wall = self.started.elapsed();
        let cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
        // Let the readers reach end of file.
        let (m, cv) = &*self.out;
        let mut g = m.lock().expect("lock");
        let until = Instant::now() + Duration::from_secs(2);
        while g.eof < 2 && Instant::now() < until {
            g = cv
                .wait_timeout(g, Duration::from_millis(50))
                .expect("lock")
                .0;
        }
        let exit = Exit {
            status,
            cpu,
            wall,
            output: std::mem::take(&mut g.lines),
        };
        drop(g);
        if killed {
            bail!(
                "{} did not finish within {timeout:?} and was killed; its output:\n{}",
                self.name,
                exit.text()
            );
        }
        Ok(exit)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// utime + stime of a `/proc/PID/stat` line. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted from the last `)`: state is field 3, utime 14, stime 15.
fn cpu_from_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn tv(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_runs_from_spawn_not_from_wait() {
        let p = Proc::spawn("sleep", Command::new("sleep").arg("0.3")).unwrap();
        // The child ends while nobody waits for it.
        std::thread::sleep(Duration::from_millis(600));
        let e = p.wait(Duration::from_secs(10)).unwrap();
        assert!(
            e.wall >= Duration::from_millis(300),
            "a 0.3 s process ran {:?}",
            e.wall
        );
    }

    #[test]
    fn child_cpu_time_and_output_are_captured() {
        let p = Proc::spawn(
            "sh",
            Command::new("sh").args([
                "-c",
                "echo ready; i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo done >&2",
            ]),
        )
        .unwrap();
        p.wait_for_line("ready", Duration::from_secs(10)).unwrap();
        let e = p.wait(Duration::from_secs(60)).unwrap();
        assert!(e.status.success());
        assert!(e.output.iter().any(|l| l == "done"), "stderr captured");
        assert!(e.cpu > Duration::ZERO, "a busy loop used CPU time");
        assert!(e.cpu <= e.wall + Duration::from_millis(50));
    }

    #[test]
    fn proc_stat_cpu_fields() {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        let line = "4242 (ib send (bw)) R 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(
            cpu_from_stat(line),
            Some(Duration::from_nanos(300 * 1_000_000_000 / hz))
        );
        assert_eq!(cpu_from_stat("garbage"), None);
        let p = Proc::spawn("sleep", Command::new("sleep").arg("5")).unwrap();
        assert!(p.cpu_now().unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn a_hanging_child_is_killed_and_reported() {
        let p = Proc::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        let err = p.wait(Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("killed"), "{err}");
    }

    #[test]
    fn a_missing_program_is_a_clear_error() {
        let err = Proc::spawn("nope", &mut Command::new("/nonexistent/ib_send_bw")).unwrap_err();
        assert!(format!("{err:#}").contains("install"), "{err:#}");
    }

    #[test]
    fn waiting_for_a_line_that_never_comes_fails() {
        let p = Proc::spawn("true", &mut Command::new("true")).unwrap();
        assert!(p
            .wait_for_line("listening", Duration::from_secs(10))
            .is_err());
    }
}
