//! Medians, ratios and the Markdown report.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::external::WrkRun;
use crate::load::RunResult;
use crate::variant::{Scenario, Variant};
use crate::{Options, StoreStats};

/// Everything measured for one variant in one scenario.
#[derive(Debug, Default)]
pub struct Cell {
    /// One entry per round.
    pub rps: Vec<f64>,
    pub p50: Vec<u32>,
    pub p99: Vec<u32>,
    /// Server CPU time per request, in microseconds.
    pub cpu_us: Vec<f64>,
    pub requests: u64,
    pub errors: u64,
    /// Store calls summed over the timed runs.
    pub totals: StoreStats,
    /// Bytes sent to Redis per request, counted on the wire in the untimed byte-counting run
    /// (Redis variants only: a memory store has no wire).
    pub bytes_per_request: Option<f64>,
    /// The in-process load generator's own CPU time per request, in microseconds, per round.
    pub client_cpu_us: Vec<f64>,
}

impl Cell {
    pub fn push(&mut self, result: &RunResult, delta: &StoreStats, cpu_ns: u64) {
        self.rps.push(result.rps());
        self.cpu_us
            .push(cpu_ns as f64 / 1000.0 / result.requests.max(1) as f64);
        self.p50.push(result.quantile(0.5));
        self.p99.push(result.quantile(0.99));
        self.requests += result.requests;
        self.errors += result.errors;
        self.totals.add(delta);
    }

    pub fn median_rps(&self) -> f64 {
        median(self.rps.clone())
    }

    pub fn median_p50(&self) -> f64 {
        median(self.p50.iter().map(|&v| f64::from(v)).collect())
    }

    pub fn median_p99(&self) -> f64 {
        median(self.p99.iter().map(|&v| f64::from(v)).collect())
    }

    pub fn per_request(&self, count: u64) -> f64 {
        count as f64 / self.requests.max(1) as f64
    }

    pub fn writes_per_request(&self) -> f64 {
        self.per_request(self.totals.writes())
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// The median over rounds of `a[i] / b[i]`: both were measured in the same round, moments
/// apart, so noise that hits both cancels out.
fn paired_ratio(a: &[f64], b: &[f64]) -> Option<f64> {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .filter(|(_, b)| **b > 0.0)
        .map(|(a, b)| a / b)
        .collect();
    (!ratios.is_empty()).then(|| median(ratios))
}

fn as_f64(values: &[u32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

/// The median over rounds of `a[i] - b[i]`.
fn paired_difference(a: &[f64], b: &[f64]) -> Option<f64> {
    let differences: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b).collect();
    (!differences.is_empty()).then(|| median(differences))
}

/// One thing wrk drives: a variant in a scenario; in the large-session scenario, also
/// session-core's memory server with small sessions (`small_beside_big`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WrkKey {
    pub scenario: Scenario,
    pub variant: Variant,
    pub small_beside_big: bool,
}

/// What wrk measured for one key, one entry per round.
#[derive(Debug, Default)]
pub struct WrkCell {
    pub rps: Vec<f64>,
    pub server_cpu_us: Vec<f64>,
    pub client_cpu_us: Vec<f64>,
    /// The Redis server's CPU per request (Redis variants).
    pub redis_cpu_us: Vec<f64>,
    pub requests: u64,
}

impl WrkCell {
    pub fn push(&mut self, run: &WrkRun, server_cpu_us: f64) {
        self.rps.push(run.rps);
        self.server_cpu_us.push(server_cpu_us);
        self.client_cpu_us
            .push(run.client_cpu_us / run.requests.max(1) as f64);
        self.requests += run.requests;
    }
}

/// The wrk mode's results and settings.
#[derive(Debug, Default)]
pub struct WrkResults {
    pub cells: HashMap<WrkKey, WrkCell>,
    pub connections: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub sessions: usize,
}

impl WrkResults {
    fn cell(&self, scenario: Scenario, variant: Variant) -> Option<&WrkCell> {
        self.cells.get(&WrkKey {
            scenario,
            variant,
            small_beside_big: false,
        })
    }

    fn rps_ratio(&self, scenario: Scenario, a: Variant, b: Variant) -> Option<f64> {
        paired_ratio(&self.cell(scenario, a)?.rps, &self.cell(scenario, b)?.rps)
    }

    /// session-core's memory store: the large session's req/s over the small one's, on one
    /// server, within each round.
    fn big_vs_small(&self) -> Option<f64> {
        let small = self.cells.get(&WrkKey {
            scenario: Scenario::BigSession,
            variant: Variant::OursMem,
            small_beside_big: true,
        })?;
        paired_ratio(
            &self.cell(Scenario::BigSession, Variant::OursMem)?.rps,
            &small.rps,
        )
    }
}

/// Resident memory before and after creating sessions in a fresh server.
#[derive(Debug)]
pub struct MemoryResult {
    pub variant: Variant,
    /// New-visitor requests answered.
    pub requests: u64,
    /// Sessions the store holds afterwards.
    pub stored: u64,
    pub rss_before: u64,
    pub rss_after: u64,
}

impl MemoryResult {
    pub fn per_session(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.stored.max(1) as f64
    }
}

pub struct Report {
    pub options: Options,
    pub cells: HashMap<(Scenario, Variant), Cell>,
    pub memory: Vec<MemoryResult>,
    /// The wrk mode's results, when it ran.
    pub wrk: Option<WrkResults>,
    pub notes: Vec<String>,
    pub redis_version: Option<String>,
    pub elapsed: Duration,
}

/// One target of the issue: what it compares, the measured value, and whether it holds.
struct Target {
    what: &'static str,
    goal: &'static str,
    measured: Option<String>,
    holds: Option<bool>,
}

fn ratio_text(r: f64) -> String {
    format!("{r:.2}×")
}

/// A ratio of byte counts: `1/N` below one, which reads better for tiny ratios.
fn bytes_ratio_text(r: f64) -> String {
    if r > 0.0 && r < 1.0 {
        format!("1/{:.0}", 1.0 / r)
    } else {
        ratio_text(r)
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    fn cell(&self, scenario: Scenario, variant: Variant) -> Option<&Cell> {
        self.cells.get(&(scenario, variant))
    }

    fn rps_ratio(&self, scenario: Scenario, a: Variant, b: Variant) -> Option<f64> {
        paired_ratio(&self.cell(scenario, a)?.rps, &self.cell(scenario, b)?.rps)
    }

    fn bytes_ratio(&self, scenario: Scenario, a: Variant, b: Variant) -> Option<f64> {
        let a = self.cell(scenario, a)?.bytes_per_request?;
        let b = self.cell(scenario, b)?.bytes_per_request?;
        (b > 0.0).then(|| a / b)
    }

    fn memory_of(&self, variant: Variant) -> Option<&MemoryResult> {
        self.memory.iter().find(|m| m.variant == variant)
    }

    fn memory_ratio(&self) -> Option<f64> {
        let ours = self.memory_of(Variant::OursMem)?.per_session();
        let tower = self.memory_of(Variant::TowerMem)?.per_session();
        (tower > 0.0).then(|| ours / tower)
    }

    /// The whole report, Markdown, ending with the summary line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_header(&mut out);
        for scenario in Scenario::ALL {
            self.render_scenario(&mut out, scenario);
        }
        self.render_memory(&mut out);
        self.render_wrk(&mut out);
        self.render_targets(&mut out);
        if !self.notes.is_empty() {
            let _ = writeln!(out, "### Notes\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(out, "{}", self.summary());
        out
    }

    fn render_header(&self, out: &mut String) {
        let o = &self.options;
        let args: Vec<String> = std::env::args().skip(1).collect();
        let command = if args.is_empty() {
            "cargo run --release -p session-bench".to_owned()
        } else {
            format!("cargo run --release -p session-bench -- {}", args.join(" "))
        };
        let _ = writeln!(
            out,
            "## session-bench results{}\n",
            if o.smoke {
                " (smoke mode: numbers are not meaningful)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "- Command: `{command}` (finished in {:.0} s)",
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "- Machine: {}", machine(self.redis_version.as_deref()));
        let _ = writeln!(
            out,
            "- Method: {} keep-alive HTTP/1.1 connections over loopback from a one-thread hyper client; \
             per scenario, {} round(s) of {} s per variant (after {} s warm-up), variants alternated; \
             req/s, p50 and p99 are medians over rounds, ratios are medians of the ratios within each round; \
             server = child process on a multi-thread Tokio runtime.",
            o.connections,
            o.rounds,
            o.duration.as_secs_f64(),
            o.warmup.as_secs_f64(),
        );
        let _ = writeln!(
            out,
            "- Peers: tower-sessions 0.14 (MemoryStore; tower-sessions-redis-store 0.16 on a fred pool of 6, as its example), \
             session-core from this workspace (MemoryStore; RedisStore), both with default options; bare axum 0.8. \
             Bytes to Redis: every byte each library's client sent to Redis per request (commands, keys, \
             values, framing), counted by a TCP proxy between the server and Redis, the same way for both; \
             memory stores have no wire and show –.\n"
        );
    }

    fn render_scenario(&self, out: &mut String, scenario: Scenario) {
        let variants: Vec<Variant> = scenario
            .variants()
            .into_iter()
            .filter(|v| self.cell(scenario, *v).is_some())
            .collect();
        if variants.is_empty() {
            return;
        }
        let _ = writeln!(out, "### {}\n", scenario.title());
        let _ = writeln!(
            out,
            "| variant | req/s | vs tower-sessions | vs bare axum | p50 µs | p99 µs | server CPU µs/req (vs bare) | store writes/req | bytes to Redis/req (wire) |"
        );
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for variant in variants {
            let Some(cell) = self.cell(scenario, variant) else {
                continue;
            };
            let peer = variant
                .peer()
                .and_then(|p| self.cell(scenario, p).map(|c| (p, c)));
            let vs_peer = peer
                .and_then(|(p, _)| self.rps_ratio(scenario, variant, p))
                .map_or_else(String::new, ratio_text);
            let vs_bare = if variant == Variant::Bare {
                String::new()
            } else {
                self.rps_ratio(scenario, variant, Variant::Bare)
                    .map_or_else(String::new, ratio_text)
            };
            let with_peer_ratio = |value: f64, ratio: Option<f64>| match ratio {
                Some(r) => format!("{value:.0} ({})", ratio_text(r)),
                None => format!("{value:.0}"),
            };
            let p50 = with_peer_ratio(
                cell.median_p50(),
                peer.and_then(|(_, p)| paired_ratio(&as_f64(&cell.p50), &as_f64(&p.p50))),
            );
            let p99 = with_peer_ratio(
                cell.median_p99(),
                peer.and_then(|(_, p)| paired_ratio(&as_f64(&cell.p99), &as_f64(&p.p99))),
            );
            let mut cpu = format!("{:.1}", median(cell.cpu_us.clone()));
            if variant != Variant::Bare {
                if let Some(d) = self
                    .cell(scenario, Variant::Bare)
                    .and_then(|bare| paired_difference(&cell.cpu_us, &bare.cpu_us))
                {
                    let _ = write!(cpu, " ({d:+.1})");
                }
            }
            let writes = if variant == Variant::Bare {
                "–".to_owned()
            } else {
                let mut text = format!("{:.3}", cell.writes_per_request());
                if let Some((_, p)) = peer {
                    let theirs = p.writes_per_request();
                    if theirs > 0.0 {
                        let _ = write!(
                            text,
                            " ({})",
                            ratio_text(cell.writes_per_request() / theirs)
                        );
                    }
                }
                text
            };
            let bytes = match (variant, cell.bytes_per_request) {
                (Variant::Bare, _) | (_, None) => "–".to_owned(),
                (_, Some(b)) => {
                    match peer.and_then(|(p, _)| self.bytes_ratio(scenario, variant, p)) {
                        Some(r) => format!("{b:.0} ({})", bytes_ratio_text(r)),
                        None => format!("{b:.0}"),
                    }
                }
            };
            let _ = writeln!(
                out,
                "| {} | {:.0} | {vs_peer} | {vs_bare} | {p50} | {p99} | {cpu} | {writes} | {bytes} |",
                variant.label(),
                cell.median_rps(),
            );
        }
        let _ = writeln!(out);
    }

    fn render_memory(&self, out: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "### Memory per stored session (memory stores, {} new-visitor requests into a fresh server)\n",
            self.options.sessions
        );
        let _ = writeln!(out, "| variant | sessions stored | RSS before MiB | RSS after MiB | bytes per session | vs tower-sessions |");
        let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|");
        for m in &self.memory {
            let vs = match m.variant {
                Variant::OursMem => self.memory_ratio().map_or_else(String::new, ratio_text),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {} of {} | {} | {} | {:.0} | {vs} |",
                m.variant.label(),
                m.stored,
                m.requests,
                mib(m.rss_before),
                mib(m.rss_after),
                m.per_session(),
            );
        }
        let _ = writeln!(out);
    }

    /// The large session's req/s over the small counter's (session-core, memory store),
    /// in-process: medians of the two scenarios of this run.
    fn big_vs_counter(&self) -> Option<f64> {
        let big = self
            .cell(Scenario::BigSession, Variant::OursMem)?
            .median_rps();
        let small = self.cell(Scenario::Counter, Variant::OursMem)?.median_rps();
        (small > 0.0).then(|| big / small)
    }

    fn wrk_ratio(&self, scenario: Scenario, a: Variant, b: Variant) -> Option<f64> {
        self.wrk.as_ref()?.rps_ratio(scenario, a, b)
    }

    /// wrk's numbers next to the in-process client's, per scenario and variant.
    fn render_wrk(&self, out: &mut String) {
        let Some(wrk) = &self.wrk else { return };
        let _ = writeln!(
            out,
            "#### External load generator: wrk, beside the in-process client\n\n\
             `wrk -t{} -c{} -d{}s` with `session-bench/wrk/sessions.lua`; {} sessions made \
             per server beforehand, their cookies sent round-robin (new visitors: none); \
             fresh servers per scenario, entries alternated, {} round(s); req/s and CPU are \
             medians over rounds, ratios medians of within-round ratios. The server's store \
             counts check every run: returning visitors load a session per request and create \
             none. \"Redis CPU\" is the Redis server's (`INFO cpu`), which shares the cores. \"client CPU\" is the load generator's own CPU per request (wrk's from \
             `cutime`, the in-process client's from this process's `utime + stime`).\n",
            crate::external::THREADS,
            wrk.connections,
            wrk.duration.as_secs(),
            wrk.sessions,
            wrk.rounds,
        );
        let _ = writeln!(
            out,
            "| scenario | variant | wrk req/s | wrk vs tower-sessions | wrk vs bare | in-process vs tower-sessions | in-process vs bare | server CPU µs/req (wrk) | Redis CPU µs/req (wrk) | client CPU µs/req: wrk / in-process |"
        );
        let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        let text = |r: Option<f64>| r.map_or_else(String::new, ratio_text);
        for scenario in Scenario::ALL {
            let mut keys: Vec<&WrkKey> = wrk
                .cells
                .keys()
                .filter(|k| k.scenario == scenario)
                .collect();
            keys.sort_by_key(|k| {
                (
                    Variant::ALL.iter().position(|v| *v == k.variant),
                    !k.small_beside_big,
                )
            });
            for key in keys {
                let cell = &wrk.cells[key];
                let (vs_tower, vs_bare, in_tower, in_bare) = if key.small_beside_big {
                    Default::default()
                } else {
                    let peer = key.variant.peer();
                    let pair = |a: Option<Variant>, f: &dyn Fn(Variant) -> Option<f64>| {
                        a.filter(|_| key.variant != Variant::Bare).and_then(f)
                    };
                    (
                        text(pair(peer, &|p| wrk.rps_ratio(scenario, key.variant, p))),
                        text(pair(Some(Variant::Bare), &|b| {
                            wrk.rps_ratio(scenario, key.variant, b)
                        })),
                        text(pair(peer, &|p| self.rps_ratio(scenario, key.variant, p))),
                        text(pair(Some(Variant::Bare), &|b| {
                            self.rps_ratio(scenario, key.variant, b)
                        })),
                    )
                };
                let in_process_client = self
                    .cell(scenario, key.variant)
                    .filter(|_| !key.small_beside_big)
                    .map(|c| median(c.client_cpu_us.clone()))
                    .filter(|v| *v > 0.0)
                    .map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
                let _ = writeln!(
                    out,
                    "| {} | {}{} | {:.0} | {vs_tower} | {vs_bare} | {in_tower} | {in_bare} | {:.1} | {} | {:.1} / {in_process_client} |",
                    scenario.name(),
                    key.variant.label(),
                    if key.small_beside_big { " (small session, same server)" } else { "" },
                    median(cell.rps.clone()),
                    median(cell.server_cpu_us.clone()),
                    if cell.redis_cpu_us.is_empty() {
                        "–".to_owned()
                    } else {
                        format!("{:.1}", median(cell.redis_cpu_us.clone()))
                    },
                    median(cell.client_cpu_us.clone()),
                );
            }
        }
        let _ = writeln!(out);
    }

    fn targets(&self) -> Vec<Target> {
        let at_least = |r: Option<f64>, goal: f64| (r.map(ratio_text), r.map(|r| r >= goal));
        let mut targets = Vec::new();

        let (measured, holds) = at_least(
            self.rps_ratio(Scenario::Counter, Variant::OursMem, Variant::TowerMem),
            2.0,
        );
        targets.push(Target {
            what: "counter, memory store: req/s vs tower-sessions",
            goal: "≥ 2.0×",
            measured,
            holds,
        });
        let overhead = |v: Variant| {
            let bare = self.cell(Scenario::Counter, Variant::Bare)?;
            paired_difference(&self.cell(Scenario::Counter, v)?.cpu_us, &bare.cpu_us)
        };
        if let (Some(ours), Some(tower)) = (overhead(Variant::OursMem), overhead(Variant::TowerMem))
        {
            targets.push(Target {
                what: "counter, memory store: server CPU above bare axum, vs tower-sessions' (information)",
                goal: "",
                measured: Some(format!(
                    "{} (+{ours:.1} µs vs +{tower:.1} µs per request)",
                    if tower > 0.0 { ratio_text(ours / tower) } else { "–".to_owned() }
                )),
                holds: None,
            });
        }
        let (measured, holds) = at_least(
            self.rps_ratio(Scenario::Counter, Variant::OursMem, Variant::Bare),
            0.8,
        );
        targets.push(Target {
            what: "counter, memory store: req/s vs bare axum",
            goal: "≥ 0.8×",
            measured,
            holds,
        });
        let (measured, holds) = at_least(
            self.rps_ratio(Scenario::Lazy, Variant::OursMem, Variant::Bare),
            0.95,
        );
        targets.push(Target {
            what: "lazy path: req/s vs bare axum",
            goal: "≥ 0.95×",
            measured,
            holds,
        });
        for variant in [Variant::OursMem, Variant::OursRedis] {
            if let Some(cell) = self.cell(Scenario::ReadOnly, variant) {
                let t = &cell.totals;
                // Touches (deadline only, at most one per session per `touch_after`, 60 s by
                // default) are shown but are not data writes.
                let data_writes = t.creates + t.saves + t.deletes;
                targets.push(Target {
                    what: if variant == Variant::OursMem {
                        "read-only returning visitor, memory: store writes/req"
                    } else {
                        "read-only returning visitor, Redis: store writes/req"
                    },
                    goal: "0 saves (resave off)",
                    measured: Some(format!(
                        "{:.4} ({} saves, {} creates; {} touches, i.e. deadline extensions after touch_after = 60 s, in {} requests)",
                        cell.per_request(data_writes),
                        t.saves,
                        t.creates,
                        t.touches,
                        cell.requests
                    )),
                    holds: Some(data_writes == 0),
                });
            }
        }
        // Bytes are measured on the wire to Redis; memory stores have none.
        let r = self.bytes_ratio(
            Scenario::BigSession,
            Variant::OursRedis,
            Variant::TowerRedis,
        );
        targets.push(Target {
            what: "large session, Redis: bytes sent to Redis/req (wire) vs tower-sessions",
            goal: "≤ 1/50",
            measured: r.map(bytes_ratio_text),
            holds: r.map(|r| r <= 1.0 / 50.0),
        });
        for (what, goal, r, min) in [
            (
                "counter, memory store: req/s vs tower-sessions, under wrk",
                "≥ 2.0×",
                self.wrk_ratio(Scenario::Counter, Variant::OursMem, Variant::TowerMem),
                2.0,
            ),
            (
                "counter, memory store: req/s vs bare axum, under wrk",
                "≥ 0.8×",
                self.wrk_ratio(Scenario::Counter, Variant::OursMem, Variant::Bare),
                0.8,
            ),
            (
                "lazy path: req/s vs bare axum, under wrk",
                "≥ 0.95×",
                self.wrk_ratio(Scenario::Lazy, Variant::OursMem, Variant::Bare),
                0.95,
            ),
            (
                "read-only `peek`, memory: req/s vs bare axum",
                "≥ 0.85×",
                self.rps_ratio(Scenario::ReadOnly, Variant::OursMem, Variant::Bare),
                0.85,
            ),
            (
                "read-only `peek`, memory: req/s vs bare axum, under wrk",
                "≥ 0.85×",
                self.wrk_ratio(Scenario::ReadOnly, Variant::OursMem, Variant::Bare),
                0.85,
            ),
            (
                "counter, Redis: req/s vs tower-sessions' Redis store",
                "≥ 1.5×",
                self.rps_ratio(Scenario::Counter, Variant::OursRedis, Variant::TowerRedis),
                1.5,
            ),
            (
                "counter, Redis: req/s vs tower-sessions' Redis store, under wrk",
                "≥ 1.5×",
                self.wrk_ratio(Scenario::Counter, Variant::OursRedis, Variant::TowerRedis),
                1.5,
            ),
            (
                "64 KB cart changing `views`, memory: req/s vs the small counter's (in-process: medians of the two scenarios)",
                "≥ 0.8×",
                self.big_vs_counter(),
                0.8,
            ),
            (
                "64 KB cart changing `views`, memory: req/s vs small sessions on the same server, under wrk",
                "≥ 0.8×",
                self.wrk.as_ref().and_then(WrkResults::big_vs_small),
                0.8,
            ),
        ] {
            let (measured, holds) = at_least(r, min);
            targets.push(Target {
                what,
                goal,
                measured,
                holds,
            });
        }
        let r = self.memory_ratio();
        targets.push(Target {
            what: "memory per stored session vs tower-sessions",
            goal: "≤ 1.0×",
            measured: r.map(|r| {
                let ours = self
                    .memory_of(Variant::OursMem)
                    .map_or(0.0, MemoryResult::per_session);
                let tower = self
                    .memory_of(Variant::TowerMem)
                    .map_or(0.0, MemoryResult::per_session);
                format!("{} ({ours:.0} B vs {tower:.0} B)", ratio_text(r))
            }),
            holds: r.map(|r| r <= 1.0),
        });
        targets
    }

    fn render_targets(&self, out: &mut String) {
        let _ = writeln!(out, "### Targets\n");
        let _ = writeln!(out, "| target | goal | measured | holds |");
        let _ = writeln!(out, "|---|---|---|---|");
        for t in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                t.what,
                t.goal,
                t.measured.as_deref().unwrap_or("not measured"),
                match t.holds {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
        let _ = writeln!(out);
        if let Some(ceiling) = self.rps_ratio(Scenario::Counter, Variant::Bare, Variant::TowerMem) {
            let _ = writeln!(
                out,
                "Ceiling: in the counter scenario bare axum itself serves {} the requests/s of \
                 tower-sessions (memory), so no session layer can reach more than that ratio \
                 against tower-sessions in this harness.\n",
                ratio_text(ceiling)
            );
        }
    }

    /// `summary: counter_vs_tower=R1 counter_vs_bare=R2 lazy_vs_bare=R3 bigsession_bytes_vs_tower=R4`
    /// followed by `peek_vs_bare`, `redis_counter_vs_tower`, `bigsession_vs_counter` and the
    /// wrk mode's `wrk_*` ratios (`NA` when not measured).
    pub fn summary(&self) -> String {
        let fmt = |r: Option<f64>, digits: usize| {
            r.map_or_else(|| "NA".to_owned(), |r| format!("{r:.digits$}"))
        };
        let wrk_big = self.wrk.as_ref().and_then(WrkResults::big_vs_small);
        format!(
            "summary: counter_vs_tower={} counter_vs_bare={} lazy_vs_bare={} bigsession_bytes_vs_tower={} \
             peek_vs_bare={} redis_counter_vs_tower={} bigsession_vs_counter={} \
             wrk_counter_vs_tower={} wrk_counter_vs_bare={} wrk_lazy_vs_bare={} wrk_peek_vs_bare={} \
             wrk_redis_counter_vs_tower={} wrk_bigsession_vs_counter={}",
            fmt(self.rps_ratio(Scenario::Counter, Variant::OursMem, Variant::TowerMem), 2),
            fmt(self.rps_ratio(Scenario::Counter, Variant::OursMem, Variant::Bare), 2),
            fmt(self.rps_ratio(Scenario::Lazy, Variant::OursMem, Variant::Bare), 2),
            fmt(self.bytes_ratio(Scenario::BigSession, Variant::OursRedis, Variant::TowerRedis), 6),
            fmt(self.rps_ratio(Scenario::ReadOnly, Variant::OursMem, Variant::Bare), 2),
            fmt(self.rps_ratio(Scenario::Counter, Variant::OursRedis, Variant::TowerRedis), 2),
            fmt(self.big_vs_counter(), 2),
            fmt(self.wrk_ratio(Scenario::Counter, Variant::OursMem, Variant::TowerMem), 2),
            fmt(self.wrk_ratio(Scenario::Counter, Variant::OursMem, Variant::Bare), 2),
            fmt(self.wrk_ratio(Scenario::Lazy, Variant::OursMem, Variant::Bare), 2),
            fmt(self.wrk_ratio(Scenario::ReadOnly, Variant::OursMem, Variant::Bare), 2),
            fmt(self.wrk_ratio(Scenario::Counter, Variant::OursRedis, Variant::TowerRedis), 2),
            fmt(wrk_big, 2),
        )
    }
}

/// Cores, CPU, memory, kernel, rustc and Redis, as far as they can be found.
fn machine(redis_version: Option<&str>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, v)| v.trim())
        .to_owned();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB RAM", kib / (1024.0 * 1024.0)))
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| format!("Linux {}", k.trim()))
        .unwrap_or_default();
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "rustc unknown".to_owned());
    let mut parts = vec![format!("{cores} cores ({cpu})"), memory, kernel, rustc];
    if let Some(version) = redis_version {
        parts.push(format!("Redis {version}"));
    }
    parts.retain(|p| !p.is_empty());
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn paired_ratio_is_the_median_of_per_round_ratios() {
        // Round 2 was slow for both: the ratio within it is still 2.
        let a = [200.0, 100.0, 210.0];
        let b = [100.0, 50.0, 100.0];
        assert_eq!(paired_ratio(&a, &b), Some(2.0));
        assert_eq!(paired_ratio(&[], &[]), None);
    }

    #[test]
    fn byte_ratios_read_as_fractions() {
        assert_eq!(bytes_ratio_text(0.001), "1/1000");
        assert_eq!(bytes_ratio_text(2.0), "2.00×");
    }

    #[test]
    fn memory_per_session_divides_the_growth_by_the_sessions_stored() {
        let m = MemoryResult {
            variant: Variant::OursMem,
            requests: 100,
            stored: 50,
            rss_before: 1000,
            rss_after: 6000,
        };
        assert_eq!(m.per_session(), 100.0);
    }
}
