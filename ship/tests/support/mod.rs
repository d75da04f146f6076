//! Test support: real servers (PostgreSQL, nats-server) on free loopback ports in temporary
//! directories, killed (process group, SIGKILL) when dropped, also on panic. No mocks.
//!
//! Needs the Debian packages `postgresql` (any 14+; binaries under /usr/lib/postgresql/N/bin)
//! and `nats-server` (scripts/test-deps.sh installs them). As root, PostgreSQL runs as the
//! `postgres` user (or `nobody`), which owns its temporary directory.

#![allow(dead_code, unused_imports)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("addr").port()
}

fn wait_for_port(port: u16, what: &str, log: &Path) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{what} did not listen on port {port} within 60 s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Kills a child's whole process group and its children (PostgreSQL backends call `setsid`, so
/// they leave the group) with SIGKILL, reaps the child, and waits (bounded) until the children
/// are gone — a backend still alive keeps the old server's shared memory, and a restart fails.
fn kill_group(child: &mut Child) {
    let children = children_of(child.id() as i32);
    signal_group(child, libc::SIGKILL);
    let _ = child.wait();
    let start = Instant::now();
    while children.iter().any(|&p| alive(p)) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|r| r.1.split_whitespace().next() != Some("Z")))
        .unwrap_or(false)
}

/// The pids whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid …; comm may hold spaces: split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|r| r.1) else { continue };
        let ppid: Option<i32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            if let Ok(child_pid) = entry.file_name().to_string_lossy().parse::<i32>() {
                out.push(child_pid);
            }
        }
    }
    out
}

/// Sends `sig` to a child's process group and to each of its children (PostgreSQL backends
/// call `setsid`, so they leave the group): SIGSTOP makes a hung server, SIGCONT lets it go on.
fn signal_group(child: &Child, sig: i32) {
    let pid = child.id() as i32;
    for p in std::iter::once(-pid).chain(children_of(pid)) {
        // SAFETY: kill(2) on our server's process group and its children; no memory involved.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// The uid/gid to run PostgreSQL as: None when not root, else `postgres` (or `nobody`).
fn unprivileged() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in [c"postgres", c"nobody"] {
        // SAFETY: a NUL-terminated name; the result is read at once, before any other call
        // that could overwrite getpwnam's static buffer.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null pointer returned by getpwnam.
            let pw = unsafe { &*pw };
            return Some((pw.pw_uid, pw.pw_gid));
        }
    }
    panic!("running as root and there is neither a `postgres` nor a `nobody` user to run PostgreSQL as");
}

fn pg_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin"))).filter(|p| p.join(name).exists()).collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some(dir) => dir.join(name),
        None => {
            panic!("PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin: run scripts/test-deps.sh")
        }
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a temp path");
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    assert_eq!(r, 0, "chown {}: {}", path.display(), std::io::Error::last_os_error());
}

#[cfg(feature = "postgres")]
pub use pg::Postgres;

#[cfg(feature = "postgres")]
mod pg {
    use super::*;

    /// A PostgreSQL server of its own: `initdb` in a temporary directory, `postgres` on a free
    /// loopback port, trust authentication, superuser `owner`, database `postgres`.
    pub struct Postgres {
        dir: tempfile::TempDir,
        pub port: u16,
        child: Option<Child>,
        user: Option<(u32, u32)>,
    }

    impl Postgres {
        /// Initialises and starts a server (panics with the log if it does not come up).
        pub fn start() -> Self {
            let dir = tempfile::Builder::new().prefix("mw-pg-").tempdir().expect("temp dir");
            let user = unprivileged();
            if let Some((uid, gid)) = user {
                chown_tree(dir.path(), uid, gid);
            }
            let data = dir.path().join("data");
            let log = dir.path().join("initdb.log");
            let mut cmd = Command::new(pg_bin("initdb"));
            cmd.args(["-D"]).arg(&data).args([
                "-U",
                "owner",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ]);
            cmd.stdout(std::fs::File::create(&log).expect("log")).stderr(Stdio::null());
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            let status = cmd.status().expect("run initdb");
            assert!(status.success(), "initdb failed: {}", std::fs::read_to_string(&log).unwrap_or_default());
            let mut pg = Postgres { dir, port: free_port(), child: None, user };
            pg.restart();
            pg
        }

        /// A connection URL for `role` (trust authentication: any existing role).
        pub fn url_as(&self, role: &str) -> String {
            format!("postgresql://{role}@127.0.0.1:{}/postgres?connect_timeout=3", self.port)
        }

        /// The owner's URL.
        pub fn url(&self) -> String {
            self.url_as("owner")
        }

        /// Starts the server again (after [`kill`](Self::kill)) on the same port and data.
        pub fn restart(&mut self) {
            assert!(self.child.is_none(), "already running");
            let log = self.dir.path().join("postgres.log");
            let mut cmd = Command::new(pg_bin("postgres"));
            cmd.arg("-D").arg(self.dir.path().join("data"));
            cmd.args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c"])
                .arg(format!("unix_socket_directories={}", self.dir.path().display()));
            cmd.stdin(Stdio::null()).stdout(Stdio::null());
            cmd.stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log"));
            cmd.process_group(0);
            if let Some((uid, gid)) = self.user {
                cmd.uid(uid).gid(gid);
            }
            self.child = Some(cmd.spawn().expect("start postgres"));
            wait_for_port(self.port, "postgres", &log);
            // Listening is not accepting queries yet (recovery after a kill): wait for a query.
            let start = Instant::now();
            loop {
                match postgres::Client::connect(&self.url(), postgres::NoTls)
                    .and_then(|mut c| c.simple_query("SELECT 1"))
                {
                    Ok(_) => return,
                    Err(e) if start.elapsed() > Duration::from_secs(60) => {
                        panic!("postgres not ready in 60 s: {e}")
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }

        /// SIGKILLs the postmaster and every backend (its process group and its children).
        pub fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                kill_group(&mut c);
            }
        }

        /// Stops (SIGSTOP) the server and its backends: it hangs, connections stay open.
        pub fn pause(&self) {
            signal_group(self.child.as_ref().expect("running"), libc::SIGSTOP);
        }

        /// Lets a paused server go on (SIGCONT).
        pub fn resume(&self) {
            signal_group(self.child.as_ref().expect("running"), libc::SIGCONT);
        }

        /// Whether it runs.
        pub fn running(&self) -> bool {
            self.child.is_some()
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            self.kill();
        }
    }
}

/// A `nats-server -js` of its own on a free loopback port, storage in a temporary directory.
pub struct Nats {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn nats_bin() -> PathBuf {
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nats-server")
}

impl Nats {
    /// Starts a server (panics with the log if it does not come up).
    pub fn start() -> Self {
        let dir = tempfile::Builder::new().prefix("mw-nats-").tempdir().expect("temp dir");
        let mut n = Nats { dir, port: free_port(), child: None };
        n.restart();
        n
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = self.dir.path().join("nats.log");
        let mut cmd = Command::new(nats_bin());
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.dir.path().join("store"));
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd.stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log"));
        cmd.process_group(0);
        self.child =
            Some(cmd.spawn().unwrap_or_else(|e| panic!("start nats-server: {e} (run scripts/test-deps.sh)")));
        wait_for_port(self.port, "nats-server", &log);
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }

    /// Stops (SIGSTOP) the server: it hangs, connections stay open.
    pub fn pause(&self) {
        signal_group(self.child.as_ref().expect("running"), libc::SIGSTOP);
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        signal_group(self.child.as_ref().expect("running"), libc::SIGCONT);
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes `n` records into a trail at `dir` through an audited map (`Buffered`), with small
/// segments so the trail rotates; closes the sink (the last record is `audit_stop`).
/// `pace`: records per millisecond at most (0: as fast as possible).
pub fn write_trail(dir: &Path, n: u64, segment_bytes: u64, pace: u64) {
    write_trail_with(dir, n, segment_bytes, pace, None);
}

/// The origin of the test trails' checkpoints.
pub const ORIGIN: &str = "example.com/ship-test";

/// The checkpoint signing key of the test trails (a fixed seed).
pub fn signer() -> map_wrapper::audit::NoteSigner {
    map_wrapper::audit::NoteSigner::from_seed(ORIGIN, [7; 32]).expect("a valid key name")
}

/// [`write_trail`] with signed checkpoints ([`signer`]) every `every_records` records or
/// 5 ms (and when the trail opens and closes), appended to the trail's `checkpoints.notes`;
/// paced at 5 records per millisecond so that several are made.
pub fn write_checkpointed_trail(dir: &Path, n: u64, segment_bytes: u64, every_records: u64) {
    use map_wrapper::audit::CheckpointPolicy;
    let policy = CheckpointPolicy { every_records, every: Duration::from_millis(5), ..Default::default() };
    write_trail_with(dir, n, segment_bytes, 5, Some(checkpoint_options(policy)));
}

/// Checkpoints of [`ORIGIN`] signed by [`signer`] with `policy`.
pub fn checkpoint_options(
    policy: map_wrapper::audit::CheckpointPolicy,
) -> map_wrapper::audit::CheckpointOptions {
    map_wrapper::audit::CheckpointOptions::new(ORIGIN, signer()).policy(policy)
}

/// The notes of a trail's `checkpoints.notes`, in order.
pub fn local_checkpoints(dir: &Path) -> Vec<map_wrapper::audit::SignedCheckpoint> {
    let bytes = std::fs::read(dir.join(map_wrapper::audit::anchor::APPEND_FILE)).unwrap_or_default();
    map_wrapper::audit::checkpoint::split_notes(&bytes)
        .into_iter()
        .map(|n| map_wrapper::audit::SignedCheckpoint::parse_unverified(n).expect("a complete note"))
        .collect()
}

/// `map-wrapper-audit verify --pubkey KEY [--checkpoint FILE]… DIR` (the library API the CLI
/// runs): the trail's own `checkpoints.notes` and the `external` note files, checked with
/// [`signer`]'s key.
pub fn verdict_with_checkpoints(dir: &Path, external: &[PathBuf]) -> map_wrapper::audit::verify::Report {
    use map_wrapper::audit::checkpoint::CheckpointCheckOptions;
    let opts = map_wrapper::audit::verify::VerifyOptions {
        checkpoints: Some(CheckpointCheckOptions {
            trusted: vec![signer().verifier()],
            trail_notes: vec![dir.join(map_wrapper::audit::anchor::APPEND_FILE)],
            external: external.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    map_wrapper::audit::verify::verify_paths(&[dir.to_path_buf()], &opts).expect("verify runs")
}

/// [`write_trail`] with `checkpoints` on (see [`checkpoint_options`]).
pub fn write_trail_with(
    dir: &Path,
    n: u64,
    segment_bytes: u64,
    pace: u64,
    checkpoints: Option<map_wrapper::audit::CheckpointOptions>,
) {
    use map_wrapper::audit::{Auditor, Durability, JsonLinesOptions, JsonLinesSink};
    let opts = JsonLinesOptions { max_segment_bytes: segment_bytes, checkpoints, ..Default::default() };
    let sink = std::sync::Arc::new(JsonLinesSink::open(dir, opts).expect("open trail"));
    let auditor = Auditor::from_arc(sink.clone()).durability(Durability::Buffered);
    let map: map_wrapper::MapWrapper<u64, String> =
        map_wrapper::MapWrapper::builder().name("ship-test").auditor(auditor).build().expect("map");
    let start = Instant::now();
    for i in 0..n {
        map.insert(i % 1000, format!("value-{i}")).expect("insert");
        if pace > 0 && i % pace == 0 {
            let due = Duration::from_millis(i / pace);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    drop(map);
    sink.close().expect("close trail");
}

/// All lines of a trail's records, by seq, byte for byte (headers excluded).
pub fn local_records(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (_, path) in map_wrapper::audit::list_segments(dir).expect("list") {
        let bytes = std::fs::read(&path).expect("read segment");
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if !line.starts_with(br#"{"v":1,"segment":"#) {
                out.push(line.to_vec());
            }
        }
    }
    out
}

/// `map-wrapper-audit verify`'s verdict on a directory (the library API the CLI runs).
pub fn verdict(dir: &Path) -> map_wrapper::audit::verify::Report {
    map_wrapper::audit::verify::verify_paths(&[dir.to_path_buf()], &Default::default()).expect("verify runs")
}
