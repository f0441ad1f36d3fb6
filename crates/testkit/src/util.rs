//! Small helpers every test needs: a free port, a name no other test uses,
//! and a bounded wait for a condition.

use std::future::Future;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::time::Instant;

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// Another process can take it before the caller binds it; the service
/// starters in this crate retry on a new port when that happens.
///
/// # Panics
///
/// Only if the machine cannot bind any loopback port at all, where no test
/// could run anyway.
pub fn free_port() -> u16 {
    match try_free_port() {
        Ok(port) => port,
        Err(e) => panic!("no free loopback port: {e:#}"),
    }
}

pub(crate) fn try_free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind 127.0.0.1:0 for a free port")?;
    Ok(listener
        .local_addr()
        .context("local_addr of port-0 listener")?
        .port())
}

/// `"<name>-<pid>-<counter>-<4 random hex>"`, lowercased, with every
/// character outside `[a-z0-9_-]` replaced by `_`.
///
/// Unique across the tests of one process (counter) and across processes
/// running at once (pid, plus random bits for pid reuse), so it serves as a
/// database name part, an MQTT client id or a Redis key prefix part.
pub fn unique(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tag: u16 = rand::random();
    let base: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{base}-{}-{n}-{tag:04x}", std::process::id())
}

/// Polls `f` every 20 ms until it returns `true`, for at most `timeout`.
///
/// `f` is called at least once, even with a zero timeout. On timeout the
/// error names `what`, so a failing test says what it was waiting for.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    const POLL: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Logs of the code under test into the test's output (shown for a failing
/// test), at `RUST_LOG` or else `warn`; once per process, later calls do
/// nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In tests a panic is the failure report.
mod tests {
    use super::*;

    #[test]
    fn unique_is_unique_and_clean() {
        let a = unique("My Test.Name");
        let b = unique("My Test.Name");
        assert_ne!(a, b);
        assert!(a.starts_with("my_test_name-"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'));
    }

    #[tokio::test]
    async fn wait_until_names_what_on_timeout() {
        let err = wait_until(Duration::from_millis(100), "the moon", || async { false })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the moon"), "{err}");
        let mut n = 0;
        wait_until(Duration::from_secs(1), "third poll", || {
            n += 1;
            let done = n >= 3;
            async move { done }
        })
        .await
        .unwrap();
    }
}
