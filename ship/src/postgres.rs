//! The PostgreSQL sink: an append-only table keyed by (trail, seq).
//!
//! Schema ([`SCHEMA_SQL`], also `ship/sql/001_schema.sql`): table `map_wrapper_audit`
//! (`trail text`, `seq bigint`, `header bytea`, `line bytea`, `shipped_at timestamptz`,
//! primary key (trail, seq)); triggers refuse UPDATE, DELETE and TRUNCATE (SQLSTATE `MW002`)
//! and an insert that leaves a gap (`MW001`: a row whose seq − 1 is not there, checked once
//! per statement); `REVOKE ALL … FROM PUBLIC`.
//! A batch is one statement in one transaction:
//! `INSERT … SELECT … FROM unnest(…) ORDER BY ord ON CONFLICT (trail, seq) DO NOTHING
//! RETURNING seq`; rows not inserted are read back and compared byte for byte (a different
//! line is a [`SinkError::Fork`]); the commit is the acknowledgement.
//!
//! Checkpoints ([`CHECKPOINTS_SQL`], `ship/sql/002_checkpoints.sql`): table
//! `map_wrapper_audit_checkpoints` (`trail`, `pos`, `origin`, `size`, `root`, `note_time`,
//! `note text`, primary key (trail, pos), unique (trail, size, note_time)), append-only like
//! the record table; a BEFORE INSERT trigger refuses a checkpoint that goes backwards from
//! the trail's latest (`MW003` smaller tree, `MW004` same size and another root, `MW005`
//! another origin: [`SinkError::Checkpoint`]), skips one that adds nothing (same tree, not
//! newer), and numbers the others. [`PgAnchor`] makes the table an anchor.

use postgres::error::SqlState;
use std::sync::mpsc;
use std::time::Duration;

use postgres::{Client, NoTls};

use map_wrapper::audit::anchor::check_forward;
use map_wrapper::audit::SignedCheckpoint;

use crate::sink::{check_trail_id, Acked, RemoteSink, SinkError};
use crate::Record;

/// The schema and migration (idempotent; PostgreSQL 14 or later).
pub const SCHEMA_SQL: &str = include_str!("../sql/001_schema.sql");

/// The checkpoint table's schema and migration (idempotent; after [`SCHEMA_SQL`]).
pub const CHECKPOINTS_SQL: &str = include_str!("../sql/002_checkpoints.sql");

/// A PostgreSQL copy as a checkpoint anchor:
/// `PgAnchor::new(PostgresSink::new(url), "billing-host7")`.
pub type PgAnchor = crate::RemoteAnchor<PostgresSink>;

/// Ships to a PostgreSQL table (see the [module docs](self)).
///
/// Connects lazily and again after a failure, so a restarted server is picked up by the
/// next call. **Timeouts**: every exchange (connecting included) is bounded by
/// [`timeout`](PostgresSink::timeout) (default 10 s): the connection lives on a worker thread,
/// and an exchange that gets no answer in time (a hung server, a silent network) returns
/// [`SinkError::Unavailable`]; the worker and its connection are abandoned (the thread ends
/// when the socket does) and the next call connects afresh — the shipper then resumes from the
/// remote's last seq. A batch whose commit was in flight may or may not be stored: its
/// redelivery is accepted if identical, like any lost ack.
pub struct PostgresSink {
    url: String,
    timeout: Duration,
    worker: Option<Worker>,
}

impl std::fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSink")
            .field("connected", &self.worker.is_some())
            .field("timeout", &self.timeout)
            .finish()
    }
}

type Job = Box<dyn FnOnce(&mut Option<Client>, &str) + Send>;

/// The thread that owns the connection; jobs go in, each sends its own answer back.
struct Worker {
    jobs: mpsc::Sender<Job>,
}

impl Worker {
    fn spawn(url: String) -> Result<Worker, SinkError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("map-wrapper-ship-postgres".into())
            .spawn(move || {
                let mut client: Option<Client> = None;
                while let Ok(job) = rx.recv() {
                    job(&mut client, &url);
                }
            })
            .map_err(|e| SinkError::Unavailable(format!("cannot start the PostgreSQL worker thread: {e}")))?;
        Ok(Worker { jobs })
    }
}

const INSERT: &str = "INSERT INTO map_wrapper_audit (trail, seq, header, line) \
     SELECT $1, u.seq, u.header, u.line \
     FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]) WITH ORDINALITY AS u(seq, header, line, ord) \
     ORDER BY u.ord \
     ON CONFLICT (trail, seq) DO NOTHING RETURNING seq";

impl PostgresSink {
    /// A sink for the server at `url` (`postgresql://user@host:port/db?connect_timeout=5`).
    /// Does not connect yet.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresSink { url: url.into(), timeout: Duration::from_secs(10), worker: None }
    }

    /// The longest wait for any one exchange with the server, connecting included (default
    /// 10 s). A batch of 10 000 records takes well under a second on a healthy server.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Creates or updates the schema ([`SCHEMA_SQL`] then [`CHECKPOINTS_SQL`]); run it as
    /// the tables' owner.
    pub fn migrate(&mut self) -> Result<(), SinkError> {
        self.call(|client| {
            client.batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7215392); {SCHEMA_SQL} {CHECKPOINTS_SQL} COMMIT;"
            ))
        })
    }

    /// Runs `f` on the worker's connection (connecting first if needed), waiting at most the
    /// timeout. A connection that may be broken (a retryable error, a timeout) is dropped.
    fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, SinkError> {
        if self.worker.is_none() {
            self.worker = Some(Worker::spawn(self.url.clone())?);
        }
        let (tx, rx) = mpsc::sync_channel::<Result<R, SinkError>>(1);
        let job: Job = Box::new(move |slot, url| {
            if slot.as_ref().is_some_and(Client::is_closed) {
                *slot = None;
            }
            if slot.is_none() {
                match Client::connect(url, NoTls) {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        let _ = tx.send(Err(classify(&e)));
                        return;
                    }
                }
            }
            let client = slot.as_mut().expect("just connected");
            let r = f(client).map_err(|e| classify(&e));
            if r.as_ref().is_err_and(SinkError::is_retryable) {
                *slot = None;
            }
            let _ = tx.send(r);
        });
        let sent = self.worker.as_ref().expect("spawned").jobs.send(job);
        if sent.is_err() {
            self.worker = None;
            return Err(SinkError::Unavailable("the PostgreSQL worker thread ended".into()));
        }
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(e) => {
                // Hung (or the worker died): abandon it with its connection.
                self.worker = None;
                Err(SinkError::Unavailable(match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no answer from PostgreSQL in {:?}; reconnecting", self.timeout)
                    }
                    mpsc::RecvTimeoutError::Disconnected => "the PostgreSQL worker thread ended".into(),
                }))
            }
        }
    }

    fn send_inner(
        client: &mut Client,
        trail: &str,
        batch: &[Record],
    ) -> Result<Result<Acked, SinkError>, postgres::Error> {
        let seqs: Vec<i64> = batch.iter().map(|r| r.seq as i64).collect();
        let headers: Vec<&[u8]> = batch.iter().map(|r| r.header.as_slice()).collect();
        let lines: Vec<&[u8]> = batch.iter().map(|r| r.line.as_slice()).collect();
        let mut tx = client.transaction()?;
        let inserted = tx.query(INSERT, &[&trail, &seqs, &headers, &lines])?;
        if inserted.len() < batch.len() {
            // Some were there already: they must be the same bytes.
            let mut fresh: Vec<i64> = inserted.iter().map(|r| r.get::<_, i64>(0)).collect();
            fresh.sort_unstable();
            let dups: Vec<i64> = seqs.iter().copied().filter(|s| fresh.binary_search(s).is_err()).collect();
            let rows = tx.query(
                "SELECT seq, header, line FROM map_wrapper_audit WHERE trail = $1 AND seq = ANY($2) ORDER BY seq",
                &[&trail, &dups],
            )?;
            for row in rows {
                let seq: i64 = row.get(0);
                let header: &[u8] = row.get(1);
                let line: &[u8] = row.get(2);
                let mine = &batch[batch.iter().position(|r| r.seq as i64 == seq).expect("asked for")];
                if header != mine.header.as_slice() || line != mine.line.as_slice() {
                    tx.rollback()?;
                    return Ok(Err(SinkError::Fork { trail: trail.to_owned(), seq: seq as u64 }));
                }
            }
        }
        tx.commit()?;
        Ok(Ok(Acked { last_seq: batch.last().expect("not empty").seq }))
    }
}

const INSERT_CHECKPOINT: &str = "INSERT INTO map_wrapper_audit_checkpoints \
     (trail, pos, origin, size, root, note_time, note) VALUES ($1, 0, $2, $3, $4, $5::text::timestamptz, $6)";

fn latest_inner(client: &mut Client, trail: &str) -> Result<Option<String>, postgres::Error> {
    let row = client.query_opt(
        "SELECT note FROM map_wrapper_audit_checkpoints WHERE trail = $1 ORDER BY pos DESC LIMIT 1",
        &[&trail],
    )?;
    Ok(row.map(|r| r.get(0)))
}

fn parse_stored(trail: &str, pos: i64, note: &str) -> Result<SignedCheckpoint, SinkError> {
    SignedCheckpoint::parse_unverified(note.as_bytes()).map_err(|e| {
        SinkError::Refused(format!("the stored checkpoint {pos} of {trail} is not a checkpoint: {e}"))
    })
}

fn send_checkpoint_inner(
    client: &mut Client,
    trail: &str,
    cp: &SignedCheckpoint,
) -> Result<Result<(), SinkError>, postgres::Error> {
    let c = cp.checkpoint();
    let root = cp.note().split('\n').nth(2).unwrap_or_default();
    let time = c
        .time()
        .map_or_else(|| "-infinity".to_owned(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    let size = i64::try_from(c.size()).unwrap_or(i64::MAX);
    match client.execute(INSERT_CHECKPOINT, &[&trail, &c.origin(), &size, &root, &time, &cp.note()]) {
        Ok(_) => Ok(Ok(())),
        Err(e) if e.code().is_some_and(|code| ["MW003", "MW004", "MW005"].contains(&code.code())) => {
            // Refused by the trigger: say why, in the anchors' own terms.
            let why = match latest_inner(client, trail)? {
                Some(held) => match parse_stored(trail, 0, &held) {
                    Ok(held) => check_forward(held.checkpoint(), c).err(),
                    Err(e) => return Ok(Err(e)),
                },
                None => None,
            };
            Ok(Err(why.map_or_else(|| classify(&e), SinkError::Checkpoint)))
        }
        // Two inserters of one trail at once under REPEATABLE READ or SERIALIZABLE: the
        // trigger's read (after the advisory lock) still sees the snapshot from before the
        // other's row, so both take the same `pos`. Retried, the insert sees that row.
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Ok(Err(SinkError::Unavailable(format!(
            "a concurrent checkpoint insert for {trail} took the same position (retried): {e}"
        )))),
        Err(e) => Err(e),
    }
}

fn classify(e: &postgres::Error) -> SinkError {
    match e.code() {
        None => SinkError::Unavailable(e.to_string()),
        Some(code) => {
            let c = code.code();
            if c == "MW001" {
                let msg = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
                SinkError::Refused(msg)
            } else if c.starts_with("08")
                || c.starts_with("57")
                || c.starts_with("53")
                || c.starts_with("58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
            {
                SinkError::Unavailable(e.to_string())
            } else {
                let msg = e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{} ({c})", d.message()));
                SinkError::Refused(msg)
            }
        }
    }
}

impl RemoteSink for PostgresSink {
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError> {
        check_trail_id(trail)?;
        let Some(first) = batch.first() else {
            return Err(SinkError::Refused("an empty batch".into()));
        };
        if batch.iter().enumerate().any(|(i, r)| r.seq != first.seq + i as u64) {
            return Err(SinkError::Refused("a batch whose seqs are not contiguous".into()));
        }
        let first_seq = first.seq;
        let (owned_trail, owned) = (trail.to_owned(), batch.to_vec());
        match self.call(move |client| Self::send_inner(client, &owned_trail, &owned)) {
            Ok(Ok(acked)) => Ok(acked),
            Ok(Err(fork)) => Err(fork),
            Err(err) => {
                if let SinkError::Refused(msg) = &err {
                    if msg.contains(": gap in trail") {
                        let last = self.last_acked(trail)?.unwrap_or(0);
                        return Err(SinkError::Gap { trail: trail.to_owned(), sent: first_seq, last });
                    }
                }
                Err(err)
            }
        }
    }

    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError> {
        let trail = trail.to_owned();
        self.call(move |client| {
            let row =
                client.query_one("SELECT max(seq) FROM map_wrapper_audit WHERE trail = $1", &[&trail])?;
            Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
        })
    }

    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError> {
        let trail = trail.to_owned();
        self.call(move |client| {
            let rows = client.query(
                "SELECT seq, header, line FROM map_wrapper_audit WHERE trail = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
                &[&trail, &(from_seq.min(i64::MAX as u64) as i64), &(max.min(i64::MAX as usize) as i64)],
            )?;
            Ok(rows
                .into_iter()
                .map(|row| {
                    Record::new(row.get::<_, i64>(0) as u64, row.get::<_, Vec<u8>>(1), row.get::<_, Vec<u8>>(2))
                })
                .collect())
        })
    }

    fn send_checkpoint(&mut self, trail: &str, checkpoint: &SignedCheckpoint) -> Result<(), SinkError> {
        check_trail_id(trail)?;
        let (trail, cp) = (trail.to_owned(), checkpoint.clone());
        self.call(move |client| send_checkpoint_inner(client, &trail, &cp))?
    }

    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        let trail = trail.to_owned();
        let rows = {
            let trail = trail.clone();
            self.call(move |client| {
                client.query(
                    "SELECT pos, note FROM map_wrapper_audit_checkpoints WHERE trail = $1 AND pos >= $2 \
                     ORDER BY pos LIMIT $3",
                    &[&trail, &(from.min(i64::MAX as u64) as i64), &(max.min(i64::MAX as usize) as i64)],
                )
            })?
        };
        rows.into_iter()
            .map(|row| {
                let pos: i64 = row.get(0);
                Ok((pos as u64, parse_stored(&trail, pos, row.get(1))?))
            })
            .collect()
    }

    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError> {
        let owned = trail.to_owned();
        let note = self.call(move |client| latest_inner(client, &owned))?;
        note.map(|n| parse_stored(trail, 0, &n)).transpose()
    }
}
