//! The external load generator: the same servers driven by `wrk` (a C program on epoll),
//! with the Lua script `session-bench/wrk/sessions.lua` sending pre-made session cookies
//! round-robin.
//!
//! Each run is `wrk -t2 -cN -dD -s sessions.lua URL -- PATH [COOKIE_FILE]`. Its req/s and
//! completed-request count are read from wrk's report; the CPU wrk used comes from this
//! process's `cutime`/`cstime` in `/proc/self/stat` (wrk is the only child reaped during
//! the run), the server's from its `schedstat`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// wrk's threads (the issue's `-t2`).
pub const THREADS: usize = 2;

/// The Lua script, kept in the repository and written next to the cookie files at run time,
/// so the binary works from any directory.
const SCRIPT: &str = include_str!("../wrk/sessions.lua");

/// What one wrk run measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkRun {
    pub rps: f64,
    /// Completed requests.
    pub requests: u64,
    /// Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
    pub errors: u64,
    /// CPU time wrk used (user + system), in microseconds, 10 ms resolution.
    pub client_cpu_us: f64,
}

/// Whether `wrk` can be run.
pub fn available() -> bool {
    // `wrk -v` prints its version and exits with status 1; any start counts.
    Command::new("wrk").arg("-v").output().is_ok()
}

/// A directory for the script and the cookie files of this benchmark process.
pub struct Workdir {
    dir: PathBuf,
}

impl Workdir {
    pub fn new() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("session-bench-wrk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::write(dir.join("sessions.lua"), SCRIPT)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn script(&self) -> PathBuf {
        self.dir.join("sessions.lua")
    }

    /// Writes `cookies` (one `Cookie` header value each) to a file named `name`.
    pub fn cookie_file(&self, name: &str, cookies: &[String]) -> Result<PathBuf, String> {
        let path = self.dir.join(name);
        let mut file =
            std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cookie in cookies {
            writeln!(file, "{cookie}").map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(path)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs wrk against `addr` for `duration` (whole seconds, at least one).
pub fn run(
    script: &Path,
    addr: SocketAddr,
    path: &str,
    cookies: Option<&Path>,
    connections: usize,
    duration: Duration,
) -> Result<WrkRun, String> {
    let seconds = duration.as_secs().max(1);
    let mut command = Command::new("wrk");
    command
        .arg(format!("-t{THREADS}"))
        .arg(format!("-c{}", connections.max(THREADS)))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg("--")
        .arg(path);
    if let Some(cookies) = cookies {
        command.arg(cookies);
    }
    let cpu_before = children_cpu_ticks();
    let output = command
        .output()
        .map_err(|e| format!("running wrk (Debian package `wrk`): {e}"))?;
    let cpu = children_cpu_ticks().saturating_sub(cpu_before);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "wrk failed ({}): {}{}",
            output.status,
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let mut run = parse(&text).ok_or_else(|| format!("unreadable wrk output:\n{text}"))?;
    run.client_cpu_us = cpu as f64 * 1e6 / TICKS_PER_SECOND;
    Ok(run)
}

/// Linux's `USER_HZ`, the unit of `/proc/*/stat` times: 100 on every architecture it
/// runs on here.
const TICKS_PER_SECOND: f64 = 100.0;

/// `cutime + cstime` of this process: CPU time of its reaped children, in ticks.
fn children_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_fields(&stat, &[15, 16])
}

/// `utime + stime` of this process (all threads), in ticks.
pub fn own_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_fields(&stat, &[13, 14])
}

/// Microseconds of CPU per request from a tick count.
pub fn ticks_per_request_us(ticks: u64, requests: u64) -> f64 {
    ticks as f64 * 1e6 / TICKS_PER_SECOND / requests.max(1) as f64
}

/// The sum of the given 0-based fields of a `/proc/PID/stat` line, counted after the
/// parenthesised command name (field 2), which may contain spaces.
fn stat_fields(stat: &str, indices: &[usize]) -> u64 {
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // `rest` starts with field 3 (the state), i.e. index 2.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    indices
        .iter()
        .filter_map(|&i| fields.get(i - 2)?.parse::<u64>().ok())
        .sum()
}

/// Reads wrk's report: `N requests in ...`, `Requests/sec: R`, and the error lines.
fn parse(text: &str) -> Option<WrkRun> {
    let mut run = WrkRun::default();
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        if let Some(rps) = line.strip_prefix("Requests/sec:") {
            run.rps = rps.trim().parse().ok()?;
            saw_rps = true;
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            run.requests = count.trim().parse().ok()?;
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.errors += n.trim().parse::<u64>().ok()?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            run.errors += errors
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    saw_rps.then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
Running 4s test @ http://127.0.0.1:40000
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  200.00us   5.00ms   90.00%
    Req/Sec    60.00k     2.00k   65.00k    70.00%
  480000 requests in 4.00s, 60.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec: 120000.50
Transfer/sec:     15.00MB
";

    #[test]
    fn wrk_report_is_read() {
        let run = parse(REPORT).unwrap();
        assert_eq!(run.requests, 480_000);
        assert_eq!(run.errors, 8);
        assert!((run.rps - 120_000.5).abs() < 1e-6);
    }

    #[test]
    fn output_without_a_rate_is_refused() {
        assert_eq!(
            parse("unable to connect to 127.0.0.1:1 Connection refused"),
            None
        );
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // pid (comm with spaces) state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime cutime cstime
        let stat = "42 (a b) S 1 42 42 0 -1 0 10 0 0 0 7 3 20 5 20 0";
        assert_eq!(stat_fields(stat, &[13, 14]), 10);
        assert_eq!(stat_fields(stat, &[15, 16]), 25);
    }
}
