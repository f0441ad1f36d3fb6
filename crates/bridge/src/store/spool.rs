//! The local durable spool: history the bridge has accepted but PostgreSQL
//! could not take yet, and (in `outbox/`, the same format) the Redis work
//! owed for stored messages while Redis is away.
//!
//! Events and status reports are acknowledged to the broker only once they
//! are in PostgreSQL *or* appended here and fsync'd; location batches land
//! here when PostgreSQL stays down past the in-memory bound. Segments are
//! JSON-lines files `seg-<epoch ms>-<seq>.jsonl`, sealed once they reach
//! [`SEGMENT_BYTES`] or [`SEGMENT_AGE`], so a long outage leaves many small
//! segments rather than one that must be read whole. Replay writes them
//! back idempotently (every history insert ignores rows it already has)
//! and deletes them; see `sink::history::replay_spool`.
//!
//! What can never wedge it:
//! - A torn last line (a crash or power loss mid-write, possibly inside a
//!   multi-byte character) belongs to a write whose fsync never returned,
//!   i.e. to records nobody acknowledged: it is skipped and counted, never a
//!   read error. So is any other line that does not decode.
//! - A failed append (disk full) is cut back to the last good offset and the
//!   segment is closed, so a fragment is never glued to the next record.
//! - Reading goes in chunks of a bounded number of records.
//! - A segment that fails every replay attempt is moved to `quarantine/`
//!   ([`Spool::quarantine`]) so the segments after it go on.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use fieldcast_core::{DeviceId, Event, Location, Severity, Status};

use crate::record::{EventRow, LocationRow, Reliable, StatusRow};

/// A segment this large is sealed and the next append starts another.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
/// A segment this old is sealed, so replay never waits on an open one for
/// long.
pub const SEGMENT_AGE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One spooled history row.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Record {
    #[serde(rename = "l")]
    Location {
        d: String,
        ts: i64,
        lat: f64,
        lon: f64,
        alt: Option<f64>,
        speed: Option<f64>,
        heading: Option<f64>,
        accuracy: Option<f64>,
        rx: i64,
    },
    #[serde(rename = "s")]
    Status {
        d: String,
        ts: i64,
        /// The device sent its `ts` (absent in older segments: they did).
        #[serde(default = "yes")]
        dt: bool,
        online: bool,
        battery: Option<f64>,
        signal: Option<f64>,
        rx: i64,
    },
    #[serde(rename = "e")]
    Event {
        d: String,
        id: String,
        ts: i64,
        kind: String,
        severity: String,
        /// The event's `data` as JSON text: serde cannot buffer a
        /// `RawValue` inside an internally tagged enum.
        data: Option<String>,
        rx: i64,
    },
}

fn yes() -> bool {
    true
}

impl From<&LocationRow> for Record {
    fn from(r: &LocationRow) -> Self {
        Record::Location {
            d: r.device.to_string(),
            ts: r.loc.ts,
            lat: r.loc.lat,
            lon: r.loc.lon,
            alt: r.loc.alt,
            speed: r.loc.speed,
            heading: r.loc.heading,
            accuracy: r.loc.accuracy,
            rx: r.received_at,
        }
    }
}

impl From<&StatusRow> for Record {
    fn from(r: &StatusRow) -> Self {
        Record::Status {
            d: r.device.to_string(),
            ts: r.status.ts,
            dt: r.status.device_ts,
            online: r.status.online,
            battery: r.status.battery,
            signal: r.status.signal,
            rx: r.received_at,
        }
    }
}

impl From<&EventRow> for Record {
    fn from(r: &EventRow) -> Self {
        Record::Event {
            d: r.device.to_string(),
            id: r.event.id.clone(),
            ts: r.event.ts,
            kind: r.event.kind.clone(),
            severity: r.event.severity.as_str().to_owned(),
            data: r.event.data.as_ref().map(|d| d.get().to_owned()),
            rx: r.received_at,
        }
    }
}

impl Record {
    /// The record of a reliable item's stored content; `None` for a bare
    /// acknowledgement.
    pub fn from_reliable(item: &Reliable) -> Option<Record> {
        match item {
            Reliable::Status {
                device, status, rx, ..
            } => Some(Record::from(&StatusRow {
                device: device.clone(),
                status: status.clone(),
                received_at: *rx,
            })),
            Reliable::Event {
                device, event, rx, ..
            } => Some(Record::from(&EventRow {
                device: device.clone(),
                event: event.clone(),
                received_at: *rx,
            })),
            Reliable::AckOnly(_) => None,
        }
    }

    /// The device id, or `None` when it does not parse (a damaged line).
    fn device(&self) -> Option<DeviceId> {
        let d = match self {
            Record::Location { d, .. } | Record::Status { d, .. } | Record::Event { d, .. } => d,
        };
        DeviceId::parse(d).ok()
    }

    /// The record as a reliable item with nothing to acknowledge (for the
    /// outbox); `None` for a location or a damaged id.
    pub fn into_reliable(self) -> Option<Reliable> {
        let device = self.device()?;
        match self.into_row(device)? {
            Row::Status(s) => Some(Reliable::Status {
                device: s.device,
                status: s.status,
                rx: s.received_at,
                ack: None,
            }),
            Row::Event(e) => Some(Reliable::Event {
                device: e.device,
                event: e.event,
                rx: e.received_at,
                ack: None,
            }),
            Row::Location(_) => None,
        }
    }

    fn into_row(self, device: DeviceId) -> Option<Row> {
        Some(match self {
            Record::Location {
                ts,
                lat,
                lon,
                alt,
                speed,
                heading,
                accuracy,
                rx,
                ..
            } => Row::Location(LocationRow {
                device,
                loc: Location {
                    ts,
                    lat,
                    lon,
                    alt,
                    speed,
                    heading,
                    accuracy,
                },
                received_at: rx,
            }),
            Record::Status {
                ts,
                dt,
                online,
                battery,
                signal,
                rx,
                ..
            } => Row::Status(StatusRow {
                device,
                status: Status {
                    ts,
                    device_ts: dt,
                    online,
                    battery,
                    signal,
                },
                received_at: rx,
            }),
            Record::Event {
                id,
                ts,
                kind,
                severity,
                data,
                rx,
                ..
            } => Row::Event(EventRow {
                device,
                event: Event {
                    id,
                    ts,
                    kind,
                    severity: Severity::parse(&severity).unwrap_or_default(),
                    // Text that is not JSON any more can only come from a
                    // damaged line; the event keeps its other fields.
                    data: data.and_then(|d| RawValue::from_string(d).ok()),
                },
                received_at: rx,
            }),
        })
    }
}

enum Row {
    Location(LocationRow),
    Status(StatusRow),
    Event(EventRow),
}

/// Spooled records sorted by table.
#[derive(Debug, Default)]
pub struct Rows {
    pub locations: Vec<LocationRow>,
    pub statuses: Vec<StatusRow>,
    pub events: Vec<EventRow>,
    /// Records dropped for an unparsable device id.
    pub skipped: u64,
}

impl Rows {
    pub fn from_records(records: Vec<Record>) -> Rows {
        let mut rows = Rows::default();
        for rec in records {
            match rec.device().and_then(|d| rec.into_row(d)) {
                Some(Row::Location(r)) => rows.locations.push(r),
                Some(Row::Status(r)) => rows.statuses.push(r),
                Some(Row::Event(r)) => rows.events.push(r),
                None => rows.skipped += 1,
            }
        }
        rows
    }

    pub fn len(&self) -> usize {
        self.locations.len() + self.statuses.len() + self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Up to `max` records of a segment and how many lines were skipped.
#[derive(Debug, Default)]
pub struct Chunk {
    pub records: Vec<Record>,
    /// Torn or undecodable lines.
    pub torn: u64,
}

/// Reads a sealed segment front to back in bounded chunks.
pub struct SegmentReader {
    path: PathBuf,
    reader: BufReader<File>,
    line: Vec<u8>,
}

impl SegmentReader {
    pub fn open(path: &Path) -> Result<Self, SpoolError> {
        let f = File::open(path).map_err(io_err(path))?;
        Ok(SegmentReader {
            path: path.to_owned(),
            reader: BufReader::new(f),
            line: Vec::new(),
        })
    }

    /// The next chunk of at most `max` records; `None` at the end.
    pub fn next_chunk(&mut self, max: usize) -> Result<Option<Chunk>, SpoolError> {
        let mut chunk = Chunk::default();
        let mut eof = false;
        while chunk.records.len() < max.max(1) {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(io_err(&self.path))?;
            if n == 0 {
                eof = true;
                break;
            }
            let Some(body) = self.line.strip_suffix(b"\n") else {
                // The last line, without its newline: a write that never
                // completed, so nothing in it was acknowledged.
                tracing::warn!(path = %self.path.display(), bytes = n, "skipping a torn spool tail");
                chunk.torn += 1;
                eof = true;
                break;
            };
            match serde_json::from_slice::<Record>(body) {
                Ok(r) => chunk.records.push(r),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "skipping an undecodable spool line");
                    chunk.torn += 1;
                }
            }
        }
        if eof && chunk.records.is_empty() && chunk.torn == 0 {
            return Ok(None);
        }
        Ok(Some(chunk))
    }

    /// [`Self::next_chunk`] off the async runtime (file reads block). On an
    /// error the reader is gone; replay starts the segment again later,
    /// which is safe because every write of it is idempotent.
    pub async fn next_chunk_async(
        mut self,
        max: usize,
    ) -> Result<(Self, Option<Chunk>), SpoolError> {
        tokio::task::spawn_blocking(move || {
            let chunk = self.next_chunk(max)?;
            Ok((self, chunk))
        })
        .await?
    }
}

struct Current {
    path: PathBuf,
    file: File,
    /// Bytes written and fsync'd: where a failed append is cut back to.
    len: u64,
    opened: Instant,
}

/// The spool directory. Cheap to clone; appends are serialised.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    current: Arc<Mutex<Option<Current>>>,
    seq: Arc<AtomicU64>,
    segment_bytes: u64,
    segment_age: Duration,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

fn is_segment(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        Self::with_segment_limits(dir, SEGMENT_BYTES, SEGMENT_AGE)
    }

    /// A spool whose segments are sealed at other limits (tests).
    pub fn with_segment_limits(
        dir: &Path,
        segment_bytes: u64,
        segment_age: Duration,
    ) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Spool {
            dir: dir.to_owned(),
            current: Arc::new(Mutex::new(None)),
            seq: Arc::new(AtomicU64::new(0)),
            segment_bytes,
            segment_age,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        // Poisoned only by a panic mid-append; the state is a file handle
        // and two integers, still usable.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends records and fsyncs them; when this returns `Ok`, they survive
    /// a crash of the bridge or the machine.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), SpoolError> {
        if records.is_empty() {
            return Ok(());
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.append_blocking(&records)).await?
    }

    fn append_blocking(&self, records: &[Record]) -> Result<(), SpoolError> {
        let mut buf = Vec::with_capacity(records.len() * 160);
        for r in records {
            // Records are plain data; serialising them into a Vec cannot fail.
            if serde_json::to_writer(&mut buf, r).is_ok() {
                buf.push(b'\n');
            }
        }
        let mut cur = self.lock();
        if cur
            .as_ref()
            .is_some_and(|c| c.len >= self.segment_bytes || c.opened.elapsed() >= self.segment_age)
        {
            *cur = None;
        }
        if cur.is_none() {
            let path = self.dir.join(format!(
                "seg-{:013}-{:06}.jsonl",
                fieldcast_core::time::now_ms(),
                self.seq.fetch_add(1, Ordering::Relaxed) % 1_000_000
            ));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            // The new directory entry must be durable too.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            *cur = Some(Current {
                path,
                file,
                len: 0,
                opened: Instant::now(),
            });
        }
        let Some(c) = cur.as_mut() else {
            return Ok(());
        };
        let written = c.file.write_all(&buf).and_then(|()| c.file.sync_data());
        match written {
            Ok(()) => {
                c.len += buf.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Cut back to the last whole record; if even that fails, the
                // fragment is this segment's torn tail and the next append
                // starts a new segment, so nothing is ever glued to it.
                if let Err(e) = c.file.set_len(c.len).and_then(|()| c.file.sync_data()) {
                    tracing::warn!(path = %c.path.display(), error = %e, "cannot cut a failed spool append back");
                }
                let path = c.path.clone();
                *cur = None;
                Err(SpoolError::Io { path, source })
            }
        }
    }

    /// Closes the segment being appended to, so every existing segment can
    /// be replayed, and lists them oldest first.
    /// The list is taken under the append lock, so no segment in it is
    /// written to again: replaying and removing one loses nothing.
    pub fn seal(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut cur = self.lock();
        cur.take();
        self.segments()
    }

    /// The segments that are no longer appended to, oldest first.
    pub fn sealed(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let cur = self.lock();
        let open = cur.as_ref().map(|c| c.path.clone());
        let mut segs = self.segments()?;
        segs.retain(|p| Some(p) != open.as_ref());
        Ok(segs)
    }

    /// Every segment, oldest first.
    fn segments(&self) -> Result<Vec<PathBuf>, SpoolError> {
        let mut segs: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_segment(p))
            .collect();
        segs.sort();
        Ok(segs)
    }

    /// Bytes waiting in the spool's segments.
    pub fn bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| is_segment(&e.path()))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Reads a whole sealed segment (tests and small segments; replay uses
    /// [`SegmentReader`]).
    pub fn read(path: &Path) -> Result<(Rows, u64), SpoolError> {
        let mut r = SegmentReader::open(path)?;
        let mut records = Vec::new();
        let mut torn = 0;
        while let Some(c) = r.next_chunk(10_000)? {
            records.extend(c.records);
            torn += c.torn;
        }
        Ok((Rows::from_records(records), torn))
    }

    pub fn remove(path: &Path) -> Result<(), SpoolError> {
        fs::remove_file(path).map_err(io_err(path))
    }

    /// Moves a segment that cannot be replayed out of the way, into
    /// `quarantine/` beside the segments; returns its new path.
    pub fn quarantine(&self, path: &Path) -> Result<PathBuf, SpoolError> {
        let dir = self.dir.join("quarantine");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let name = path.file_name().map(PathBuf::from).unwrap_or_default();
        let to = dir.join(name);
        fs::rename(path, &to).map_err(io_err(path))?;
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc_row(ts: i64) -> LocationRow {
        LocationRow {
            device: DeviceId::parse("d1").unwrap(),
            loc: Location {
                ts,
                lat: 51.50735090123456,
                lon: -0.1,
                alt: None,
                speed: Some(3.0),
                heading: None,
                accuracy: None,
            },
            received_at: ts + 1,
        }
    }

    fn event_row(id: &str, data: &str) -> EventRow {
        EventRow {
            device: DeviceId::parse("d1").unwrap(),
            event: Event {
                id: id.into(),
                ts: 7,
                kind: "panic".into(),
                severity: Severity::Critical,
                data: Some(RawValue::from_string(data.into()).unwrap()),
            },
            received_at: 8,
        }
    }

    #[tokio::test]
    async fn appended_records_survive_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let row = loc_row(5);
        let event = event_row("e1", r#"{"a":[1,{"b":0.5}]}"#);
        spool
            .append(vec![Record::from(&row), Record::from(&event)])
            .await
            .unwrap();
        let segs = spool.seal().unwrap();
        assert_eq!(segs.len(), 1);
        // Simulate a crash in the middle of a later write.
        let mut f = OpenOptions::new().append(true).open(&segs[0]).unwrap();
        f.write_all(b"{\"t\":\"l\",\"d\":\"x").unwrap();
        let (rows, torn) = Spool::read(&segs[0]).unwrap();
        assert_eq!(rows.locations, vec![row]);
        assert_eq!(rows.events, vec![event], "event data survives the spool");
        assert_eq!(torn, 1);
        assert!(spool.bytes() > 0);
        Spool::remove(&segs[0]).unwrap();
        assert!(spool.seal().unwrap().is_empty());
    }

    /// Pins: a tail cut inside a multi-byte character is a torn record, not
    /// a read error, and a damaged line in the middle costs only itself.
    #[tokio::test]
    async fn a_torn_multibyte_tail_and_a_damaged_line_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool
            .append(vec![Record::from(&event_row("e1", r#"{"w":"für"}"#))])
            .await
            .unwrap();
        let seg = spool.seal().unwrap().remove(0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"t\":\"x\"} \xff\n").unwrap();
        let mut whole = Vec::new();
        serde_json::to_writer(
            &mut whole,
            &Record::from(&event_row("e2", r#"{"w":"ünï"}"#)),
        )
        .unwrap();
        whole.push(b'\n');
        f.write_all(&whole).unwrap();
        let cut = whole.iter().position(|&b| b == 0xc3).unwrap() + 1;
        f.write_all(&whole[..cut]).unwrap();
        drop(f);
        let (rows, torn) = Spool::read(&seg).unwrap();
        let ids: Vec<_> = rows.events.iter().map(|e| e.event.id.as_str()).collect();
        assert_eq!(ids, ["e1", "e2"]);
        assert_eq!(torn, 2);
    }

    #[tokio::test]
    async fn segments_are_sealed_by_size_and_read_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let spool =
            Spool::with_segment_limits(dir.path(), 1024, Duration::from_secs(3600)).unwrap();
        for ts in 0..100 {
            spool
                .append(vec![Record::from(&loc_row(ts))])
                .await
                .unwrap();
        }
        let sealed = spool.sealed().unwrap();
        assert!(sealed.len() > 5, "{} segments", sealed.len());
        let all = spool.seal().unwrap();
        assert_eq!(all.len(), sealed.len() + 1, "the open one joins at seal");
        let mut seen = Vec::new();
        for seg in &all {
            let mut r = SegmentReader::open(seg).unwrap();
            while let Some(c) = r.next_chunk(3).unwrap() {
                assert!(c.records.len() <= 3);
                seen.extend(
                    Rows::from_records(c.records)
                        .locations
                        .into_iter()
                        .map(|l| l.loc.ts),
                );
            }
        }
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert!(sealed.len() > 1 && fs::metadata(&sealed[0]).unwrap().len() < 1024 + 200);
    }

    #[tokio::test]
    async fn a_quarantined_segment_leaves_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        spool.append(vec![Record::from(&loc_row(1))]).await.unwrap();
        let seg = spool.seal().unwrap().remove(0);
        let to = spool.quarantine(&seg).unwrap();
        assert!(to.exists() && !seg.exists());
        assert!(spool.seal().unwrap().is_empty());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn an_old_status_record_without_dt_had_a_device_ts() {
        let r: Record = serde_json::from_str(
            r#"{"t":"s","d":"d1","ts":5,"online":true,"battery":null,"signal":null,"rx":6}"#,
        )
        .unwrap();
        let Some(Reliable::Status { status, .. }) = r.into_reliable() else {
            panic!("not a status")
        };
        assert!(status.device_ts);
    }
}
