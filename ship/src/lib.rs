//! Ships a map-wrapper audit trail off the machine.
//!
//! The local JSON-lines trail (written by `map_wrapper::audit::JsonLinesSink`) stays the
//! system of record. A [`Shipper`] tails its directory and delivers every record **at least
//! once**, in order, to a [`RemoteSink`]; the receiver deduplicates by (trail id, `seq`) and
//! refuses gaps and forks, so the remote copy holds every record **exactly once, in order,
//! byte for byte** — and [`export`] turns it back into segment files that
//! `map-wrapper-audit verify` checks with the same verdicts as the local trail.
//!
//! Sinks, each behind a feature (the default build has no database or broker client):
//!
//! - `postgres`: [`postgres::PostgresSink`], an append-only table keyed by (trail, seq);
//! - `nats`: [`nats::NatsSink`], one JetStream stream per trail.
//!
//! ```no_run
//! use map_wrapper_ship::{Shipper, ShipperConfig, Until};
//! # fn demo(sink: impl map_wrapper_ship::RemoteSink + Send + 'static) -> Result<(), map_wrapper_ship::Error> {
//! let mut shipper = Shipper::new(ShipperConfig::new("billing-host7", "audit/"), sink)?;
//! let handle = shipper.handle();           // handle.lag(): records and seconds behind
//! std::thread::spawn(move || shipper.run(Until::Stopped));
//! # Ok(()) }
//! ```
//!
//! **Checkpoints**: the shipper also ships the trail's signed checkpoints (the notes of its
//! `checkpoints.notes`), each once the records it covers are acknowledged, in order; the
//! remote end refuses one that goes backwards. So the remote copy is an anchor
//! ([`RemoteAnchor`]: its latest checkpoint is what a local trail is checked against), and
//! [`export`] writes them back beside the records (`checkpoints.notes`), for
//! `map-wrapper-audit verify --pubkey`.
//!
//! **Lag and the map**: a [`ShipperHandle`] gives [`Lag`] from any thread; a [`LagGate`] on
//! it is the map's `AuditGate` (`Auditor::gate`): the lag goes into `map.stats()` and the
//! `metrics` export, and a [`LagBound`] either raises an alert or refuses mutations
//! (fail-closed) while the remote copy is too far behind.

mod anchor;
mod export;
mod gate;
mod record;
mod shipper;
mod sink;
mod tail;

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;

pub use anchor::RemoteAnchor;
pub use export::{export, Exported};
pub use gate::{AlertFn, LagAlert, LagBound, LagGate, Reaction};
pub use record::Record;
pub use shipper::{Lag, Shipper, ShipperConfig, ShipperHandle, Summary, Until};
pub use sink::{check_trail_id, Acked, RemoteSink, SinkError};
pub use tail::Tailer;

use std::path::Path;

/// What can go wrong while shipping or exporting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The remote sink refused or failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Reading the trail or writing an export failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A trail line the shipper cannot place (not a header nor a record, a header in the
    /// middle of a segment, a segment length that does not match the next header).
    #[error("malformed trail: {0}")]
    Malformed(String),
    /// The local trail's records are not contiguous (`verify` the trail: it is tampered).
    #[error("local trail out of sequence in segment {segment}: expected seq {expected}, found {found}")]
    LocalGap {
        /// The seq expected.
        expected: u64,
        /// The seq found.
        found: u64,
        /// The segment.
        segment: u64,
    },
    /// The shipper had read lines of a segment past the length the next (`recovered`)
    /// segment's header gives it: the writer abandoned lines that may already be shipped.
    #[error("segment {segment} was abandoned at byte {prev_len} after the shipper read to byte {read_to}")]
    Abandoned {
        /// The segment.
        segment: u64,
        /// Its length per the next header.
        prev_len: u64,
        /// How far the shipper had read.
        read_to: u64,
    },
    /// The remote holds a record the local trail does not have (yet).
    #[error("the remote copy of {trail} ends at seq {remote_last}, which the local trail does not hold")]
    RemoteAhead {
        /// The trail.
        trail: String,
        /// The remote's last seq.
        remote_last: u64,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.display().to_string(), source }
    }
}
