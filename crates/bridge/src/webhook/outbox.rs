//! The `webhook_outbox` table (migrations/0002_geofences.sql): what is
//! owed to webhook endpoints, shared by every bridge. Each function is one
//! statement, so none holds a connection or a row lock across a POST.
//!
//! A row is *claimed* by moving its `next_attempt` one lease ahead (and
//! counting the attempt) in the statement that selects it with `FOR UPDATE
//! SKIP LOCKED`: the lease, not a held lock, keeps the other bridges off it
//! while it is being sent, and a bridge that dies mid-send leaves a row
//! that simply becomes due again when the lease runs out. All times are
//! PostgreSQL's `now()`, one clock for every bridge.

use std::time::Duration;

use tokio_postgres::GenericClient;

/// One alert owed to one endpoint: the row [`enqueue`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub device: String,
    /// The event's id: with `device` and `url`, the row's identity, so the
    /// same alert decided twice is owed once.
    pub event_id: String,
    pub url: String,
    pub secret: String,
    /// The exact text POSTed and signed.
    pub body: String,
}

impl Owed {
    /// The alert `event` of `device` owed to the endpoint `url`: the body
    /// is the event as `/ws` sends it (`fieldcast_core::live::event_json`),
    /// without the `cursor`, which only the gateway can know.
    pub fn event(
        device: &str,
        event: &fieldcast_core::Event,
        url: impl Into<String>,
        secret: impl Into<String>,
    ) -> Owed {
        Owed {
            device: device.to_owned(),
            event_id: event.id.clone(),
            url: url.into(),
            secret: secret.into(),
            body: fieldcast_core::live::event_json(device, event),
        }
    }
}

impl Owed {
    /// [`Owed::event`] to the endpoint a fence or rule names.
    pub fn for_webhook(
        device: &str,
        event: &fieldcast_core::Event,
        hook: &fieldcast_core::webhook::Webhook,
    ) -> Owed {
        Owed::event(device, event, hook.url(), hook.secret())
    }
}

/// Writes the rows of `owed` that are not owed already (same device, event
/// id and url) and returns how many were new. Meant for the transaction
/// that stores the alerts' events, so an alert stored is an alert owed;
/// call [`super::Wake::owed`] after it commits.
pub async fn enqueue(
    client: &impl GenericClient,
    owed: &[Owed],
) -> Result<u64, tokio_postgres::Error> {
    if owed.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&Owed) -> &str| owed.iter().map(f).collect::<Vec<&str>>();
    // One statement for the whole batch: unnest takes the columns as arrays.
    client
        .execute(
            "INSERT INTO webhook_outbox (device_id, event_id, url, secret, body)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (device_id, event_id, url) DO NOTHING",
            &[
                &col(|o| &o.device),
                &col(|o| &o.event_id),
                &col(|o| &o.url),
                &col(|o| &o.secret),
                &col(|o| &o.body),
            ],
        )
        .await
}

/// A claimed row, to be sent.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub device: String,
    pub event_id: String,
    pub url: String,
    pub secret: String,
    pub body: String,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

/// A row deleted unsent because it outlived the give-up age.
#[derive(Debug, Clone)]
pub struct GivenUp {
    pub device: String,
    pub event_id: String,
    pub url: String,
    pub attempts: u32,
    pub last_error: Option<String>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Deletes up to `n` due rows older than `give_up` and returns them. Only
/// due rows: one another bridge holds under lease is being sent and is left
/// to it (it is given up when next due).
pub async fn give_up(
    client: &impl GenericClient,
    give_up: Duration,
    n: usize,
) -> Result<Vec<GivenUp>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH old AS (
                 SELECT id FROM webhook_outbox
                  WHERE next_attempt <= now() AND created_at <= now() - make_interval(secs => $1)
                  ORDER BY next_attempt LIMIT $2
                  FOR UPDATE SKIP LOCKED)
             DELETE FROM webhook_outbox o USING old WHERE o.id = old.id
             RETURNING o.device_id, o.event_id, o.url, o.attempts, o.last_error",
            &[&secs(give_up), &limit(n)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| GivenUp {
            device: r.get(0),
            event_id: r.get(1),
            url: r.get(2),
            attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
            last_error: r.get(4),
        })
        .collect())
}

/// Claims up to `n` due rows, oldest due first, for `lease`: their
/// `next_attempt` moves `lease` ahead and their attempt is counted.
pub async fn claim(
    client: &impl GenericClient,
    n: usize,
    lease: Duration,
) -> Result<Vec<Claimed>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH due AS (
                 SELECT id FROM webhook_outbox
                  WHERE next_attempt <= now()
                  ORDER BY next_attempt LIMIT $1
                  FOR UPDATE SKIP LOCKED)
             UPDATE webhook_outbox o
                SET next_attempt = now() + make_interval(secs => $2), attempts = o.attempts + 1
               FROM due WHERE o.id = due.id
             RETURNING o.id, o.device_id, o.event_id, o.url, o.secret, o.body, o.attempts",
            &[&limit(n), &secs(lease)],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Claimed {
            id: r.get(0),
            device: r.get(1),
            event_id: r.get(2),
            url: r.get(3),
            secret: r.get(4),
            body: r.get(5),
            attempts: u32::try_from(r.get::<_, i32>(6)).unwrap_or(0),
        })
        .collect())
}

/// Deletes a row: it was answered with a 2xx, or it can never be sent
/// (its url is not an http(s) one).
pub async fn remove(client: &impl GenericClient, id: i64) -> Result<u64, tokio_postgres::Error> {
    client
        .execute("DELETE FROM webhook_outbox WHERE id = $1", &[&id])
        .await
}

/// The attempt failed: the row is due again after `delay`.
pub async fn retry_later(
    client: &impl GenericClient,
    id: i64,
    delay: Duration,
    error: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE webhook_outbox
                SET next_attempt = now() + make_interval(secs => $2), last_error = $3
              WHERE id = $1",
            &[&id, &secs(delay), &error],
        )
        .await
}

/// Rows owed in the whole table (every bridge's).
pub async fn pending(client: &impl GenericClient) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT count(*) FROM webhook_outbox", &[])
        .await?;
    Ok(row.get(0))
}
