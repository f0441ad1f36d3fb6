//! `fieldcast-sim bench`: the end-to-end benchmark. Simulated devices
//! publish locations to the broker; C clients receive them through the
//! gateway (or, with `--floor`, straight from the broker); every received
//! location is matched to its send, and the run ends in a [`Report`].
//!
//! The run, in order:
//!
//! 1. [`receiver`]s connect and subscribe; the load waits for all of them.
//! 2. [`load`] starts; every send goes into the [`SendLog`] first.
//! 3. After `--warmup`, the measured window (`--duration`) begins: it is a
//!    range of location `ts`, so a message belongs to it by when it was sent.
//!    The watched processes are read at its start and end ([`procstat`]).
//! 4. After the window, `--drain` lets messages in flight arrive.
//! 5. Everything stops; each client's [`Tally`] is accounted against the
//!    send log ([`tally`]) and the totals become the report ([`report`]).
//!
//! Alerts: with `--alert-rule` the run first creates that rule on the
//! gateway ([`rule`]) and deletes it at the end; `--overspeed-every` makes
//! the load trip it a known number of times ([`overspeed`]). Clients time
//! every alert and geofence event they receive, like locations.

pub mod args;
pub mod load;
pub mod log;
pub mod overspeed;
pub mod procstat;
pub mod receiver;
pub mod report;
pub mod rule;
pub mod tally;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use args::{BenchArgs, BenchConfig, Watch};
pub use report::Report;

use fieldcast_core::time::now_ms;
use log::{SendLog, Window};
use receiver::Common;
use report::{Events, Latency, ProcessUse};
use rule::RuleError;
use tally::{latency_histogram, Accounting, Derived, Tally};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("only {ready} of {total} clients subscribed within the connect timeout; first error: {first}")]
    ClientsNotReady {
        ready: usize,
        total: usize,
        first: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Rule(#[from] RuleError),
}

/// Runs one benchmark; `shutdown` (Ctrl-C) interrupts it. A rule it
/// created (`--alert-rule`) is deleted however the run ends.
pub async fn run(config: BenchConfig, shutdown: CancellationToken) -> Result<Report, BenchError> {
    let Some(alert_rule) = config.alert_rule else {
        return measure(config, shutdown, None).await;
    };
    let base = rule::api_base(config.gateway_of(0))
        .ok_or_else(|| BenchError::Rule(RuleError::NoGateway(config.gateway_of(0).into())))?;
    let created = rule::create(
        &base,
        config.admin_token.as_deref(),
        alert_rule,
        &config.fleet.prefix,
    )
    .await?;
    info!(id = created.id, rule = %alert_rule.body(&config.fleet.prefix), "alert rule created");
    let loaded = tokio::time::Instant::now() + rule::LOAD_TIME;
    let outcome = measure(config, shutdown, Some(loaded)).await;
    let id = created.id;
    match created.delete().await {
        Ok(()) => info!(id, "alert rule deleted"),
        Err(error) => warn!(id, %error, "the alert rule could not be deleted"),
    }
    outcome
}

/// The run itself; the load starts no earlier than `load_from` (a new
/// rule's loading time).
async fn measure(
    config: BenchConfig,
    shutdown: CancellationToken,
    load_from: Option<tokio::time::Instant>,
) -> Result<Report, BenchError> {
    let stop = shutdown.child_token();
    let log = Arc::new(SendLog::new(&config.fleet.prefix, config.fleet.devices));
    let tracker = TaskTracker::new();

    info!(
        clients = config.clients,
        floor = config.floor,
        "connecting clients"
    );
    let (ready_tx, mut ready_rx) = mpsc::channel(config.clients);
    let common = Common {
        log: Arc::clone(&log),
        ready: ready_tx,
        connect_timeout: config.connect_timeout,
        stop: stop.clone(),
    };
    let clients: Vec<_> = (0..config.clients)
        .map(|c| tracker.spawn(receiver_task(&config, c, common.clone())))
        .collect();
    drop(common);
    let outcome = wait_ready(
        &mut ready_rx,
        config.clients,
        config.connect_timeout + Duration::from_secs(5),
        &stop,
    )
    .await;
    if let Err(e) = outcome {
        stop.cancel();
        tracker.close();
        tracker.wait().await;
        return Err(e);
    }
    if let Some(at) = load_from {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(at) => {}
        }
    }

    let start_ms = now_ms() + millis(config.warmup);
    let window = Window {
        start_ms,
        end_ms: start_ms + millis(config.duration),
    };
    log.set_window(window);
    let stats = Arc::new(load::LoadStats::default());
    load::spawn(&tracker, &config.fleet, config.bursts, &log, &stats, &stop);
    tracker.close();
    info!(warmup = ?config.warmup, duration = ?config.duration, "load started");

    let mut pids = vec![std::process::id()];
    pids.extend(config.watch_pids.iter().copied());
    let interrupted = async {
        sleep_until_ms(window.start_ms, &stop).await?;
        let before = sample_all(&pids);
        info!("measuring");
        sleep_until_ms(window.end_ms, &stop).await?;
        let after = sample_all(&pids);
        info!(drain = ?config.drain, "window over, draining");
        tokio::select! {
            _ = stop.cancelled() => return Err(BenchError::Interrupted),
            _ = sleep(config.drain) => {}
        }
        Ok((before, after))
    }
    .await;
    stop.cancel();
    let mut tallies = Vec::with_capacity(clients.len());
    for c in clients {
        if let Ok(t) = c.await {
            tallies.push(t);
        }
    }
    tracker.wait().await;
    let (before, after) = interrupted?;

    let window_s = config.duration.as_secs_f64();
    let processes = before
        .iter()
        .filter_map(|a| {
            let b = after.iter().find(|b| b.pid == a.pid)?;
            Some(ProcessUse::between(a, b, window_s))
        })
        .collect();
    Ok(build_report(&config, &log, &stats, &tallies, processes))
}

fn receiver_task(
    config: &BenchConfig,
    c: usize,
    common: Common,
) -> impl std::future::Future<Output = Tally> + Send + 'static {
    let bbox = match config.watch {
        Watch::Bbox(b) => Some(b),
        _ => None,
    };
    let range = config.range_of(c);
    let tally = Tally::new(range, bbox);
    let floor = config.floor.then(|| {
        let filters = match config.watch {
            Watch::Subset(_) => range
                .iter()
                .map(|d| format!("devices/{}/location", config.fleet.device_id(d)))
                .collect(),
            Watch::Fleet | Watch::Bbox(_) => vec!["devices/+/location".to_owned()],
        };
        let mut options = config.fleet.broker(c).clone();
        options.set_client_id(format!(
            "{}-floor-{c}-{}",
            config.fleet.prefix,
            std::process::id()
        ));
        (options, filters)
    });
    let url = config.gateway_of(c).to_owned();
    let token = config.token.clone();
    let selector = config.selector(c);
    async move {
        match floor {
            Some((options, filters)) => receiver::floor(options, filters, tally, common).await,
            None => receiver::gateway(url, token, selector, tally, common).await,
        }
    }
}

/// Waits for one readiness report per client.
async fn wait_ready(
    ready: &mut mpsc::Receiver<Result<(), String>>,
    total: usize,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<(), BenchError> {
    let (mut ok, mut first) = (0, None);
    let deadline = tokio::time::Instant::now() + timeout;
    while ok < total {
        let r = tokio::select! {
            _ = stop.cancelled() => return Err(BenchError::Interrupted),
            _ = tokio::time::sleep_until(deadline) => break,
            r = ready.recv() => r,
        };
        match r {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => {
                warn!(error = %e, "client failed");
                first.get_or_insert(e);
            }
            None => break,
        }
        if first.is_some() {
            break;
        }
    }
    if ok == total {
        return Ok(());
    }
    Err(BenchError::ClientsNotReady {
        ready: ok,
        total,
        first: first.unwrap_or_else(|| "timed out".into()),
    })
}

async fn sleep_until_ms(at_ms: i64, stop: &CancellationToken) -> Result<(), BenchError> {
    let wait = Duration::from_millis(u64::try_from(at_ms - now_ms()).unwrap_or(0));
    tokio::select! {
        _ = stop.cancelled() => Err(BenchError::Interrupted),
        _ = sleep(wait) => Ok(()),
    }
}

fn sample_all(pids: &[u32]) -> Vec<procstat::Sample> {
    pids.iter()
        .filter_map(|&pid| match procstat::sample(pid) {
            Ok(s) => Some(s),
            Err(error) => {
                warn!(pid, %error, "cannot read the watched process");
                None
            }
        })
        .collect()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

fn build_report(
    config: &BenchConfig,
    log: &SendLog,
    stats: &load::LoadStats,
    tallies: &[Tally],
    processes: Vec<ProcessUse>,
) -> Report {
    let window = log.window();
    let sent: u64 = (0..log.len())
        .filter_map(|d| log.sends(d))
        .map(|s| s.iter().filter(|x| window.contains(x.ts)).count() as u64)
        .sum();
    let mut accounting = Accounting::default();
    let mut latency = latency_histogram();
    let mut by_second: Vec<Histogram<u64>> = Vec::new();
    let (mut out_of_order, mut unmatched, mut outside) = (0, 0, 0);
    let mut client_errors = Vec::new();
    let mut clients_failed = 0;
    let (mut alerts, mut fences) = (Derived::default(), Derived::default());
    for t in tallies {
        accounting += t.account(log);
        // Same bounds everywhere, so adding cannot fail.
        let _ = latency.add(&t.latency);
        if by_second.len() < t.by_second.len() {
            by_second.resize_with(t.by_second.len(), tally::second_histogram);
        }
        for (all, one) in by_second.iter_mut().zip(&t.by_second) {
            let _ = all.add(one);
        }
        alerts.absorb(&t.alerts);
        fences.absorb(&t.fences);
        out_of_order += t.out_of_order;
        unmatched += t.unmatched;
        outside += t.outside;
        if let Some(e) = &t.error {
            clients_failed += 1;
            if client_errors.len() < 5 {
                client_errors.push(e.clone());
            }
        }
    }
    clients_failed += config.clients.saturating_sub(tallies.len());
    let seen = |d: &Derived| d.count + d.unmatched + d.repeated > 0;
    let bursts = config.bursts.map(|_| stats.bursts.load(Relaxed));
    let measures_alerts = !config.floor && (config.alert_rule.is_some() || bursts.is_some());
    let secs = config.duration.as_secs_f64().max(1e-9);
    Report {
        label: config.label.clone(),
        mode: if config.floor { "floor" } else { "gateway" },
        devices: config.fleet.devices,
        rate: config.fleet.rate,
        connections: config.fleet.connections(),
        clients: config.clients,
        selection: match config.watch {
            Watch::Fleet => "fleet".into(),
            Watch::Subset(k) => format!("watch:{k}"),
            Watch::Bbox(b) => format!(
                "bbox:{},{},{},{}",
                b.min_lon, b.min_lat, b.max_lon, b.max_lat
            ),
        },
        gateways: if config.floor {
            Vec::new()
        } else {
            config.gateways.clone()
        },
        warmup_s: config.warmup.as_secs_f64(),
        duration_s: config.duration.as_secs_f64(),
        sent,
        sent_per_s: report::round(sent as f64 / secs, 10.0),
        load_skipped: stats.skipped.load(Relaxed),
        load_connection_errors: stats.connection_errors.load(Relaxed),
        delivery_ratio: (accounting.expected > 0)
            .then(|| accounting.delivered as f64 / accounting.expected as f64),
        delivered_per_s: report::round(accounting.delivered as f64 / secs, 10.0),
        expected_per_s: report::round(accounting.expected as f64 / secs, 10.0),
        accounting,
        out_of_order,
        unmatched,
        outside,
        clients_failed,
        client_errors,
        latency_ms: Latency::from_us(&latency),
        by_second: by_second.iter().map(report::Second::from_us).collect(),
        alerts: (measures_alerts || seen(&alerts)).then(|| Events::from_derived(&alerts, bursts)),
        fence_events: seen(&fences).then(|| Events::from_derived(&fences, None)),
        processes,
    }
}
