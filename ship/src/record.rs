//! What is shipped: one record line of the trail, with the segment header lines that come
//! right before it, byte for byte.

use chrono::{DateTime, Utc};
use serde::Deserialize;

/// One record of a trail as it travels to a remote sink: its `seq`, its line byte for byte,
/// and the segment header lines (if any) that sit between the previous record and this one
/// in the trail.
///
/// The headers travel with the record that follows them because they are links of the same
/// hash chain (a header's `prev` is the previous line's `hash`, the next record's `prev` is the
/// header's `hash`): an exported copy needs them to verify. They have no `seq` of their own.
///
/// # Examples
///
/// ```
/// use map_wrapper_ship::Record;
///
/// let r = Record::new(7, Vec::new(), br#"{"v":1,"seq":7,"ts":"2026-12-02T12:00:00.000000Z"}"#.to_vec());
/// assert_eq!(r.seq, 7);
/// assert_eq!(r.payload(), r.line);
/// assert!(r.ts().is_some());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's `seq` (the trail's position, from 1, gap-free).
    pub seq: u64,
    /// Segment header lines before this record, each ending with `\n`; empty for most records.
    pub header: Vec<u8>,
    /// The record's line, without its `\n`.
    pub line: Vec<u8>,
}

impl Record {
    /// A record from its parts.
    pub fn new(seq: u64, header: Vec<u8>, line: Vec<u8>) -> Self {
        Record { seq, header, line }
    }

    /// The header lines followed by the record line (no final `\n`): the bytes of the trail
    /// this record stands for. A record line holds no raw `\n`, so [`Record::from_payload`]
    /// splits it back at the last `\n`.
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.line.len());
        out.extend_from_slice(&self.header);
        out.extend_from_slice(&self.line);
        out
    }

    /// Splits a [`payload`](Record::payload) back into header lines and record line, and reads
    /// the `seq` from the line.
    pub fn from_payload(payload: &[u8]) -> Result<Self, crate::Error> {
        let cut = payload.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let (header, line) = payload.split_at(cut);
        match probe(line)? {
            Line::Record { seq } => Ok(Record::new(seq, header.to_vec(), line.to_vec())),
            Line::Header(_) => {
                Err(crate::Error::Malformed("a payload ends with a segment header, not a record".into()))
            }
        }
    }

    /// The record's `ts`, when it has the form the format prescribes.
    pub fn ts(&self) -> Option<DateTime<Utc>> {
        const KEY: &[u8] = br#""ts":""#;
        let at = memfind(&self.line, KEY)? + KEY.len();
        let end = at + self.line.get(at..)?.iter().position(|&b| b == b'"')?;
        let text = std::str::from_utf8(&self.line[at..end]).ok()?;
        DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc))
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The members of a segment header the shipper needs (docs/AUDIT_FORMAT.md §4).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub segment: u64,
    pub first_seq: u64,
    pub prev_len: u64,
    pub recovered: bool,
}

/// A line of the trail, as far as the shipper cares.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    Header(SegmentHeader),
    Record { seq: u64 },
}

#[derive(Deserialize)]
struct Probe {
    seq: Option<u64>,
    segment: Option<u64>,
    first_seq: Option<u64>,
    prev_len: Option<u64>,
    recovered: Option<bool>,
}

/// Classifies a line (without `\n`): a header (it has a `segment` member) or a record (its
/// `seq`). The common case, a record written by the library (`{"v":1,"seq":N,…`), is read
/// without a JSON parser.
pub(crate) fn probe(line: &[u8]) -> Result<Line, crate::Error> {
    const FAST: &[u8] = br#"{"v":1,"seq":"#;
    if let Some(rest) = line.strip_prefix(FAST) {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 0 && digits <= 19 && rest.get(digits) == Some(&b',') {
            if let Ok(seq) = std::str::from_utf8(&rest[..digits]).unwrap_or("x").parse() {
                return Ok(Line::Record { seq });
            }
        }
    }
    let p: Probe = serde_json::from_slice(line).map_err(|e| {
        crate::Error::Malformed(format!(
            "a trail line is not a JSON object: {e} (line starts {:?})",
            preview(line)
        ))
    })?;
    match (p.segment, p.seq) {
        (Some(segment), None) => match (p.first_seq, p.prev_len, p.recovered) {
            (Some(first_seq), Some(prev_len), Some(recovered)) => {
                Ok(Line::Header(SegmentHeader { segment, first_seq, prev_len, recovered }))
            }
            _ => Err(crate::Error::Malformed(format!(
                "segment header {segment} lacks first_seq, prev_len or recovered"
            ))),
        },
        (None, Some(seq)) => Ok(Line::Record { seq }),
        _ => Err(crate::Error::Malformed(format!(
            "a trail line is neither a header nor a record (line starts {:?})",
            preview(line)
        ))),
    }
}

fn preview(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(60)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_reads_records_fast_and_headers_through_json() {
        assert_eq!(probe(br#"{"v":1,"seq":42,"ts":"x"}"#).unwrap(), Line::Record { seq: 42 });
        assert_eq!(probe(br#"{"seq":43,"v":1}"#).unwrap(), Line::Record { seq: 43 });
        let h = br#"{"v":1,"segment":3,"ts":"x","chain":"sha256","key_id":null,"first_seq":9,"prev_len":100,"recovered":true,"prev":"0","hash":"1"}"#;
        assert_eq!(
            probe(h).unwrap(),
            Line::Header(SegmentHeader { segment: 3, first_seq: 9, prev_len: 100, recovered: true })
        );
        assert!(probe(b"not json").is_err());
        assert!(probe(br#"{"v":1}"#).is_err());
    }

    #[test]
    fn payload_round_trips_header_and_line() {
        let r =
            Record::new(5, b"{\"v\":1,\"segment\":2}\n".to_vec(), br#"{"v":1,"seq":5,"x":"a\nb"}"#.to_vec());
        assert_eq!(Record::from_payload(&r.payload()).unwrap(), r);
    }
}
