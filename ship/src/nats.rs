//! The NATS JetStream sink: one stream per trail.
//!
//! Trail `T` goes to stream `MWAUDIT_T`, subject `mwaudit.T` (file storage, `deny_delete`,
//! `deny_purge`, 2 min duplicate window), one message per record: the payload is
//! [`Record::payload`] (the header lines before the record, then its line, byte for byte).
//! Each message carries `Nats-Msg-Id: T:seq` (the server drops a second copy inside the
//! duplicate window) and `Nats-Expected-Last-Subject-Sequence: seq − 1` (the server refuses a
//! message that does not follow the stream's last one: no gap, no fork). So the stream
//! sequence of record `seq` is `seq`, and reading record `seq` is a direct get.
//!
//! A redelivered record (a duplicate ack, or a refusal because the stream is past it) is
//! fetched and compared byte for byte: the same bytes are an ack, others a
//! [`SinkError::Fork`].
//!
//! Checkpoints of trail `T` go to their own stream, `MWCKPT_T` (subject `mwckpt.T`, the same
//! settings), one message per note (the note's bytes), in order: stream sequence = position.
//! Before publishing, the sink reads the stream's last note and applies
//! [`check_forward`](map_wrapper::audit::anchor::check_forward) (a backwards or forked
//! checkpoint is a [`SinkError::Checkpoint`]; one that adds nothing is acknowledged without a
//! publish), then publishes with `Nats-Expected-Last-Subject-Sequence` = that last message's
//! sequence, so the server refuses the note if another was appended since the check (the
//! sink then checks again), and `Nats-Msg-Id: T:size:time`. [`NatsAnchor`] makes the stream
//! an anchor.
//!
//! The sink runs `async-nats` on its own single-thread tokio runtime, so the shipper stays
//! synchronous and the rest of the package needs no runtime (do not call it from inside
//! another tokio runtime's thread).

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::context::{GetStreamErrorKind, PublishErrorKind};
use async_nats::jetstream::stream::{Config, StorageType, Stream};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::HeaderMap;
use bytes::Bytes;

use map_wrapper::audit::SignedCheckpoint;

use crate::sink::{check_trail_id, checkpoint_is_old, Acked, RemoteSink, SinkError};
use crate::Record;

/// A JetStream copy as a checkpoint anchor:
/// `NatsAnchor::new(NatsSink::new(url)?, "billing-host7")`.
pub type NatsAnchor = crate::RemoteAnchor<NatsSink>;

/// The checkpoint stream name of a trail.
pub fn checkpoint_stream_name(trail: &str) -> String {
    format!("MWCKPT_{trail}")
}

/// The checkpoint subject of a trail.
pub fn checkpoint_subject(trail: &str) -> String {
    format!("mwckpt.{trail}")
}

/// The stream name of a trail.
pub fn stream_name(trail: &str) -> String {
    format!("MWAUDIT_{trail}")
}

/// The subject of a trail.
pub fn subject(trail: &str) -> String {
    format!("mwaudit.{trail}")
}

/// Ships to NATS JetStream (see the [module docs](self)).
pub struct NatsSink {
    url: String,
    rt: tokio::runtime::Runtime,
    js: Option<jetstream::Context>,
    streams: HashMap<String, Stream>,
    timeout: Duration,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink").field("url", &self.url).field("connected", &self.js.is_some()).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

impl NatsSink {
    /// A sink for the server at `url` (`nats://127.0.0.1:4222`). Connects lazily; once
    /// connected, the client reconnects by itself after a server restart.
    pub fn new(url: impl Into<String>) -> Result<Self, SinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SinkError::Refused(format!("cannot start a tokio runtime: {e}")))?;
        Ok(NatsSink {
            url: url.into(),
            rt,
            js: None,
            streams: HashMap::new(),
            timeout: Duration::from_secs(5),
        })
    }

    /// The longest wait for any one exchange with the server (default 5 s): a publish
    /// window's acks, a stream lookup, a read. On a timeout the connection is dropped and the
    /// next call connects afresh (connecting is bounded by 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Forgets the connection and the streams looked up through it.
    fn reset(&mut self) {
        self.js = None;
        self.streams.clear();
    }

    fn context(&mut self) -> Result<jetstream::Context, SinkError> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let opts = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(self.timeout));
        let client = self.rt.block_on(opts.connect(self.url.as_str())).map_err(unavailable)?;
        let mut js = jetstream::new(client);
        js.set_timeout(self.timeout);
        self.js = Some(js.clone());
        Ok(js)
    }

    /// The trail's record stream; created when `create` (else `None` when it does not exist).
    fn stream(&mut self, trail: &str, create: bool) -> Result<Option<Stream>, SinkError> {
        check_trail_id(trail)?;
        self.stream_named(stream_name(trail), subject(trail), create)
    }

    /// The trail's checkpoint stream, likewise.
    fn checkpoint_stream(&mut self, trail: &str, create: bool) -> Result<Option<Stream>, SinkError> {
        check_trail_id(trail)?;
        self.stream_named(checkpoint_stream_name(trail), checkpoint_subject(trail), create)
    }

    fn stream_named(
        &mut self,
        name: String,
        subj: String,
        create: bool,
    ) -> Result<Option<Stream>, SinkError> {
        if let Some(s) = self.streams.get(&name) {
            return Ok(Some(s.clone()));
        }
        let js = self.context()?;
        let t = self.timeout;
        let got = self.rt.block_on(async {
            tokio::time::timeout(t, async {
                if create {
                    js.get_or_create_stream(Config {
                        name: name.clone(),
                        subjects: vec![subj],
                        storage: StorageType::File,
                        deny_delete: true,
                        deny_purge: true,
                        allow_direct: true,
                        duplicate_window: Duration::from_secs(120),
                        ..Default::default()
                    })
                    .await
                    .map(Some)
                    .map_err(unavailable)
                } else {
                    match js.get_stream(&name).await {
                        Ok(s) => Ok(Some(s)),
                        Err(e) => match e.kind() {
                            GetStreamErrorKind::JetStream(j)
                                if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                            {
                                Ok(None)
                            }
                            _ => Err(unavailable(e)),
                        },
                    }
                }
            })
            .await
            .map_err(|_| SinkError::Unavailable(format!("no answer about stream {name} in {t:?}")))?
        });
        let got = got.inspect_err(|e| {
            if e.is_retryable() {
                self.js = None;
            }
        })?;
        if let Some(s) = &got {
            self.streams.insert(name, s.clone());
        }
        Ok(got)
    }

    /// The messages at stream sequences `seqs`, as (sequence, payload).
    fn get_raw(
        &mut self,
        stream: &Stream,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, Bytes)>, SinkError> {
        let t = self.timeout;
        self.rt.block_on(async {
            tokio::time::timeout(t, async {
                let gets = seqs.map(|s| stream.direct_get(s));
                let msgs = futures_util::future::join_all(gets).await;
                msgs.into_iter().map(|m| m.map(|m| (m.sequence, m.payload)).map_err(unavailable)).collect()
            })
            .await
            .map_err(|_| SinkError::Unavailable(format!("reading the stream took over {t:?}")))?
        })
    }

    fn get(
        &mut self,
        stream: &Stream,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<Record>, SinkError> {
        let mut out = Vec::with_capacity(seqs.clone().count());
        for (sequence, payload) in self.get_raw(stream, seqs)? {
            let r = Record::from_payload(&payload).map_err(|e| SinkError::Refused(e.to_string()))?;
            if r.seq != sequence {
                return Err(SinkError::Refused(format!(
                    "stream message {sequence} holds record seq {}: not a stream this sink wrote",
                    r.seq
                )));
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The checkpoints at stream sequences `seqs`.
    fn get_checkpoints(
        &mut self,
        stream: &Stream,
        seqs: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        self.get_raw(stream, seqs)?
            .into_iter()
            .map(|(sequence, payload)| {
                SignedCheckpoint::parse_unverified(&payload).map(|cp| (sequence, cp)).map_err(|e| {
                    SinkError::Refused(format!(
                        "checkpoint stream message {sequence} is not a checkpoint: {e}"
                    ))
                })
            })
            .collect()
    }

    /// Publishes one message with `headers`; `Ok(Some(duplicate))` when stored (or a
    /// duplicate), `Ok(None)` when refused because the subject's last sequence moved.
    fn publish_one(
        &mut self,
        subj: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Option<bool>, SinkError> {
        let js = self.context()?;
        let t = self.timeout;
        let outcome = self.rt.block_on(async {
            let work = async {
                let fut = js.publish_with_headers(subj, headers, payload).await?;
                fut.await
            };
            match tokio::time::timeout(t + Duration::from_secs(1), work).await {
                Ok(r) => r.map_err(|e| (e.kind(), e.to_string())),
                Err(_) => Err((PublishErrorKind::TimedOut, format!("no ack in {t:?}"))),
            }
        });
        match outcome {
            Ok(ack) => Ok(Some(ack.duplicate)),
            Err((PublishErrorKind::WrongLastSequence, _)) => Ok(None),
            Err((PublishErrorKind::TimedOut, msg)) => {
                self.reset();
                Err(SinkError::Unavailable(msg))
            }
            Err((_, msg)) => {
                self.reset();
                Err(SinkError::Unavailable(msg))
            }
        }
    }

    fn last_seq(&mut self, stream: &mut Stream) -> Result<u64, SinkError> {
        let t = self.timeout;
        self.rt
            .block_on(async {
                match tokio::time::timeout(t, stream.info()).await {
                    Ok(Ok(info)) => Ok(info.state.last_sequence),
                    Ok(Err(e)) => Err(unavailable(e)),
                    Err(_) => Err(SinkError::Unavailable("stream info timed out".into())),
                }
            })
            .inspect_err(|_| self.reset())
    }

    /// After a refusal or a duplicate: how much of `batch` the stream holds with the same bytes.
    fn reconcile(&mut self, trail: &str, stream: &mut Stream, batch: &[Record]) -> Result<Acked, SinkError> {
        let first = batch[0].seq;
        let last = self.last_seq(stream)?;
        if last + 1 < first {
            return Err(SinkError::Gap { trail: trail.to_owned(), sent: first, last });
        }
        if last < first {
            // Nothing of the batch stored: the refusal was not about order; try again.
            return Err(SinkError::Unavailable("publish refused; the stream holds none of the batch".into()));
        }
        let upto = last.min(batch.last().expect("not empty").seq);
        let stored = self.get(stream, first..=upto)?;
        for (mine, theirs) in batch.iter().zip(&stored) {
            if mine != theirs {
                return Err(SinkError::Fork { trail: trail.to_owned(), seq: mine.seq });
            }
        }
        Ok(Acked { last_seq: upto })
    }
}

/// Stream messages `from..` (at least 1), at most `max` and up to `last`, fetched through
/// `get` in pages of 256 sequence numbers.
fn paged<T>(
    from: u64,
    last: u64,
    max: usize,
    mut get: impl FnMut(std::ops::RangeInclusive<u64>) -> Result<Vec<T>, SinkError>,
) -> Result<Vec<T>, SinkError> {
    let from = from.max(1);
    if max == 0 || from > last {
        return Ok(Vec::new());
    }
    let upto = last.min(from + max as u64 - 1);
    let mut out = Vec::new();
    let mut at = from;
    while at <= upto {
        let end = upto.min(at + 255);
        out.extend(get(at..=end)?);
        at = end + 1;
    }
    Ok(out)
}

impl RemoteSink for NatsSink {
    fn send(&mut self, trail: &str, batch: &[Record]) -> Result<Acked, SinkError> {
        let Some(first) = batch.first() else {
            return Err(SinkError::Refused("an empty batch".into()));
        };
        if batch.iter().enumerate().any(|(i, r)| r.seq != first.seq + i as u64) {
            return Err(SinkError::Refused("a batch whose seqs are not contiguous".into()));
        }
        let mut stream = self.stream(trail, true)?.expect("created");
        let js = self.context()?;
        let subj = async_nats::Subject::from(subject(trail));
        let t = self.timeout;
        // Publish the whole batch pipelined, then take the acks in order.
        let outcome: Result<Vec<(bool, u64)>, (PublishErrorKind, String)> = self.rt.block_on(async {
            let work = async {
                let mut acks = Vec::with_capacity(batch.len());
                for r in batch {
                    let mut h = HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{trail}:{}", r.seq).as_str());
                    h.insert("Nats-Expected-Last-Subject-Sequence", (r.seq - 1).to_string().as_str());
                    let fut = js
                        .publish_with_headers(subj.clone(), h, Bytes::from(r.payload()))
                        .await
                        .map_err(|e| (e.kind(), e.to_string()))?;
                    acks.push(fut);
                }
                let mut out = Vec::with_capacity(acks.len());
                for fut in acks {
                    let ack = fut.await.map_err(|e| (e.kind(), e.to_string()))?;
                    out.push((ack.duplicate, ack.sequence));
                }
                Ok(out)
            };
            match tokio::time::timeout(t + Duration::from_secs(1), work).await {
                Ok(r) => r,
                Err(_) => Err((PublishErrorKind::TimedOut, format!("no ack in {t:?}"))),
            }
        });
        match outcome {
            Ok(acks) => {
                let mut dup = false;
                for (r, (duplicate, seq)) in batch.iter().zip(&acks) {
                    if *seq != r.seq {
                        return Err(SinkError::Refused(format!(
                            "record seq {} was stored at stream sequence {seq}: the stream {} holds other messages",
                            r.seq,
                            stream_name(trail)
                        )));
                    }
                    dup |= *duplicate;
                }
                if dup {
                    // The server kept an earlier copy: it must be the same bytes.
                    return self.reconcile(trail, &mut stream, batch);
                }
                Ok(Acked { last_seq: batch.last().expect("not empty").seq })
            }
            Err((PublishErrorKind::WrongLastSequence, _)) => self.reconcile(trail, &mut stream, batch),
            Err((PublishErrorKind::StreamNotFound, msg)) => {
                self.streams.remove(&stream_name(trail));
                Err(SinkError::Unavailable(msg))
            }
            Err((PublishErrorKind::TimedOut, msg)) => {
                // A hung server or a silent network: drop the connection; the next call
                // connects afresh and the shipper resumes from the stream's last seq.
                self.reset();
                Err(SinkError::Unavailable(msg))
            }
            Err((_, msg)) => Err(SinkError::Unavailable(msg)),
        }
    }

    fn last_acked(&mut self, trail: &str) -> Result<Option<u64>, SinkError> {
        let Some(mut stream) = self.stream(trail, false)? else { return Ok(None) };
        let last = self.last_seq(&mut stream)?;
        Ok((last > 0).then_some(last))
    }

    fn read(&mut self, trail: &str, from_seq: u64, max: usize) -> Result<Vec<Record>, SinkError> {
        let Some(mut stream) = self.stream(trail, false)? else { return Ok(Vec::new()) };
        let last = self.last_seq(&mut stream)?;
        paged(from_seq, last, max, |seqs| self.get(&stream, seqs))
    }

    fn send_checkpoint(&mut self, trail: &str, checkpoint: &SignedCheckpoint) -> Result<(), SinkError> {
        let mut stream = self.checkpoint_stream(trail, true)?.expect("created");
        // Check against the last note, publish only if it is still the last; if another
        // note was appended meanwhile, check again.
        for _ in 0..5 {
            let last = self.last_seq(&mut stream)?;
            let held = if last == 0 {
                None
            } else {
                self.get_checkpoints(&stream, last..=last)?.pop().map(|(_, cp)| cp)
            };
            if checkpoint_is_old(held.as_ref(), checkpoint)? {
                return Ok(());
            }
            let c = checkpoint.checkpoint();
            let mut h = HeaderMap::new();
            let time = c.time().map_or(0, |t| t.timestamp_micros());
            h.insert("Nats-Msg-Id", format!("{trail}:{}:{time}", c.size()).as_str());
            h.insert("Nats-Expected-Last-Subject-Sequence", last.to_string().as_str());
            let payload = Bytes::copy_from_slice(checkpoint.note().as_bytes());
            if self.publish_one(checkpoint_subject(trail), h, payload)?.is_some() {
                return Ok(());
            }
        }
        Err(SinkError::Unavailable(format!(
            "the checkpoint stream {} kept moving while a checkpoint was offered",
            checkpoint_stream_name(trail)
        )))
    }

    fn read_checkpoints(
        &mut self,
        trail: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, SignedCheckpoint)>, SinkError> {
        let Some(mut stream) = self.checkpoint_stream(trail, false)? else { return Ok(Vec::new()) };
        let last = self.last_seq(&mut stream)?;
        paged(from, last, max, |seqs| self.get_checkpoints(&stream, seqs))
    }

    fn latest_checkpoint(&mut self, trail: &str) -> Result<Option<SignedCheckpoint>, SinkError> {
        let Some(mut stream) = self.checkpoint_stream(trail, false)? else { return Ok(None) };
        let last = self.last_seq(&mut stream)?;
        if last == 0 {
            return Ok(None);
        }
        Ok(self.get_checkpoints(&stream, last..=last)?.pop().map(|(_, cp)| cp))
    }
}
