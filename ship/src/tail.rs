//! Follows a trail directory: complete lines only, segment after segment.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use map_wrapper::audit::{list_segments, segment_file_name};

use crate::record::{probe, Line, SegmentHeader};
use crate::{Error, Record};

/// Reads the records of a trail directory in order, as they are written.
///
/// - Only complete (`\n`-terminated) lines are taken: a torn last line is left where it is
///   until its newline arrives (or a writer that reopens the trail cuts it off: the tailer
///   re-reads from its offset every time, so bytes it never took cannot go stale).
/// - It moves to segment `N+1` once that file exists, after reading segment `N` to its end
///   once more (the writer syncs `N` before it creates `N+1`). `N+1`'s header says how long
///   `N` was (`prev_len`): bytes past it are a region the writer abandoned (a `recovered`
///   segment, docs/AUDIT_FORMAT.md §6) and are not shipped; a tailer that already read past
///   `prev_len` reports [`Error::Abandoned`].
/// - Records come out with `seq` contiguous; anything else is [`Error::LocalGap`].
#[derive(Debug)]
pub struct Tailer {
    dir: PathBuf,
    /// Current segment number (0 until the first segment appears).
    seg: u64,
    file: Option<File>,
    /// Offset in the current segment of the first byte not yet taken.
    offset: u64,
    /// Whether the current segment's first line was read.
    seen_first_line: bool,
    pending_header: Vec<u8>,
    /// Records with `seq <= skip_through` are read but not returned.
    skip_through: u64,
    /// The `seq` the next record must have (0: not known yet).
    next_seq: u64,
    buf: Vec<u8>,
}

const CHUNK: usize = 1 << 20;

impl Tailer {
    /// A tailer that returns the records after `after_seq` (0: from the start of the trail).
    /// It starts reading at the segment that holds record `after_seq` (found from the segment
    /// headers' `first_seq`), so it does not read the whole trail again.
    pub fn open(dir: impl AsRef<Path>, after_seq: u64) -> Result<Self, Error> {
        let dir = dir.as_ref().to_path_buf();
        let mut start = 0;
        if dir.exists() {
            let segments = list_segments(&dir).map_err(|e| Error::io(&dir, e))?;
            start = segments.first().map_or(0, |s| s.0);
            if after_seq > 0 {
                for (n, path) in &segments {
                    match read_header(path)? {
                        Some(h) if h.first_seq <= after_seq => start = *n,
                        Some(_) => break,
                        None => break,
                    }
                }
            }
        }
        Ok(Tailer {
            dir,
            seg: start,
            file: None,
            offset: 0,
            seen_first_line: false,
            pending_header: Vec::new(),
            skip_through: after_seq,
            next_seq: if after_seq > 0 { after_seq + 1 } else { 0 },
            buf: Vec::new(),
        })
    }

    /// The segment being read and the offset in it of the next line.
    pub fn position(&self) -> (u64, u64) {
        (self.seg, self.offset)
    }

    /// Appends to `out` the complete records available now, at most `max` (at least one line
    /// is read when one is there). Returns how many were added; 0 means nothing new yet.
    pub fn poll(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, Error> {
        let before = out.len();
        let mut next_exists = false;
        while out.len() - before < max {
            if self.file.is_none() && !self.open_current()? {
                break;
            }
            let took = self.read_lines(max - (out.len() - before), out)?;
            if took > 0 || out.len() - before >= max {
                continue;
            }
            // Nothing complete left in this segment for now.
            if !next_exists {
                next_exists = self.dir.join(segment_file_name(self.seg + 1)).exists();
                if next_exists {
                    // Read the current segment to its end once more before leaving it.
                    continue;
                }
                break;
            }
            if !self.move_to_next()? {
                // The next segment's header is not complete yet: come back later.
                break;
            }
            next_exists = false;
        }
        Ok(out.len() - before)
    }

    fn open_current(&mut self) -> Result<bool, Error> {
        if self.seg == 0 {
            if !self.dir.exists() {
                return Ok(false);
            }
            match list_segments(&self.dir).map_err(|e| Error::io(&self.dir, e))?.first() {
                Some((n, _)) => self.seg = *n,
                None => return Ok(false),
            }
        }
        let path = self.dir.join(segment_file_name(self.seg));
        match File::open(&path) {
            Ok(f) => {
                self.file = Some(f);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Moves to the next segment once its header is complete (returns false while it is not).
    fn move_to_next(&mut self) -> Result<bool, Error> {
        let path = self.dir.join(segment_file_name(self.seg + 1));
        let Some(header) = read_header(&path)? else { return Ok(false) };
        let len = self.file.as_ref().expect("open").metadata().map_err(|e| Error::io(&path, e))?.len();
        if header.prev_len != self.offset {
            if header.recovered && header.prev_len > self.offset && len > self.offset {
                // Should not happen: the segment was read to its end.
                return Err(Error::Malformed(format!(
                    "segment {} holds unread complete lines below the next segment's prev_len",
                    self.seg
                )));
            }
            if header.recovered && header.prev_len < self.offset {
                return Err(Error::Abandoned {
                    segment: self.seg,
                    prev_len: header.prev_len,
                    read_to: self.offset,
                });
            }
            if !(header.recovered && header.prev_len == self.offset) {
                return Err(Error::Malformed(format!(
                    "segment {} header says the previous segment was {} bytes long, the shipper read {} of {} bytes",
                    self.seg + 1,
                    header.prev_len,
                    self.offset,
                    len
                )));
            }
        }
        if len > self.offset && !header.recovered {
            return Err(Error::Malformed(format!(
                "segment {} ends with {} bytes that are not a complete line, and segment {} is not `recovered`",
                self.seg,
                len - self.offset,
                self.seg + 1
            )));
        }
        self.seg += 1;
        self.file = None;
        self.offset = 0;
        self.seen_first_line = false;
        Ok(true)
    }

    /// Reads the complete lines after `offset` (at most `max` records). Returns lines taken.
    fn read_lines(&mut self, max: usize, out: &mut Vec<Record>) -> Result<usize, Error> {
        let mut taken = 0;
        let mut chunk = CHUNK;
        loop {
            self.buf.resize(chunk, 0);
            let file = self.file.as_ref().expect("open");
            let n = read_full_at(file, &mut self.buf, self.offset)
                .map_err(|e| Error::io(&self.dir.join(segment_file_name(self.seg)), e))?;
            let mut pos = 0;
            let mut records = 0;
            while records < max {
                let Some(nl) = self.buf[pos..n].iter().position(|&b| b == b'\n') else { break };
                let line = self.buf[pos..pos + nl].to_vec();
                pos += nl + 1;
                taken += 1;
                if self.take_line(line, out)? {
                    records += 1;
                }
            }
            self.offset += pos as u64;
            if pos == 0 && n == chunk {
                // A line longer than the buffer: grow (a line is at most 64 MiB + 1).
                if chunk > (64 << 20) + 2 {
                    return Err(Error::Malformed(format!("a line of segment {} is over 64 MiB", self.seg)));
                }
                chunk *= 2;
                continue;
            }
            return Ok(taken);
        }
    }

    /// Handles one complete line; returns whether a record was added to `out`.
    fn take_line(&mut self, line: Vec<u8>, out: &mut Vec<Record>) -> Result<bool, Error> {
        let first = !self.seen_first_line;
        self.seen_first_line = true;
        match probe(&line)? {
            Line::Header(h) => {
                if !first {
                    return Err(Error::Malformed(format!(
                        "a segment header in the middle of segment {}",
                        self.seg
                    )));
                }
                if h.segment != self.seg {
                    return Err(Error::Malformed(format!(
                        "segment file {} has a header for segment {}",
                        self.seg, h.segment
                    )));
                }
                self.pending_header.extend_from_slice(&line);
                self.pending_header.push(b'\n');
                Ok(false)
            }
            Line::Record { seq } => {
                if seq <= self.skip_through {
                    self.pending_header.clear();
                    return Ok(false);
                }
                if self.next_seq != 0 && seq != self.next_seq {
                    return Err(Error::LocalGap { expected: self.next_seq, found: seq, segment: self.seg });
                }
                self.next_seq = seq + 1;
                out.push(Record::new(seq, std::mem::take(&mut self.pending_header), line));
                Ok(true)
            }
        }
    }
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The header of a segment file, `None` when its first line is not complete yet.
pub(crate) fn read_header(path: &Path) -> Result<Option<SegmentHeader>, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; 4096];
    let n = read_full_at(&file, &mut buf, 0).map_err(|e| Error::io(path, e))?;
    let Some(nl) = buf[..n].iter().position(|&b| b == b'\n') else { return Ok(None) };
    match probe(&buf[..nl])? {
        Line::Header(h) => Ok(Some(h)),
        Line::Record { .. } => {
            Err(Error::Malformed(format!("{} does not start with a segment header", path.display())))
        }
    }
}
