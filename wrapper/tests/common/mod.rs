//! Helpers shared by the audit integration tests of this crate.

use std::path::Path;

use map_wrapper::audit::AuditRecord;

/// Every record of the trail in `dir` that parses, in segment order. Lines that do not parse
/// (a torn tail, a header) are skipped: the tests check what was written, the verifier
/// checks how.
pub fn records(dir: &Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    for (_, path) in map_wrapper::audit::list_segments(dir).unwrap() {
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if let Ok(r) = serde_json::from_str::<AuditRecord>(line) {
                out.push(r);
            }
        }
    }
    out
}
