//! The report: markdown tables (median Mops/s with min–max, ratio to dashmap and to the best
//! peer), the target check, memory, a hand-written SVG plot, and every sample as CSV.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::memory::MemFigures;

/// One column of a throughput table.
pub struct Cell {
    pub mix: &'static str,
    pub threads: usize,
}

/// One map's samples (Mops/s) per cell.
pub struct Row {
    pub name: String,
    pub peer: bool,
    pub cells: Vec<Vec<f64>>,
    /// Operations that returned a retryable error and were retried (counted in the time).
    pub retried: u64,
}

pub struct Table {
    pub title: String,
    pub cells: Vec<Cell>,
    pub rows: Vec<Row>,
}

pub struct MemRow {
    pub name: String,
    pub at_900k: MemFigures,
    pub at_1m: MemFigures,
}

pub struct Report {
    pub quick: bool,
    pub prefill: u64,
    pub ops_per_thread: usize,
    pub reps: usize,
    pub mem_runs: usize,
    pub tables: Vec<Table>,
    pub memory: Vec<MemRow>,
    pub elapsed: Duration,
}

/// Median, min and max of a non-empty sample.
pub fn stats(samples: &[f64]) -> (f64, f64, f64) {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (median, s[0], s[n - 1])
}

/// `target/bench-report/` of the workspace (or of `CARGO_TARGET_DIR`).
pub fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-report")
}

impl Table {
    fn median(&self, row: usize, cell: usize) -> f64 {
        stats(&self.rows[row].cells[cell]).0
    }

    fn dashmap(&self, cell: usize) -> Option<f64> {
        self.rows.iter().position(|r| r.name == "dashmap").map(|i| self.median(i, cell))
    }

    /// The best peer's median in `cell`, and its name.
    fn best_peer(&self, cell: usize) -> Option<(f64, &str)> {
        (0..self.rows.len())
            .filter(|&i| self.rows[i].peer)
            .map(|i| (self.median(i, cell), self.rows[i].name.as_str()))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    }

    fn row(&self, name_prefix: &str) -> Option<usize> {
        self.rows.iter().position(|r| r.name.starts_with(name_prefix))
    }

    fn cell(&self, mix: &str, threads: usize) -> Option<usize> {
        self.cells.iter().position(|c| c.mix == mix && c.threads == threads)
    }
}

fn ratio(a: f64, b: Option<f64>) -> String {
    b.map_or("–".into(), |b| format!("{:.2}×", a / b))
}

impl Report {
    pub fn new(quick: bool, prefill: u64, ops_per_thread: usize, reps: usize) -> Report {
        Report {
            quick,
            prefill,
            ops_per_thread,
            reps,
            mem_runs: 0,
            tables: Vec::new(),
            memory: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Writes report.md, report.svg and samples.csv into `dir`; returns the markdown.
    pub fn write(&self, dir: &Path) -> std::io::Result<String> {
        std::fs::create_dir_all(dir)?;
        let md = self.markdown();
        std::fs::write(dir.join("report.md"), &md)?;
        std::fs::write(dir.join("report.svg"), self.svg())?;
        std::fs::write(dir.join("samples.csv"), self.csv())?;
        Ok(md)
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines().find_map(|l| {
                    l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let commit = std::process::Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let _ = writeln!(md, "# map-wrapper: side-by-side benchmark\n");
        let _ = writeln!(
            md,
            "{} mode, {} · {cpus} CPUs · commit {commit} · {} UTC · took {:.0} s\n",
            if self.quick { "Quick" } else { "Full" },
            cpu,
            chrono::Utc::now().format("%Y-%m-%d %H:%M"),
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "u64 keys and values; {} entries prefilled (far larger than the caches) before the \
             clock starts; {} operations per thread from pre-generated streams (every read, update \
             and remove names a present key, every insert a new one, and the run checks that each \
             succeeded); median of {} repetitions, min–max in brackets. Mops/s = million \
             operations per second, all threads together. ×dashmap and ×best are the median's \
             ratio to dashmap's and to the best peer's median in the same cell (peers: every row \
             but MapWrapper and the reference). *sharded RwLock (bare reference)*: the design \
             under MapWrapper written by hand with no policy at all (as many padded \
             `parking_lot::RwLock<hashbrown::HashTable>` shards as MapWrapper's default, hash once); \
             not a peer: MapWrapper against it is what the policies cost. *MapWrapper (policies \
             off)*: no circuit breaker, no stats, no audit (every operation still has its 500 ms \
             deadline, cancellation and deadlock-refusal checks, which cannot be turned off); \
             *MapWrapper defaults*: `MapWrapper::builder().build()` (stats on, no breaker); \
             *+breaker+stats*: the default circuit breaker \
             and stats (the map's defaults plus `BreakerConfig::new()`); *+audit …*: policies \
             off plus an auditor with that sink (full value policy).\n",
            self.prefill, self.ops_per_thread, self.reps
        );
        let _ = writeln!(
            md,
            "*SmallMap* has a shape of its own: a map that stays in cache, 1,000 entries \
             prefilled, 90 % reads, 5 % inserts, 5 % removes, 2 M operations a run over all \
             threads, the peers built with capacity 2^10 (MapWrapper has no capacity setting).\n"
        );
        for (ti, t) in self.tables.iter().enumerate() {
            let _ = writeln!(md, "## Table {}: {}\n", ti + 1, t.title);
            let mixes: Vec<&str> = t.cells.iter().fold(Vec::new(), |mut v, c| {
                if !v.contains(&c.mix) {
                    v.push(c.mix);
                }
                v
            });
            for mix in mixes {
                let cells: Vec<usize> = (0..t.cells.len()).filter(|&c| t.cells[c].mix == mix).collect();
                let _ = write!(md, "**{mix}**\n\n| map |");
                for &c in &cells {
                    let _ = write!(md, " {}T Mops/s | ×dashmap | ×best |", t.cells[c].threads);
                }
                let _ = write!(md, "\n|---|");
                for _ in &cells {
                    let _ = write!(md, "---:|---:|---:|");
                }
                md.push('\n');
                for (ri, row) in t.rows.iter().enumerate() {
                    let _ = write!(md, "| {} |", row.name.replace('<', "\\<"));
                    for &c in &cells {
                        let (m, lo, hi) = stats(&row.cells[c]);
                        let best = t.best_peer(c);
                        let bold = best.is_some_and(|b| b.1 == row.name)
                            || (!row.peer && best.is_some_and(|b| m >= b.0));
                        let _ = write!(
                            md,
                            " {}{m:.2}{} ({lo:.2}–{hi:.2}) | {} | {} |",
                            if bold { "**" } else { "" },
                            if bold { "**" } else { "" },
                            ratio(m, t.dashmap(c)),
                            ratio(m, best.map(|b| b.0)),
                        );
                        let _ = ri;
                    }
                    md.push('\n');
                }
                md.push('\n');
            }
            for row in t.rows.iter().filter(|r| r.retried > 0) {
                let _ = writeln!(
                    md,
                    "{}: {} operations returned a retryable error (a timeout behind a descheduled \
                     lock holder, or an open breaker) and were retried; the retries are in the time.\n",
                    row.name, row.retried
                );
            }
        }
        self.targets(&mut md);
        self.memory_md(&mut md);
        let _ = writeln!(
            md,
            "Plot: `report.svg` beside this file; every sample: `samples.csv`. Command: \
             `cargo bench --bench maps{}`.",
            if self.quick { " -- --quick" } else { "" }
        );
        md
    }

    /// The issue's targets, checked against the first table (std hasher).
    fn targets(&self, md: &mut String) {
        let Some(t) = self.tables.first() else { return };
        let ours = t
            .row("MapWrapper +breaker")
            .map(|r| (r, "MapWrapper +breaker+stats: deadline, default breaker, stats; audit off"))
            .or_else(|| t.row("MapWrapper").map(|r| (r, "MapWrapper without a breaker row in this run")));
        let Some((r, what)) = ours else { return };
        let _ = writeln!(md, "## Targets ({what}; table 1)\n");
        let _ = writeln!(md, "| target | measured | met |\n|---|---:|:---:|");
        let mut check = |label: String, value: Option<f64>| {
            let (v, ok) = value
                .map_or(("–".into(), "–"), |v| (format!("{v:.2}×"), if v >= 1.0 { "yes" } else { "no" }));
            let _ = writeln!(md, "| {label} | {v} | {ok} |");
        };
        for mix in ["ReadHeavy", "Exchange"] {
            let c = t.cell(mix, 2);
            check(
                format!(
                    "{mix}, 2 threads: ≥ 1.0× best peer{}",
                    c.and_then(|c| t.best_peer(c))
                        .map_or(String::new(), |b| format!(" ({})", b.1.replace('<', "\\<")))
                ),
                c.and_then(|c| Some(t.median(r, c) / t.best_peer(c)?.0)),
            );
        }
        for mix in ["ReadHeavy", "Exchange"] {
            let c = t.cell(mix, 1);
            check(
                format!("{mix}, 1 thread: ≥ 1.0× dashmap"),
                c.and_then(|c| Some(t.median(r, c) / t.dashmap(c)?)),
            );
        }
        if let (Some(d), Some(o)) = (
            self.memory.iter().find(|m| m.name == "dashmap"),
            self.memory.iter().find(|m| m.name == t.rows[r].name),
        ) {
            let inv = |a: f64, b: f64| if a > 0.0 { Some(b / a) } else { None };
            check(
                "memory at 0.9 M: dashmap's / ours ≥ 1.0".into(),
                inv(o.at_900k.per_entry(o.at_900k.rss), d.at_900k.per_entry(d.at_900k.rss)),
            );
            check(
                "memory at 1 M: dashmap's / ours ≥ 1.0".into(),
                inv(o.at_1m.per_entry(o.at_1m.rss), d.at_1m.per_entry(d.at_1m.rss)),
            );
            check(
                "peak while growing to 1 M: dashmap's / ours ≥ 1.0".into(),
                inv(o.at_1m.per_entry(o.at_1m.peak), d.at_1m.per_entry(d.at_1m.peak)),
            );
        }
        md.push('\n');
    }

    fn memory_md(&self, md: &mut String) {
        if self.memory.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "## Memory (std hasher, each figure from a fresh process)\n\n\
             Bytes per entry = growth of resident anonymous memory (`RssAnon`: heap and \
             stacks; the binary's code pages are left out, a fixed cost that moves by hundreds \
             of kB between runs of the same map) from before the map was made to after N \
             inserts of u64 → u64, divided by N; *trimmed* is the same after `malloc_trim(0)` \
             (free heap pages returned, so only live data counts); *peak* is the high-water mark \
             while growing to 1 M (`VmHWM` less the file pages resident at the end), over the \
             same baseline. Each figure is the median of {} process(es) (by resident growth).\n",
            self.mem_runs
        );
        let _ = writeln!(
            md,
            "| map | 0.9 M: B/entry | trimmed | ×dashmap | 1 M: B/entry | trimmed | ×dashmap | peak to 1 M: B/entry | ×dashmap |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let d = self.memory.iter().find(|m| m.name == "dashmap");
        for m in &self.memory {
            let a = m.at_900k;
            let b = m.at_1m;
            let _ = writeln!(
                md,
                "| {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} | {} |",
                m.name.replace('<', "\\<"),
                a.per_entry(a.rss),
                a.per_entry(a.rss_trimmed),
                ratio(a.per_entry(a.rss), d.map(|d| d.at_900k.per_entry(d.at_900k.rss))),
                b.per_entry(b.rss),
                b.per_entry(b.rss_trimmed),
                ratio(b.per_entry(b.rss), d.map(|d| d.at_1m.per_entry(d.at_1m.rss))),
                b.per_entry(b.peak),
                ratio(b.per_entry(b.peak), d.map(|d| d.at_1m.per_entry(d.at_1m.peak))),
            );
        }
        md.push('\n');
    }

    fn csv(&self) -> String {
        let mut out = String::from("table,map,mix,threads,rep,mops\n");
        for t in &self.tables {
            for r in &t.rows {
                for (c, samples) in t.cells.iter().zip(&r.cells) {
                    for (i, s) in samples.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "\"{}\",\"{}\",{},{},{i},{s:.4}",
                            t.title, r.name, c.mix, c.threads
                        );
                    }
                }
            }
        }
        out
    }

    /// Grouped bars: one panel per mix and table (each with its own scale), one group per
    /// thread count, one bar per map at its median with a min–max whisker.
    fn svg(&self) -> String {
        const COLORS: [&str; 8] =
            ["#7f7f7f", "#1f77b4", "#2ca02c", "#9467bd", "#d62728", "#ff7f0e", "#e377c2", "#8c564b"];
        let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let (pw, ph, top, left) = (330.0, 240.0, 50.0, 50.0);
        let panels_per_row = 3usize;
        let nrows = self.tables.len().max(1);
        let nmaps = self.tables.iter().map(|t| t.rows.len()).max().unwrap_or(0);
        let width = left + panels_per_row as f64 * (pw + 30.0) + 10.0;
        let height = top + nrows as f64 * (ph + 70.0) + 20.0 * nmaps as f64 + 20.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="22" font-size="15">map-wrapper side by side: Mops/s, median with min–max (higher is better)</text>"#
        );
        for (ti, t) in self.tables.iter().enumerate() {
            let y0 = top + ti as f64 * (ph + 70.0);
            let _ = writeln!(
                s,
                r#"<text x="{left}" y="{:.0}" font-size="12">Table {}: {}</text>"#,
                y0 + 2.0,
                ti + 1,
                esc(&t.title.replace('`', ""))
            );
            let mixes: Vec<&str> = t.cells.iter().fold(Vec::new(), |mut v, c| {
                if !v.contains(&c.mix) {
                    v.push(c.mix);
                }
                v
            });
            for (pi, mix) in mixes.iter().enumerate() {
                let x0 = left + pi as f64 * (pw + 30.0);
                let py = y0 + 20.0;
                let cells: Vec<usize> = (0..t.cells.len()).filter(|&c| t.cells[c].mix == *mix).collect();
                let ymax = cells
                    .iter()
                    .flat_map(|&c| t.rows.iter().map(move |r| stats(&r.cells[c]).2))
                    .fold(0.0f64, f64::max)
                    * 1.1;
                let ymax = if ymax > 0.0 { ymax } else { 1.0 };
                let plot_h = ph - 30.0;
                let _ = writeln!(
                    s,
                    r#"<text x="{:.0}" y="{:.0}" font-size="12" font-weight="bold">{mix}</text>"#,
                    x0 + pw / 2.0 - 30.0,
                    py + 10.0
                );
                // Axis and grid.
                for g in 0..=4 {
                    let v = ymax * g as f64 / 4.0;
                    let y = py + 20.0 + plot_h - plot_h * g as f64 / 4.0;
                    let _ = writeln!(
                        s,
                        r##"<line x1="{x0:.0}" y1="{y:.1}" x2="{:.0}" y2="{y:.1}" stroke="#ddd"/>"##,
                        x0 + pw
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{v:.1}</text>"#,
                        x0 - 4.0,
                        y + 4.0
                    );
                }
                let group_w = pw / cells.len().max(1) as f64;
                let bar_w = (group_w - 20.0) / t.rows.len().max(1) as f64;
                for (gi, &c) in cells.iter().enumerate() {
                    let gx = x0 + gi as f64 * group_w + 10.0;
                    for (ri, r) in t.rows.iter().enumerate() {
                        let (m, lo, hi) = stats(&r.cells[c]);
                        let y = |v: f64| py + 20.0 + plot_h - plot_h * v / ymax;
                        let bx = gx + ri as f64 * bar_w;
                        let _ = writeln!(
                            s,
                            r#"<rect x="{bx:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{} {}T: {m:.2} ({lo:.2}–{hi:.2}) Mops/s</title></rect>"#,
                            y(m),
                            bar_w - 1.0,
                            (py + 20.0 + plot_h - y(m)).max(0.0),
                            COLORS[ri % COLORS.len()],
                            esc(&r.name),
                            t.cells[c].threads
                        );
                        let cx = bx + (bar_w - 1.0) / 2.0;
                        let _ = writeln!(
                            s,
                            r##"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="#000"/>"##,
                            y(lo),
                            y(hi)
                        );
                    }
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} thread{}</text>"#,
                        gx + (group_w - 20.0) / 2.0,
                        py + 20.0 + plot_h + 14.0,
                        t.cells[c].threads,
                        if t.cells[c].threads == 1 { "" } else { "s" }
                    );
                }
            }
        }
        let ly = top + nrows as f64 * (ph + 70.0);
        if let Some(t) = self.tables.first() {
            for (ri, r) in t.rows.iter().enumerate() {
                let y = ly + ri as f64 * 20.0;
                let _ = writeln!(
                    s,
                    r#"<rect x="{left}" y="{:.0}" width="12" height="12" fill="{}"/>"#,
                    y - 10.0,
                    COLORS[ri % COLORS.len()]
                );
                let _ = writeln!(s, r#"<text x="{:.0}" y="{y:.0}">{}</text>"#, left + 18.0, esc(&r.name));
            }
        }
        s.push_str("</svg>\n");
        s
    }
}
