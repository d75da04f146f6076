//! [`AuditRecord`] v1 and its canonical encoding: one JSON object a line, chained by SHA-256
//! (or HMAC-SHA256). `docs/AUDIT_FORMAT.md` is the normative description; this file is the
//! reference implementation of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The format version written in every line's `v` field.
pub const FORMAT_VERSION: u32 = 1;

/// The bytes hashed before each line's `prev` and body: the domain prefix, so that a hash of
/// this trail can never be confused with a hash of anything else.
pub(crate) const DOMAIN: &[u8] = b"map-wrapper/audit/v1\n";

/// The `prev` of the very first line of a trail: 64 zeros.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor recorded when neither the operation's context, the ambient context nor the
/// auditor names one.
pub const DEFAULT_ACTOR: &str = "unattributed";

/// Length of `,"hash":"` + 64 hex digits + `"}`: the fixed suffix of every line.
/// Every `op` a v1 record may have: the map operations, then the lifecycle records. A
/// verifier reports any other `op` as tampering; a new operation needs a new format version.
pub const OPS: &[&str] = &OPS_V1;

/// [`OPS`], built from [`Op::MUTATIONS`](crate::Op::MUTATIONS) so that the map and the format
/// cannot disagree on a name.
const OPS_V1: [&str; crate::Op::MUTATIONS.len() + 3] = {
    let mut ops = [""; crate::Op::MUTATIONS.len() + 3];
    let mut i = 0;
    while i < crate::Op::MUTATIONS.len() {
        ops[i] = crate::Op::MUTATIONS[i].as_str();
        i += 1;
    }
    ops[i] = "audit_start";
    ops[i + 1] = "audit_stop";
    ops[i + 2] = "sink_gap";
    ops
};
pub(crate) const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// One record of the audit trail, as read back from a line (see `docs/AUDIT_FORMAT.md`).
///
/// `key`, `old` and `new` are encoded per the map's [`ValuePolicy`](crate::audit::ValuePolicy):
/// `{"full": <value>}`, `{"digest": "<hex>", "key_id": "<id>"}`, `{"redacted": true}`, or
/// `null` when there is no such value (no old value on a first insert, no new value on a
/// remove, no key on a lifecycle record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Format version ([`FORMAT_VERSION`]).
    pub v: u32,
    /// Position in the sink's total order: 1 for the first record, then gap-free.
    pub seq: u64,
    /// When the record was made (UTC, RFC 3339, microseconds).
    pub ts: String,
    /// The map's name; `null` for lifecycle records of the sink.
    pub map: Option<String>,
    /// The shard the key lives in; `null` when there is none.
    pub shard: Option<u64>,
    /// The operation (`insert`, `remove`, `clear`, …) or lifecycle event (`audit_start`,
    /// `audit_stop`, `sink_gap`).
    pub op: String,
    /// The key, encoded per the key policy.
    pub key: Option<serde_json::Value>,
    /// The value before the operation, encoded per the value policy.
    pub old: Option<serde_json::Value>,
    /// The value after the operation, encoded per the value policy.
    pub new: Option<serde_json::Value>,
    /// Who the operation was done for.
    pub actor: String,
    /// The trace or request id, if any.
    pub trace_id: Option<String>,
    /// Tags of the operation's context, sorted by name.
    pub tags: BTreeMap<String, String>,
    /// `ok`, or why the operation was refused (`timeout`, `cancelled`, `would_deadlock`,
    /// `circuit_open`, …).
    pub outcome: String,
    /// Details of the outcome, if any.
    pub reason: Option<String>,
    /// Nanoseconds from the start of the operation to the record.
    pub latency_ns: u64,
    /// The hash of the previous line (hex).
    pub prev: String,
    /// This line's hash (hex).
    pub hash: String,
}

/// The parts of a record that its producer knows; the sink adds `v`, `seq`, `prev`, `hash`.
///
/// Built with [`AuditEvent::new`] and the setters; its canonical body is encoded at once, on
/// the producer's thread, so the sink's single writer only chains it.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    body: String,
    op: &'static str,
}

/// An already encoded JSON value (the output of a key or value policy), or `null`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded(pub(crate) Option<String>);

impl Encoded {
    /// No value: encodes as `null`.
    pub const NONE: Encoded = Encoded(None);

    fn as_json(&self) -> &str {
        self.0.as_deref().unwrap_or("null")
    }
}

/// Builder of an [`AuditEvent`]: every field of a record except `v`, `seq`, `prev` and `hash`.
#[derive(Debug, Clone)]
pub struct EventFields<'a> {
    /// The map's name (`None` for a lifecycle record).
    pub map: Option<&'a str>,
    /// The shard.
    pub shard: Option<usize>,
    /// The operation.
    pub op: &'static str,
    /// The encoded key.
    pub key: Encoded,
    /// The encoded old value.
    pub old: Encoded,
    /// The encoded new value.
    pub new: Encoded,
    /// The actor; [`DEFAULT_ACTOR`] is used when empty.
    pub actor: &'a str,
    /// The trace id.
    pub trace_id: Option<&'a str>,
    /// Tags (any order; encoded sorted by name, a later duplicate wins).
    pub tags: &'a [(&'a str, &'a str)],
    /// The outcome (`ok`, `timeout`, …).
    pub outcome: &'a str,
    /// Details of the outcome.
    pub reason: Option<&'a str>,
    /// Nanoseconds from the start of the operation.
    pub latency_ns: u64,
}

impl<'a> EventFields<'a> {
    /// A lifecycle record of the sink itself (`audit_start`, `audit_stop`, `sink_gap`).
    pub fn lifecycle(op: &'static str, reason: Option<&'a str>) -> Self {
        EventFields {
            map: None,
            shard: None,
            op,
            key: Encoded::NONE,
            old: Encoded::NONE,
            new: Encoded::NONE,
            actor: "map-wrapper",
            trace_id: None,
            tags: &[],
            outcome: "ok",
            reason,
            latency_ns: 0,
        }
    }
}

/// Appends `s` as a JSON string.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        // Nothing to escape: the common case, without an allocation.
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // serde_json's escaping is the canonical one (see AUDIT_FORMAT.md).
        out.push_str(&serde_json::to_string(s).expect("a str always serializes"));
    }
}

/// Appends the current UTC time as RFC 3339 with microseconds: `2026-11-27T16:06:50.123456Z`.
///
/// The calendar part (`2026-11-27T16:06:50.`) is cached per thread for the current second;
/// only the microseconds are formatted per call (no `fmt` machinery).
pub(crate) fn push_now(out: &mut String) {
    use std::cell::RefCell;
    thread_local! {
        /// The second the prefix is for, and `YYYY-MM-DDTHH:MM:SS.`.
        static PREFIX: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (secs, micros) = (since.as_secs() as i64, since.subsec_micros());
    PREFIX.with(|p| {
        let mut p = p.borrow_mut();
        if p.0 != secs {
            use chrono::{Datelike, Timelike};
            let t = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
            p.1.clear();
            write!(
                p.1,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
            .expect("write to String");
            p.0 = secs;
        }
        out.push_str(&p.1);
    });
    let mut digits = [b'0'; 7];
    let mut m = micros;
    for d in digits[..6].iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    digits[6] = b'Z';
    out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
}

/// Appends the decimal digits of `n` (no `fmt` machinery).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

/// Encodes the body of a record (`"ts":…` to `"latency_ns":…`, no braces; see the format
/// spec), time-stamped now, onto `body`.
pub(crate) fn encode_body(fields: &EventFields<'_>, body: &mut String) {
    body.push_str("\"ts\":\"");
    push_now(body);
    body.push_str("\",\"map\":");
    match fields.map {
        Some(m) => push_json_str(body, m),
        None => body.push_str("null"),
    }
    body.push_str(",\"shard\":");
    match fields.shard {
        Some(s) => push_u64(body, s as u64),
        None => body.push_str("null"),
    }
    body.push_str(",\"op\":");
    push_json_str(body, fields.op);
    body.push_str(",\"key\":");
    body.push_str(fields.key.as_json());
    body.push_str(",\"old\":");
    body.push_str(fields.old.as_json());
    body.push_str(",\"new\":");
    body.push_str(fields.new.as_json());
    body.push_str(",\"actor\":");
    push_json_str(body, if fields.actor.is_empty() { DEFAULT_ACTOR } else { fields.actor });
    body.push_str(",\"trace_id\":");
    match fields.trace_id {
        Some(t) => push_json_str(body, t),
        None => body.push_str("null"),
    }
    body.push_str(",\"tags\":{");
    if !fields.tags.is_empty() {
        let sorted: BTreeMap<&str, &str> = fields.tags.iter().copied().collect();
        for (i, (k, v)) in sorted.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            push_json_str(body, k);
            body.push(':');
            push_json_str(body, v);
        }
    }
    body.push_str("},\"outcome\":");
    push_json_str(body, fields.outcome);
    body.push_str(",\"reason\":");
    match fields.reason {
        Some(r) => push_json_str(body, r),
        None => body.push_str("null"),
    }
    body.push_str(",\"latency_ns\":");
    push_u64(body, fields.latency_ns);
}

impl AuditEvent {
    /// Encodes `fields`, time-stamped now, into an event.
    pub fn new(fields: EventFields<'_>) -> Self {
        let mut body = String::with_capacity(320);
        encode_body(&fields, &mut body);
        AuditEvent { body, op: fields.op }
    }

    /// The operation or lifecycle event.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The encoded fields from `ts` to `latency_ns`, without braces (see the format spec).
    pub fn body(&self) -> &str {
        &self.body
    }
}

/// How a trail's lines are sealed.
#[derive(Clone)]
pub enum ChainKey {
    /// `hash` = SHA-256 over the hashed bytes.
    Sha256,
    /// `hash` = HMAC-SHA256 with this key over the hashed bytes.
    Hmac {
        /// The key's id, written in segment headers so a verifier knows which key to use.
        id: String,
        /// The secret.
        key: Vec<u8>,
    },
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainKey::Sha256 => f.write_str("Sha256"),
            ChainKey::Hmac { id, .. } => f.debug_struct("Hmac").field("id", id).finish_non_exhaustive(),
        }
    }
}

impl ChainKey {
    /// The name written in segment headers: `sha256` or `hmac-sha256`.
    pub fn algorithm(&self) -> &'static str {
        match self {
            ChainKey::Sha256 => "sha256",
            ChainKey::Hmac { .. } => "hmac-sha256",
        }
    }

    /// The key id, for HMAC.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            ChainKey::Sha256 => None,
            ChainKey::Hmac { id, .. } => Some(id),
        }
    }

    /// The hash of a line whose body (the object without its `hash` member) is `body`, after
    /// a line whose hash was `prev` (64 lowercase hex digits).
    pub fn seal(&self, prev: &str, body: &[u8]) -> [u8; 32] {
        self.seal_parts(prev, &[body])
    }

    /// [`seal`](ChainKey::seal) of a body given in consecutive pieces.
    pub fn seal_parts(&self, prev: &str, body: &[&[u8]]) -> [u8; 32] {
        match self {
            ChainKey::Sha256 => {
                let mut h = Sha256::new();
                h.update(DOMAIN);
                h.update(prev.as_bytes());
                h.update(b"\n");
                body.iter().for_each(|part| h.update(part));
                h.finalize().into()
            }
            ChainKey::Hmac { key, .. } => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
                m.update(DOMAIN);
                m.update(prev.as_bytes());
                m.update(b"\n");
                body.iter().for_each(|part| m.update(part));
                m.finalize().into_bytes().into()
            }
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// Appends the lowercase hex of `bytes`.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// Bytes from hex (either case); `None` if `s` is not hex of whole bytes.
pub(crate) fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// HMAC-SHA256 of `data` under `key`, in hex: the `digest` of a [`ValuePolicy::Digest`](
/// crate::audit::ValuePolicy::Digest) value.
pub(crate) fn digest_hex(key: &[u8], data: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    to_hex(&m.finalize().into_bytes())
}

/// The running state of one chain: the next `seq` and the hash of the last line.
#[derive(Debug, Clone)]
pub struct Chain {
    key: ChainKey,
    next_seq: u64,
    prev: String,
}

impl Chain {
    /// A chain that starts at `seq` 1 after the genesis hash (64 `0`s).
    pub fn new(key: ChainKey) -> Self {
        Chain::resume(key, 1, GENESIS.to_string())
    }

    /// A chain that continues with `next_seq` after a line whose hash is `prev`.
    pub fn resume(key: ChainKey, next_seq: u64, prev: String) -> Self {
        Chain { key, next_seq, prev }
    }

    /// The `seq` the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    #[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
    /// The hash of the last line sealed (or the genesis hash, 64 `0`s).
    pub fn last_hash(&self) -> &str {
        &self.prev
    }

    #[cfg_attr(not(any(test, feature = "test-util")), allow(dead_code))]
    /// The chain's key.
    pub fn key(&self) -> &ChainKey {
        &self.key
    }

    /// Seals `event` as the next record: appends its line (with the final `\n`) to `out` and
    /// returns its `seq`.
    pub fn seal_event(&mut self, event: &AuditEvent, out: &mut String) -> u64 {
        self.seal_body(event.body(), out)
    }

    /// Seals the next record whose encoded body (as [`AuditEvent::body`]) is `body`: appends
    /// its line (with the final `\n`) to `out` and returns its `seq`.
    pub(crate) fn seal_body(&mut self, body: &str, out: &mut String) -> u64 {
        let seq = self.next_seq;
        let start = out.len();
        out.push_str("{\"v\":");
        push_u64(out, u64::from(FORMAT_VERSION));
        out.push_str(",\"seq\":");
        push_u64(out, seq);
        out.push(',');
        out.push_str(body);
        self.finish_line(out, start);
        // Saturating: a chain resumed at u64::MAX (only a hostile trail has one; the sink
        // refuses to open it) repeats its last seq, which any verifier reports, instead of
        // panicking or wrapping to 0.
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    /// Seals a segment header (see the format spec) and appends its line to `out`.
    pub fn seal_header(&mut self, segment: u64, prev_len: u64, recovered: bool, out: &mut String) {
        let start = out.len();
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        write!(
            out,
            "{{\"v\":{FORMAT_VERSION},\"segment\":{segment},\"ts\":\"{ts}\",\"chain\":\"{}\",\"key_id\":",
            self.key.algorithm()
        )
        .expect("write to String");
        match self.key.key_id() {
            Some(id) => push_json_str(out, id),
            None => out.push_str("null"),
        }
        write!(out, ",\"first_seq\":{},\"prev_len\":{prev_len},\"recovered\":{recovered}", self.next_seq)
            .expect("write to String");
        self.finish_line(out, start);
    }

    /// Appends `,"prev":…`, computes the hash over the body and appends `,"hash":…}\n`.
    fn finish_line(&mut self, out: &mut String, start: usize) {
        out.push_str(",\"prev\":\"");
        out.push_str(&self.prev);
        out.push_str("\"}");
        let hash = self.key.seal(&self.prev, &out.as_bytes()[start..]);
        out.pop(); // the body's closing brace; the line continues with the hash
        out.push_str(",\"hash\":\"");
        // The new hash replaces `prev` in place: no allocation per line.
        self.prev.clear();
        push_hex(&mut self.prev, &hash);
        out.push_str(&self.prev);
        out.push_str("\"}\n");
    }
}

/// Splits a line (without its `\n`) into its head (the object without `hash` and without its
/// closing brace: the body is the head plus `}`) and its hash, if it has the fixed suffix every
/// line ends with.
pub(crate) fn split_line(line: &[u8]) -> Option<(&[u8], &str)> {
    if line.len() < HASH_SUFFIX_LEN + 2 {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let (head, suffix) = line.split_at(cut);
    let hash = suffix.strip_prefix(b",\"hash\":\"")?.strip_suffix(b"\"}")?;
    let hash = std::str::from_utf8(hash).ok()?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    Some((head, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ops_on_disk_are_the_format_v1_list() {
        // The strings in `op` are part of format v1: built from `Op` now, they must not change.
        assert_eq!(
            OPS,
            [
                "insert",
                "remove",
                "remove_entry",
                "remove_if",
                "update",
                "alter",
                "entry",
                "extend",
                "retain",
                "clear",
                "audit_start",
                "audit_stop",
                "sink_gap",
            ]
        );
    }

    fn event(op: &'static str) -> AuditEvent {
        AuditEvent::new(EventFields {
            map: Some("m\"x"),
            shard: Some(3),
            op,
            key: Encoded(Some("{\"full\":\"k\"}".into())),
            old: Encoded::NONE,
            new: Encoded(Some("{\"full\":1}".into())),
            actor: "",
            trace_id: Some("t-1"),
            tags: &[("z", "1"), ("a", "2")],
            outcome: "ok",
            reason: None,
            latency_ns: 42,
        })
    }

    #[test]
    fn a_line_parses_back_into_a_record_with_fields_in_canonical_order() {
        let mut chain = Chain::new(ChainKey::Sha256);
        let mut out = String::new();
        assert_eq!(chain.seal_event(&event("insert"), &mut out), 1);
        let rec: AuditRecord = serde_json::from_str(out.trim_end()).unwrap();
        assert_eq!(rec.seq, 1);
        assert_eq!(rec.map.as_deref(), Some("m\"x"));
        assert_eq!(rec.actor, DEFAULT_ACTOR);
        assert_eq!(rec.prev, GENESIS);
        assert_eq!(rec.tags.keys().collect::<Vec<_>>(), ["a", "z"]);
        let order = ["\"v\"", "\"seq\"", "\"ts\"", "\"map\"", "\"shard\"", "\"op\"", "\"key\"", "\"old\""];
        let pos: Vec<usize> = order.iter().map(|f| out.find(f).unwrap()).collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{out}");
        assert!(out.ends_with(&format!(",\"hash\":\"{}\"}}\n", rec.hash)));
    }

    #[test]
    fn the_hash_covers_domain_prev_and_body() {
        let mut chain = Chain::new(ChainKey::Sha256);
        let mut out = String::new();
        chain.seal_event(&event("insert"), &mut out);
        let line = out.trim_end().as_bytes();
        let (head, hash) = split_line(line).unwrap();
        let mut h = Sha256::new();
        h.update(b"map-wrapper/audit/v1\n");
        h.update(GENESIS.as_bytes());
        h.update(b"\n");
        h.update(head);
        h.update(b"}");
        assert_eq!(to_hex(&h.finalize()), hash);
        assert_eq!(chain.last_hash(), hash);
    }

    #[test]
    fn hmac_and_sha_chains_differ_and_link() {
        let mut a = Chain::new(ChainKey::Sha256);
        let mut b = Chain::new(ChainKey::Hmac { id: "k1".into(), key: b"secret".to_vec() });
        let e = event("remove");
        let (mut la, mut lb) = (String::new(), String::new());
        a.seal_event(&e, &mut la);
        b.seal_event(&e, &mut lb);
        assert_ne!(a.last_hash(), b.last_hash());
        let first = b.last_hash().to_string();
        lb.clear();
        b.seal_event(&e, &mut lb);
        let rec: AuditRecord = serde_json::from_str(lb.trim_end()).unwrap();
        assert_eq!((rec.seq, rec.prev.as_str()), (2, first.as_str()));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut ts = String::new();
        push_now(&mut ts);
        let parsed = chrono::DateTime::parse_from_rfc3339(&ts).unwrap();
        assert_eq!(ts, parsed.to_utc().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
        assert!((chrono::Utc::now() - parsed.to_utc()).num_seconds() < 5);
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for s in ["plain", "quote\"", "back\\slash", "tab\t", "nul\0", "é✓", ""] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex("00ABff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
