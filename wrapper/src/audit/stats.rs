//! [`AuditStats`]: the audit trail's figures in a map's statistics.

/// The audit side of a map's [`Stats`](crate::stats::Stats): what its sink has done and what its
/// auditor lost.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct AuditStats {
    /// What the sink has done (queue depth, records written, syncs); `None` when the sink keeps
    /// no figures ([`MemorySink`](crate::audit::MemorySink), …).
    pub sink: Option<crate::audit::SinkFigures>,
    /// Records a fail-open auditor lost while its sink was failed.
    pub lost_records: u64,
    /// Records of the trail not yet acknowledged by the remote copy, from the auditor's
    /// [`AuditGate`](crate::audit::AuditGate) (a shipper); `None` without a gate.
    pub ship_lag_records: Option<u64>,
    /// Age in seconds of the oldest record not yet acknowledged by the remote copy (0 when
    /// none waits), from the auditor's [`AuditGate`](crate::audit::AuditGate); `None` without
    /// a gate.
    pub ship_lag_seconds: Option<f64>,
}
