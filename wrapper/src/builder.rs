//! [`Builder`]: configure a [`MapWrapper`] and validate the configuration once, at `build()`.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::OnceLock;
use std::time::Duration;

use crate::audit::{encoder, AuditSetup, Auditor, MapAudit, ValuePolicy};
use crate::breaker::{BreakerConfig, BreakerEvent, BreakerListener};
use crate::clock::Clock;
use crate::stats::DEFAULT_LATENCY_SAMPLING;
use crate::{BuildError, MapWrapper};

/// The most shards a map may have.
pub const MAX_SHARDS: usize = 1 << 16;

/// The longest a map name may be, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The per-operation timeout a map uses unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// The time above which a completed operation counts as slow, unless configured otherwise.
pub const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_millis(50);

/// The validated settings of a map.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: Option<String>,
    pub(crate) shards: usize,
    pub(crate) timeout: Duration,
    pub(crate) slow_threshold: Duration,
    pub(crate) key_policy: ValuePolicy,
    pub(crate) value_policy: ValuePolicy,
    pub(crate) observe: Observe,
    /// The size bound (`None`: unbounded).
    pub(crate) max_entries: Option<usize>,
    /// Entries to make room for up front (spread over the shards).
    pub(crate) capacity: usize,
    /// Automatic shrink after removals (`None`: off).
    pub(crate) auto_shrink: Option<crate::map::AutoShrink>,
}

/// Statistics, circuit breaker and their clock.
#[derive(Clone)]
pub(crate) struct Observe {
    pub(crate) stats: bool,
    pub(crate) latency_sampling: u32,
    pub(crate) breaker: Option<BreakerConfig>,
    pub(crate) listeners: Vec<BreakerListener>,
    pub(crate) clock: Option<Clock>,
}

impl Default for Observe {
    fn default() -> Self {
        Observe {
            stats: true,
            latency_sampling: DEFAULT_LATENCY_SAMPLING,
            breaker: None,
            listeners: Vec::new(),
            clock: None,
        }
    }
}

impl fmt::Debug for Observe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("stats", &self.stats)
            .field("latency_sampling", &self.latency_sampling)
            .field("breaker", &self.breaker)
            .field("listeners", &self.listeners.len())
            .field("clock", &self.clock)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            shards: default_shards(),
            timeout: DEFAULT_TIMEOUT,
            slow_threshold: DEFAULT_SLOW_THRESHOLD,
            key_policy: ValuePolicy::Full,
            value_policy: ValuePolicy::Full,
            observe: Observe::default(),
            max_entries: None,
            capacity: 0,
            auto_shrink: None,
        }
    }
}

/// The default shard count: four per available CPU, rounded up to a power of two, as the
/// well-known sharded maps do (enough shards that two threads rarely meet on one).
pub fn default_shards() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cpus * 4).next_power_of_two().min(MAX_SHARDS)
    })
}

/// Configures a [`MapWrapper`]; made by [`MapWrapper::builder`].
///
/// Nothing is checked until [`build`](Builder::build), which returns
/// [`BuildError`] for a bad setting instead of panicking.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use map_wrapper::MapWrapper;
///
/// let map: MapWrapper<u64, String> = MapWrapper::builder()
///     .name("orders")
///     .shards(64)
///     .timeout(Duration::from_millis(100))
///     .build()?;
/// assert_eq!(map.shard_count(), 64);
///
/// let bad = MapWrapper::<u64, String>::builder().shards(12).build();
/// assert_eq!(bad.unwrap_err().code(), "INVALID_CONFIG");
/// # Ok::<(), map_wrapper::MapError>(())
/// ```
#[must_use = "a builder does nothing until `build()` is called"]
pub struct Builder<K, V, S = RandomState> {
    config: Config,
    shards: Option<usize>,
    slow_threshold: Option<Duration>,
    hasher: S,
    audit: Option<AuditSetup<K, V>>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Builder<K, V, RandomState> {
    pub(crate) fn new() -> Self {
        Builder {
            config: Config::default(),
            shards: None,
            slow_threshold: None,
            hasher: RandomState::new(),
            audit: None,
            _types: PhantomData,
        }
    }
}

impl<K, V, S> Builder<K, V, S> {
    /// The map's name: the resource named in errors, logs and the audit trail. 1 to 256 bytes,
    /// no control characters. Default: `map-N`, N unique in the process.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// The number of shards: a power of two from 1 to [`MAX_SHARDS`]. Default:
    /// [`default_shards()`].
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// How long an operation may wait for a lock, at most: a ceiling for every call. An
    /// [`OpContext`](crate::OpContext) (explicit or ambient) can shorten it with its own
    /// timeout or deadline, never lengthen it. Default: [`DEFAULT_TIMEOUT`] (500 ms). `Duration::ZERO` makes every operation fail at once on a
    /// contended shard instead of waiting.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// A bound on the number of entries: an operation that would add an entry to a map that
    /// holds `max` fails with [`ErrorKind::CapacityExceeded`](crate::ErrorKind::CapacityExceeded)
    /// (not retryable; nothing changed; an audited map records the refusal). Replacing or
    /// changing the value of a present key is always allowed. Must be at least 1. Default: no
    /// bound (and an unbounded map pays nothing for the check).
    ///
    /// ```
    /// use map_wrapper::{ErrorKind, MapWrapper};
    /// let map: MapWrapper<u32, u32> = MapWrapper::builder().max_entries(2).build()?;
    /// map.insert(1, 1)?;
    /// map.insert(2, 2)?;
    /// assert_eq!(map.insert(3, 3).unwrap_err().kind(), ErrorKind::CapacityExceeded);
    /// map.insert(2, 20)?; // a present key: allowed
    /// map.remove(&1)?;
    /// map.insert(3, 3)?; // room again
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_entries(mut self, max: usize) -> Self {
        self.config.max_entries = Some(max);
        self
    }

    /// Makes room for `capacity` entries up front (spread evenly over the shards), as
    /// [`HashMap::with_capacity`](std::collections::HashMap::with_capacity). Default: 0.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// Gives memory back automatically: after an operation that removes entries, a shard whose
    /// table could hold more than four times its entries is shrunk to fit them (under the lock
    /// the removal already holds). A table grows when it is full and shrinks when it is less
    /// than a quarter full: the gap (hysteresis) keeps a shard that shrinks and grows around
    /// one size from reallocating on every call. Default: off (or call
    /// [`MapWrapper::shrink_to_fit`](crate::MapWrapper::shrink_to_fit) when you know the map
    /// shrank). A shard thus keeps at most about four times the room its entries need, where
    /// `shrink_to_fit` leaves no more than a fresh table would. `cargo bench --bench dropin --
    /// memory` measures both.
    pub fn auto_shrink(mut self, on: bool) -> Self {
        self.config.auto_shrink = on.then_some(crate::map::AutoShrink { above: 4 });
        self
    }

    /// How long a completed operation may take before it counts as slow (for the circuit
    /// breaker and stats). Must be above zero and below the timeout. Default:
    /// [`DEFAULT_SLOW_THRESHOLD`] (50 ms), or half the timeout when that is shorter.
    pub fn slow_threshold(mut self, threshold: Duration) -> Self {
        self.slow_threshold = Some(threshold);
        self
    }

    /// How values appear in audit records. Default: [`ValuePolicy::Full`].
    pub fn value_policy(mut self, policy: ValuePolicy) -> Self {
        self.config.value_policy = policy;
        self
    }

    /// How keys appear in audit records. Default: [`ValuePolicy::Full`].
    pub fn key_policy(mut self, policy: ValuePolicy) -> Self {
        self.config.key_policy = policy;
        self
    }

    /// Audits every mutation into `auditor`'s sink, keys and values encoded with serde per
    /// [`key_policy`](Builder::key_policy) and [`value_policy`](Builder::value_policy). See
    /// [`crate::audit`] for what is recorded and what happens when the sink fails.
    ///
    /// `build()` fails with [`BuildError`] when a policy is
    /// [`ValuePolicy::Digest`] and the auditor has no digest key.
    ///
    /// ```
    /// use map_wrapper::audit::{Auditor, MemorySink};
    /// use map_wrapper::{MapWrapper, OpContext};
    ///
    /// let sink = MemorySink::new();
    /// let map: MapWrapper<String, i64> =
    ///     MapWrapper::builder().name("balances").auditor(Auditor::new(sink.clone())).build()?;
    /// map.with(&OpContext::new().actor("alice")).insert("acct-1".into(), 10)?;
    /// let rec = &sink.records()[0];
    /// assert_eq!((rec.op.as_str(), rec.actor.as_str(), rec.outcome.as_str()), ("insert", "alice", "ok"));
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn auditor(mut self, auditor: Auditor) -> Self
    where
        K: serde::Serialize + 'static,
        V: serde::Serialize + 'static,
    {
        self.audit = Some(AuditSetup { auditor, key: encoder::<K>, value: Some(encoder::<V>) });
        self
    }

    /// Like [`auditor`](Builder::auditor), but values are never encoded: every record shows
    /// them as `{"redacted": true}` whatever the value policy, so `V` needs no `Serialize`.
    pub fn auditor_redacted(mut self, auditor: Auditor) -> Self
    where
        K: serde::Serialize + 'static,
    {
        self.audit = Some(AuditSetup { auditor, key: encoder::<K>, value: None });
        self
    }

    /// Gives the map a slow-operation circuit breaker (none by default); see [`BreakerConfig`]
    /// for the rule and [`MapWrapper::breaker`] for its controls. The configuration is checked
    /// at `build()`.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.config.observe.breaker = Some(config);
        self
    }

    /// Calls `listener` on every state change and rejection of the circuit breaker, in order,
    /// with no lock of the map or the breaker held (so it may use the map); see
    /// [`BreakerListener`] for which thread calls it. Requires [`breaker`](Builder::breaker).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use map_wrapper::breaker::{BreakerConfig, BreakerEventKind};
    /// use map_wrapper::MapWrapper;
    ///
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&seen);
    /// let map: MapWrapper<u8, u8> = MapWrapper::builder()
    ///     .breaker(BreakerConfig::new())
    ///     .on_breaker_event(move |e| log.lock().unwrap().push(e.kind.clone()))
    ///     .build()?;
    /// map.breaker().unwrap().force_open();
    /// assert!(map.insert(1, 1).is_err());
    /// let seen = seen.lock().unwrap();
    /// assert!(matches!(seen[0], BreakerEventKind::StateChanged { .. }));
    /// assert!(matches!(seen[1], BreakerEventKind::Rejected { op: map_wrapper::Op::Insert, .. }));
    /// # Ok::<(), map_wrapper::MapError>(())
    /// ```
    pub fn on_breaker_event(mut self, listener: impl Fn(&BreakerEvent) + Send + Sync + 'static) -> Self {
        self.config.observe.listeners.push(std::sync::Arc::new(listener));
        self
    }

    /// Whether the map keeps [`Stats`](crate::stats::Stats) (default `true`). A map with a breaker
    /// keeps them regardless: the breaker counts calls with them.
    pub fn stats(mut self, on: bool) -> Self {
        self.config.observe.stats = on;
        self
    }

    /// Times 1 in `every` uncontended operations of each thread on this map (default
    /// [`DEFAULT_LATENCY_SAMPLING`]); `1` times every
    /// operation, at the cost of two clock reads each. Operations that wait for a lock and
    /// breaker probes are always timed. Must be at least 1.
    pub fn latency_sampling(mut self, every: u32) -> Self {
        self.config.observe.latency_sampling = every;
        self
    }

    /// The clock the breaker and the statistics read (default: the system's monotonic clock).
    /// Tests give a `TestClock` (feature `test-util`) to drive time. Lock deadlines always use
    /// the real clock.
    pub fn clock(mut self, clock: impl Into<Clock>) -> Self {
        self.config.observe.clock = Some(clock.into());
        self
    }

    /// The hasher used for keys (which also picks the shard).
    pub fn hasher<S2>(self, hasher: S2) -> Builder<K, V, S2> {
        Builder {
            config: self.config,
            shards: self.shards,
            slow_threshold: self.slow_threshold,
            hasher,
            audit: self.audit,
            _types: PhantomData,
        }
    }

    fn config(&self) -> Result<Config, BuildError> {
        if let Some(name) = &self.config.name {
            if name.is_empty() || name.len() > MAX_NAME_LEN {
                return Err(BuildError::new(
                    "name",
                    format!("must be 1 to {MAX_NAME_LEN} bytes long, got {}", name.len()),
                ));
            }
            if name.chars().any(char::is_control) {
                return Err(BuildError::new(
                    "name",
                    format!("must not contain control characters, got {name:?}"),
                ));
            }
        }
        let shards = self.shards.unwrap_or_else(default_shards);
        if !shards.is_power_of_two() || shards > MAX_SHARDS {
            return Err(BuildError::new(
                "shards",
                format!("must be a power of two from 1 to {MAX_SHARDS}, got {shards}"),
            ));
        }
        let timeout = self.config.timeout;
        let slow_threshold = match self.slow_threshold {
            // A zero timeout never waits, so slowness is all in the work itself.
            None if timeout.is_zero() => DEFAULT_SLOW_THRESHOLD,
            None => DEFAULT_SLOW_THRESHOLD.min(timeout / 2),
            Some(t) if t.is_zero() || (t >= timeout && !timeout.is_zero()) => {
                return Err(BuildError::new(
                    "slow_threshold",
                    format!("must be above zero and below the timeout ({timeout:?}), got {t:?}"),
                ));
            }
            Some(t) => t,
        };
        if self.config.max_entries == Some(0) {
            return Err(BuildError::new("max_entries", "must be at least 1, got 0"));
        }
        let observe = &self.config.observe;
        if observe.latency_sampling == 0 {
            return Err(BuildError::new(
                "latency_sampling",
                "must be at least 1 (1 times every operation), got 0",
            ));
        }
        match &observe.breaker {
            Some(b) => b.validate()?,
            None if !observe.listeners.is_empty() => {
                return Err(BuildError::new(
                    "on_breaker_event",
                    "a listener was given but no breaker: add `.breaker(BreakerConfig::new())`",
                ));
            }
            None => {}
        }
        Ok(Config { shards, slow_threshold, ..self.config.clone() })
    }
}

impl<K, V, S: BuildHasher> Builder<K, V, S> {
    /// Validates the settings and makes the map.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the setting at fault (it converts into a [`MapError`](crate::MapError) of kind
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig), so `build()?` works in a
    /// function that returns `MapError`).
    pub fn build(self) -> Result<MapWrapper<K, V, S>, BuildError> {
        let config = self.config()?;
        let audit = match self.audit {
            Some(setup) => Some(Box::new(MapAudit::build(setup, config.key_policy, config.value_policy)?)),
            None => None,
        };
        let mut map = MapWrapper::from_config(config, self.hasher);
        map.set_audit(audit);
        Ok(map)
    }
}

impl<K, V, S> fmt::Debug for Builder<K, V, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("shards", &self.shards)
            .finish_non_exhaustive()
    }
}

/// Deserializes a map (serde's map form, what `MapWrapper`'s `Serialize` writes) into a map
/// built with these settings: name, shards, timeout, policies, size bound and auditor survive
/// the round trip, which the plain `Deserialize` (default configuration) cannot give. The
/// entries are loaded before the map exists for anyone else: no lock, no deadline, no ambient
/// context, and no audit record (loading is not a change; the auditor records every change
/// from then on). A map with more entries than [`max_entries`](Builder::max_entries), or
/// settings that `build()` refuses, is a deserialization error naming why.
///
/// ```
/// use serde::de::DeserializeSeed;
/// use map_wrapper::MapWrapper;
///
/// let json = r#"{"a": 1, "b": 2}"#;
/// let builder = MapWrapper::<String, u32>::builder().name("orders").max_entries(10);
/// let map = builder.deserialize(&mut serde_json::Deserializer::from_str(json))?;
/// assert_eq!(map.name(), "orders");
/// assert_eq!(map.get_cloned("b")?, Some(2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<'de, K, V, S> serde::de::DeserializeSeed<'de> for Builder<K, V, S>
where
    K: serde::Deserialize<'de> + std::hash::Hash + Eq,
    V: serde::Deserialize<'de>,
    S: BuildHasher,
{
    type Value = MapWrapper<K, V, S>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        use serde::de::Error as _;
        // Built without its auditor, which is given once the entries are in.
        let (builder, setup) = self.take_audit();
        let config = builder.config().map_err(D::Error::custom)?;
        let audit = match setup {
            Some(setup) => Some(Box::new(
                MapAudit::build(setup, config.key_policy, config.value_policy).map_err(D::Error::custom)?,
            )),
            None => None,
        };
        let map = MapWrapper::from_config(config, builder.hasher);
        let mut map = Loader(map).deserialize(deserializer)?;
        map.set_audit(audit);
        Ok(map)
    }
}

impl<K, V, S> Builder<K, V, S> {
    /// The builder without its auditor, and the auditor's setup.
    fn take_audit(mut self) -> (Self, Option<AuditSetup<K, V>>) {
        let setup = self.audit.take();
        (self, setup)
    }
}

/// The visitor that loads serde's map form into an owned map.
struct Load<K, V, S>(MapWrapper<K, V, S>);

impl<'de, K, V, S> serde::de::Visitor<'de> for Load<K, V, S>
where
    K: serde::Deserialize<'de> + std::hash::Hash + Eq,
    V: serde::Deserialize<'de>,
    S: BuildHasher,
{
    type Value = MapWrapper<K, V, S>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut access: A) -> Result<Self::Value, A::Error> {
        while let Some((k, v)) = access.next_entry()? {
            if self.0.load(k, v).is_err() {
                return Err(serde::de::Error::custom(format_args!(
                    "map `{}` holds at most {} entries (max_entries), and the input has more",
                    self.0.name(),
                    self.0.max_entries().unwrap_or(0)
                )));
            }
        }
        Ok(self.0)
    }
}

/// Loads serde's map form into an existing map that its caller owns (the entries are not
/// recorded); for the generated deserializers of `#[guarded_map]`.
pub(crate) struct Loader<K, V, S>(pub(crate) MapWrapper<K, V, S>);

impl<'de, K, V, S> serde::de::DeserializeSeed<'de> for Loader<K, V, S>
where
    K: serde::Deserialize<'de> + std::hash::Hash + Eq,
    V: serde::Deserialize<'de>,
    S: BuildHasher,
{
    type Value = MapWrapper<K, V, S>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(Load(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: Builder<u8, u8>) -> (&'static str, String) {
        let e = b.build().unwrap_err();
        (e.field(), e.reason().to_string())
    }

    #[test]
    fn bad_shard_counts_are_errors() {
        for n in [0, 3, 12, MAX_SHARDS * 2, usize::MAX] {
            let (field, reason) = err(MapWrapper::builder().shards(n));
            assert_eq!(field, "shards");
            assert!(reason.contains(&n.to_string()), "{reason}");
        }
    }

    #[test]
    fn bad_names_are_errors() {
        assert_eq!(err(MapWrapper::builder().name("")).0, "name");
        assert_eq!(err(MapWrapper::builder().name("a\nb")).0, "name");
        assert_eq!(err(MapWrapper::builder().name("x".repeat(MAX_NAME_LEN + 1))).0, "name");
    }

    #[test]
    fn slow_threshold_must_be_below_timeout() {
        let b = MapWrapper::builder()
            .timeout(Duration::from_millis(10))
            .slow_threshold(Duration::from_millis(10));
        assert_eq!(err(b).0, "slow_threshold");
        assert_eq!(err(MapWrapper::builder().slow_threshold(Duration::ZERO)).0, "slow_threshold");
    }

    #[test]
    fn a_tight_timeout_alone_is_valid_and_scales_the_slow_threshold() {
        let m: MapWrapper<u8, u8> = MapWrapper::builder().timeout(Duration::from_millis(20)).build().unwrap();
        assert_eq!(m.default_timeout(), Duration::from_millis(20));
        let cfg = MapWrapper::<u8, u8>::builder().timeout(Duration::from_millis(20)).config().unwrap();
        assert_eq!(cfg.slow_threshold, Duration::from_millis(10));
        let cfg = MapWrapper::<u8, u8>::builder().timeout(Duration::ZERO).config().unwrap();
        assert_eq!(cfg.slow_threshold, DEFAULT_SLOW_THRESHOLD);
        let cfg = MapWrapper::<u8, u8>::builder().config().unwrap();
        assert_eq!(cfg.slow_threshold, DEFAULT_SLOW_THRESHOLD);
    }

    #[test]
    fn defaults_are_sane() {
        assert!(default_shards().is_power_of_two());
        let m: MapWrapper<u8, u8> = MapWrapper::builder().build().unwrap();
        assert_eq!(m.shard_count(), default_shards());
        assert_eq!(m.default_timeout(), DEFAULT_TIMEOUT);
        assert!(m.name().starts_with("map-"));
    }
}
