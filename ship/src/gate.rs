//! [`LagGate`]: the shipper's lag as the map's [`AuditGate`], with a bound and a reaction
//! (NIST AU-5): an alert, or fail-closed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use map_wrapper::audit::{AuditGate, AuditSink};

use crate::{Lag, ShipperHandle};

/// How far behind the remote copy may be before the [`LagGate`] reacts. The bound is crossed
/// when **either** figure is over its limit (a `None` limit is never crossed).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagBound {
    /// Records written to the trail (or queued for it) and not yet acknowledged by the remote.
    pub records: Option<u64>,
    /// Age of the oldest record not yet acknowledged by the remote.
    pub seconds: Option<Duration>,
}

impl LagBound {
    /// A bound in time only: no record stays unshipped longer than `d` (plus the gate's tick)
    /// while mutations are accepted.
    pub fn seconds(d: Duration) -> Self {
        LagBound { records: None, seconds: Some(d) }
    }

    /// A bound in records only.
    pub fn records(n: u64) -> Self {
        LagBound { records: Some(n), seconds: None }
    }

    fn crossed_by(&self, records: u64, seconds: f64) -> bool {
        self.records.is_some_and(|r| records > r) || self.seconds.is_some_and(|s| seconds > s.as_secs_f64())
    }
}

/// A crossing of the bound, given to an [`Reaction::Alert`] callback (and logged with
/// `tracing`: `warn` when over, `info` when back under).
#[derive(Clone, Debug, PartialEq)]
pub struct LagAlert {
    /// `true`: the lag just went over the bound; `false`: it is back under it.
    pub over: bool,
    /// Records behind (records the audit sink has queued included, when the gate knows it).
    pub records: u64,
    /// The shipper's lag when the crossing was seen.
    pub lag: Lag,
    /// Whether the shipper has stopped (its `run` returned): nothing more will be shipped.
    pub shipper_stopped: bool,
}

/// The alert callback of [`Reaction::Alert`].
pub type AlertFn = Arc<dyn Fn(&LagAlert) + Send + Sync>;

/// What a [`LagGate`] does when the lag crosses its bound.
#[derive(Clone)]
pub enum Reaction {
    /// An event only: `tracing::warn!` and the callback, once per crossing (and once when the
    /// lag is back under). Mutations go on; nothing is lost — the shipper catches up when the
    /// remote is back.
    Alert(AlertFn),
    /// Refuse the map's mutations with `AuditUnavailable` while the lag is over the bound
    /// (also logged and — with [`LagGate::on_alert`] — called back).
    FailClosed,
}

impl std::fmt::Debug for Reaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reaction::Alert(_) => "Alert",
            Reaction::FailClosed => "FailClosed",
        })
    }
}

struct State {
    handle: ShipperHandle,
    bound: LagBound,
    fail_closed: bool,
    alert: Option<AlertFn>,
    sink: Option<Arc<dyn AuditSink>>,
    over: AtomicBool,
    reason: Mutex<Arc<str>>,
}

impl State {
    /// Records behind: the shipper's read-but-unacknowledged records plus what the audit sink
    /// still holds in its queue (issued, not yet in the file the shipper reads).
    fn records(&self, lag: &Lag) -> u64 {
        let queued = self.sink.as_ref().and_then(|s| s.figures()).map_or(0, |f| f.queued);
        lag.records + queued
    }

    /// Computes the verdict; returns the alert when it changed.
    fn tick(&self) -> Option<LagAlert> {
        let lag = self.handle.lag();
        let records = self.records(&lag);
        let stopped = self.handle.stopped();
        let over = stopped || self.bound.crossed_by(records, lag.seconds);
        if over {
            let why: Arc<str> = if stopped {
                "the audit trail's shipper has stopped: the remote copy is no longer kept up".into()
            } else {
                format!(
                    "the remote copy of the audit trail is {records} records / {:.1} s behind (bound: {} records / {} s){}",
                    lag.seconds,
                    self.bound.records.map_or("-".to_string(), |r| r.to_string()),
                    self.bound.seconds.map_or("-".to_string(), |s| format!("{:.1}", s.as_secs_f64())),
                    if lag.remote_available { "" } else { "; the remote is unavailable" }
                )
                .into()
            };
            // Written before `over` is published, so a refusal reads a current reason.
            *self.reason.lock().unwrap_or_else(|p| p.into_inner()) = why;
        }
        let was = self.over.swap(over, Ordering::AcqRel);
        (was != over).then_some(LagAlert { over, records, lag, shipper_stopped: stopped })
    }
}

/// The shipper's lag as the map's [`AuditGate`]: its figures go to `map.stats()` (audit
/// section: `ship_lag_records`, `ship_lag_seconds`) and to the `metrics` export, and a
/// [`LagBound`] with a [`Reaction`]: an alert, or fail-closed (mutations refused with
/// `AuditUnavailable` while the remote copy is over the bound; reads go on).
///
/// A ticker thread (every 10 ms by default, [`LagGate::tick`]) compares the lag with the bound
/// and keeps the verdict in an atomic flag, so a mutation pays one atomic load; the thread
/// ends when the gate is dropped. A shipper whose `run` returned (an error, a fork, a stop)
/// counts as over the bound: nothing more would be shipped.
///
/// **What the bound guarantees** (fail-closed, bound `S` seconds, tick `t`): a mutation is
/// refused once the oldest record the remote has not acknowledged is older than `S`, within
/// `t` — so while mutations are accepted, no record has waited for the remote longer than
/// about `S + t`.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use map_wrapper::audit::{Auditor, JsonLinesSink};
/// use map_wrapper::MapWrapper;
/// use map_wrapper_ship::{LagBound, LagGate, Reaction, Shipper, ShipperConfig, Until};
/// # fn demo(remote: impl map_wrapper_ship::RemoteSink + Send + 'static) -> Result<(), Box<dyn std::error::Error>> {
/// let trail = Arc::new(JsonLinesSink::open("audit/", Default::default())?);
/// let mut shipper = Shipper::new(ShipperConfig::new("billing-host7", "audit/"), remote)?;
/// let gate = LagGate::new(shipper.handle(), LagBound::seconds(Duration::from_secs(5)), Reaction::FailClosed)
///     .with_sink(trail.clone())
///     .start();
/// std::thread::spawn(move || shipper.run(Until::Stopped));
/// let map: MapWrapper<u64, String> =
///     MapWrapper::builder().auditor(Auditor::from_arc(trail).gate(gate)).build()?;
/// # Ok(()) }
/// ```
pub struct LagGate {
    state: Arc<State>,
    tick: Duration,
}

impl std::fmt::Debug for LagGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LagGate")
            .field("bound", &self.state.bound)
            .field("fail_closed", &self.state.fail_closed)
            .field("over", &self.state.over.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl LagGate {
    /// A gate on `handle`'s lag; call [`start`](LagGate::start) to get the running gate.
    pub fn new(handle: ShipperHandle, bound: LagBound, reaction: Reaction) -> Self {
        let (fail_closed, alert) = match reaction {
            Reaction::Alert(f) => (false, Some(f)),
            Reaction::FailClosed => (true, None),
        };
        LagGate {
            state: Arc::new(State {
                handle,
                bound,
                fail_closed,
                alert,
                sink: None,
                over: AtomicBool::new(false),
                reason: Mutex::new("".into()),
            }),
            tick: Duration::from_millis(10),
        }
    }

    fn state_mut(&mut self) -> &mut State {
        Arc::get_mut(&mut self.state).expect("not started: the state is not shared yet")
    }

    /// Counts the records the audit sink still queues (issued, not yet in the file) in the
    /// records lag, so that it is exact (the shipper alone sees only what reached the file).
    #[must_use]
    pub fn with_sink(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.state_mut().sink = Some(sink);
        self
    }

    /// A callback on each crossing (also with [`Reaction::FailClosed`]).
    #[must_use]
    pub fn on_alert(mut self, f: AlertFn) -> Self {
        self.state_mut().alert = Some(f);
        self
    }

    /// How often the lag is compared with the bound (default 10 ms): the delay between the
    /// lag crossing the bound and the gate reacting.
    #[must_use]
    pub fn tick(mut self, every: Duration) -> Self {
        self.tick = every.max(Duration::from_millis(1));
        self
    }

    /// Starts the ticker thread and returns the gate, for
    /// [`Auditor::gate`](map_wrapper::audit::Auditor::gate) (and [`LagGate::is_over`]).
    pub fn start(self) -> Arc<LagGate> {
        self.check();
        let gate = Arc::new(self);
        let weak: Weak<LagGate> = Arc::downgrade(&gate);
        let every = gate.tick;
        let spawned = std::thread::Builder::new().name("map-wrapper-ship-lag-gate".into()).spawn(move || {
            while let Some(g) = weak.upgrade() {
                g.check();
                drop(g);
                std::thread::sleep(every);
            }
        });
        if let Err(e) = spawned {
            // No ticker: fail safe — a fail-closed gate refuses, an alert gate says so.
            tracing::error!(error = %e, "map-wrapper-ship: cannot start the lag gate's ticker thread");
            *gate.state.reason.lock().unwrap_or_else(|p| p.into_inner()) =
                format!("the lag gate's ticker thread could not start: {e}").into();
            gate.state.over.store(true, Ordering::Release);
        }
        gate
    }

    /// Compares the lag with the bound now (the ticker does it every tick).
    fn check(&self) {
        let Some(alert) = self.state.tick() else { return };
        if alert.over {
            tracing::warn!(
                records = alert.records,
                seconds = alert.lag.seconds,
                remote_available = alert.lag.remote_available,
                shipper_stopped = alert.shipper_stopped,
                fail_closed = self.state.fail_closed,
                "map-wrapper-ship: the remote copy of the audit trail is over its lag bound"
            );
        } else {
            tracing::info!(
                records = alert.records,
                seconds = alert.lag.seconds,
                "map-wrapper-ship: the remote copy of the audit trail is back under its lag bound"
            );
        }
        if let Some(f) = &self.state.alert {
            f(&alert);
        }
    }

    /// Whether the lag was over the bound at the last tick.
    pub fn is_over(&self) -> bool {
        self.state.over.load(Ordering::Acquire)
    }
}

impl AuditGate for LagGate {
    #[inline]
    fn refusal(&self) -> Option<Arc<str>> {
        if self.state.fail_closed && self.state.over.load(Ordering::Acquire) {
            Some(self.state.reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
        } else {
            None
        }
    }

    fn lag(&self) -> (u64, f64) {
        let lag = self.state.handle.lag();
        (self.state.records(&lag), lag.seconds)
    }
}
