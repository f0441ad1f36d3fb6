//! `fieldcast-bridge rebuild-redis` (docs/redis-rebuild.md): a one-shot
//! rebuild of the partitioned Redis hot state (docs/redis-layout.md) from
//! PostgreSQL's history ([`postgres`]) or from the hashes of the layout
//! before partitions ([`old_keys`]).
//!
//! Every device goes through the bridge's own write path
//! ([`RedisSink::apply`]: `location.lua`, `status.lua`), so the result is
//! what a live bridge would have written, a re-run changes nothing, and a
//! hot state a running bridge has already moved further is never taken
//! back. Event logs are not rebuilt: they start a new life.
//!
//! Bounded memory: a source hands over `--batch` devices at a time.

pub mod old_keys;
pub mod postgres;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fred::interfaces::ClientLike;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use fieldcast_core::{Backoff, DeviceId, Location, Status};
use fieldcast_service::StoreArgs;

use crate::metrics::Metrics;
use crate::queue::Batch;
use crate::record::{LiveLocation, Reliable};
use crate::store::redis::RedisSink;

/// Devices written to Redis at once: enough to keep the round trips
/// overlapped, few enough that a batch's script calls do not crowd out a
/// live bridge sharing the Redis.
const CONCURRENCY: usize = 32;
/// Tries of one device's write before a Redis outage stops the run.
const ATTEMPTS: u32 = 6;
/// How often progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Bound on reaching Redis at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the hot state is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// Each device's newest location (`locations`) and status
    /// (`device_status`) in FIELDCAST_DATABASE_URL.
    Postgres,
    /// The pre-partition hashes `<prefix>dev:<id>` of the ids in
    /// `<prefix>devices`, in the same Redis under the same prefix.
    OldKeys,
}

/// `fieldcast-bridge rebuild-redis`: the store flags of the bridge, and
/// where to read from.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct RebuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Where the hot state comes from.
    #[arg(long, value_enum)]
    pub from: SourceKind,

    /// With --from old-keys: once every device was copied without a
    /// failure, delete the old layout's keys (each device's hash only after
    /// its state is confirmed in the new layout).
    #[arg(long)]
    pub delete_old: bool,

    /// Devices read and written per round.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
}

/// Flags clap accepts but the rebuild cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum RebuildArgsError {
    #[error("--delete-old only goes with --from old-keys")]
    DeleteOld,
    #[error(transparent)]
    Store(#[from] fieldcast_service::StoreArgsError),
}

impl RebuildArgs {
    pub fn validate(&self) -> Result<(), RebuildArgsError> {
        if self.delete_old && self.from != SourceKind::OldKeys {
            return Err(RebuildArgsError::DeleteOld);
        }
        self.store.validate()?;
        Ok(())
    }
}

/// One device's state as a source read it: what the bridge's scripts take.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceState {
    pub device: DeviceId,
    pub location: Option<Location>,
    pub status: Option<Status>,
}

/// One device of a source's batch: its state, or why it cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    State(DeviceState),
    Unusable { device: String, reason: String },
}

/// What a rebuild did, device by device.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Devices the source listed.
    pub devices: u64,
    /// Devices whose hot state moved forward (location, status or both).
    pub written: u64,
    /// Devices with nothing to write: Redis already held this state or a
    /// newer one (a re-run, or a live bridge got there first), or the
    /// source had neither a location nor a status for them.
    pub skipped: u64,
    /// Devices that could not be read or written (named in the log).
    pub failed: u64,
    /// With `--delete-old`: devices whose old hash was deleted.
    pub old_deleted: u64,
    /// With `--delete-old`: devices whose old keys were kept (a failure).
    pub old_kept: u64,
}

impl Report {
    /// Every device is in the new layout, and with `--delete-old` every old
    /// key is gone.
    pub fn complete(&self) -> bool {
        self.failed == 0 && self.old_kept == 0
    }

    /// Logs the counts so far, `what` saying how far the run is.
    fn log(&self, what: &str) {
        tracing::info!(
            devices = self.devices,
            written = self.written,
            skipped = self.skipped,
            failed = self.failed,
            "rebuild {what}"
        );
    }

    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Written => self.written += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Failed => self.failed += 1,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} devices: {} written, {} skipped, {} failed",
            self.devices, self.written, self.skipped, self.failed
        )
    }
}

/// A batch of devices from a source, `None` once it has no more.
pub(crate) trait Source {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Vec<Read>>>;
}

/// What became of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    Skipped,
    Failed,
}

/// The bridge's Redis writer, and the counts of the run so far.
struct Writer {
    sink: RedisSink,
    metrics: Metrics,
    report: Report,
    progress: Instant,
}

/// Runs the rebuild `args` describe. `Ok` once every device was tried; the
/// report says whether any failed. `Err` when the run stopped: a store
/// unreachable, a query refused, `shutdown` cancelled. Safe to run again
/// either way.
pub async fn run(args: &RebuildArgs, shutdown: &CancellationToken) -> anyhow::Result<Report> {
    args.validate()?;
    let client = connect_redis(&args.store.redis_url).await?;
    let keys = args.store.keys();
    tracing::info!(
        from = ?args.from,
        prefix = keys.prefix(),
        partitions = keys.partitions().count(),
        topology = ?keys.topology(),
        "rebuilding the Redis hot state"
    );
    let mut writer = Writer {
        sink: RedisSink::new(client.clone(), keys),
        metrics: Metrics::new(),
        report: Report::default(),
        progress: Instant::now(),
    };
    let result = async {
        match args.from {
            SourceKind::Postgres => {
                let mut source =
                    postgres::PgSource::open(&args.store.database_url, args.batch).await?;
                writer.drain(&mut source, shutdown).await
            }
            SourceKind::OldKeys => {
                old_keys::rebuild(&mut writer, client.clone(), args, shutdown).await
            }
        }
    }
    .await;
    let _ = client.quit().await;
    let report = writer.report;
    result.with_context(|| format!("rebuild stopped after {report}; re-running it is safe"))?;
    report.log("done");
    Ok(report)
}

async fn connect_redis(url: &str) -> anyhow::Result<fred::prelude::Client> {
    // Wait, not Fail: a one-shot run should ride out a reconnect or a
    // cluster failover rather than count every device of it as failed.
    let client = fieldcast_service::redis::builder(url, fieldcast_service::redis::WhileDown::Wait)
        .and_then(|b| b.build())
        .context("bad FIELDCAST_REDIS_URL")?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.init()).await {
        Ok(Ok(_task)) => Ok(client),
        Ok(Err(e)) => Err(e).with_context(|| format!("cannot connect to Redis at {url}")),
        Err(_) => {
            let _ = client.quit().await;
            anyhow::bail!("cannot connect to Redis at {url}: no answer in {CONNECT_TIMEOUT:?}")
        }
    }
}

impl Writer {
    /// Writes every batch of `source` until it ends.
    async fn drain(
        &mut self,
        source: &mut impl Source,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        while let Some(batch) = next_or_stop(source, shutdown).await? {
            let outcomes = self.write_batch(batch).await;
            let counted = tally(&mut self.report, outcomes);
            self.log_progress();
            counted?;
        }
        Ok(())
    }

    /// Writes one batch, [`CONCURRENCY`] devices at a time; each device
    /// with its outcome, `Err` for one Redis did not take for an outage.
    async fn write_batch(&self, batch: Vec<Read>) -> Vec<(String, anyhow::Result<Outcome>)> {
        let (sink, metrics) = (&self.sink, &self.metrics);
        futures::stream::iter(batch)
            .map(|read| async move {
                match read {
                    Read::State(state) => {
                        let outcome = write_device(sink, metrics, &state).await;
                        (state.device.as_str().to_owned(), outcome)
                    }
                    Read::Unusable { device, reason } => {
                        tracing::warn!(device, reason, "device not rebuilt: cannot read its state");
                        (device, Ok(Outcome::Failed))
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await
    }

    fn log_progress(&mut self) {
        if self.progress.elapsed() >= PROGRESS_EVERY {
            self.progress = Instant::now();
            self.report.log("progress");
        }
    }
}

/// Counts a batch's outcomes into `report`; the devices with theirs, or
/// the first outage (the run stops there: Redis is away).
fn tally(
    report: &mut Report,
    outcomes: Vec<(String, anyhow::Result<Outcome>)>,
) -> anyhow::Result<Vec<(String, Outcome)>> {
    let mut done = Vec::with_capacity(outcomes.len());
    let mut outage = None;
    for (device, outcome) in outcomes {
        report.devices += 1;
        match outcome {
            Ok(o) => {
                report.add(&o);
                done.push((device, o));
            }
            Err(e) => {
                report.failed += 1;
                outage.get_or_insert(e);
            }
        }
    }
    match outage {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// The source's next batch, unless `shutdown` came first.
async fn next_or_stop(
    source: &mut impl Source,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Vec<Read>>> {
    if shutdown.is_cancelled() {
        anyhow::bail!("interrupted");
    }
    tokio::select! {
        next = source.next_batch() => next,
        () = shutdown.cancelled() => anyhow::bail!("interrupted"),
    }
}

/// One device through [`RedisSink::apply`], as the live path writes it.
/// `Err` only for an outage that outlasted the retries.
async fn write_device(
    sink: &RedisSink,
    metrics: &Metrics,
    state: &DeviceState,
) -> anyhow::Result<Outcome> {
    let batch = device_batch(state);
    if batch.is_empty() {
        tracing::debug!(device = %state.device, "nothing to rebuild: no location, no status");
        return Ok(Outcome::Skipped);
    }
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut attempt = 1;
    loop {
        match sink.apply(&batch, metrics).await {
            Ok(applied) if applied.published > 0 => return Ok(Outcome::Written),
            Ok(_) => return Ok(Outcome::Skipped),
            Err(e) if e.is_permanent() => {
                tracing::warn!(device = %state.device, error = %e, "device not rebuilt: Redis refused its state");
                return Ok(Outcome::Failed);
            }
            Err(e) if attempt >= ATTEMPTS => {
                return Err(anyhow::Error::new(e).context(format!(
                    "Redis did not take device {} after {ATTEMPTS} tries",
                    state.device
                )))
            }
            Err(e) => {
                tracing::warn!(device = %state.device, error = %e, attempt, "redis write failed; retrying");
                attempt += 1;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The live path's batch for one device's state. Its receive time is 0:
/// the gateway leaves such envelopes out of its delivery-latency histogram,
/// and a state read back from storage was not just delivered.
fn device_batch(state: &DeviceState) -> Batch {
    Batch {
        locations: state
            .location
            .iter()
            .map(|loc| LiveLocation {
                device: state.device.clone(),
                loc: loc.clone(),
                rx: 0,
            })
            .collect(),
        reliable: state
            .status
            .iter()
            .map(|status| Reliable::Status {
                device: state.device.clone(),
                status: status.clone(),
                rx: 0,
                ack: None,
            })
            .collect(),
        deadletters: Vec::new(),
        derived: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RebuildArgs,
    }

    fn parse(argv: &[&str]) -> Result<RebuildArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_name_the_source() {
        let a = parse(&["--from", "postgres"]).unwrap();
        assert_eq!(
            (a.from, a.delete_old, a.batch),
            (SourceKind::Postgres, false, 1000)
        );
        assert!(a.validate().is_ok());
        let a = parse(&["--from", "old-keys", "--delete-old", "--batch", "7"]).unwrap();
        assert_eq!(
            (a.from, a.delete_old, a.batch),
            (SourceKind::OldKeys, true, 7)
        );
        assert!(a.validate().is_ok());
        assert!(parse(&[]).is_err(), "--from is required");
        assert!(parse(&["--from", "mysql"]).is_err());
        assert!(parse(&["--from", "postgres", "--batch", "0"]).is_err());
        let a = parse(&["--from", "postgres", "--delete-old"]).unwrap();
        assert!(matches!(a.validate(), Err(RebuildArgsError::DeleteOld)));
    }

    #[test]
    fn a_device_is_one_batch_of_the_live_path() {
        let device = DeviceId::parse("v1").unwrap();
        let loc = Location {
            ts: 5,
            lat: 1.0,
            lon: 2.0,
            alt: None,
            speed: Some(3.0),
            heading: None,
            accuracy: None,
        };
        let status = Status {
            ts: 6,
            device_ts: true,
            online: true,
            battery: None,
            signal: Some(-70.0),
        };
        let b = device_batch(&DeviceState {
            device: device.clone(),
            location: Some(loc.clone()),
            status: Some(status.clone()),
        });
        assert_eq!(b.locations.len(), 1);
        assert_eq!((b.locations[0].rx, &b.locations[0].loc), (0, &loc));
        assert!(matches!(
            &b.reliable[..],
            [Reliable::Status { status: s, rx: 0, ack: None, .. }] if *s == status
        ));
        assert!(device_batch(&DeviceState {
            device,
            location: None,
            status: None
        })
        .is_empty());
    }

    #[test]
    fn the_report_reads_as_one_line() {
        let r = Report {
            devices: 3,
            written: 1,
            skipped: 1,
            failed: 1,
            ..Report::default()
        };
        assert_eq!(r.to_string(), "3 devices: 1 written, 1 skipped, 1 failed");
        assert!(!r.complete());
        assert!(Report::default().complete());
    }
}
