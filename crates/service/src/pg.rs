//! Reads of the history tables that both services make
//! (migrations/0001_history.sql).

use chrono::{DateTime, Utc};
use fieldcast_core::Location;
use tokio_postgres::Row;

/// The location in `row`'s columns from `first` on, in the order of the
/// `locations` table: `ts, lat, lon, alt, speed, heading, accuracy`
/// (`ts` not null).
pub fn location_at(row: &Row, first: usize) -> Result<Location, tokio_postgres::Error> {
    Ok(Location {
        ts: row.try_get::<_, DateTime<Utc>>(first)?.timestamp_millis(),
        lat: row.try_get(first + 1)?,
        lon: row.try_get(first + 2)?,
        alt: row.try_get(first + 3)?,
        speed: row.try_get(first + 4)?,
        heading: row.try_get(first + 5)?,
        accuracy: row.try_get(first + 6)?,
    })
}

/// The channel migration 0002's trigger notifies when fences, rules or
/// device groups change (and `config_version` moves).
pub const CONFIG_CHANNEL: &str = "fieldcast_config";

/// How often [`ConfigListener`] wakes to compare `config_version` without
/// a notification (one lost with a connection, or sent before LISTEN).
const CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(30);

/// Notifications arriving within this of each other wake once: an import
/// of many fences is many statements.
const CONFIG_SETTLE: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a [`ConfigListener`] woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigWake {
    /// A change was notified: reload.
    Notified,
    /// The poll interval: reload if [`ConfigListener::version`] moved.
    Poll,
    /// The connection ended.
    Closed,
}

/// A connection that LISTENs on [`CONFIG_CHANNEL`], for what follows
/// `config_version`: the bridge's fences and rules, the gateway's device
/// groups. Its own task drives the connection (a query awaited on
/// `client` needs it polled) and turns notifications into one pending
/// wake-up, where one is as good as many; dropping it ends that task.
pub struct ConfigListener {
    pub client: tokio_postgres::Client,
    notified: tokio::sync::mpsc::Receiver<()>,
    driver: tokio::task::JoinHandle<()>,
    poll: tokio::time::Interval,
}

impl ConfigListener {
    pub async fn connect(config: &tokio_postgres::Config) -> Result<Self, tokio_postgres::Error> {
        use futures::StreamExt;
        let (client, mut conn) = config.connect(tokio_postgres::NoTls).await?;
        let (tx, notified) = tokio::sync::mpsc::channel::<()>(1);
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            // An error ends the connection; the client's next query, or
            // the closed channel, reports it.
            while let Some(Ok(m)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = m {
                    let _ = tx.try_send(());
                }
            }
        });
        let listener = Self {
            client,
            notified,
            driver,
            // The first tick one period on: the caller loads right after
            // connecting.
            poll: tokio::time::interval_at(tokio::time::Instant::now() + CONFIG_POLL, CONFIG_POLL),
        };
        listener
            .client
            .batch_execute(&format!("LISTEN {CONFIG_CHANNEL}"))
            .await?;
        Ok(listener)
    }

    /// Waits for the next reason to look at the configuration again.
    pub async fn wait(&mut self) -> ConfigWake {
        tokio::select! {
            n = self.notified.recv() => match n {
                None => ConfigWake::Closed,
                Some(()) => {
                    tokio::time::sleep(CONFIG_SETTLE).await;
                    while self.notified.try_recv().is_ok() {}
                    ConfigWake::Notified
                }
            },
            _ = self.poll.tick() => ConfigWake::Poll,
        }
    }

    /// `config_version` now.
    pub async fn version(&self) -> Result<i64, tokio_postgres::Error> {
        self.client
            .query_one("SELECT version FROM config_version", &[])
            .await?
            .try_get(0)
    }
}

impl Drop for ConfigListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
