//! The remote end: what a sink must do for the shipper.

use map_wrapper::audit::anchor::AnchorError;
use map_wrapper::audit::SignedCheckpoint;

use crate::Record;

/// What a remote sink confirmed: every record up to `last_seq` is stored durably.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The highest `seq` the remote holds for the trail, all before it included.
    pub last_seq: u64,
}

/// Why a remote sink did not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The remote cannot be reached or is restarting: the shipper retries (after asking
    /// [`RemoteSink::last_acked`] where to resume).
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    /// The remote holds a different line under the same (trail, seq): the local trail and the
    /// remote copy disagree. Never retried.
    #[error("fork at {trail} seq {seq}: the remote holds a different line for this seq")]
    Fork {
        /// The trail.
        trail: String,
        /// The first seq whose lines differ.
        seq: u64,
    },
    /// The remote refused a record whose seq is not its last + 1.
    #[error("gap refused by the remote for {trail}: sent seq {sent}, the remote's last is {last}")]
    Gap {
        /// The trail.
        trail: String,
        /// The seq sent.
        sent: u64,
        /// The remote's last seq.
        last: u64,
    },
    /// Any other refusal (permissions, schema, a bad trail name): never retried.
    #[error("remote refused: {0}")]
    Refused(String),
    /// The remote refused a checkpoint that goes backwards from the latest it holds (a
    /// smaller tree, the same size with another root, another origin): the rule of
    /// [`check_forward`](map_wrapper::audit::anchor::check_forward). Never retried.
    #[error("remote refused the checkpoint: {0}")]
    Checkpoint(AnchorError),
}

impl SinkError {
    /// Whether the shipper should retry after this error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Unavailable(_))
    }
}

/// A remote copy of trails, keyed by (trail id, seq).
///
/// The contract the shipper relies on (and the tests check for both built-in sinks):
///
/// - [`send`](RemoteSink::send) gets records of one trail with contiguous `seq`. The remote
///   stores each one durably before acknowledging; a record whose `seq` it already holds is
///   accepted if its bytes (header and line) are identical (the at-least-once redelivery) and
///   refused as [`SinkError::Fork`] otherwise; a record whose `seq` is not the remote's
///   last + 1 (nor already held) is refused as [`SinkError::Gap`]. The remote's first record of a
///   trail has `seq` 1. So the remote copy holds every record once, in order, byte for byte.
/// - [`last_acked`](RemoteSink::last_acked) is the highest `seq` stored: the shipper's cursor.
/// - [`read`](RemoteSink::read) returns stored records in `seq` order (for export and for the
///   shipper's check, on start, that the remote's last record is the local one).
///
/// **Checkpoints** (the trail's signed notes, `checkpoints.notes`) travel too, so the remote
/// copy is also an anchor:
///
/// - [`send_checkpoint`](RemoteSink::send_checkpoint) stores a note durably, after the
///   checks of [`check_forward`](map_wrapper::audit::anchor::check_forward) against the
///   latest held, made **by the remote end** (a PostgreSQL trigger; a JetStream publish
///   conditional on the last message checked): a smaller tree, the same size with another
///   root, or another origin is refused ([`SinkError::Checkpoint`]). A note that is not newer
///   than the latest held (the same tree, a time not later: a redelivery) is acknowledged
///   without being stored again, so each checkpoint is stored once, in order.
/// - [`read_checkpoints`](RemoteSink::read_checkpoints) returns them in the order stored,
///   by position (1, 2, …), and [`latest_checkpoint`](RemoteSink::latest_checkpoint) the last.
///
/// A Kafka sink fits the same shape: an idempotent producer keyed by the trail id, one
/// partition per trail, `last_acked` read from the partition's last message; checkpoints in
/// a second partition or topic.
pub trait RemoteSink {
    /// Stores `batch` (contiguous `seq`, not empty) for `trail`.
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError>;
    /// The highest `seq` stored for `trail`, `None` when it holds none.
    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError>;
    /// Up to `max` stored records of `trail` with `seq >= from_seq`, in `seq` order.
    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError>;
    /// Stores a signed checkpoint of `trail` (signatures not checked here: the verifier
    /// opens notes with its trusted keys), refusing one that goes backwards.
    fn send_checkpoint(&mut self, trail: &str, checkpoint: &SignedCheckpoint) -> Result<(), SinkError>;
    /// Up to `max` stored checkpoints of `trail` from position `from` (the first stored is 1),
    /// each with its position, in order.
    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError>;
    /// The last checkpoint stored for `trail` (the newest), `None` when none.
    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError>;
}

impl<S: RemoteSink + ?Sized> RemoteSink for Box<S> {
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError> {
        (**self).send(trail, batch)
    }
    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError> {
        (**self).last_acked(trail)
    }
    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError> {
        (**self).read(trail, from_seq, max)
    }
    fn send_checkpoint(&mut self, trail: &str, checkpoint: &SignedCheckpoint) -> Result<(), SinkError> {
        (**self).send_checkpoint(trail, checkpoint)
    }
    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        (**self).read_checkpoints(trail, from, max)
    }
    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError> {
        (**self).latest_checkpoint(trail)
    }
}

/// Whether `offered` adds nothing to `held` (the same tree, a time not later: a redelivery or
/// an older heartbeat), so a sink acknowledges it without storing it; `Err` when it goes
/// backwards ([`check_forward`](map_wrapper::audit::anchor::check_forward)).
pub(crate) fn checkpoint_is_old(
    held: Option<&SignedCheckpoint>,
    offered: &SignedCheckpoint,
) -> Result<bool, SinkError> {
    let Some(held) = held else { return Ok(false) };
    let (h, o) = (held.checkpoint(), offered.checkpoint());
    map_wrapper::audit::anchor::check_forward(h, o).map_err(SinkError::Checkpoint)?;
    Ok(o.size() == h.size() && o.time() <= h.time())
}

/// Checks a trail id: 1 to 128 characters from `A-Z a-z 0-9 _ -` (it names a NATS stream
/// and subject, and a key column).
pub fn check_trail_id(trail: &str) -> Result<(), SinkError> {
    if trail.is_empty()
        || trail.len() > 128
        || !trail.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(SinkError::Refused(format!(
            "trail id {trail:?}: use 1 to 128 characters from A-Z a-z 0-9 _ -"
        )));
    }
    Ok(())
}
