//! Side-by-side throughput and memory of `MapWrapper` and the maps a user would pick instead.
//!
//! ```text
//! cargo bench --bench maps                 # full run: both hasher tables, 5 repetitions
//! cargo bench --bench maps -- --quick      # under 3 minutes on 2 cores (or MAP_BENCH_QUICK=1)
//! ```
//!
//! The audit rows (every write makes a record, so the 2 M-entry prefill makes 2 M records) run
//! in the full mode's first table only, or whenever `--only` names them.
//!
//! Mixes: ReadHeavy, Exchange, RapidGrow (2 M entries), SmallMap (1,000 entries in cache; see
//! `workload::MIXES`).
//!
//! Other arguments: `--reps N`, `--threads 1,2,4`, `--mix ReadHeavy,SmallMap`, `--tables
//! std,fast`, `--only NAME[,NAME]` (rows whose name contains one of them), `--no-mem`,
//! `--prefill N`, `--ops N` (per thread). The report goes to `target/bench-report/`
//! (`report.md`, `report.svg`, `samples.csv`) and is printed.
//!
//! Adding a row: one line in [`contenders`].

mod adapters;
mod memory;
mod report;
mod workload;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use map_wrapper::audit::{Auditor, Durability, JsonLinesOptions, JsonLinesSink, MemorySink};
use map_wrapper::breaker::BreakerConfig;
use map_wrapper::MapWrapper;

use adapters::{BenchMap, InTempDir, LockedHashMap};
use report::{Cell, MemRow, Report, Row, Table};
use workload::{Plan, MIXES};

/// One row of the tables: a map, how to build it, and whether it is a peer (a crate a user
/// would pick instead) or this crate.
struct Contender {
    name: &'static str,
    peer: bool,
    /// A row whose every write makes an audit record: slow to prefill (2 M records), so it
    /// runs in the full mode's first table only, or when `--only` names it.
    audited: bool,
    run: Box<dyn Fn(&Plan) -> Duration>,
    mem: Box<dyn Fn(u64)>,
}

impl Contender {
    /// `build` gets the hasher and the capacity the mix asks for (0: none).
    fn new<S, M>(name: &'static str, peer: bool, build: impl Fn(S, usize) -> M + 'static) -> Contender
    where
        S: Default + 'static,
        M: BenchMap + 'static,
    {
        let build = Rc::new(build);
        let b = Rc::clone(&build);
        Contender {
            name,
            peer,
            audited: false,
            run: Box::new(move |plan| {
                let map = Box::new(b(S::default(), plan.capacity));
                let took = workload::run(&*map, plan);
                drop(map);
                took
            }),
            mem: Box::new(move |n| memory::fill_and_report(|| build(S::default(), 0), n)),
        }
    }

    fn peer<S: Default + 'static, M: BenchMap + 'static>(
        name: &'static str,
        build: fn(S, usize) -> M,
    ) -> Self {
        Self::new(name, true, build)
    }

    fn ours<S: Default + 'static, M: BenchMap + 'static>(
        name: &'static str,
        build: impl Fn(S, usize) -> M + 'static,
    ) -> Self {
        Self::new(name, false, build)
    }

    fn audited<S: Default + 'static, M: BenchMap + 'static>(
        name: &'static str,
        build: impl Fn(S, usize) -> M + 'static,
    ) -> Self {
        Contender { audited: true, ..Self::new(name, false, build) }
    }
}

/// The rows of a table whose maps all use the hasher `S`.
fn contenders<S>() -> Vec<Contender>
where
    S: BuildHasher + Clone + Default + Send + Sync + 'static,
{
    // `MapWrapper` has no capacity setting: its rows grow as the prefill fills them (before
    // the clock starts), as do the reference's.
    vec![
        Contender::peer("RwLock<HashMap>", |h: S, c| LockedHashMap::new(h, c)),
        Contender::peer("dashmap", |h: S, c| dashmap::DashMap::with_capacity_and_hasher(c, h)),
        Contender::peer("scc", |h: S, c| scc::HashMap::with_capacity_and_hasher(c, h)),
        Contender::peer("papaya", |h: S, c| papaya::HashMap::with_capacity_and_hasher(c, h)),
        Contender::ours("sharded RwLock (bare reference)", |h: S, _| {
            adapters::Sharded::new(h, map_wrapper::builder::default_shards())
        }),
        Contender::ours("MapWrapper (policies off)", |h: S, _| {
            let b = MapWrapper::builder().name("bench").hasher(h).stats(false);
            b.build().expect("valid bench config")
        }),
        Contender::ours("MapWrapper defaults", |h: S, _| {
            let b = MapWrapper::builder().name("bench").hasher(h);
            b.build().expect("valid bench config")
        }),
        Contender::ours("MapWrapper +breaker+stats", |h: S, _| {
            let b = MapWrapper::builder().name("bench").hasher(h).breaker(BreakerConfig::new());
            b.build().expect("valid bench config")
        }),
        Contender::audited("MapWrapper +audit MemorySink", |h: S, _| {
            let auditor = Auditor::new(MemorySink::new());
            let b = MapWrapper::builder().name("bench").hasher(h).stats(false).auditor(auditor);
            b.build().expect("valid bench config")
        }),
        Contender::audited("MapWrapper +audit JsonLines Buffered", |h: S, _| {
            let dir = tempfile::tempdir().expect("temporary directory for the audit trail");
            let sink = JsonLinesSink::open(dir.path(), JsonLinesOptions::default()).expect("open the trail");
            let auditor = Auditor::new(sink).durability(Durability::Buffered);
            let b = MapWrapper::builder().name("bench").hasher(h).stats(false).auditor(auditor);
            InTempDir { map: b.build().expect("valid bench config"), _dir: dir }
        }),
        // A new row is one more entry here: `Contender::ours(name, |h: S, _capacity| builder…build()…)`.
    ]
}

/// A hasher table: its id (for `--tables` and memory children), its title, its rows.
type TableSpec = (&'static str, &'static str, fn() -> Vec<Contender>);

/// The hasher tables.
fn tables() -> Vec<TableSpec> {
    vec![
        ("std", "every map with std `RandomState` (SipHash-1-3)", contenders::<RandomState>),
        (
            "fast",
            "every map with `foldhash::fast::RandomState` (hashbrown's default hasher)",
            contenders::<foldhash::fast::RandomState>,
        ),
    ]
}

struct Settings {
    quick: bool,
    prefill: u64,
    ops_per_thread: usize,
    reps: usize,
    threads: Vec<usize>,
    tables: Vec<&'static str>,
    only: Vec<String>,
    mixes: Vec<String>,
    mem: bool,
    mem_runs: usize,
}

impl Settings {
    fn from_args(args: &[String]) -> Result<Settings, String> {
        let quick = args.iter().any(|a| a == "--quick")
            || std::env::var("MAP_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut s = Settings {
            quick,
            prefill: 2_000_000,
            ops_per_thread: if quick { 300_000 } else { 1_000_000 },
            reps: if quick { 3 } else { 5 },
            threads: vec![1, 2],
            tables: if quick { vec!["std"] } else { vec!["std", "fast"] },
            only: Vec::new(),
            mixes: Vec::new(),
            mem: true,
            mem_runs: if quick { 1 } else { 3 },
        };
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus > 2 {
            s.threads.extend((2..).map(|p| 1usize << p).take_while(|&t| t <= cpus));
        }
        let mut it = args.iter().skip(1);
        while let Some(a) = it.next() {
            let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
            match a.as_str() {
                "--quick" | "--bench" => {}
                "--no-mem" => s.mem = false,
                "--reps" => s.reps = value("--reps")?.parse().map_err(|e| format!("--reps: {e}"))?,
                "--prefill" => {
                    s.prefill = value("--prefill")?.parse().map_err(|e| format!("--prefill: {e}"))?
                }
                "--ops" => s.ops_per_thread = value("--ops")?.parse().map_err(|e| format!("--ops: {e}"))?,
                "--threads" => {
                    s.threads = value("--threads")?
                        .split(',')
                        .map(|t| t.parse().map_err(|e| format!("--threads: {e}")))
                        .collect::<Result<_, _>>()?
                }
                "--tables" => {
                    let v = value("--tables")?;
                    s.tables = tables()
                        .into_iter()
                        .map(|t| t.0)
                        .filter(|id| v.split(',').any(|x| x == *id))
                        .collect()
                }
                "--mix" => s.mixes = value("--mix")?.split(',').map(str::to_string).collect(),
                "--only" => s.only = value("--only")?.split(',').map(str::to_string).collect(),
                other => return Err(format!("unknown argument {other:?} (see benches/maps/main.rs)")),
            }
        }
        if s.reps == 0 || s.threads.is_empty() || s.tables.is_empty() {
            return Err("need at least one repetition, thread count and table".into());
        }
        Ok(s)
    }

    fn named(&self, name: &str) -> bool {
        self.only.iter().any(|o| name.contains(o.as_str()))
    }

    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.named(name)
    }

    /// Whether a row runs in table `index` (0 = the std-hasher table).
    fn runs(&self, c: &Contender, index: usize) -> bool {
        if c.audited {
            self.named(c.name) || (self.only.is_empty() && !self.quick && index == 0)
        } else {
            self.wants(c.name)
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--mem-child") {
        return mem_child(&args[2..]);
    }
    let settings = Settings::from_args(&args).unwrap_or_else(|e| {
        eprintln!("maps bench: {e}");
        std::process::exit(2)
    });
    let began = Instant::now();
    let mut report = Report::new(settings.quick, settings.prefill, settings.ops_per_thread, settings.reps);
    for (index, (id, title, rows)) in tables().into_iter().enumerate() {
        if !settings.tables.contains(&id) {
            continue;
        }
        let rows = rows().into_iter().filter(|c| settings.runs(c, index)).collect();
        report.tables.push(run_table(&settings, title, rows));
    }
    if settings.mem {
        report.memory = measure_memory(&settings);
        report.mem_runs = settings.mem_runs;
    }
    report.elapsed = began.elapsed();
    let dir = report::out_dir();
    match report.write(&dir) {
        Ok(md) => {
            println!("{md}");
            eprintln!("report written to {}", dir.display());
        }
        Err(e) => {
            eprintln!("maps bench: cannot write the report to {}: {e}", dir.display());
            std::process::exit(1)
        }
    }
}

/// Runs every mix × thread count × repetition; within one repetition the maps take turns, so
/// a burst of load from elsewhere on the machine hits them all alike.
fn run_table(settings: &Settings, title: &str, contenders: Vec<Contender>) -> Table {
    let mut rows: Vec<Row> = contenders
        .iter()
        .map(|c| Row { name: c.name.to_string(), peer: c.peer, cells: Vec::new(), retried: 0 })
        .collect();
    let mut cells = Vec::new();
    for mix in
        MIXES.into_iter().filter(|m| settings.mixes.is_empty() || settings.mixes.iter().any(|x| x == m.name))
    {
        for &threads in &settings.threads {
            let plan = Plan::new(mix, threads, settings.prefill, settings.ops_per_thread);
            cells.push(Cell { mix: mix.name, threads });
            let mut samples = vec![Vec::new(); contenders.len()];
            for rep in 0..settings.reps {
                for (i, c) in contenders.iter().enumerate() {
                    let retried = adapters::RETRIED.load(Ordering::Relaxed);
                    let took = (c.run)(&plan);
                    rows[i].retried += adapters::RETRIED.load(Ordering::Relaxed) - retried;
                    let mops = plan.total_ops() as f64 / took.as_secs_f64() / 1e6;
                    eprintln!(
                        "{title:.20} | {:9} {threads}T rep {rep}: {:28} {mops:7.2} Mops/s",
                        mix.name, c.name
                    );
                    samples[i].push(mops);
                }
            }
            for (row, s) in rows.iter_mut().zip(samples) {
                row.cells.push(s);
            }
        }
    }
    Table { title: title.to_string(), cells, rows }
}

/// Memory of every row of the std table, at 0.9 M and 1 M entries, each in a fresh process.
fn measure_memory(settings: &Settings) -> Vec<MemRow> {
    let mut out = Vec::new();
    for c in contenders::<RandomState>().into_iter().filter(|c| !c.audited && settings.wants(c.name)) {
        // The median of several processes: the allocator's and the kernel's page accounting
        // move a figure by a fraction of a byte per entry from one process to the next.
        let at = |n| {
            let mut runs: Vec<memory::MemFigures> = (0..settings.mem_runs)
                .map(|_| {
                    memory::measure("std", c.name, n).unwrap_or_else(|e| {
                        eprintln!("maps bench: {e}");
                        std::process::exit(1)
                    })
                })
                .collect();
            runs.sort_by_key(|f| f.rss.saturating_sub(f.base));
            runs[runs.len() / 2]
        };
        let row = MemRow { name: c.name.to_string(), at_900k: at(900_000), at_1m: at(1_000_000) };
        eprintln!(
            "memory | {:28} {:6.1} B/entry at 0.9 M, {:6.1} at 1 M, peak {:6.1}",
            c.name,
            row.at_900k.per_entry(row.at_900k.rss),
            row.at_1m.per_entry(row.at_1m.rss),
            row.at_1m.per_entry(row.at_1m.peak)
        );
        out.push(row);
    }
    out
}

/// `--mem-child TABLE MAP N`: fill one map in this fresh process and print its figures.
fn mem_child(args: &[String]) {
    let [table, name, n] = args else {
        eprintln!("usage: --mem-child TABLE MAP N");
        std::process::exit(2)
    };
    let n: u64 = n.parse().expect("--mem-child: N is a number");
    let rows =
        tables().into_iter().find(|t| t.0 == table).map(|t| (t.2)()).expect("--mem-child: known table");
    let c = rows.into_iter().find(|c| c.name == name).expect("--mem-child: known map");
    (c.mem)(n);
}
