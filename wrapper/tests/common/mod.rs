//! Helpers shared by the audit integration tests of this crate.

use std::path::Path;

use map_wrapper::audit::AuditRecord;

/// Every record of the trail in `dir` that parses, in segment order. Lines that do not parse
/// (a torn tail, a header) are skipped: the tests check what was written, the verifier
/// checks how. A last line without its newline is a torn tail even when its bytes happen to
/// end at the record's closing brace (a write that failed halfway can cut there): the sink
/// counts it as lost in its `sink_gap`, so it must not also count as written.
pub fn records(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for (_, path) in map_wrapper::audit::list_segments(dir).unwrap() {
        let text = std::fs::read_to_string(path).unwrap();
        for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
            if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
                out.push(r);
            }
        }
    }
    out
}
