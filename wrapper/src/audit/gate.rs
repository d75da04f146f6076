//! [`AuditGate`]: something outside the sink that the trail's safety depends on.

use std::sync::Arc;

/// Something outside the audit sink that the trail's safety depends on — typically a shipper
/// delivering the trail to a remote copy (`map-wrapper-ship`'s `LagGate`), whose lag is part of
/// the map's [`Stats`](crate::stats::Stats) and may hold mutations back (NIST AU-5).
///
/// Given to an [`Auditor`](super::Auditor) with [`Auditor::gate`](super::Auditor::gate). Every
/// audited mutation asks [`refusal`](AuditGate::refusal) before it locks anything: `Some(reason)`
/// refuses it with [`ErrorKind::AuditUnavailable`](crate::ErrorKind::AuditUnavailable) (nothing
/// changed, retryable later), whatever the auditor's [`FailMode`](super::FailMode) — the gate
/// itself decides whether it ever refuses (an alert-only gate never does).
///
/// An auditor without a gate pays one `Option` test per mutation.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use map_wrapper::audit::{AuditGate, Auditor, MemorySink};
/// use map_wrapper::{ErrorKind, MapWrapper};
///
/// #[derive(Default)]
/// struct Switch(AtomicBool);
/// impl AuditGate for Switch {
///     fn refusal(&self) -> Option<Arc<str>> {
///         self.0.load(Ordering::Relaxed).then(|| "the remote copy is 5 s behind".into())
///     }
///     fn lag(&self) -> (u64, f64) {
///         (0, 0.0)
///     }
/// }
///
/// let gate = Arc::new(Switch::default());
/// let m: MapWrapper<u8, u8> =
///     MapWrapper::builder().auditor(Auditor::new(MemorySink::new()).gate(gate.clone())).build()?;
/// m.insert(1, 1)?;
/// gate.0.store(true, Ordering::Relaxed);
/// assert_eq!(m.insert(2, 2).unwrap_err().kind(), ErrorKind::AuditUnavailable);
/// assert_eq!(m.get_cloned(&2).unwrap(), None); // refused before anything changed; reads go on
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
pub trait AuditGate: Send + Sync + 'static {
    /// `Some(reason)`: refuse mutations with `AuditUnavailable(reason)`; `None`: let them
    /// through. Called once per audited mutation, on its thread, before it locks anything:
    /// keep it to an atomic load (compute the verdict elsewhere, e.g. on a ticker thread).
    fn refusal(&self) -> Option<Arc<str>>;

    /// How far the outside copy is behind the local trail: (records, seconds) — the age of the
    /// oldest record not yet acknowledged, 0 when none waits. Read by
    /// [`MapWrapper::stats`](crate::MapWrapper::stats) into
    /// [`AuditStats::ship_lag_records`](super::AuditStats::ship_lag_records) and
    /// [`AuditStats::ship_lag_seconds`](super::AuditStats::ship_lag_seconds).
    fn lag(&self) -> (u64, f64);
}

impl std::fmt::Debug for dyn AuditGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (records, seconds) = self.lag();
        f.debug_struct("AuditGate")
            .field("refusal", &self.refusal())
            .field("lag_records", &records)
            .field("lag_seconds", &seconds)
            .finish()
    }
}
