//! The sender: one loop per bridge that claims due rows of the outbox
//! ([`super::outbox`]), POSTs each signed body, and settles the row —
//! deleted on a 2xx, pushed back with backoff and jitter otherwise, deleted
//! unsent once older than the give-up age.
//!
//! At most [`Settings::concurrency`] POSTs are in flight at once, each a
//! task of one `JoinSet`; a row is claimed only for a free slot, so nothing
//! waits in memory and nothing needs a channel. The loop wakes when this
//! bridge owes something new ([`Wake`]), when a POST ends (a slot is free),
//! and otherwise every [`Settings::poll`], which is how rows owed by other
//! bridges, or pushed back, are found.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::outbox::{self, Claimed};
use super::sign;
use crate::metrics::Metrics;
use crate::store::postgres::{Pg, PgError};
use fieldcast_core::{Backoff, LogLimiter};

/// How the sender retries and gives up; [`Settings::new`] has the
/// defaults beside the operator's choices.
#[derive(Debug, Clone)]
pub struct Settings {
    /// One POST, connecting included, fails after this.
    pub timeout: Duration,
    /// A row still owed this long after it was written is deleted unsent.
    pub give_up: Duration,
    /// Backoff between attempts of one row: `retry_min`, doubling up to
    /// `retry_max`, each delay drawn from its upper half (the repo's one
    /// [`Backoff`], equal jitter).
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// Look for due rows this often when nothing wakes the loop sooner.
    pub poll: Duration,
    /// POSTs in flight at once, in this bridge.
    pub concurrency: usize,
}

impl Settings {
    /// The given timing, polling every second with up to 8 POSTs at once.
    pub fn new(
        timeout: Duration,
        give_up: Duration,
        retry_min: Duration,
        retry_max: Duration,
    ) -> Settings {
        Settings {
            timeout,
            give_up,
            retry_min,
            retry_max,
            poll: Duration::from_secs(1),
            concurrency: 8,
        }
    }

    /// How long a claim keeps other bridges off a row: the POST's timeout
    /// plus time to settle it (a few tries at the database). A sender that
    /// dies or stalls past it lets the row be sent again, by any bridge.
    fn lease(&self) -> Duration {
        self.timeout + SETTLE_ALLOWANCE
    }
}

/// The part of a claim's lease left for settling the row after its POST.
const SETTLE_ALLOWANCE: Duration = Duration::from_secs(30);

/// Tries at writing a row's outcome before leaving it to its lease.
const SETTLE_TRIES: u32 = 3;

/// In-flight POSTs get this long to finish and settle at shutdown; the rest
/// are dropped and their rows sent again after their lease.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often the pending gauge is refreshed (a count of the whole table).
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// Give-ups deleted per statement (the rest in the next turn).
const GIVE_UP_BATCH: usize = 100;

/// `last_error` keeps this many characters.
const ERROR_CHARS: usize = 500;

/// Tells this bridge's sender that rows were just committed to the outbox,
/// so they go out now rather than at the next poll. Cheap to clone; a wake
/// with no sender waiting is kept for its next wait (`Notify::notify_one`).
#[derive(Debug, Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    /// Call after the transaction that wrote rows with
    /// [`super::enqueue`] committed (not before: the sender must see them).
    pub fn owed(&self) {
        self.0.notify_one();
    }
}

/// Why a sender could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// The row's url can never be POSTed to: about the data, not an outage,
    /// so it is given up at once instead of retried for a day.
    #[error("not an http(s) url: {0}")]
    BadUrl(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Http(String),
}

/// The webhook sender of one bridge (see the module doc). Clone it to hand
/// it to the task that runs it; clones share everything.
#[derive(Clone)]
pub struct Sender {
    inner: Arc<Inner>,
}

struct Inner {
    pg: Arc<Pg>,
    http: reqwest::Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Notified by [`Wake::owed`] (any number of holders); waited on by
    /// [`Sender::run`] alone.
    wake: Arc<Notify>,
    /// Give-ups and lost settles, from any attempt task.
    log: Mutex<LogLimiter>,
}

impl Sender {
    pub fn new(
        pg: Arc<Pg>,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Sender, SenderError> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A redirect would turn the POST into a GET on 301/302 and sign
            // for a host the operator did not name: a 3xx is a failure, to
            // be fixed in the rule or fence.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fieldcast-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SenderError::Client)?;
        Ok(Sender {
            inner: Arc::new(Inner {
                pg,
                http,
                settings,
                metrics,
                wake: Arc::new(Notify::new()),
                log: Mutex::new(LogLimiter::new(5, Duration::from_secs(60))),
            }),
        })
    }

    /// The handle that wakes this sender when rows are owed.
    pub fn wake(&self) -> Wake {
        Wake(self.inner.wake.clone())
    }

    /// Sends until `shutdown` is cancelled, then gives the POSTs in flight
    /// [`SHUTDOWN_GRACE`] and drops the rest (their rows stay owed).
    pub async fn run(self, shutdown: CancellationToken) {
        let s = &self.inner.settings;
        let slots = s.concurrency.max(1);
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // PostgreSQL down: claims back off from 0.5 s to 30 s.
        let mut pg_backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut pg_log = LogLimiter::new(3, Duration::from_secs(60));
        // When to claim next: now while rows keep coming, a poll later once
        // a claim finds fewer due rows than free slots, a backoff later
        // after a failed one.
        let mut claim_at = Instant::now();
        let mut count_at = Instant::now();
        loop {
            while in_flight.try_join_next().is_some() {}
            if Instant::now() >= count_at {
                count_at = Instant::now() + COUNT_EVERY;
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = self.count_pending() => {}
                }
            }
            let free = slots.saturating_sub(in_flight.len());
            if free > 0 && Instant::now() >= claim_at {
                // Dropped at shutdown, a claim may already have leased its
                // rows: they are sent after the lease, by any bridge.
                let taken = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = self.take(free) => r,
                };
                match taken {
                    Ok(rows) => {
                        pg_backoff.reset();
                        if rows.len() < free {
                            claim_at = Instant::now() + s.poll;
                        }
                        for row in rows {
                            in_flight.spawn(self.inner.clone().attempt(row));
                        }
                    }
                    Err(e) => {
                        let delay = pg_backoff.next_delay();
                        claim_at = Instant::now() + delay;
                        if schema_pending(&e) {
                            // The bridge's schema upkeep, started beside
                            // this loop, has not made the table yet.
                            tracing::debug!(retry_in = ?delay, "webhook outbox not created yet");
                        } else if let Some(suppressed) = pg_log.allow() {
                            tracing::warn!(error = %pg_text(&e), retry_in = ?delay, suppressed, "webhook outbox unreachable");
                        }
                    }
                }
            }
            // With every slot busy only a finished POST (or the count) is
            // worth waking for.
            let until = if in_flight.len() < slots {
                claim_at.min(count_at)
            } else {
                count_at
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                // This bridge just committed rows: they are due now (and
                // PostgreSQL evidently answers).
                () = self.inner.wake.notified() => claim_at = Instant::now(),
                // A slot is free: if the last claim filled every slot, more
                // rows may be due at once.
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
        let grace = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_GRACE, grace).await.is_err() {
            tracing::info!(
                in_flight = in_flight.len(),
                "webhook POSTs cut short by shutdown; their rows are sent again after their lease"
            );
            in_flight.shutdown().await;
        }
    }

    /// Gives up what is too old, then claims up to `n` due rows.
    async fn take(&self, n: usize) -> Result<Vec<Claimed>, PgError> {
        let i = &self.inner;
        let client = i.pg.pool().get().await?;
        let old = outbox::give_up(&**client, i.settings.give_up, GIVE_UP_BATCH).await?;
        for row in &old {
            i.metrics.webhook_failed.inc();
            i.warn_limited(|suppressed| {
                tracing::warn!(
                    device = %row.device,
                    event = %row.event_id,
                    url = %row.url,
                    attempts = row.attempts,
                    last_error = row.last_error.as_deref().unwrap_or(""),
                    suppressed,
                    "webhook given up: older than FIELDCAST_WEBHOOK_GIVE_UP"
                );
            });
        }
        Ok(outbox::claim(&**client, n, i.settings.lease()).await?)
    }

    async fn count_pending(&self) {
        let n = async {
            let client = self.inner.pg.pool().get().await?;
            Ok::<_, PgError>(outbox::pending(&**client).await?)
        };
        // While PostgreSQL is down the gauge keeps its last value; the
        // claim's own error is the one logged.
        if let Ok(n) = n.await {
            self.inner.metrics.webhook_pending.set(n);
        }
    }
}

/// `e` with the server's message (`PgError`'s own text says "db error").
fn pg_text(e: &PgError) -> String {
    match e {
        PgError::Db(db) => crate::store::postgres::describe(db),
        other => other.to_string(),
    }
}

/// Whether `e` says the outbox table does not exist (yet).
fn schema_pending(e: &PgError) -> bool {
    matches!(e, PgError::Db(db) if db.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE))
}

/// What to write back for an attempt.
enum Outcome {
    /// A 2xx, or a row that can never be sent: delete it.
    Remove,
    /// Due again after the delay, with the error.
    RetryLater(Duration, String),
}

impl Inner {
    /// One attempt of one claimed row: POST, then settle.
    async fn attempt(self: Arc<Self>, row: Claimed) {
        let outcome = match self.post(&row).await {
            Ok(()) => {
                self.metrics.webhook_sent.inc();
                Outcome::Remove
            }
            Err(AttemptError::BadUrl(url)) => {
                self.metrics.webhook_failed.inc();
                self.warn_limited(|suppressed| {
                    tracing::warn!(device = %row.device, event = %row.event_id, url = %url, suppressed,
                        "webhook given up: its url is not an http(s) url");
                });
                Outcome::Remove
            }
            Err(e) => {
                self.metrics.webhook_retried.inc();
                let b = Backoff::new(self.settings.retry_min, self.settings.retry_max);
                let delay = b.delay_after(row.attempts.saturating_sub(1));
                tracing::debug!(device = %row.device, event = %row.event_id, url = %row.url,
                    attempts = row.attempts, error = %e, retry_in = ?delay, "webhook attempt failed");
                let mut error = e.to_string();
                if let Some((at, _)) = error.char_indices().nth(ERROR_CHARS) {
                    error.truncate(at);
                }
                Outcome::RetryLater(delay, error)
            }
        };
        self.settle(&row, &outcome).await;
    }

    async fn post(&self, row: &Claimed) -> Result<(), AttemptError> {
        let url = reqwest::Url::parse(&row.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| AttemptError::BadUrl(row.url.clone()))?;
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                sign::HEADER,
                sign::signature(row.secret.as_bytes(), row.body.as_bytes()),
            )
            .body(row.body.clone())
            .send()
            .await
            .map_err(|e| AttemptError::Http(causes(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(AttemptError::Status(status.as_u16()))
        }
    }

    /// Writes the outcome, a few times with backoff; if it still fails the
    /// row's lease runs out and it is sent again (at least once).
    async fn settle(&self, row: &Claimed, outcome: &Outcome) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
        for attempt in 1..=SETTLE_TRIES {
            let written = async {
                let client = self.pg.pool().get().await?;
                match outcome {
                    Outcome::Remove => outbox::remove(&**client, row.id).await?,
                    Outcome::RetryLater(delay, error) => {
                        outbox::retry_later(&**client, row.id, *delay, error).await?
                    }
                };
                Ok::<_, PgError>(())
            };
            match written.await {
                Ok(()) => return,
                Err(e) if attempt == SETTLE_TRIES => {
                    self.warn_limited(|suppressed| {
                        tracing::warn!(device = %row.device, event = %row.event_id, error = %pg_text(&e), suppressed,
                            "cannot record a webhook attempt; the row is sent again after its lease");
                    });
                }
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }

    fn warn_limited(&self, log: impl FnOnce(u32)) {
        // A poisoned lock only means another attempt panicked mid-log; the
        // limiter's state is still a count.
        let allowed = self
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allow();
        if let Some(suppressed) = allowed {
            log(suppressed);
        }
    }
}

/// An error and its causes, `a: b: c` (reqwest's own text stops at "error
/// sending request").
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}
