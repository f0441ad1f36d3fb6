//! A fresh database per test on the shared PostgreSQL server, dropped when
//! the test ends.

use std::time::Duration;

use anyhow::Context as _;
use tokio_postgres::NoTls;

use crate::{pg_admin_url, unique};

/// A fresh, empty database on the shared PostgreSQL server (see
/// [`pg_admin_url`]). Dropped `WITH (FORCE)` on drop, best effort: a
/// failure is logged, never a panic.
#[derive(Debug)]
pub struct PgDb {
    /// The database name: lowercase `[a-z0-9_]`, so it needs no quoting.
    pub name: String,
    /// A connection URL for it, e.g. for `FIELDCAST_DATABASE_URL`.
    pub url: String,
}

impl PgDb {
    pub async fn create() -> anyhow::Result<PgDb> {
        let name = unique("fieldcast_test").replace('-', "_");
        let admin_url = pg_admin_url();
        let admin = connect(&admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let url = with_dbname(&admin_url, &name);
        Ok(PgDb { name, url })
    }

    /// A new connection to this database; its connection task is spawned on
    /// the current runtime and ends when the client is dropped.
    pub async fn client(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime (where blocking on a future would
        // panic) or outside one: a plain thread with its own runtime works in
        // both. Joining it makes "dropped" mean "gone" for the next line.
        let name = self.name.clone();
        let result = std::thread::Builder::new()
            .name("pgdb-drop".into())
            .spawn(move || drop_database(&name))
            .map_err(anyhow::Error::from)
            .and_then(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("drop thread panicked")))
            });
        if let Err(e) = result {
            tracing::warn!(db = %self.name, error = %format!("{e:#}"), "could not drop test database");
        }
    }
}

fn drop_database(name: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build runtime for DROP DATABASE")?;
    rt.block_on(async {
        let work = async {
            let admin = connect(&pg_admin_url()).await?;
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .with_context(|| format!("DROP DATABASE {name}"))
        };
        tokio::time::timeout(Duration::from_secs(15), work)
            .await
            .context("DROP DATABASE timed out")?
    })
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connect to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "test postgres connection ended");
        }
    });
    Ok(client)
}

/// `url` with its database replaced by `db`. Handles URLs
/// (`postgres://user@host:port/db?params`) and key=value strings.
fn with_dbname(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={db}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let after_scheme = scheme_end + 3;
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{db}{query}", &base[..host_end])
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.find(':') {
                Some(c) => format!("{}:***{}", &url[..s + 3 + c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbname_is_replaced() {
        assert_eq!(
            with_dbname("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_dbname("postgres://u:p@h/x?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_dbname("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
        assert_eq!(
            with_dbname("host=h user=u", "t1"),
            "host=h user=u dbname=t1"
        );
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://u:***@h/x");
    }
}
