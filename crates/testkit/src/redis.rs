//! A private `redis-server` for fault tests: no persistence, loopback only,
//! killed on drop.

use std::path::PathBuf;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::mosquitto::tempdir;
use crate::process::{Recipe, Service};

pub(crate) const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A private Redis on `127.0.0.1:port` (`--save "" --appendonly no`, so a
/// restart comes back empty), killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    /// `redis://127.0.0.1:<port>`
    pub url: String,
    service: Service,
    _dir: TempDir,
}

/// `redis-server` on 127.0.0.1:`port` in the foreground, without
/// persistence (a restart comes back empty), data in `dir`, logging to
/// stdout (the process's log file), with `extra` flags before those.
pub(crate) fn server_args(port: &str, dir: &str, extra: &[&str]) -> Vec<String> {
    let base = [
        "--port",
        port,
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
        "--daemonize",
        "no",
        "--logfile",
        "",
    ];
    base.iter().chain(extra).map(|a| (*a).to_owned()).collect()
}

impl RedisServer {
    pub async fn start() -> anyhow::Result<RedisServer> {
        let dir = tempdir("redis")?;
        let data = dir.path().display().to_string();
        let log = dir.path().join("redis.log");
        let service = Service::start_on_free_ports(1, |ports| {
            let port = ports[0].to_string();
            Ok(Recipe {
                name: "redis-server",
                program: PathBuf::from(REDIS_SERVER),
                args: server_args(&port, &data, &[]),
                log: log.clone(),
                ports: ports.to_vec(),
            })
        })
        .await
        .context("start private redis-server")?;
        let port = service
            .ports()
            .first()
            .copied()
            .context("redis service has no port")?;
        Ok(RedisServer {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            service,
            _dir: dir,
        })
    }

    /// SIGKILL the server and wait for it to exit.
    pub fn kill(&mut self) {
        self.service.kill();
    }

    /// Kills the server if it runs, then starts it again, empty, on the same
    /// port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.service.restart().await
    }
}

/// A test world's key prefix in a shared Redis: every key under it is
/// deleted when the guard drops, so the keys of one test or run do not pile
/// up in the Redis that all of them share. The prefix is the caller's
/// (from [`crate::unique`]: letters, digits, `-`, `_` and a final `:`).
#[derive(Debug)]
pub struct PrefixGuard {
    url: String,
    prefix: String,
}

impl PrefixGuard {
    pub fn new(url: &str, prefix: &str) -> Self {
        PrefixGuard {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
        }
    }
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        // Drop may run inside a runtime, which cannot block: a thread with
        // its own runtime does the deleting.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(delete_prefix(&url, &prefix))
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!(
                "testkit: could not delete the keys under {}: {e:#}",
                self.prefix
            );
        }
    }
}

/// Deletes every key whose name starts with `prefix` (`SCAN MATCH` +
/// `UNLINK`, on one Redis). Returns how many.
pub async fn delete_prefix(url: &str, prefix: &str) -> anyhow::Result<usize> {
    use fred::prelude::*;
    use fred::types::{CustomCommand, Value};
    anyhow::ensure!(
        prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_:".contains(&b)),
        "prefix {prefix:?} would need glob escapes"
    );
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await.context("connect to redis")?;
    let pattern = format!("{prefix}*");
    let (mut cursor, mut deleted) = ("0".to_owned(), 0);
    loop {
        let page: Value = client
            .custom(
                CustomCommand::new_static("SCAN", None, false),
                vec![cursor.as_str(), "MATCH", &pattern, "COUNT", "1000"],
            )
            .await?;
        let (next, keys): (String, Vec<String>) = page.convert()?;
        if !keys.is_empty() {
            deleted += keys.len();
            let _: Value = client
                .custom(CustomCommand::new_static("UNLINK", None, false), keys)
                .await?;
        }
        if next == "0" {
            break;
        }
        cursor = next;
    }
    let _ = client.quit().await;
    Ok(deleted)
}
