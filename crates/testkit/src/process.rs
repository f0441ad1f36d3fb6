//! One service process owned by a test: spawned with its output in a log
//! file, ready once its ports accept connections, SIGKILLed and reaped when
//! killed or dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::util::wait_until;

/// How long a service gets to open its ports.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How a service is (re)started: the same program and arguments every time,
/// so `restart` brings back the same service on the same ports.
#[derive(Debug, Clone)]
pub(crate) struct Recipe {
    /// Short name for messages, e.g. `mosquitto`.
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Where stdout and stderr go; its tail is quoted when a start fails.
    pub log: PathBuf,
    /// Every port the service listens on; ready means all of them accept.
    pub ports: Vec<u16>,
}

/// A running (or killed) service process. Dropping it kills it.
#[derive(Debug)]
pub(crate) struct Service {
    recipe: Recipe,
    child: Option<Child>,
}

/// Why a start failed: the caller retries on new ports only for the first.
pub(crate) enum StartError {
    /// The process exited before its ports opened, most likely because a
    /// port was taken between `free_port` and its bind.
    Exited(anyhow::Error),
    Other(anyhow::Error),
}

impl From<StartError> for anyhow::Error {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Exited(e) | StartError::Other(e) => e,
        }
    }
}

impl Service {
    /// Spawns the recipe and waits until every port accepts a connection.
    pub async fn start(recipe: Recipe) -> Result<Service, StartError> {
        let mut service = Service {
            recipe,
            child: None,
        };
        service.spawn_and_wait().await?;
        Ok(service)
    }

    /// Starts a service on fresh ports, retrying when it exits at start
    /// (a port race with another test). `make` builds the recipe for a set
    /// of `ports_needed` free ports.
    pub async fn start_on_free_ports<F>(ports_needed: usize, mut make: F) -> anyhow::Result<Service>
    where
        F: FnMut(&[u16]) -> anyhow::Result<Recipe>,
    {
        const ATTEMPTS: usize = 5;
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let ports = distinct_free_ports(ports_needed)?;
            match Service::start(make(&ports)?).await {
                Ok(service) => return Ok(service),
                Err(StartError::Exited(e)) => last = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        let last = last.map(|e| format!("{e:#}")).unwrap_or_default();
        bail!("service did not start in {ATTEMPTS} attempts on fresh ports; last: {last}")
    }

    /// The ports from the recipe, in recipe order.
    pub fn ports(&self) -> &[u16] {
        &self.recipe.ports
    }

    /// Whether the process was started and not killed since (it may still
    /// have died by itself).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process was started, not killed since, and has exited
    /// by itself: a crash, for a test's "no process died" check.
    pub fn crashed(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap; a no-op when not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it is already gone; nothing else to do in a kill.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kill, then start again with the same recipe (same ports). Retries
    /// for a few seconds: the port may still be held briefly by the old
    /// process's sockets, or by a stranger's connection.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        let mut last = None;
        for _ in 0..20 {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(StartError::Exited(e)) => last = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let last = last.map(|e| format!("{e:#}")).unwrap_or_default();
        bail!("{} did not restart on its ports: {last}", self.recipe.name)
    }

    async fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let r = &self.recipe;
        let log = File::create(&r.log)
            .with_context(|| format!("create log {}", r.log.display()))
            .map_err(StartError::Other)?;
        let log2 = log
            .try_clone()
            .context("clone log file handle")
            .map_err(StartError::Other)?;
        let child = Command::new(&r.program)
            .args(&r.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .with_context(|| format!("spawn {}", r.program.display()))
            .map_err(StartError::Other)?;
        self.child = Some(child);

        let name = self.recipe.name;
        let ports = self.recipe.ports.clone();
        let child = &mut self.child;
        let mut exited = false;
        let ready = wait_until(READY_TIMEOUT, &format!("{name} on ports {ports:?}"), || {
            // Checked before the ports: a process that died must not pass
            // because someone else happens to listen on its port.
            exited = !matches!(child.as_mut().map(Child::try_wait), Some(Ok(None)));
            let ports = ports.clone();
            let exited = exited;
            async move { exited || all_accept(&ports).await }
        })
        .await;
        if exited {
            self.kill();
            return Err(StartError::Exited(anyhow::anyhow!(
                "{name} exited at start; log tail:\n{}",
                log_tail(&self.recipe.log)
            )));
        }
        if let Err(e) = ready {
            self.kill();
            return Err(StartError::Other(
                e.context(format!("log tail:\n{}", log_tail(&self.recipe.log))),
            ));
        }
        Ok(())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn all_accept(ports: &[u16]) -> bool {
    for &port in ports {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return false;
        }
    }
    true
}

fn distinct_free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = crate::util::try_free_port()?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    Ok(ports)
}

/// The last lines of a log, for an error message.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
