//! Draining: how a gateway leaves a load balancer without costing a viewer
//! an event (deploy/haproxy.cfg, README "Gateways behind HAProxy").
//!
//! A stop request (SIGTERM or SIGINT) does not stop the gateway at once:
//!
//! 1. `/readyz` answers 503 (`"draining": true`) from that moment, so the
//!    balancer's health checks take this instance out of rotation;
//! 2. for `FIELDCAST_DRAIN_GRACE` everything keeps working: viewers that
//!    the balancer still sends here before its checks notice are served,
//!    and the open WebSockets keep their live updates;
//! 3. then the stop token is cancelled: the HTTP server stops accepting,
//!    every socket closes with 1001 and `serve` waits up to
//!    `FIELDCAST_SHUTDOWN_GRACE` for them. The viewers reconnect through
//!    the balancer to another instance and resume with `since`.
//!
//! A second signal (or [`Drain::now`]) ends the drain at once.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The tokens of one drain.
#[derive(Debug, Clone)]
pub struct Drain {
    /// Cancelled by the caller (the first signal): begin the drain.
    pub requested: CancellationToken,
    /// Cancelled by the caller (a second signal): end it now.
    pub now: CancellationToken,
}

/// Waits for a stop request, drains for `grace`, then cancels `stop`
/// (what the server, the feed, the probe and every socket obey). Ends
/// when `stop` is cancelled, by itself or by anyone else.
pub async fn run(drain: Drain, stop: CancellationToken, health: Arc<Health>, grace: Duration) {
    tokio::select! {
        () = drain.requested.cancelled() => {}
        () = drain.now.cancelled() => {}
        () = stop.cancelled() => return,
    }
    health.set_draining();
    if !grace.is_zero() && !drain.now.is_cancelled() {
        tracing::info!(
            ?grace,
            "draining: /readyz answers 503; WebSockets close with 1001 after the grace (FIELDCAST_DRAIN_GRACE)"
        );
        tokio::select! {
            () = tokio::time::sleep(grace) => {}
            () = drain.now.cancelled() => tracing::info!("drain cut short"),
            () = stop.cancelled() => {}
        }
    }
    stop.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() -> Drain {
        Drain {
            requested: CancellationToken::new(),
            now: CancellationToken::new(),
        }
    }

    /// Pins the order: not ready at once, the stop only after the grace.
    #[tokio::test(start_paused = true)]
    async fn not_ready_at_once_stopped_after_the_grace() {
        let (d, stop, health) = (
            drain(),
            CancellationToken::new(),
            Arc::new(Health::default()),
        );
        let task = tokio::spawn(run(
            d.clone(),
            stop.clone(),
            health.clone(),
            Duration::from_secs(5),
        ));
        tokio::task::yield_now().await;
        assert!(!health.draining());
        d.requested.cancel();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(health.draining());
        assert!(!stop.is_cancelled());
        tokio::time::sleep(Duration::from_millis(4900)).await;
        assert!(!stop.is_cancelled(), "stopped before the grace ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(stop.is_cancelled());
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_request_cuts_the_drain_short() {
        let (d, stop, health) = (
            drain(),
            CancellationToken::new(),
            Arc::new(Health::default()),
        );
        let task = tokio::spawn(run(
            d.clone(),
            stop.clone(),
            health,
            Duration::from_secs(60),
        ));
        d.requested.cancel();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!stop.is_cancelled());
        d.now.cancel();
        task.await.unwrap();
        assert!(stop.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn ends_with_the_stop_without_a_request() {
        let (d, stop, health) = (
            drain(),
            CancellationToken::new(),
            Arc::new(Health::default()),
        );
        let task = tokio::spawn(run(d, stop.clone(), health.clone(), Duration::from_secs(5)));
        stop.cancel();
        task.await.unwrap();
        assert!(!health.draining());
    }
}
