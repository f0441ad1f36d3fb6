//! The local durable spool: history the bridge has accepted but PostgreSQL
//! could not take yet.
//!
//! Events and status reports are acknowledged to the broker only once they
//! are in PostgreSQL *or* appended here and fsync'd; location batches land
//! here when PostgreSQL stays down past the in-memory bound. Segments are
//! JSON-lines files `seg-<epoch ms>-<seq>.jsonl` in the spool directory;
//! the replayer writes sealed segments to PostgreSQL (idempotently: every
//! history insert ignores rows it already has) and deletes them. A torn
//! last line can only belong to a write whose fsync never returned, i.e. to
//! records nobody acknowledged, so it is skipped.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use fieldcast_core::{DeviceId, Event, Location, Severity, Status};

use crate::queue::LocationRow;
use crate::sink::postgres::{EventRow, StatusRow};

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

/// The rows of one segment, sorted by table.
#[derive(Debug, Default)]
pub struct Rows {
    pub locations: Vec<LocationRow>,
    pub statuses: Vec<StatusRow>,
    pub events: Vec<EventRow>,
}

impl Rows {
    fn push(&mut self, rec: Record) {
        match rec {
            Record::Location {
                d,
                ts,
                lat,
                lon,
                alt,
                speed,
                heading,
                accuracy,
                rx,
            } => {
                if let Ok(device) = DeviceId::parse(&d) {
                    self.locations.push(LocationRow {
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
                    });
                }
            }
            Record::Status {
                d,
                ts,
                online,
                battery,
                signal,
                rx,
            } => {
                if let Ok(device) = DeviceId::parse(&d) {
                    self.statuses.push(StatusRow {
                        device,
                        status: Status {
                            ts,
                            online,
                            battery,
                            signal,
                        },
                        received_at: rx,
                    });
                }
            }
            Record::Event {
                d,
                id,
                ts,
                kind,
                severity,
                data,
                rx,
            } => {
                if let Ok(device) = DeviceId::parse(&d) {
                    self.events.push(EventRow {
                        device,
                        event: Event {
                            id,
                            ts,
                            kind,
                            severity: Severity::parse(&severity).unwrap_or_default(),
                            data: data.and_then(|d| RawValue::from_string(d).ok()),
                        },
                        received_at: rx,
                    });
                }
            }
        }
    }
}

struct Current {
    path: PathBuf,
    file: File,
}

/// The spool directory. Cheap to clone; appends are serialised.
#[derive(Clone)]
pub struct Spool {
    dir: PathBuf,
    current: Arc<Mutex<Option<Current>>>,
    seq: Arc<AtomicU64>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Spool {
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(Spool {
            dir: dir.to_owned(),
            current: Arc::new(Mutex::new(None)),
            seq: Arc::new(AtomicU64::new(0)),
        })
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
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if cur.is_none() {
            let path = self.dir.join(format!(
                "seg-{:013}-{:06}.jsonl",
                fieldcast_core::time::now_ms(),
                self.seq.fetch_add(1, Ordering::Relaxed)
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
            *cur = Some(Current { path, file });
        }
        if let Some(c) = cur.as_mut() {
            c.file.write_all(&buf).map_err(io_err(&c.path))?;
            c.file.sync_data().map_err(io_err(&c.path))?;
        }
        Ok(())
    }

    /// Closes the segment being appended to, so every existing segment can
    /// be replayed, and lists them oldest first.
    pub fn seal(&self) -> Result<Vec<PathBuf>, SpoolError> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let mut segs: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
            })
            .collect();
        segs.sort();
        Ok(segs)
    }

    /// Bytes waiting in the spool.
    pub fn bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Reads a sealed segment.
    pub fn read(path: &Path) -> Result<Rows, SpoolError> {
        let f = File::open(path).map_err(io_err(path))?;
        let mut rows = Rows::default();
        for line in BufReader::new(f).lines() {
            let line = line.map_err(io_err(path))?;
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a torn spool line")
                }
            }
        }
        Ok(rows)
    }

    pub fn remove(path: &Path) -> Result<(), SpoolError> {
        fs::remove_file(path).map_err(io_err(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appended_records_survive_and_torn_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let row = LocationRow {
            device: DeviceId::parse("d1").unwrap(),
            loc: Location {
                ts: 5,
                lat: 51.50735090123456,
                lon: -0.1,
                alt: None,
                speed: Some(3.0),
                heading: None,
                accuracy: None,
            },
            received_at: 6,
        };
        let event = EventRow {
            device: DeviceId::parse("d1").unwrap(),
            event: Event {
                id: "e1".into(),
                ts: 7,
                kind: "panic".into(),
                severity: Severity::Critical,
                data: Some(RawValue::from_string(r#"{"a":[1,{"b":0.5}]}"#.into()).unwrap()),
            },
            received_at: 8,
        };
        spool
            .append(vec![Record::from(&row), Record::from(&event)])
            .await
            .unwrap();
        let segs = spool.seal().unwrap();
        assert_eq!(segs.len(), 1);
        // Simulate a crash in the middle of a later write.
        let mut f = OpenOptions::new().append(true).open(&segs[0]).unwrap();
        f.write_all(b"{\"t\":\"l\",\"d\":\"x").unwrap();
        let rows = Spool::read(&segs[0]).unwrap();
        assert_eq!(rows.locations, vec![row]);
        assert_eq!(rows.events, vec![event], "event data survives the spool");
        assert!(spool.bytes() > 0);
        Spool::remove(&segs[0]).unwrap();
        assert!(spool.seal().unwrap().is_empty());
    }
}
