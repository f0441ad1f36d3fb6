//! The configuration tables of `migrations/0002_geofences.sql`, as the
//! fence and rule API reads and writes them: `geofences.feature` and
//! `alert_rules.rule` hold the canonical JSON (with `id`, webhook secret
//! included: the bridge signs with it).
//!
//! Every write is one statement on its table inside one transaction, so
//! the table's statement trigger bumps `config_version` and sends NOTIFY
//! `fieldcast_config` exactly once per change, at commit. A write that
//! changes nothing (an unknown or deleted id) runs no statement on the
//! table at all: the row is locked and checked first, so bridges are not
//! woken for nothing.
//!
//! What leaves this module for a client is redacted in SQL (`#-`), so no
//! answer can carry a webhook secret: [`View`] says how much a token sees.

use deadpool_postgres::{Object, Transaction};
use serde_json::Value;
use tokio_postgres::error::SqlState;

use crate::store::history::HistoryLimits;

/// A configuration read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("postgresql pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgresql: {0}")]
    Query(#[from] tokio_postgres::Error),
}

impl ConfigError {
    /// The table is not there: no bridge has migrated this database yet.
    pub fn is_schema_missing(&self) -> bool {
        matches!(self, ConfigError::Query(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE))
    }

    /// The statement timeout cancelled the query.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConfigError::Query(e) if e.code() == Some(&SqlState::QUERY_CANCELED))
    }
}

/// One of the two configuration tables the API manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Geofences,
    Rules,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Geofences => "geofences",
            Table::Rules => "alert_rules",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Table::Geofences => "feature",
            Table::Rules => "rule",
        }
    }
}

/// How much of a stored document a reader sees.
#[derive(Debug, Clone)]
pub enum View {
    /// An admin token: every live row, the webhook's URL but not its
    /// secret.
    Admin,
    /// Any other token (fences only): no webhook at all (a webhook URL may
    /// itself be a credential, as chat services' incoming hooks are), and
    /// only fences it may see: those naming no group, and, with `devices`
    /// = `Some(patterns)` (SQL `LIKE`, from the token's globs), those with
    /// a group holding a device that matches one of them; `None` = a token
    /// without device restriction, which sees every fence.
    Reader { devices: Option<Vec<String>> },
}

impl View {
    /// The SQL expression of what this view answers, as text.
    fn answer(&self, table: Table) -> &'static str {
        match (table, self) {
            (Table::Geofences, View::Admin) => "(feature #- '{properties,webhook,secret}')::text",
            (Table::Geofences, View::Reader { .. }) => "(feature #- '{properties,webhook}')::text",
            // Rules are for admins only; the handlers see to that. Should a
            // reader ever get here, it still gets no secret.
            (Table::Rules, _) => "(rule #- '{webhook,secret}')::text",
        }
    }
}

/// Opens the transaction of one API request, its statements bounded by the
/// history statement timeout and its lock waits by [`LOCK_TIMEOUT_MS`].
pub async fn begin<'a>(
    client: &'a mut Object,
    limits: &HistoryLimits,
) -> Result<Transaction<'a>, ConfigError> {
    let txn = client.transaction().await?;
    // Integers only: nothing to quote. SET LOCAL ends with the transaction.
    txn.batch_execute(&format!(
        "SET LOCAL statement_timeout = {}; SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}",
        limits.statement_timeout.as_millis().max(1),
    ))
    .await?;
    Ok(txn)
}

/// Writers queue on the one `config_version` row (every trigger updates
/// it); a writer stuck behind a wedged one gives up after this and answers
/// 503 rather than hold its HTTP request for the statement timeout.
pub const LOCK_TIMEOUT_MS: u64 = 5_000;

/// Where a fence's `groups` are, in the row aliased `g`.
const FENCE_GROUPS: &str = "g.feature->'properties'->'groups'";

/// Every live row `view` may see, by id, as answer text.
pub async fn list(
    txn: &Transaction<'_>,
    table: Table,
    view: &View,
) -> Result<Vec<String>, ConfigError> {
    let (filter, patterns) = visibility(table, view);
    let sql = format!(
        "SELECT {} FROM {} g WHERE deleted_at IS NULL AND {filter} ORDER BY id",
        view.answer(table),
        table.name(),
    );
    let rows = txn.query(&sql, &[&patterns]).await?;
    rows.iter()
        .map(|r| r.try_get(0).map_err(ConfigError::from))
        .collect()
}

/// One live row `view` may see, as answer text; `None` when it does not
/// exist, is deleted or is out of the view.
pub async fn get(
    txn: &Transaction<'_>,
    table: Table,
    id: i64,
    view: &View,
) -> Result<Option<String>, ConfigError> {
    let (filter, patterns) = visibility(table, view);
    let sql = format!(
        "SELECT {} FROM {} g WHERE deleted_at IS NULL AND id = $2 AND {filter}",
        view.answer(table),
        table.name(),
    );
    let row = txn.query_opt(&sql, &[&patterns, &id]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// The SQL condition (on `$1`, the `LIKE` patterns or NULL) that keeps the
/// rows `view` may see.
fn visibility(table: Table, view: &View) -> (String, Option<Vec<String>>) {
    match (table, view) {
        (Table::Geofences, View::Reader { devices }) => (
            format!(
                "($1::text[] IS NULL \
                 OR {FENCE_GROUPS} IS NULL \
                 OR EXISTS (SELECT 1 FROM device_groups dg \
                             WHERE dg.group_name IN (SELECT jsonb_array_elements_text({FENCE_GROUPS})) \
                               AND dg.device_id LIKE ANY ($1::text[])))"
            ),
            devices.clone(),
        ),
        // Admins see every row, and rules are read by admins only. `$1`
        // still appears, so the statement has the parameter it is given.
        _ => ("($1::text[] IS NULL OR true)".to_owned(), None),
    }
}

/// The id the next row will have: taken first, so the stored document can
/// carry its own id and the row is written by one statement (one trigger
/// run, one config version). A rolled-back request leaves a gap in the
/// ids, which nothing minds.
pub async fn next_id(txn: &Transaction<'_>, table: Table) -> Result<i64, ConfigError> {
    let sql = format!(
        "SELECT nextval(pg_get_serial_sequence('{}', 'id'))",
        table.name()
    );
    Ok(txn.query_one(&sql, &[]).await?.try_get(0)?)
}

/// Stores a new row `id` (from [`next_id`]) holding `doc`; answers it as an
/// admin sees it.
pub async fn insert(
    txn: &Transaction<'_>,
    table: Table,
    id: i64,
    doc: &Value,
) -> Result<String, ConfigError> {
    let sql = format!(
        "INSERT INTO {} (id, {}) VALUES ($1, $2) RETURNING {}",
        table.name(),
        table.column(),
        View::Admin.answer(table),
    );
    Ok(txn.query_one(&sql, &[&id, doc]).await?.try_get(0)?)
}

/// Locks live row `id` for this transaction and returns its whole stored
/// document (secret included, for the handler only); `None` when it does
/// not exist or is deleted.
pub async fn lock(
    txn: &Transaction<'_>,
    table: Table,
    id: i64,
) -> Result<Option<Value>, ConfigError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE id = $1 AND deleted_at IS NULL FOR UPDATE",
        table.column(),
        table.name(),
    );
    let row = txn.query_opt(&sql, &[&id]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Replaces the document of row `id`, which the caller has [`lock`]ed;
/// answers it as an admin sees it.
pub async fn replace(
    txn: &Transaction<'_>,
    table: Table,
    id: i64,
    doc: &Value,
) -> Result<String, ConfigError> {
    let sql = format!(
        "UPDATE {} SET {} = $2, updated_at = now() WHERE id = $1 RETURNING {}",
        table.name(),
        table.column(),
        View::Admin.answer(table),
    );
    Ok(txn.query_one(&sql, &[&id, doc]).await?.try_get(0)?)
}

/// Marks row `id`, which the caller has [`lock`]ed, deleted. The row stays:
/// the exit a deleted fence causes still needs its name.
pub async fn soft_delete(txn: &Transaction<'_>, table: Table, id: i64) -> Result<(), ConfigError> {
    let sql = format!(
        "UPDATE {} SET deleted_at = now(), updated_at = now() WHERE id = $1",
        table.name(),
    );
    txn.execute(&sql, &[&id]).await?;
    Ok(())
}
