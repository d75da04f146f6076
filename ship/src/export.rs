//! Export: a remote copy back into JSON-lines segment files, for the verifier.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use map_wrapper::audit::anchor::APPEND_FILE;
use map_wrapper::audit::segment_file_name;

use crate::record::{probe, Line};
use crate::sink::RemoteSink;
use crate::Error;

/// What [`export`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Records written.
    pub records: u64,
    /// Segment files written.
    pub segments: u64,
    /// The last record's `seq` (0 when none).
    pub last_seq: u64,
    /// Checkpoints written to `checkpoints.notes`.
    pub checkpoints: u64,
}

/// Writes the remote copy of `trail` into `out` (a directory, created if missing, that must
/// not hold segment files already) as `segment-NNNNNN.jsonl` files: each header line starts
/// the file its `segment` member names, each record line follows, byte for byte as stored.
/// Nothing is checked or repaired here: `map-wrapper-audit verify OUT` judges the copy (a
/// record edited, deleted or moved in the remote copy shows as TAMPERED). Memory is bounded
/// (records are read 1000 at a time).
///
/// The remote's checkpoints of the trail are written, in the order stored, to
/// `OUT/checkpoints.notes` (as the trail's writer writes its own; none: no file), so
/// `map-wrapper-audit verify --pubkey KEY OUT` checks the copy's records against them: a
/// copy that lost records a checkpoint covers is TAMPERED.
pub fn export<S: RemoteSink + ?Sized>(sink: &mut S, trail: &str, out: &Path) -> Result<Exported, Error> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    if !map_wrapper::audit::list_segments(out).map_err(|e| Error::io(out, e))?.is_empty() {
        return Err(Error::Config(format!("{} already holds segment files", out.display())));
    }
    let mut summary = Exported::default();
    // The checkpoints first, then the records: a checkpoint is stored only after the records
    // it covers, so every checkpoint read now is covered by the records read after it, even
    // while a shipper goes on (read the other way round, a checkpoint stored in between could
    // cover records the copy does not have, and the copy would verify as truncated).
    let mut notes: Option<(BufWriter<File>, std::path::PathBuf)> = None;
    let mut from = 1;
    loop {
        let batch = sink.read_checkpoints(trail, from, 1000)?;
        let Some((last, _)) = batch.last() else { break };
        from = last + 1;
        if notes.is_none() {
            let path = out.join(APPEND_FILE);
            let f = File::create_new(&path).map_err(|e| Error::io(&path, e))?;
            notes = Some((BufWriter::new(f), path));
        }
        let (f, path) = notes.as_mut().expect("open");
        for (_, cp) in &batch {
            f.write_all(cp.note().as_bytes()).map_err(|e| Error::io(path, e))?;
            summary.checkpoints += 1;
        }
    }
    if let Some((f, path)) = notes.take() {
        finish(f, &path)?;
    }
    let mut file: Option<(BufWriter<File>, std::path::PathBuf)> = None;
    let mut from = 1;
    loop {
        let batch = sink.read(trail, from, 1000)?;
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        for r in &batch {
            for h in r.header.split_inclusive(|&b| b == b'\n') {
                let Line::Header(hdr) = probe(&h[..h.len() - 1])? else {
                    return Err(Error::Malformed(format!(
                        "record {}: a stored header line is a record",
                        r.seq
                    )));
                };
                if let Some((f, path)) = file.take() {
                    finish(f, &path)?;
                }
                let path = out.join(segment_file_name(hdr.segment));
                let f = File::create_new(&path).map_err(|e| Error::io(&path, e))?;
                file = Some((BufWriter::with_capacity(1 << 20, f), path));
                summary.segments += 1;
                let (f, path) = file.as_mut().expect("just set");
                f.write_all(h).map_err(|e| Error::io(path, e))?;
            }
            if file.is_none() {
                // A copy that does not start with a header: written as it is, the verifier says so.
                let path = out.join(segment_file_name(1));
                let f = File::create_new(&path).map_err(|e| Error::io(&path, e))?;
                file = Some((BufWriter::with_capacity(1 << 20, f), path));
                summary.segments += 1;
            }
            let (f, path) = file.as_mut().expect("open");
            f.write_all(&r.line).and_then(|()| f.write_all(b"\n")).map_err(|e| Error::io(path, e))?;
            summary.records += 1;
            summary.last_seq = r.seq;
        }
    }
    if let Some((f, path)) = file.take() {
        finish(f, &path)?;
    }
    Ok(summary)
}

fn finish(f: BufWriter<File>, path: &Path) -> Result<(), Error> {
    let f = f.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}
