//! # session-bench: session-core against its peers, side by side in one run
//!
//! ```sh
//! cargo run --release -p session-bench            # the full benchmark (a few minutes)
//! cargo run --release -p session-bench -- --smoke # seconds: every path once, for CI
//! ```
//!
//! ## What runs
//!
//! Five server variants serve the same routes with the same handlers and payloads
//! (see [`serve`]): bare axum with no sessions; tower-sessions 0.14 with its memory store and
//! with tower-sessions-redis-store; session-core with its memory store and with its Redis store.
//! Each runs in a child process of this binary (`session-bench serve VARIANT`), on a
//! multi-threaded Tokio runtime, so that its memory can be read from `/proc/PID/status` and it
//! does not share a runtime with the load generator.
//!
//! The load generator ([`load`]) runs in this process on a single-threaded runtime: N hyper 1
//! HTTP/1.1 keep-alive connections over loopback (32 by default), each sending one request at
//! a time. In returning-visitor scenarios each connection first gets a session of its own
//! (one untimed request without a cookie; one more to fill the cart in scenario 5) and then
//! sends that cookie on every request; new visitors send no cookie.
//!
//! ## Scenarios
//!
//! 1. the handler never takes the session (the lazy path), returning visitor;
//! 2. new visitor: the session is created and saved;
//! 3. returning visitor, read only (`/peek`);
//! 4. returning visitor, counter increment (`/`);
//! 5. returning visitor with a 64 KB `cart`, changing only `views`.
//!
//! ## Method
//!
//! - Each scenario starts fresh servers for its variants. Then, for each of R rounds, every
//!   variant in turn (A B C A B C ...) gets a short warm-up and a timed run of D seconds with
//!   the same connections. Alternating spreads machine noise over all variants alike.
//! - The server's CPU time per request (all its threads, from `/proc/PID/task/*/schedstat`)
//!   is measured over each timed run too: it shows what the session layer costs even when the
//!   load generator, sharing the two cores, limits the requests/s.
//! - Requests/s, p50 and p99 are the median over rounds. A ratio between two variants is the
//!   median over rounds of the ratio within each round, so a slow moment that hits both
//!   cancels out.
//! - Store calls are counted inside the server by a wrapper around each store (session-core's
//!   `Store`, tower-sessions' `SessionStore`), read from `/__stats` before and after each timed
//!   run. Writes are creates + saves + touches + deletes.
//! - Bytes sent to the store per request are measured on the wire, the same way for both
//!   libraries: after the timed runs, each Redis variant gets a fresh server connected to Redis
//!   through a counting TCP proxy ([`wire`]) and a short untimed run; every byte its client sends
//!   to Redis (commands, keys, values, framing, reads included) counts. A memory store has no
//!   wire, so memory variants show none. A byte-counting run with failed requests, or in which
//!   nothing reached Redis, fails the benchmark instead of reporting 0.
//! - Returning visitors must find their session: an answer showing a new session (`You visited
//!   1 times`, `views: 0`) fails the benchmark, so a broken cookie lookup cannot pass for speed.
//! - Memory per session: a fresh server of each memory-store variant, warmed up on the lazy
//!   route, has its VmRSS read before and after 100 000 new-visitor requests; the difference
//!   is divided by the sessions the store then holds.
//! - Redis variants use `redis://127.0.0.1:6379` (or `--redis URL`) and delete what they wrote
//!   at the end of each scenario: session-core's keys by their `session-bench:` prefix,
//!   tower-sessions' (which have no prefix) by the ids the counting wrapper saw created.
//!   If Redis cannot be reached, the Redis variants are skipped with a note, or, with
//!   `SESSIONS_REQUIRE_SERVERS=1` (as CI sets it), the benchmark fails.
//!
//! The report is Markdown (so BENCHMARKS.md can hold it verbatim) and ends with one line:
//! `summary: counter_vs_tower=R1 counter_vs_bare=R2 lazy_vs_bare=R3 bigsession_bytes_vs_tower=R4`.
//!
//! For profiling, `session-bench drive VARIANT SCENARIO [--duration S | --requests N]` starts
//! one server, prints its pid, waits two seconds (attach `perf record -p PID` then) and drives
//! it. With `SESSION_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind"` the server runs under
//! that command instead (it exits cleanly when the benchmark is done with it, so the tool
//! writes its data).

mod counting;
mod external;
mod load;
mod report;
mod serve;
mod variant;
mod wire;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::load::{Conn, Limit, RunResult};
use crate::report::{Cell, MemoryResult, Report};
use crate::variant::{Scenario, Variant};

/// Everything the command line can set.
#[derive(Clone, Debug)]
pub struct Options {
    pub smoke: bool,
    pub rounds: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    /// Sessions created for the memory measurement.
    pub sessions: u64,
    /// Requests of the untimed byte-counting run.
    pub accounting: u64,
    pub redis_url: String,
    pub redis: bool,
    pub memory: bool,
    pub scenarios: Vec<Scenario>,
    /// Also drive the servers with wrk (`--wrk`), or only with wrk (`--wrk-only`).
    pub wrk: bool,
    pub in_process: bool,
    /// wrk's rounds, run length, connections, and sessions made per server beforehand.
    pub wrk_rounds: usize,
    pub wrk_duration: Duration,
    pub wrk_connections: usize,
    pub wrk_sessions: usize,
}

impl Options {
    fn full() -> Self {
        Self {
            smoke: false,
            rounds: 8,
            duration: Duration::from_millis(1200),
            warmup: Duration::from_millis(300),
            connections: 32,
            sessions: 100_000,
            accounting: 400,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis: true,
            memory: true,
            scenarios: Scenario::ALL.to_vec(),
            wrk: false,
            in_process: true,
            wrk_rounds: 3,
            wrk_duration: Duration::from_secs(4),
            wrk_connections: 64,
            wrk_sessions: 256,
        }
    }

    fn smoke() -> Self {
        Self {
            smoke: true,
            rounds: 1,
            duration: Duration::from_millis(250),
            warmup: Duration::from_millis(50),
            connections: 8,
            sessions: 5_000,
            accounting: 40,
            wrk_rounds: 1,
            wrk_duration: Duration::from_secs(1),
            wrk_sessions: 16,
            ..Self::full()
        }
    }
}

const USAGE: &str = "\
usage:
  session-bench [--smoke] [--rounds N] [--duration SECS] [--warmup SECS] [--connections N]
                [--sessions N] [--redis URL | --no-redis] [--no-memory] [--scenarios LIST]
                [--wrk | --wrk-only] [--wrk-rounds N] [--wrk-duration SECS]
      runs the benchmark; LIST is a comma-separated subset of lazy,new,peek,counter,big;
      --wrk also drives the servers with wrk (side by side with the in-process client),
      --wrk-only with wrk alone
  session-bench serve VARIANT [--redis URL]
      serves one variant (bare, tower-mem, tower-redis, ours-mem, ours-redis)
  session-bench drive VARIANT SCENARIO [--duration SECS | --requests N] [--connections N]
                [--redis URL]
      starts one server, prints its pid, waits 2 s (attach a profiler), drives it;
      SESSION_BENCH_SERVER_WRAPPER=\"valgrind --tool=callgrind\" runs the server under a tool";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve_command(&args[1..]),
        Some("drive") => drive_command(&args[1..]),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => parse_options(&args).and_then(|options| bench(&options)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Already said, before the report, so that the summary stays the last line.
        Err(error) if error.is_empty() => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("session-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let base = if args.iter().any(|a| a == "--smoke") {
        Options::smoke()
    } else {
        Options::full()
    };
    let mut options = base;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--smoke" => {}
            "--rounds" => options.rounds = number(&value(arg)?)?.max(1.0) as usize,
            "--duration" => options.duration = Duration::from_secs_f64(number(&value(arg)?)?),
            "--warmup" => options.warmup = Duration::from_secs_f64(number(&value(arg)?)?),
            "--connections" => options.connections = number(&value(arg)?)?.max(1.0) as usize,
            "--sessions" => options.sessions = number(&value(arg)?)? as u64,
            "--redis" => options.redis_url = value(arg)?,
            "--no-redis" => options.redis = false,
            "--no-memory" => options.memory = false,
            "--wrk" => options.wrk = true,
            "--wrk-only" => {
                options.wrk = true;
                options.in_process = false;
                options.memory = false;
            }
            "--wrk-rounds" => options.wrk_rounds = number(&value(arg)?)?.max(1.0) as usize,
            "--wrk-duration" => {
                options.wrk_duration = Duration::from_secs_f64(number(&value(arg)?)?.max(1.0))
            }
            "--scenarios" => {
                options.scenarios = value(arg)?
                    .split(',')
                    .map(|name| {
                        Scenario::parse(name.trim())
                            .ok_or_else(|| format!("unknown scenario {name:?}"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .ok_or_else(|| format!("{text:?} is not a number"))
}

/// `--redis URL` among `args`, or the default.
fn redis_arg(args: &[String]) -> String {
    args.iter()
        .position(|a| a == "--redis")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| Options::full().redis_url)
}

fn serve_command(args: &[String]) -> Result<(), String> {
    let variant = args
        .first()
        .and_then(|name| Variant::parse(name))
        .ok_or_else(|| format!("serve needs a variant\n{USAGE}"))?;
    serve::serve(variant, &redis_arg(args))
}

fn drive_command(args: &[String]) -> Result<(), String> {
    let variant = args.first().and_then(|n| Variant::parse(n));
    let scenario = args.get(1).and_then(|n| Scenario::parse(n));
    let (Some(variant), Some(scenario)) = (variant, scenario) else {
        return Err(format!("drive needs a variant and a scenario\n{USAGE}"));
    };
    // `--requests N` stops after N requests instead of a time (for slow profilers).
    let mut rest: Vec<String> = args[2..].to_vec();
    let mut requests = None;
    if let Some(i) = rest.iter().position(|a| a == "--requests") {
        let n = rest.get(i + 1).ok_or("--requests needs a value")?;
        requests = Some(number(n)? as u64);
        rest.drain(i..=i + 1);
    }
    let mut options = parse_options(&rest)?;
    if !args.iter().any(|a| a == "--duration") {
        options.duration = Duration::from_secs(10);
    }
    let limit = requests.map_or(Limit::Time(options.duration), Limit::Requests);
    runtime()?.block_on(async {
        let server = Server::start(variant, &options.redis_url)?;
        let mut conns = server.connect(scenario, options.connections).await?;
        println!("server pid {}", server.pid());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = server.stats().await?;
        let cpu_before = server.cpu_ns();
        let result = load::run(&mut conns, scenario.path(), limit).await;
        let cpu = server.cpu_ns().saturating_sub(cpu_before);
        let delta = server.stats().await?.since(&before);
        let per_request = |n: f64| n / result.requests.max(1) as f64;
        println!(
            "{variant} {}: {:.0} req/s, p50 {} µs, p99 {} µs, server CPU {:.1} µs/req, errors {}, writes/req {:.4}",
            scenario.name(),
            result.rps(),
            result.quantile(0.5),
            result.quantile(0.99),
            per_request(cpu as f64 / 1000.0),
            result.errors,
            per_request(delta.writes() as f64),
        );
        server.cleanup().await;
        Ok(())
    })
}

/// The load generator's runtime: one thread, so the server gets the other core.
/// Whether a missing server is a failure rather than a skip (CI sets it), as in the tests.
fn servers_required() -> bool {
    std::env::var("SESSIONS_REQUIRE_SERVERS").is_ok_and(|v| v == "1" || v == "true")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Progress, on standard error, with the time since the start.
fn progress(start: Instant, message: std::fmt::Arguments<'_>) {
    eprintln!("[{:>5.1}s] {message}", start.elapsed().as_secs_f64());
}

/// What a server's `/__stats` said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub loads: u64,
    pub creates: u64,
    pub saves: u64,
    pub touches: u64,
    pub deletes: u64,
    pub sessions: u64,
}

impl StoreStats {
    fn parse(text: &str) -> Self {
        let mut stats = Self::default();
        for pair in text.split_whitespace() {
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.parse().unwrap_or(0);
            match name {
                "loads" => stats.loads = value,
                "creates" => stats.creates = value,
                "saves" => stats.saves = value,
                "touches" => stats.touches = value,
                "deletes" => stats.deletes = value,
                "sessions" => stats.sessions = value,
                _ => {}
            }
        }
        stats
    }

    /// The counts since `earlier` (`sessions` stays as it is now).
    fn since(&self, earlier: &Self) -> Self {
        Self {
            loads: self.loads - earlier.loads,
            creates: self.creates - earlier.creates,
            saves: self.saves - earlier.saves,
            touches: self.touches - earlier.touches,
            deletes: self.deletes - earlier.deletes,
            sessions: self.sessions,
        }
    }

    fn add(&mut self, other: &Self) {
        self.loads += other.loads;
        self.creates += other.creates;
        self.saves += other.saves;
        self.touches += other.touches;
        self.deletes += other.deletes;
    }

    pub fn writes(&self) -> u64 {
        self.creates + self.saves + self.touches + self.deletes
    }
}

/// One server child process.
struct Server {
    variant: Variant,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `session-bench serve VARIANT` and waits until it listens.
    fn start(variant: Variant, redis_url: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // A profiler to run the server under, as in
        // SESSION_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind".
        let wrapper = std::env::var("SESSION_BENCH_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(exe);
                command
            }
            None => Command::new(exe),
        };
        let mut child = command
            .args(["serve", variant.name(), "--redis", redis_url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting the {variant} server: {e}"))?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        match addr {
            Some(addr) => Ok(Self {
                variant,
                child,
                addr,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("the {variant} server did not start"))
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory, in bytes; an error when it cannot be read.
    fn rss(&self) -> Result<u64, String> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path)
            .map_err(|e| format!("{}: reading {path}: {e}", self.variant))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .filter(|&kib| kib > 0)
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("{}: no VmRSS in {path}", self.variant))
    }

    /// CPU time the server's threads have used so far, in nanoseconds (from
    /// `/proc/PID/task/*/schedstat`).
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    async fn get(&self, path: &'static str, cookie: Option<&str>) -> Result<load::Answer, String> {
        let answer = load::fetch(self.addr, path, cookie)
            .await
            .map_err(|e| format!("{} GET {path}: {e}", self.variant))?;
        if answer.status != 200 {
            return Err(format!(
                "{} GET {path}: status {}: {}",
                self.variant,
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ));
        }
        Ok(answer)
    }

    async fn stats(&self) -> Result<StoreStats, String> {
        let answer = self.get("/__stats", None).await?;
        Ok(StoreStats::parse(&String::from_utf8_lossy(&answer.body)))
    }

    /// Deletes what the server wrote to Redis, and says so if that fails.
    async fn cleanup(&self) {
        if !self.variant.uses_redis() {
            return;
        }
        match self.get("/__cleanup", None).await {
            Ok(answer) => {
                let text = String::from_utf8_lossy(&answer.body).into_owned();
                if text.starts_with("error") {
                    eprintln!("{}: Redis cleanup failed: {text}", self.variant);
                }
            }
            Err(error) => eprintln!("{}: Redis cleanup failed: {error}", self.variant),
        }
    }

    /// The scenario's connections: for returning visitors each with a session of its own,
    /// made by one untimed request (and one more to fill the cart in the large-session
    /// scenario).
    async fn connect(&self, scenario: Scenario, n: usize) -> Result<Vec<Conn>, String> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let cookie = if scenario.returning() {
                Some(self.new_session(scenario == Scenario::BigSession).await?)
            } else {
                None
            };
            let conn = Conn::open(self.addr, cookie.as_deref())
                .await
                .map_err(|e| format!("{}: connecting: {e}", self.variant))?;
            conns.push(conn);
        }
        Ok(conns)
    }

    /// A cookie naming a new session (with the large cart if `big`). Bare axum gets a cookie
    /// of the same size, which it ignores, so that every variant parses the same requests.
    async fn new_session(&self, big: bool) -> Result<String, String> {
        if self.variant.cookie_name().is_none() {
            return Ok(format!("sid={}", "x".repeat(76)));
        }
        let answer = self.get("/", None).await?;
        let cookie = answer
            .set_cookie
            .ok_or_else(|| format!("{}: no session cookie from GET /", self.variant))?;
        if big {
            self.get("/__bigcart", Some(&cookie)).await?;
        }
        Ok(cookie)
    }
}

impl Drop for Server {
    /// Closes the server's standard input, which makes it exit (and a profiler around it
    /// write its data), and kills it if it has not exited within ten seconds.
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether something accepts TCP connections where `url` (`redis://[user@]host:port[/db]`)
/// points.
async fn reachable(url: &str) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(wire::host_port(url))
        )
        .await,
        Ok(Ok(_))
    )
}

async fn redis_version(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// The CPU time the Redis server has used since it started (`used_cpu_sys + used_cpu_user`),
/// in seconds. It runs on the same cores as the benchmark, so it is part of each request's cost.
async fn redis_cpu_seconds(url: &str) -> Option<f64> {
    let client = redis::Client::open(url).ok()?;
    let mut connection = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut connection)
        .await
        .ok()?;
    let total = info
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_sys:")
                .or_else(|| l.strip_prefix("used_cpu_user:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum();
    Some(total)
}

fn bench(options: &Options) -> Result<(), String> {
    let start = Instant::now();
    runtime()?.block_on(async {
        let mut notes = Vec::new();
        let mut problems = Vec::new();
        let mut redis_version_text = None;
        let mut use_redis = options.redis;
        if use_redis {
            if reachable(&options.redis_url).await {
                redis_version_text = redis_version(&options.redis_url).await;
                // Leftovers of an interrupted run.
                let _ = serve::delete_prefix(&options.redis_url, serve::OURS_REDIS_PREFIX).await;
            } else if servers_required() {
                return Err(format!(
                    "Redis is required (SESSIONS_REQUIRE_SERVERS=1) but nothing answers at {}",
                    options.redis_url
                ));
            } else {
                use_redis = false;
                let note = format!("Redis variants skipped: nothing answers at {}.", options.redis_url);
                eprintln!("session-bench: {note} Set SESSIONS_REQUIRE_SERVERS=1 to make this a failure.");
                notes.push(note);
            }
        } else {
            notes.push("Redis variants skipped (--no-redis).".to_owned());
        }

        let wire = if use_redis {
            Some(wire::WireCounter::start(&options.redis_url)?)
        } else {
            None
        };
        let mut cells: HashMap<(Scenario, Variant), Cell> = HashMap::new();
        let in_process_scenarios: &[Scenario] = if options.in_process { &options.scenarios } else { &[] };
        for &scenario in in_process_scenarios {
            let variants: Vec<Variant> = scenario
                .variants()
                .into_iter()
                .filter(|v| use_redis || !v.uses_redis())
                .collect();
            progress(start, format_args!("scenario {}: starting {} servers", scenario.name(), variants.len()));
            let mut servers = Vec::new();
            for &variant in &variants {
                let server = Server::start(variant, &options.redis_url)?;
                let conns = server.connect(scenario, options.connections).await?;
                servers.push((server, conns));
            }
            for round in 0..options.rounds {
                for (server, conns) in &mut servers {
                    let path = scenario.path();
                    if !options.warmup.is_zero() {
                        load::run(conns, path, Limit::Time(options.warmup)).await;
                    }
                    let before = server.stats().await?;
                    let cpu_before = server.cpu_ns();
                    let client_before = external::own_cpu_ticks();
                    let result = load::run(conns, path, Limit::Time(options.duration)).await;
                    let client = external::own_cpu_ticks().saturating_sub(client_before);
                    let cpu = server.cpu_ns().saturating_sub(cpu_before);
                    let delta = server.stats().await?.since(&before);
                    progress(
                        start,
                        format_args!(
                            "{} round {}/{}: {:<12} {:>8.0} req/s  p50 {:>5} µs  p99 {:>6} µs  server CPU {:>5.1} µs/req  writes/req {:.3}{}",
                            scenario.name(),
                            round + 1,
                            options.rounds,
                            server.variant.name(),
                            result.rps(),
                            result.quantile(0.5),
                            result.quantile(0.99),
                            cpu as f64 / 1000.0 / result.requests.max(1) as f64,
                            delta.writes() as f64 / result.requests.max(1) as f64,
                            if result.errors > 0 { format!("  ERRORS {}", result.errors) } else { String::new() },
                        ),
                    );
                    problems.extend(check_run(server.variant, scenario, &result));
                    if conns.len() < options.connections {
                        // A connection broke (counted as an error): replace it.
                        let missing = options.connections - conns.len();
                        conns.extend(server.connect(scenario, missing).await?);
                    }
                    let cell = cells.entry((scenario, server.variant)).or_default();
                    cell.push(&result, &delta, cpu);
                    cell.client_cpu_us.push(external::ticks_per_request_us(client, result.requests));
                }
            }
            // Bytes sent to Redis per request, on the wire: fresh servers of the Redis
            // variants, one at a time, connected through a counting proxy, each given a short
            // untimed run after its sessions are made.
            if let Some(wire) = &wire {
                for &variant in variants.iter().filter(|v| v.uses_redis()) {
                    let server = Server::start(variant, wire.url())?;
                    let mut conns = server.connect(scenario, options.connections).await?;
                    let before = wire.sent();
                    let result = load::run(&mut conns, scenario.path(), Limit::Requests(options.accounting)).await;
                    let sent = wire.sent() - before;
                    let run_problems = check_run(variant, scenario, &result);
                    if run_problems.is_empty() && sent == 0 {
                        problems.push(format!(
                            "{} / {variant}: nothing reached Redis in the byte-counting run.",
                            scenario.name()
                        ));
                    } else if run_problems.is_empty() {
                        if let Some(cell) = cells.get_mut(&(scenario, variant)) {
                            cell.bytes_per_request = Some(sent as f64 / result.requests as f64);
                        }
                    }
                    problems.extend(run_problems.into_iter().map(|p| format!("byte-counting run: {p}")));
                    drop(conns);
                    server.cleanup().await;
                }
            }
            for (server, conns) in servers {
                drop(conns);
                server.cleanup().await;
            }
        }

        let mut memory = Vec::new();
        if options.memory {
            for variant in [Variant::TowerMem, Variant::OursMem] {
                progress(start, format_args!("memory: {} sessions in {variant}", options.sessions));
                memory.push(measure_memory(variant, options).await?);
            }
        }

        let wrk = if options.wrk {
            Some(wrk_section(options, use_redis, start, &mut problems).await?)
        } else {
            None
        };

        let failed = !problems.is_empty();
        notes.extend(problems.iter().map(|p| format!("Problem: {p}")));
        let report = Report {
            options: options.clone(),
            cells,
            memory,
            wrk,
            notes,
            redis_version: redis_version_text,
            elapsed: start.elapsed(),
        };
        progress(start, format_args!("done"));
        if failed {
            eprintln!(
                "session-bench: {} problem(s) during the runs (see Notes); exiting with failure",
                problems.len()
            );
        }
        let text = report.render();
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
        if failed {
            return Err(String::new());
        }
        Ok(())
    })
}

/// The same scenarios driven by wrk: fresh servers per scenario, `wrk_sessions` sessions
/// made beforehand on each (their cookies sent round-robin by the Lua script), then
/// `wrk_rounds` rounds in which every entry in turn gets one wrk run. In the large-session
/// scenario session-core's memory server also gets small sessions, run beside the large ones,
/// for the large-vs-small ratio.
async fn wrk_section(
    options: &Options,
    use_redis: bool,
    start: Instant,
    problems: &mut Vec<String>,
) -> Result<report::WrkResults, String> {
    if !external::available() {
        return Err("--wrk needs wrk (Debian package `wrk`) on the PATH".to_owned());
    }
    let workdir = external::Workdir::new()?;
    let mut results = report::WrkResults {
        connections: options.wrk_connections,
        duration: options.wrk_duration,
        rounds: options.wrk_rounds,
        sessions: options.wrk_sessions,
        ..Default::default()
    };
    for &scenario in &options.scenarios {
        let variants: Vec<Variant> = scenario
            .wrk_variants()
            .into_iter()
            .filter(|v| use_redis || !v.uses_redis())
            .collect();
        progress(
            start,
            format_args!(
                "wrk {}: starting {} servers",
                scenario.name(),
                variants.len()
            ),
        );
        // (server, entry, cookie file)
        let mut servers = Vec::new();
        let mut entries: Vec<(usize, report::WrkKey, Option<std::path::PathBuf>)> = Vec::new();
        for &variant in &variants {
            let server = Server::start(variant, &options.redis_url)?;
            let index = servers.len();
            let cookie_sets: Vec<bool> = match scenario {
                Scenario::NewVisitor => vec![],
                // Small sessions beside the large ones, on the same server.
                Scenario::BigSession if variant == Variant::OursMem => vec![true, false],
                Scenario::BigSession => vec![true],
                _ => vec![false],
            };
            if cookie_sets.is_empty() {
                entries.push((
                    index,
                    report::WrkKey {
                        scenario,
                        variant,
                        small_beside_big: false,
                    },
                    None,
                ));
            }
            for big in cookie_sets {
                let mut cookies = Vec::with_capacity(options.wrk_sessions);
                for _ in 0..options.wrk_sessions {
                    cookies.push(server.new_session(big).await?);
                }
                let name = format!(
                    "{}-{}-{}.cookies",
                    scenario.name(),
                    variant.name(),
                    if big { "big" } else { "small" }
                );
                let file = workdir.cookie_file(&name, &cookies)?;
                let key = report::WrkKey {
                    scenario,
                    variant,
                    small_beside_big: scenario == Scenario::BigSession && !big,
                };
                entries.push((index, key, Some(file)));
            }
            servers.push(server);
        }
        // One short untimed run per entry first: connections, buffers and caches warm.
        for (index, _, cookies) in &entries {
            let server = &servers[*index];
            external::run(
                &workdir.script(),
                server.addr,
                scenario.path(),
                cookies.as_deref(),
                options.wrk_connections,
                Duration::from_secs(1),
            )?;
        }
        for round in 0..options.wrk_rounds {
            for (index, key, cookies) in &entries {
                let server = &servers[*index];
                let before = server.stats().await?;
                let redis_before = if key.variant.uses_redis() {
                    redis_cpu_seconds(&options.redis_url).await
                } else {
                    None
                };
                let cpu_before = server.cpu_ns();
                let run = external::run(
                    &workdir.script(),
                    server.addr,
                    scenario.path(),
                    cookies.as_deref(),
                    options.wrk_connections,
                    options.wrk_duration,
                )?;
                let cpu = server.cpu_ns().saturating_sub(cpu_before);
                let redis_cpu_us = match (redis_before, redis_cpu_seconds(&options.redis_url).await)
                {
                    (Some(before), Some(after)) if key.variant.uses_redis() => {
                        Some((after - before).max(0.0) * 1e6 / run.requests.max(1) as f64)
                    }
                    _ => None,
                };
                let delta = server.stats().await?.since(&before);
                let server_cpu_us = cpu as f64 / 1000.0 / run.requests.max(1) as f64;
                progress(
                    start,
                    format_args!(
                        "wrk {} round {}/{}: {:<12}{} {:>8.0} req/s  server CPU {:>5.1} µs/req  wrk CPU {:>5.1} µs/req  loads/req {:.3}  creates/req {:.3}{}",
                        scenario.name(),
                        round + 1,
                        options.wrk_rounds,
                        key.variant.name(),
                        if key.small_beside_big { " (small)" } else { "" },
                        run.rps,
                        server_cpu_us,
                        run.client_cpu_us / run.requests.max(1) as f64,
                        delta.loads as f64 / run.requests.max(1) as f64,
                        delta.creates as f64 / run.requests.max(1) as f64,
                        if run.errors > 0 { format!("  ERRORS {}", run.errors) } else { String::new() },
                    ),
                );
                problems.extend(check_wrk_run(key, &run, &delta));
                let cell = results.cells.entry(*key).or_default();
                cell.push(&run, server_cpu_us);
                if let Some(redis) = redis_cpu_us {
                    cell.redis_cpu_us.push(redis);
                }
            }
        }
        for server in servers {
            server.cleanup().await;
        }
    }
    Ok(results)
}

/// What went wrong in a wrk run: failed requests, or sessions not found. wrk does not read
/// bodies, so the store's counts say whether the cookies were found: a returning visitor's
/// request loads its session and creates none; a new visitor's creates one.
fn check_wrk_run(key: &report::WrkKey, run: &external::WrkRun, delta: &StoreStats) -> Vec<String> {
    let mut problems = Vec::new();
    let what = format!("wrk {} / {}", key.scenario.name(), key.variant);
    if run.errors > 0 {
        problems.push(format!(
            "{what}: {} failed requests in one run.",
            run.errors
        ));
    }
    if run.requests == 0 {
        problems.push(format!("{what}: a run completed no request."));
    }
    if key.variant == Variant::Bare {
        return problems;
    }
    match key.scenario {
        Scenario::NewVisitor => {
            if delta.creates < run.requests {
                problems.push(format!(
                    "{what}: {} sessions created for {} new visitors.",
                    delta.creates, run.requests
                ));
            }
        }
        Scenario::Lazy => {
            if delta.creates > 0 || delta.loads > 0 {
                problems.push(format!(
                    "{what}: the lazy route loaded {} and created {} sessions.",
                    delta.loads, delta.creates
                ));
            }
        }
        _ => {
            if delta.creates > 0 || delta.loads < run.requests {
                problems.push(format!(
                    "{what}: {} requests loaded {} sessions and created {}: the pre-made cookies were not all found.",
                    run.requests, delta.loads, delta.creates
                ));
            }
        }
    }
    problems
}

/// What went wrong in a run that did not do what the scenario means: the report lists it and
/// the benchmark exits with failure (so the smoke mode catches a broken variant).
fn check_run(variant: Variant, scenario: Scenario, result: &RunResult) -> Vec<String> {
    let mut problems = Vec::new();
    if result.errors > 0 {
        problems.push(format!(
            "{} / {variant}: {} failed requests in one run.",
            scenario.name(),
            result.errors
        ));
    }
    if result.requests == 0 {
        problems.push(format!(
            "{} / {variant}: a run completed no request.",
            scenario.name()
        ));
    }
    if scenario.returning()
        && scenario != Scenario::Lazy
        && variant != Variant::Bare
        && result.fresh > 0
    {
        problems.push(format!(
            "{} / {variant}: {} of {} returning-visitor answers show a session that was not found.",
            scenario.name(),
            result.fresh,
            result.requests
        ));
    }
    if scenario == Scenario::NewVisitor
        && variant != Variant::Bare
        && result.set_cookies < result.requests
    {
        problems.push(format!(
            "{} / {variant}: only {} of {} new-visitor responses set a cookie.",
            scenario.name(),
            result.set_cookies,
            result.requests
        ));
    }
    problems
}

/// VmRSS of a fresh server before and after creating `options.sessions` sessions through HTTP.
async fn measure_memory(variant: Variant, options: &Options) -> Result<MemoryResult, String> {
    let server = Server::start(variant, &options.redis_url)?;
    let mut conns = server
        .connect(Scenario::NewVisitor, options.connections)
        .await?;
    // Warm up the HTTP path (buffers, thread caches) without creating sessions.
    load::run(
        &mut conns,
        "/lazy",
        Limit::Requests(options.sessions.min(20_000)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.rss()?;
    let result = load::run(&mut conns, "/", Limit::Requests(options.sessions)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = server.rss()?;
    let stats = server.stats().await?;
    Ok(MemoryResult {
        variant,
        requests: result.requests,
        stored: stats.sessions,
        rss_before: before,
        rss_after: after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_parse_and_subtract() {
        let before = StoreStats::parse("loads=1 creates=2 saves=3 touches=0 deletes=0 sessions=2");
        let after = StoreStats::parse("loads=5 creates=2 saves=7 touches=1 deletes=0 sessions=2");
        let delta = after.since(&before);
        assert_eq!(delta.loads, 4);
        assert_eq!(delta.writes(), 5);
        assert_eq!(delta.sessions, 2);
    }

    #[test]
    fn returning_visitors_answered_as_new_fail_the_run() {
        let run = RunResult {
            requests: 10,
            fresh: 1,
            ..RunResult::default()
        };
        for scenario in [Scenario::Counter, Scenario::ReadOnly, Scenario::BigSession] {
            let problems = check_run(Variant::OursMem, scenario, &run);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(check_run(Variant::Bare, scenario, &run).is_empty());
        }
        let found = RunResult {
            requests: 10,
            ..RunResult::default()
        };
        assert!(check_run(Variant::TowerRedis, Scenario::Counter, &found).is_empty());
    }

    #[test]
    fn answers_showing_a_new_session_are_recognised() {
        let answer = |body: &'static str| load::Answer {
            status: 200,
            set_cookie: None,
            body: bytes::Bytes::from_static(body.as_bytes()),
        };
        assert!(answer("You visited 1 times").shows_a_new_session());
        assert!(answer("views: 0").shows_a_new_session());
        assert!(!answer("You visited 2 times").shows_a_new_session());
        assert!(!answer("views: 1").shows_a_new_session());
    }

    #[test]
    fn smoke_options_are_short() {
        let options = parse_options(&["--smoke".to_owned()]).unwrap();
        assert!(options.smoke);
        assert_eq!(options.rounds, 1);
        assert!(options.duration < Duration::from_secs(1));
        let options = parse_options(&["--scenarios".to_owned(), "lazy,big".to_owned()]).unwrap();
        assert_eq!(
            options.scenarios,
            vec![Scenario::Lazy, Scenario::BigSession]
        );
        assert!(parse_options(&["--bogus".to_owned()]).is_err());
    }

    #[test]
    fn wrk_runs_whose_cookies_were_not_found_fail() {
        let run = external::WrkRun {
            rps: 1000.0,
            requests: 1000,
            errors: 0,
            client_cpu_us: 0.0,
        };
        let key = |scenario, variant| report::WrkKey {
            scenario,
            variant,
            small_beside_big: false,
        };
        let found = StoreStats {
            loads: 1003,
            ..StoreStats::default()
        };
        assert!(check_wrk_run(&key(Scenario::Counter, Variant::OursMem), &run, &found).is_empty());
        // Sessions created instead of loaded: the cookies named nothing.
        let lost = StoreStats {
            loads: 1000,
            creates: 1000,
            ..StoreStats::default()
        };
        assert_eq!(
            check_wrk_run(&key(Scenario::Counter, Variant::OursMem), &run, &lost).len(),
            1
        );
        // Too few loads: some requests carried no cookie.
        let few = StoreStats {
            loads: 10,
            ..StoreStats::default()
        };
        assert_eq!(
            check_wrk_run(&key(Scenario::ReadOnly, Variant::TowerMem), &run, &few).len(),
            1
        );
        // New visitors must create; the lazy route must not load; bare axum has no store.
        assert_eq!(
            check_wrk_run(&key(Scenario::NewVisitor, Variant::OursMem), &run, &found).len(),
            1
        );
        assert_eq!(
            check_wrk_run(&key(Scenario::Lazy, Variant::OursMem), &run, &found).len(),
            1
        );
        assert!(check_wrk_run(&key(Scenario::Counter, Variant::Bare), &run, &lost).is_empty());
        let failed = external::WrkRun { errors: 3, ..run };
        assert_eq!(
            check_wrk_run(&key(Scenario::Counter, Variant::Bare), &failed, &found).len(),
            1
        );
    }

    #[test]
    fn variant_and_scenario_names_round_trip() {
        for variant in Variant::ALL {
            assert_eq!(Variant::parse(variant.name()), Some(variant));
        }
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::parse(scenario.name()), Some(scenario));
        }
    }
}
