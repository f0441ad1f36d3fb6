//! [`RedisCluster`] against fred 10 in cluster mode, built from `url()` by
//! the services' own builder: what the partitioned Redis layout of issue
//! #13 relies on — keys spread over every primary, a Lua script on one hash
//! tag, sharded pub/sub, and a primary killed under load.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fieldcast_service::redis::{builder, WhileDown};
use fieldcast_testkit::{wait_until, RedisCluster, RedisServer};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::util::redis_keyslot;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

async fn client(url: &str, while_down: WhileDown) -> Client {
    let client = builder(url, while_down).unwrap().build().unwrap();
    client.init().await.unwrap();
    client
}

/// Every message a subscriber receives, as `(channel, text)`.
type Messages = mpsc::UnboundedReceiver<(String, String)>;

/// A subscriber and the messages it receives.
async fn subscriber(url: &str) -> (SubscriberClient, Messages) {
    let (sub, messages, _) = subscriber_with_reconnects(url).await;
    (sub, messages)
}

/// A subscriber, its messages, and the server of every reconnect event it
/// reports, the first connections included.
async fn subscriber_with_reconnects(
    url: &str,
) -> (SubscriberClient, Messages, Arc<Mutex<Vec<String>>>) {
    let sub = builder(url, WhileDown::Wait)
        .unwrap()
        .build_subscriber_client()
        .unwrap();
    let mut messages = sub.message_rx();
    let mut reconnect_rx = sub.reconnect_rx();
    sub.init().await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(m) = messages.recv().await {
            let text = m.value.as_string().unwrap_or_default();
            if tx.send((m.channel.to_string(), text)).is_err() {
                break;
            }
        }
    });
    let reconnects = Arc::new(Mutex::new(Vec::new()));
    let log = reconnects.clone();
    tokio::spawn(async move {
        while let Ok(server) = reconnect_rx.recv().await {
            log.lock().unwrap().push(server.to_string());
        }
    });
    (sub, rx, reconnects)
}

async fn next(rx: &mut Messages) -> (String, String) {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("no message in time")
        .expect("subscriber gone")
}

/// Hash tags whose slots fall to each of the cluster's three primaries.
async fn tags_on_every_primary(cluster: &RedisCluster) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut tags = Vec::new();
    for i in 0.. {
        let tag = format!("{{{i}}}");
        if seen.insert(cluster.primary_for_key(&tag).await.unwrap()) {
            tags.push(tag);
        }
        if seen.len() == 3 {
            break;
        }
    }
    tags
}

#[tokio::test]
async fn keys_in_many_slots_land_on_every_primary() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let redis = client(cluster.url(), WhileDown::Fail).await;
    let keys: Vec<String> = (0..200).map(|i| format!("device:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let () = redis.set(key, i, None, None, false).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let v: usize = redis.get(key).await.unwrap();
        assert_eq!(v, i, "{key}");
    }
    // Each primary holds a share, and together exactly these keys.
    let mut total = 0;
    for port in cluster.ports() {
        let node = client(&format!("redis://127.0.0.1:{port}"), WhileDown::Fail).await;
        let n: usize = node.dbsize().await.unwrap();
        assert!(n > 20, "primary {port} holds only {n} of 200 keys");
        total += n;
    }
    assert_eq!(total, keys.len());
}

/// Pins: a script whose keys share one hash tag runs by EVALSHA on that
/// tag's primary, and may SPUBLISH to a channel of the same slot (named in
/// ARGV, not KEYS); a channel of another slot is refused.
#[tokio::test]
async fn lua_script_on_one_hash_tag_writes_and_spublishes() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let redis = client(cluster.url(), WhileDown::Fail).await;
    let (sub, mut messages) = subscriber(cluster.url()).await;
    sub.ssubscribe("{7}live").await.unwrap();

    let script = "redis.call('SET', KEYS[1], ARGV[1]) \
                  local n = redis.call('INCR', KEYS[2]) \
                  local heard = redis.call('SPUBLISH', ARGV[2], ARGV[1]) \
                  return {n, heard}";
    let sha: String = redis.script_load_cluster(script).await.unwrap();
    for round in 1..=2 {
        let msg = format!("fix {round}");
        let (n, heard): (i64, i64) = redis
            .evalsha(
                &sha,
                vec!["{7}state", "{7}count"],
                vec![msg.as_str(), "{7}live"],
            )
            .await
            .unwrap();
        assert_eq!((n, heard), (round, 1));
        assert_eq!(next(&mut messages).await, ("{7}live".to_owned(), msg));
    }
    let state: String = redis.get("{7}state").await.unwrap();
    assert_eq!(state, "fix 2");

    let err = redis
        .evalsha::<Value, _, _, _>(&sha, vec!["{7}state", "{7}count"], vec!["x", "{8}live"])
        .await
        .unwrap_err();
    assert!(
        err.details().contains("non local key"),
        "a channel in another slot: {err:?}"
    );
}

/// Pins: SSUBSCRIBE through fred's SubscriberClient on channels held by
/// three different primaries (one SSUBSCRIBE per slot: several slots in
/// one call is CROSSSLOT), SPUBLISH from another client, all received.
#[tokio::test]
async fn sharded_pubsub_reaches_channels_on_every_primary() {
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let tags = tags_on_every_primary(&cluster).await;
    let channels: Vec<String> = tags.iter().map(|t| format!("{t}live")).collect();
    let (sub, mut messages) = subscriber(cluster.url()).await;
    for ch in &channels {
        sub.ssubscribe(ch.as_str()).await.unwrap();
    }
    let cross = sub.ssubscribe(channels.clone()).await.unwrap_err();
    assert!(cross.details().contains("CROSSSLOT"), "{cross:?}");

    let publisher = client(cluster.url(), WhileDown::Fail).await;
    let mut want = BTreeSet::new();
    for ch in &channels {
        let heard: i64 = publisher
            .spublish(ch.as_str(), format!("to {ch}"))
            .await
            .unwrap();
        assert_eq!(heard, 1, "{ch}");
        want.insert((ch.clone(), format!("to {ch}")));
    }
    let mut got = BTreeSet::new();
    while got.len() < want.len() {
        got.insert(next(&mut messages).await);
    }
    assert_eq!(got, want);
}

/// What happens when the primary holding a channel's and a key's slot is
/// SIGKILLed while a writer keeps writing (retrying failures itself, as
/// the bridge does):
///
/// - its replica takes over; the number of seconds is printed;
/// - writes resume, and a key written before the kill and confirmed by
///   `WAIT 1` is still there;
/// - a SubscriberClient with `manage_subscriptions()` receives again on
///   its shard channel: fred reconnects to the new primary, broadcasts a
///   reconnect event for it, and the managed task re-sends SSUBSCRIBE;
/// - one without it does not: fred itself resubscribes nothing;
/// - scripts are not replicated: EVALSHA on the new primary is NOSCRIPT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_managed_subscriptions_follow() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1).await.unwrap();
    let formed = started.elapsed();
    let channel = "{f}live";
    let slot = redis_keyslot(channel.as_bytes());
    let old = cluster.primary_for_slot(slot).await.unwrap();

    let redis = client(cluster.url(), WhileDown::Fail).await;
    let () = redis
        .set("{f}before", "kept", None, None, false)
        .await
        .unwrap();
    let acked: i64 = redis
        .with_cluster_node(Server::new("127.0.0.1", old))
        .wait(1, 2000)
        .await
        .unwrap();
    assert_eq!(acked, 1, "WAIT 1: the replica has the key");
    let sha: String = redis.script_load_cluster("return 1").await.unwrap();

    let (bare, mut bare_rx) = subscriber(cluster.url()).await;
    let (managed, mut managed_rx, reconnects) = subscriber_with_reconnects(cluster.url()).await;
    let _resubscriber = managed.manage_subscriptions();
    bare.ssubscribe(channel).await.unwrap();
    managed.ssubscribe(channel).await.unwrap();
    let heard: i64 = redis.spublish(channel, "before").await.unwrap();
    assert_eq!(heard, 2);
    assert_eq!(next(&mut bare_rx).await.1, "before");
    assert_eq!(next(&mut managed_rx).await.1, "before");
    let initial_reconnects = reconnects.lock().unwrap().len();

    // The writer: one SET after another on the killed slot, retried after
    // 20 ms on failure; `ok` counts the successes, the task returns the
    // longest time between two of them.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (redis, ok, failed, stop) = (redis.clone(), ok.clone(), failed.clone(), stop.clone());
        async move {
            let (mut i, mut last_ok, mut longest) = (0u64, Instant::now(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                match redis.set::<(), _, _>("{f}n", i, None, None, false).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        longest = longest.max(last_ok.elapsed());
                        last_ok = Instant::now();
                        i += 1;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            longest
        }
    });
    wait_until(T, "the writer to write", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::Relaxed) > 10 }
    })
    .await
    .unwrap();

    let killed_at = Instant::now();
    let killed = cluster.kill_primary(slot).await.unwrap();
    assert_eq!(killed, old);
    let new = cluster.wait_failover(slot).await.unwrap();
    let failover = killed_at.elapsed();
    assert_ne!(new, old);

    // (a) Writes resume on the new primary; the confirmed key survived.
    let before = ok.load(Ordering::Relaxed);
    wait_until(T, "writes to resume", || {
        let ok = ok.clone();
        async move { ok.load(Ordering::Relaxed) > before + 10 }
    })
    .await
    .unwrap();
    let writes_back = killed_at.elapsed();
    let kept: Option<String> = redis.get("{f}before").await.unwrap();
    assert_eq!(kept.as_deref(), Some("kept"));

    // (b) The managed subscriber hears the channel again; publish until it
    // does (the publisher may still be finding the new primary).
    let mut n = 0;
    let mut managed_after = None;
    let deadline = Instant::now() + T;
    while managed_after.is_none() && Instant::now() < deadline {
        n += 1;
        let _ = redis
            .spublish::<i64, _, _>(channel, format!("after {n}"))
            .await;
        if let Ok(Some((_, text))) =
            tokio::time::timeout(Duration::from_millis(100), managed_rx.recv()).await
        {
            managed_after = Some(text);
        }
    }
    let resubscribed = killed_at.elapsed();
    assert!(
        managed_after.is_some_and(|t| t.starts_with("after")),
        "managed subscriber heard nothing after the failover"
    );
    let heard: i64 = redis.spublish(channel, "last").await.unwrap();
    assert_eq!(
        heard, 1,
        "only the managed subscriber is subscribed on {new}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        bare_rx.try_recv().is_err(),
        "fred resubscribed the bare subscriber by itself"
    );
    let reconnects_after = reconnects.lock().unwrap()[initial_reconnects..].to_vec();
    assert!(
        reconnects_after.contains(&format!("127.0.0.1:{new}")),
        "no reconnect event for the new primary: {reconnects_after:?}"
    );

    let script = redis
        .evalsha::<i64, _, _, _>(&sha, vec!["{f}x"], Vec::<String>::new())
        .await;
    assert!(
        script
            .as_ref()
            .is_err_and(|e| e.details().starts_with("NOSCRIPT")),
        "EVALSHA after failover: {script:?}"
    );

    stop.store(true, Ordering::Relaxed);
    let write_outage = writer.await.unwrap();
    let restart_at = Instant::now();
    cluster.restart(old).await.unwrap();
    let rejoined = restart_at.elapsed();
    assert_eq!(cluster.primary_for_slot(slot).await.unwrap(), new);

    eprintln!(
        "cluster 3x1 formed in {formed:.2?}; failover (node timeout {} ms) {failover:.2?}; \
         writes back after {writes_back:.2?} (longest gap {write_outage:.2?}, {} failed \
         tries); managed subscriber back after {resubscribed:.2?}; reconnect events: \
         {:?} at start, then {reconnects_after:?}; old primary rejoined as replica in \
         {rejoined:.2?}",
        fieldcast_testkit::NODE_TIMEOUT_MS,
        failed.load(Ordering::Relaxed),
        reconnects.lock().unwrap()[..initial_reconnects].to_vec(),
    );
}

/// Pins: a single Redis (not a cluster) serves SSUBSCRIBE/SPUBLISH, several
/// slots in one SSUBSCRIBE included, and a script may SPUBLISH to any
/// channel: one code path can use sharded pub/sub everywhere.
#[tokio::test]
async fn single_redis_serves_sharded_pubsub() {
    let server = RedisServer::start().await.unwrap();
    let (sub, mut messages) = subscriber(&server.url).await;
    sub.ssubscribe(vec!["{1}live", "{2}live"]).await.unwrap();
    let redis = client(&server.url, WhileDown::Fail).await;
    let heard: i64 = redis.spublish("{1}live", "a").await.unwrap();
    assert_eq!(heard, 1);
    let heard: i64 = redis
        .eval(
            "return redis.call('SPUBLISH', ARGV[1], 'b')",
            vec!["{1}k"],
            vec!["{2}live"],
        )
        .await
        .unwrap();
    assert_eq!(heard, 1);
    // Classic PUBLISH is another namespace: it reaches no shard subscriber.
    let heard: i64 = redis.publish("{1}live", "c").await.unwrap();
    assert_eq!(heard, 0);
    assert_eq!(
        next(&mut messages).await,
        ("{1}live".to_owned(), "a".to_owned())
    );
    assert_eq!(
        next(&mut messages).await,
        ("{2}live".to_owned(), "b".to_owned())
    );
}
