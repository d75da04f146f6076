//! The exact parser of one line of a trail in its canonical form (`docs/AUDIT_FORMAT.md` §2–§4):
//! a record or a segment header, each with its own schema, members in their order, compact,
//! strings in the canonical escaping. It borrows the line and allocates nothing on the common
//! path (only an object with several members inside a `full` value keeps a list of its names).

use std::collections::HashSet;

use super::super::record::OPS;

/// How many member names of one object are compared one by one; past this, they go into a
/// hash set, so that an object of n members costs O(n), not O(n^2) (a 64 MiB line can hold
/// millions of members: a quadratic check would hang the verifier).
const NAMES_INLINE: usize = 16;

/// The member names seen in one open object of a `full` value.
#[derive(Default)]
struct Names<'a> {
    list: Vec<&'a [u8]>,
    set: HashSet<&'a [u8]>,
}

impl<'a> Names<'a> {
    /// Adds `name`; false if the object already had it.
    fn insert(&mut self, name: &'a [u8]) -> bool {
        if self.list.len() < NAMES_INLINE {
            if self.list.contains(&name) {
                return false;
            }
            self.list.push(name);
            return true;
        }
        if self.set.is_empty() {
            self.set.extend(self.list.iter().copied());
        }
        self.set.insert(name)
    }
}

/// Why a line is not a valid line of the format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineError {
    /// The bytes ended before the line did (only for a line read in part).
    Truncated,
    /// The line breaks a rule: what and where (byte index in the line).
    Bad(String, usize),
}

type R<T> = Result<T, LineError>;

/// A segment header's members (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    pub segment: u64,
    pub chain: &'a str,
    /// The raw JSON of `key_id` (a string, or `null`).
    pub key_id: &'a [u8],
    pub first_seq: u64,
    pub prev_len: u64,
    pub recovered: bool,
}

/// What a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind<'a> {
    Record { seq: u64 },
    Header(Header<'a>),
}

/// A parsed line: its kind, its `prev`, the bytes its hash covers (before `}`) and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub kind: Kind<'a>,
    pub prev: &'a [u8; 64],
    /// The line up to (not including) `,"hash":`: the body is this plus `}`.
    pub head: &'a [u8],
    pub hash: &'a [u8; 64],
}

/// Parses one line (without its `\n`). On error, `seq_seen` holds the record's `seq` if the
/// parser got that far (the "usable seq" of a report).
pub(crate) fn parse<'a>(line: &'a [u8], seq_seen: &mut Option<u64>) -> R<Line<'a>> {
    let mut c = Cur { b: line, i: 0, non_ascii: false };
    c.lit(b"{\"v\":1,\"")?;
    let kind = if c.try_lit(b"seq\":") {
        let seq = c.uint()?;
        if seq == 0 {
            return Err(c.bad("\"seq\" is 0: seq starts at 1"));
        }
        *seq_seen = Some(seq);
        record_body(&mut c)?;
        Kind::Record { seq }
    } else if c.try_lit(b"segment\":") {
        Kind::Header(header_body(&mut c)?)
    } else {
        return Err(c.bad("neither a record (\"seq\" second) nor a segment header (\"segment\" second)"));
    };
    c.lit(b",\"prev\":\"")?;
    let prev = c.hex64()?;
    c.lit(b"\"")?;
    let head_end = c.i;
    c.lit(b",\"hash\":\"")?;
    let hash = c.hex64()?;
    c.lit(b"\"}")?;
    if c.i != line.len() {
        return Err(c.bad("bytes after the end of the object"));
    }
    // Strings were checked for their escapes; outside strings only ASCII matched. A string
    // with non-ASCII bytes must be UTF-8.
    if c.non_ascii && std::str::from_utf8(line).is_err() {
        return Err(LineError::Bad("the line is not UTF-8".into(), 0));
    }
    Ok(Line { kind, prev, head: &line[..head_end], hash })
}

fn record_body(c: &mut Cur<'_>) -> R<()> {
    c.lit(b",\"ts\":")?;
    c.ts()?;
    c.lit(b",\"map\":")?;
    c.str_or_null()?;
    c.lit(b",\"shard\":")?;
    if !c.try_lit(b"null") {
        c.uint()?;
    }
    c.lit(b",\"op\":")?;
    let at = c.i;
    let op = c.string()?;
    if !OPS.iter().any(|o| o.as_bytes() == op) {
        return Err(LineError::Bad(format!("unknown \"op\" {}", String::from_utf8_lossy(op)), at));
    }
    for member in [&b",\"key\":"[..], b",\"old\":", b",\"new\":"] {
        c.lit(member)?;
        c.encoded()?;
    }
    c.lit(b",\"actor\":")?;
    let at = c.i;
    if c.string()?.is_empty() {
        return Err(LineError::Bad("\"actor\" is empty".into(), at));
    }
    c.lit(b",\"trace_id\":")?;
    c.str_or_null()?;
    c.lit(b",\"tags\":{")?;
    c.tags()?;
    c.lit(b",\"outcome\":")?;
    let at = c.i;
    let outcome = c.string()?;
    if outcome.is_empty() || !outcome.iter().all(|&b| b.is_ascii_lowercase() || b == b'_') {
        return Err(LineError::Bad(
            format!("\"outcome\" {:?} is not a lowercase code", String::from_utf8_lossy(outcome)),
            at,
        ));
    }
    c.lit(b",\"reason\":")?;
    c.str_or_null()?;
    c.lit(b",\"latency_ns\":")?;
    c.uint()?;
    Ok(())
}

fn header_body<'a>(c: &mut Cur<'a>) -> R<Header<'a>> {
    let segment = c.uint()?;
    if segment == 0 {
        return Err(c.bad("\"segment\" is 0: segments are numbered from 1"));
    }
    c.lit(b",\"ts\":")?;
    c.ts()?;
    c.lit(b",\"chain\":")?;
    let at = c.i;
    let chain = if c.try_lit(b"\"sha256\"") {
        "sha256"
    } else if c.try_lit(b"\"hmac-sha256\"") {
        "hmac-sha256"
    } else {
        c.string()?;
        return Err(LineError::Bad("unknown \"chain\" (sha256 or hmac-sha256)".into(), at));
    };
    c.lit(b",\"key_id\":")?;
    let at = c.i;
    let key_id = if c.try_lit(b"null") {
        if chain != "sha256" {
            return Err(LineError::Bad("an hmac-sha256 header needs a \"key_id\" string".into(), at));
        }
        &c.b[at..c.i]
    } else {
        c.string()?;
        if chain != "hmac-sha256" {
            return Err(LineError::Bad("a sha256 header has \"key_id\" null".into(), at));
        }
        &c.b[at..c.i]
    };
    c.lit(b",\"first_seq\":")?;
    let first_seq = c.uint()?;
    if first_seq == 0 {
        return Err(c.bad("\"first_seq\" is 0: seq starts at 1"));
    }
    c.lit(b",\"prev_len\":")?;
    let prev_len = c.uint()?;
    c.lit(b",\"recovered\":")?;
    let recovered = if c.try_lit(b"true") {
        true
    } else {
        c.lit(b"false")?;
        false
    };
    Ok(Header { segment, chain, key_id, first_seq, prev_len, recovered })
}

struct Cur<'a> {
    b: &'a [u8],
    i: usize,
    /// A string holds a byte over 0x7F (only strings may).
    non_ascii: bool,
}

impl<'a> Cur<'a> {
    fn bad(&self, what: &str) -> LineError {
        LineError::Bad(what.to_string(), self.i)
    }

    fn peek(&self) -> R<u8> {
        self.b.get(self.i).copied().ok_or(LineError::Truncated)
    }

    #[inline(always)]
    fn try_lit(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// Expects exactly `lit` (the canonical form leaves no choice).
    #[inline(always)]
    fn lit(&mut self, lit: &[u8]) -> R<()> {
        let rest = &self.b[self.i..];
        if rest.starts_with(lit) {
            self.i += lit.len();
            Ok(())
        } else if lit.starts_with(rest) {
            Err(LineError::Truncated)
        } else {
            Err(LineError::Bad(format!("expected {} here", String::from_utf8_lossy(lit)), self.i))
        }
    }

    /// A canonical decimal integer of 0..=2^64-1: `0` or a non-zero digit then digits; no
    /// sign, fraction or exponent.
    fn uint(&mut self) -> R<u64> {
        let start = self.i;
        let mut n: u64 = 0;
        while let Some(&d) = self.b.get(self.i) {
            if !d.is_ascii_digit() {
                break;
            }
            if self.i > start && n == 0 {
                return Err(LineError::Bad("an integer with a leading zero".into(), start));
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or_else(|| LineError::Bad("an integer over 2^64-1".into(), start))?;
            self.i += 1;
        }
        if self.i == start {
            self.peek()?;
            return Err(self.bad("expected an integer (plain decimal digits)"));
        }
        match self.b.get(self.i) {
            None => Err(LineError::Truncated),
            Some(b'.' | b'e' | b'E') => Err(self.bad("an integer with a fraction or exponent")),
            Some(_) => Ok(n),
        }
    }

    /// A string in the canonical escaping; returns its raw (escaped) content.
    fn string(&mut self) -> R<&'a [u8]> {
        if self.peek()? != b'"' {
            return Err(self.bad("expected a string"));
        }
        self.i += 1;
        let start = self.i;
        loop {
            // The bytes that need a look: the end, an escape, a raw control character.
            let rest = &self.b[self.i..];
            let k = first_special(rest).ok_or(LineError::Truncated)?;
            self.i += k;
            match rest[k] {
                0x80.. => {
                    // Checked as UTF-8 once the whole line is parsed.
                    self.non_ascii = true;
                    self.i += 1;
                }
                b'"' => {
                    self.i += 1;
                    return Ok(&self.b[start..self.i - 1]);
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek()? {
                        b'"' | b'\\' | b'b' | b't' | b'n' | b'f' | b'r' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5).ok_or(LineError::Truncated)?;
                            let ok = hex[0] == b'0'
                                && hex[1] == b'0'
                                && matches!(hex[2], b'0' | b'1')
                                && matches!(hex[3], b'0'..=b'9' | b'a'..=b'f')
                                && !matches!(&hex[2..], b"08" | b"09" | b"0a" | b"0c" | b"0d");
                            if !ok {
                                return Err(self.bad(
                                    "a \\u escape other than \\u00XX (lowercase) for a control character \
                                     without a short form",
                                ));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.bad("an escape the canonical form does not use")),
                    }
                }
                _ => return Err(self.bad("a control character not escaped")),
            }
        }
    }

    fn str_or_null(&mut self) -> R<()> {
        if !self.try_lit(b"null") {
            self.string()?;
        }
        Ok(())
    }

    fn hex64(&mut self) -> R<&'a [u8; 64]> {
        let s = self.b.get(self.i..self.i + 64).ok_or(LineError::Truncated)?;
        // No early exit: the compiler checks all 64 bytes at once.
        if !s.iter().fold(true, |ok, &b| ok & (b.is_ascii_digit() | (b'a'..=b'f').contains(&b))) {
            return Err(self.bad("expected 64 lowercase hex digits"));
        }
        self.i += 64;
        Ok(s.try_into().expect("64 bytes"))
    }

    /// `"YYYY-MM-DDTHH:MM:SS.ffffffZ"`, a real UTC time (proleptic Gregorian, years 0000 to
    /// 9999, no leap second).
    fn ts(&mut self) -> R<()> {
        let s = self.b.get(self.i..self.i + 29).ok_or(LineError::Truncated)?;
        if !valid_ts(s) {
            return Err(self.bad("\"ts\" is not a real UTC time of the form YYYY-MM-DDTHH:MM:SS.ffffffZ"));
        }
        self.i += 29;
        Ok(())
    }

    /// `{"k":"v",…}` after its `{`: string values, names strictly increasing in byte order.
    fn tags(&mut self) -> R<()> {
        if self.try_lit(b"}") {
            return Ok(());
        }
        let mut last: Option<&[u8]> = None;
        loop {
            let at = self.i;
            let name = self.string()?;
            if let Some(prev) = last {
                if unescaped_cmp(prev, name) != std::cmp::Ordering::Less {
                    return Err(LineError::Bad(
                        "\"tags\" names are not strictly increasing (unsorted or repeated)".into(),
                        at,
                    ));
                }
            }
            last = Some(name);
            self.lit(b":")?;
            self.string()?;
            if self.try_lit(b"}") {
                return Ok(());
            }
            self.lit(b",")?;
        }
    }

    /// `null` or one of the encoded value forms of §3.
    fn encoded(&mut self) -> R<()> {
        if self.try_lit(b"null") {
            return Ok(());
        }
        let at = self.i;
        if self.try_lit(b"{\"full\":") {
            self.value()?;
        } else if self.try_lit(b"{\"digest\":\"") {
            self.hex64()?;
            self.lit(b"\",\"key_id\":")?;
            self.string()?;
        } else if self.try_lit(b"{\"redacted\":true") {
        } else if self.try_lit(b"{\"unencodable\":") {
            self.string()?;
        } else {
            self.peek()?;
            if self.b.len() - self.i < 16 {
                return Err(LineError::Truncated);
            }
            return Err(LineError::Bad(
                "not an encoded value ({\"full\":…}, {\"digest\":…,\"key_id\":…}, {\"redacted\":true}, \
                 {\"unencodable\":…}) nor null"
                    .into(),
                at,
            ));
        }
        self.lit(b"}")
    }

    /// Any JSON value (RFC 8259) without whitespace, strings canonical, no object repeating a
    /// member name; nesting depth is not limited (no recursion).
    fn value(&mut self) -> R<()> {
        // Open containers: `true` for an object, with the names seen in it.
        let mut stack: Vec<(bool, Names<'a>)> = Vec::new();
        loop {
            // A value.
            match self.peek()? {
                b'{' => {
                    self.i += 1;
                    if !self.try_lit(b"}") {
                        stack.push((true, Names::default()));
                        self.member_name(&mut stack)?;
                        continue;
                    }
                }
                b'[' => {
                    self.i += 1;
                    if !self.try_lit(b"]") {
                        stack.push((false, Names::default()));
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                _ => {
                    if !(self.try_lit(b"null") || self.try_lit(b"true") || self.try_lit(b"false")) {
                        if b"null".starts_with(&self.b[self.i..])
                            || b"true".starts_with(&self.b[self.i..])
                            || b"false".starts_with(&self.b[self.i..])
                        {
                            return Err(LineError::Truncated);
                        }
                        return Err(self.bad("not a JSON value"));
                    }
                }
            }
            // After a value: close containers or go on to the next element.
            loop {
                let Some((is_object, _)) = stack.last() else { return Ok(()) };
                let close = if *is_object { b'}' } else { b']' };
                let b = self.peek()?;
                if b == close {
                    self.i += 1;
                    stack.pop();
                } else if b == b',' {
                    self.i += 1;
                    if *is_object {
                        self.member_name(&mut stack)?;
                    }
                    break;
                } else {
                    return Err(self.bad("expected , or the end of an array or object"));
                }
            }
        }
    }

    /// `"name":` inside the object on top of `stack`, checked against the names before it.
    fn member_name(&mut self, stack: &mut [(bool, Names<'a>)]) -> R<()> {
        let at = self.i;
        let name = self.string()?;
        let names = &mut stack.last_mut().expect("in an object").1;
        // One string has one canonical escaping: equal bytes are equal names.
        if !names.insert(name) {
            return Err(LineError::Bad(
                format!("an object repeats the member name \"{}\"", String::from_utf8_lossy(name)),
                at,
            ));
        }
        self.lit(b":")
    }

    /// A JSON number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> R<()> {
        let digits = |c: &mut Self| -> R<usize> {
            let start = c.i;
            while c.b.get(c.i).is_some_and(u8::is_ascii_digit) {
                c.i += 1;
            }
            if c.i == c.b.len() {
                return Err(LineError::Truncated);
            }
            Ok(c.i - start)
        };
        self.try_lit(b"-");
        let at = self.i;
        let n = digits(self)?;
        if n == 0 || (n > 1 && self.b[at] == b'0') {
            return Err(LineError::Bad("a malformed number".into(), at));
        }
        if self.try_lit(b".") && digits(self)? == 0 {
            return Err(self.bad("a number with no digit after its point"));
        }
        if self.peek()? == b'e' || self.peek()? == b'E' {
            self.i += 1;
            if !self.try_lit(b"+") {
                self.try_lit(b"-");
            }
            if digits(self)? == 0 {
                return Err(self.bad("a number with no exponent digit"));
            }
        }
        Ok(())
    }
}

/// The index of the first byte of `s` a string scan must look at: `"`, `\\`, a control
/// character (under 0x20) or a non-ASCII byte (0x80 and over). Eight bytes at a time.
#[inline]
fn first_special(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for c in &mut chunks {
        let x = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        let q = x ^ (LO * u64::from(b'"'));
        let e = x ^ (LO * u64::from(b'\\'));
        // A byte's high bit in each term says: zero after the XOR (`"` or `\\`), under 0x20,
        // or 0x80 and over. A borrow can set a bit only above a byte already found, so the
        // lowest set bit is exact (little-endian: the first byte in memory).
        let found =
            ((q.wrapping_sub(LO) & !q) | (e.wrapping_sub(LO) & !e) | (x.wrapping_sub(LO * 0x20) & !x) | x)
                & HI;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b))
        .map(|p| at + p)
}

/// Compares two canonical string contents by their unescaped bytes.
fn unescaped_cmp(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    if !a.contains(&b'\\') && !b.contains(&b'\\') {
        return a.cmp(b);
    }
    unescape(a).cmp(&unescape(b))
}

/// The bytes of a canonical string content (escapes already checked).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' {
            let (b, len) = match s[i + 1] {
                b'b' => (8, 2),
                b't' => (9, 2),
                b'n' => (10, 2),
                b'f' => (12, 2),
                b'r' => (13, 2),
                b'u' => (
                    u8::from_str_radix(std::str::from_utf8(&s[i + 4..i + 6]).unwrap_or("0"), 16).unwrap_or(0),
                    6,
                ),
                other => (other, 2),
            };
            out.push(b);
            i += len;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Whether `s` (with its quotes: 29 bytes) is `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` and a real time.
pub(crate) fn valid_ts(s: &[u8]) -> bool {
    const FORM: &[u8; 29] = b"\"dddd-dd-ddTdd:dd:dd.ddddddZ\"";
    if s.len() != 29
        || !s.iter().zip(FORM).fold(true, |ok, (&b, &f)| ok & ((f == b'd' && b.is_ascii_digit()) | (b == f)))
    {
        return false;
    }
    let num = |r: std::ops::Range<usize>| s[r].iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    let (year, month, day) = (num(1..5), num(6..8), num(9..11));
    let (hour, minute, second) = (num(12..14), num(15..17), num(18..20));
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days).contains(&day) && hour < 24 && minute < 60 && second < 60
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_real_times_in_one_exact_form() {
        let ok = |s: &str| valid_ts(format!("\"{s}\"").as_bytes());
        assert!(ok("2026-11-27T16:06:50.123456Z"));
        assert!(ok("2024-02-29T23:59:59.999999Z"), "a leap day");
        assert!(ok("2000-02-29T00:00:00.000000Z"), "2000 is a leap year");
        assert!(ok("0000-02-29T00:00:00.000000Z"), "year 0000 is proleptic Gregorian, a leap year");
        for bad in [
            "2026-11-27T16:06:60.000000Z", // no leap seconds, at any minute
            "2016-12-31T23:59:60.000000Z",
            "1900-02-29T00:00:00.000000Z",
            "2026-02-29T00:00:00.000000Z",
            "2026-04-31T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-00-01T00:00:00.000000Z",
            "2026-01-00T00:00:00.000000Z",
            "2026-01-01T24:00:00.000000Z",
            "2026-01-01T00:60:00.000000Z",
            "+026-01-01T00:00:00.000000Z",
            " 026-01-01T00:00:00.000000Z",
            "-026-01-01T00:00:00.000000Z",
            "2026-01-01T00:00:00.00000 Z",
            "2026-01-01 00:00:00.000000Z",
            "2026-01-01T00:00:00.000000z",
            "2026-01-01T00:00:00.0000000",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn integers_are_canonical_u64() {
        let int = |s: &str| {
            let line = format!("{s},");
            Cur { b: line.as_bytes(), i: 0, non_ascii: false }.uint()
        };
        assert_eq!(int("0"), Ok(0));
        assert_eq!(int("18446744073709551615"), Ok(u64::MAX));
        for bad in ["18446744073709551616", "05", "5.0", "5e0", "5E0", "-5", "+5", " 5", ""] {
            assert!(matches!(int(bad), Err(LineError::Bad(..))), "{bad}");
        }
    }

    /// The eight-at-a-time scan finds the same byte as a byte-by-byte one, for every byte
    /// value at every position of runs of every length.
    #[test]
    fn the_string_scan_stops_at_the_first_byte_that_needs_a_look() {
        let slow = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b));
        for len in 0..24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    for filler in [b'a', b'~', b' ', b'!', b'#', b'[', b']'] {
                        let mut s = vec![filler; len];
                        s[at] = b;
                        if at + 1 < len {
                            s[at + 1] = b'"'; // a second special byte after it
                        }
                        assert_eq!(first_special(&s), slow(&s), "{s:?}");
                    }
                }
            }
            assert_eq!(first_special(&vec![b'x'; len]), None);
        }
    }

    #[test]
    fn strings_use_only_the_canonical_escapes() {
        let s = |raw: &str| {
            let line = format!("\"{raw}\",");
            Cur { b: line.as_bytes(), i: 0, non_ascii: false }.string().map(<[u8]>::to_vec)
        };
        assert!(s(r#"a\"b\\c\n\t\r\b\f\u0000\u001f é"#).is_ok());
        for bad in [r"\ud800", r"\u0041", r"\u000A", r"\u000a", r"\/", r"\x", "\r", "\u{1}"] {
            assert!(matches!(s(bad), Err(LineError::Bad(..))), "{bad:?}");
        }
    }

    #[test]
    fn full_values_are_compact_json_without_repeated_names() {
        let v = |raw: &str| {
            let line = format!("{raw}}}");
            let mut c = Cur { b: line.as_bytes(), i: 0, non_ascii: false };
            c.value().and_then(|()| if c.i + 1 == line.len() { Ok(()) } else { Err(c.bad("rest")) })
        };
        for good in [
            "1",
            "-0.5e-7",
            "1E+3",
            "\"x\"",
            "[]",
            "{}",
            "[1,[2,{\"a\":{\"a\":1}}]]",
            "{\"a\":1,\"b\":[null,true,false]}",
        ] {
            assert_eq!(v(good), Ok(()), "{good}");
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(v(&deep), Ok(()), "no recursion limit");
        for bad in [
            "NaN",
            "Infinity",
            "01",
            "1.",
            ".5",
            "1e",
            "[1,]",
            "{\"a\":1,\"a\":2}",
            "[{\"a\":1,\"b\":{\"c\":0,\"c\":0}}]",
            "[1 ]",
            "{\"a\" :1}",
            "tru",
        ] {
            assert!(v(bad).is_err(), "{bad}");
        }
    }

    /// An object with very many members (a 64 MiB line holds millions) is checked in linear
    /// time; a repeated name is found wherever the two copies are.
    #[test]
    fn objects_with_many_members_are_checked_in_linear_time() {
        let object = |n: usize, extra: Option<usize>| {
            let mut s = String::from("{");
            for i in 0..n {
                s.push_str(&format!("\"k{i}\":{i},"));
            }
            if let Some(again) = extra {
                s.push_str(&format!("\"k{again}\":0,"));
            }
            s.pop();
            s.push('}');
            s
        };
        let check = |raw: &str| {
            let line = format!("{raw}}}");
            let mut c = Cur { b: line.as_bytes(), i: 0, non_ascii: false };
            c.value().map_err(|e| match e {
                LineError::Bad(what, _) => what,
                LineError::Truncated => "truncated".into(),
            })
        };
        // Quadratic, this would be 4.5 * 10^10 comparisons.
        assert_eq!(check(&object(300_000, None)), Ok(()));
        for again in [0, NAMES_INLINE - 1, NAMES_INLINE, 299_999] {
            let e = check(&object(300_000, Some(again))).unwrap_err();
            assert!(e.contains(&format!("repeats the member name \"k{again}\"")), "{e}");
        }
        // Names repeated only across objects are fine.
        assert_eq!(check(&format!("[{},{}]", object(40, None), object(40, None))), Ok(()));
    }
}
