//! A remote copy as a checkpoint anchor.

use std::sync::Mutex;

use map_wrapper::audit::anchor::{AnchorError, CheckpointAnchor};
use map_wrapper::audit::SignedCheckpoint;

use crate::sink::{RemoteSink, SinkError};

/// A [`CheckpointAnchor`] over a remote copy: the checkpoints of one trail kept by a
/// [`RemoteSink`] (`postgres::PgAnchor`, `nats::NatsAnchor`).
///
/// - [`latest`](CheckpointAnchor::latest) is the newest checkpoint the remote holds for the
///   trail: the one to check a local trail (or an export) against —
///   `map-wrapper-audit verify --pubkey KEY --checkpoint FILE DIR` with it written to `FILE`
///   (see ship/README.md), or [`CheckpointCheckOptions`](map_wrapper::audit::checkpoint::CheckpointCheckOptions).
/// - [`publish`](CheckpointAnchor::publish) stores a checkpoint, the remote end refusing one
///   that goes backwards ([`AnchorError::Backwards`], [`AnchorError::Fork`],
///   [`AnchorError::OtherOrigin`]); a remote that cannot be reached is an
///   [`AnchorError::Io`]. The [`Shipper`](crate::Shipper) already ships a trail's checkpoints
///   (after the records they cover): give the writer this anchor only where no shipper runs,
///   and then the remote may hold a checkpoint of records it does not hold yet.
///
/// The trait is synchronous and so are the sinks (the NATS sink runs its own small tokio
/// runtime): call it from plain threads, not from inside an async runtime's worker. A call
/// waits at most the sink's timeout (`PostgresSink::timeout`, `NatsSink::timeout`): as a
/// writer's anchor, where a publish runs in the trail writer's turn, give the sink a short one.
#[derive(Debug)]
pub struct RemoteAnchor<S> {
    sink: Mutex<S>,
    trail: String,
}

impl<S: RemoteSink + Send> RemoteAnchor<S> {
    /// The checkpoints of `trail` kept by `sink`.
    pub fn new(sink: S, trail: impl Into<String>) -> Self {
        RemoteAnchor { sink: Mutex::new(sink), trail: trail.into() }
    }

    /// The trail id.
    pub fn trail(&self) -> &str {
        &self.trail
    }

    fn with<R>(&self, f: impl FnOnce(&mut S, &str) -> Result<R, SinkError>) -> Result<R, AnchorError> {
        let mut sink = self.sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut sink, &self.trail).map_err(|e| match e {
            SinkError::Checkpoint(e) => e,
            other => {
                AnchorError::Io { path: format!("remote copy of {}", self.trail), reason: other.to_string() }
            }
        })
    }
}

impl<S: RemoteSink + Send> CheckpointAnchor for RemoteAnchor<S> {
    fn publish(&self, checkpoint: &SignedCheckpoint) -> Result<(), AnchorError> {
        self.with(|s, t| s.send_checkpoint(t, checkpoint))
    }

    fn latest(&self) -> Result<Option<SignedCheckpoint>, AnchorError> {
        self.with(|s, t| s.latest_checkpoint(t))
    }
}
