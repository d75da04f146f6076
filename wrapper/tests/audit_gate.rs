//! `Auditor::gate`: an outside gate (a shipper's lag bound) refuses mutations before they
//! change anything, whatever the fail mode, and its lag is in the map's stats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use map_wrapper::audit::{AuditGate, Auditor, FailMode, MemorySink};
use map_wrapper::{ErrorKind, MapWrapper};

#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    behind: AtomicU64,
}

impl AuditGate for Gate {
    fn refusal(&self) -> Option<Arc<str>> {
        self.closed.load(Ordering::Acquire).then(|| "remote copy 9 s behind (bound 5 s)".into())
    }
    fn lag(&self) -> (u64, f64) {
        (self.behind.load(Ordering::Acquire), 9.0)
    }
}

#[test]
fn a_closed_gate_refuses_every_mutation_before_it_changes_or_records_anything() {
    for mode in [FailMode::FailClosed, FailMode::FailOpen] {
        let sink = MemorySink::new();
        let gate = Arc::new(Gate::default());
        let m: MapWrapper<u32, u32> = MapWrapper::builder()
            .auditor(Auditor::new(sink.clone()).fail_mode(mode).gate(gate.clone()))
            .build()
            .unwrap();
        m.insert(1, 10).unwrap();
        gate.closed.store(true, Ordering::Release);
        let e = m.insert(2, 20).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AuditUnavailable, "{mode:?}");
        assert!(e.to_string().contains("remote copy 9 s behind"), "{e}");
        assert_eq!(m.remove(&1).unwrap_err().kind(), ErrorKind::AuditUnavailable);
        assert_eq!(m.get_cloned(&1).unwrap(), Some(10), "reads go on, nothing changed");
        assert_eq!(m.get_cloned(&2).unwrap(), None);
        assert_eq!(sink.records().len(), 1, "a refused mutation writes no record");
        gate.closed.store(false, Ordering::Release);
        m.insert(2, 20).unwrap();
        assert_eq!(sink.records().len(), 2);
    }
}

#[test]
fn the_gate_lag_is_in_the_stats_and_absent_without_a_gate() {
    let gate = Arc::new(Gate::default());
    gate.behind.store(42, Ordering::Release);
    let m: MapWrapper<u32, u32> =
        MapWrapper::builder().auditor(Auditor::new(MemorySink::new()).gate(gate)).build().unwrap();
    let a = m.stats().audit.unwrap();
    assert_eq!((a.ship_lag_records, a.ship_lag_seconds), (Some(42), Some(9.0)));
    let plain: MapWrapper<u32, u32> =
        MapWrapper::builder().auditor(Auditor::new(MemorySink::new())).build().unwrap();
    let a = plain.stats().audit.unwrap();
    assert_eq!((a.ship_lag_records, a.ship_lag_seconds), (None, None));
}
