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
