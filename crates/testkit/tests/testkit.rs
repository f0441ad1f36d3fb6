//! The testkit against the real services: each starter gives a usable
//! service, and kills, restarts, cuts and drops do what they say.

// In tests a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use fieldcast_testkit::{
    pg_admin_url, shared_redis_url, unique, wait_until, Mosquitto, MosquittoTls, PgDb, RedisServer,
    TcpProxy,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(10);

async fn db_exists(name: &str) -> bool {
    let (admin, conn) = tokio_postgres::connect(&pg_admin_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap();
    row.get::<_, i64>(0) == 1
}

#[tokio::test]
async fn pg_db_is_usable_and_gone_after_drop() {
    let db = PgDb::create().await.unwrap();
    let name = db.name.clone();
    let client = db.client().await.unwrap();
    client
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42);")
        .await
        .unwrap();
    let x: i32 = client
        .query_one("SELECT x FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(x, 42);
    assert!(db_exists(&name).await);

    // Dropped while a client is still connected: FORCE ends that session.
    drop(db);
    assert!(!db_exists(&name).await, "{name} still exists after drop");
    drop(client);
}

#[test]
fn pg_db_drops_outside_a_runtime() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(PgDb::create()).unwrap();
    let name = db.name.clone();
    drop(rt);
    drop(db);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(!rt.block_on(db_exists(&name)));
}

/// Connects, and reports every ConnAck and incoming Publish on a channel,
/// polling the event loop (reconnecting after errors) until the test ends.
fn drive(opts: MqttOptions) -> (AsyncClient, mpsc::UnboundedReceiver<Packet>) {
    let (client, mut eventloop): (AsyncClient, EventLoop) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(
                    p @ (Packet::ConnAck(_) | Packet::Publish(_) | Packet::SubAck(_)),
                )) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    if tx.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    (client, rx)
}

async fn next_matching(
    rx: &mut mpsc::UnboundedReceiver<Packet>,
    within: Duration,
    mut want: impl FnMut(&Packet) -> bool,
) -> Option<Packet> {
    tokio::time::timeout(within, async {
        while let Some(p) = rx.recv().await {
            if want(&p) {
                return Some(p);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

fn is_connack(p: &Packet) -> bool {
    matches!(p, Packet::ConnAck(_))
}

#[tokio::test]
async fn mosquitto_start_kill_restart() {
    let mut broker = Mosquitto::start().await.unwrap();
    assert_eq!(broker.url, format!("mqtt://127.0.0.1:{}", broker.port));
    let opts = MqttOptions::new(unique("tk-mq"), "127.0.0.1", broker.port);
    let (_client, mut rx) = drive(opts);
    assert!(next_matching(&mut rx, T, is_connack).await.is_some());

    broker.kill();
    let addr = SocketAddr::from(([127, 0, 0, 1], broker.port));
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "port open after kill"
    );

    broker.restart().await.unwrap();
    // The same client reconnects to the same port, and a new one connects.
    assert!(next_matching(&mut rx, T, is_connack).await.is_some());
    let opts = MqttOptions::new(unique("tk-mq"), "127.0.0.1", broker.port);
    let (_client2, mut rx2) = drive(opts);
    assert!(next_matching(&mut rx2, T, is_connack).await.is_some());
}

#[tokio::test]
async fn mosquitto_start_with_extra_conf() {
    let broker = Mosquitto::start_with("max_keepalive 30").await.unwrap();
    let opts = MqttOptions::new(unique("tk-mq"), "127.0.0.1", broker.port);
    let (_client, mut rx) = drive(opts);
    assert!(next_matching(&mut rx, T, is_connack).await.is_some());
}

#[tokio::test]
async fn mosquitto_start_with_bad_conf_fails_fast() {
    let err = Mosquitto::start_with("no_such_option 1").await.unwrap_err();
    assert!(format!("{err:#}").contains("no_such_option"), "{err:#}");
}

async fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await??;
    anyhow::ensure!(&buf == b"+PONG\r\n", "unexpected reply {buf:?}");
    Ok(())
}

#[tokio::test]
async fn redis_server_start_kill_restart() {
    let mut redis = RedisServer::start().await.unwrap();
    assert_eq!(redis.url, format!("redis://127.0.0.1:{}", redis.port));
    let addr = SocketAddr::from(([127, 0, 0, 1], redis.port));
    ping(addr).await.unwrap();
    redis.kill();
    assert!(ping(addr).await.is_err());
    redis.restart().await.unwrap();
    ping(addr).await.unwrap();
}

fn shared_redis_addr() -> SocketAddr {
    let url = shared_redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap()
        .trim_end_matches('/');
    hostport.parse().unwrap()
}

#[tokio::test]
async fn tcp_proxy_cut_and_restore() {
    let proxy = TcpProxy::start(shared_redis_addr()).await.unwrap();
    let addr = proxy.addr();
    ping(addr).await.unwrap();

    // A connection open across the cut is reset.
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"*1\r\n$4\r\nPING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    open.read_exact(&mut buf).await.unwrap();

    proxy.cut();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(T, open.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        read.is_err() || rest.is_empty(),
        "open connection survived the cut"
    );
    assert!(ping(addr).await.is_err(), "new connection worked while cut");

    proxy.restore();
    wait_until(T, "PING through restored proxy", || async {
        ping(addr).await.is_ok()
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn tcp_proxy_drop_closes_connections() {
    let proxy = TcpProxy::start(shared_redis_addr()).await.unwrap();
    let addr = proxy.addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    ping(addr).await.unwrap();
    drop(proxy);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(T, open.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener alive after drop"
    );
}

/// Pins device isolation in the shipped ACL: a device writes only under its
/// own id, and the bridge identity reads every device (here through a shared
/// subscription, which mosquitto 2.0 checks per delivered message).
#[tokio::test]
async fn mosquitto_tls_isolates_devices() {
    let broker = MosquittoTls::start(&["dev-a", "fieldcast-bridge"])
        .await
        .unwrap();
    assert!(broker.certs.join("ca.crt").is_file());

    let (bridge, mut bridge_rx) = drive(
        broker
            .mqtt_options("fieldcast-bridge", &unique("bridge"))
            .unwrap(),
    );
    assert!(next_matching(&mut bridge_rx, T, is_connack).await.is_some());
    bridge
        .subscribe("$share/tk/devices/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    assert!(
        next_matching(&mut bridge_rx, T, |p| matches!(p, Packet::SubAck(_)))
            .await
            .is_some()
    );

    let (dev, mut dev_rx) = drive(broker.mqtt_options("dev-a", "dev-a").unwrap());
    assert!(next_matching(&mut dev_rx, T, is_connack).await.is_some());
    // The forbidden one first: if it were delivered, it would arrive before
    // the allowed one, which the broker handles after it.
    dev.publish("devices/dev-b/location", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    dev.publish("devices/dev-a/location", QoS::AtLeastOnce, false, "own")
        .await
        .unwrap();

    let got = next_matching(&mut bridge_rx, T, |p| matches!(p, Packet::Publish(_)))
        .await
        .expect("bridge receives dev-a's own location");
    let Packet::Publish(p) = got else {
        unreachable!()
    };
    assert_eq!(p.topic, "devices/dev-a/location");
    assert_eq!(&p.payload[..], b"own");
    assert!(
        next_matching(&mut bridge_rx, Duration::from_millis(500), |p| matches!(
            p,
            Packet::Publish(_)
        ))
        .await
        .is_none(),
        "a forged publish was delivered"
    );

    // The plain listener: anonymous may read, a claimed username needs the
    // password.
    let (_anon, mut anon_rx) = drive(MqttOptions::new(
        unique("anon"),
        "127.0.0.1",
        broker.plain_port,
    ));
    assert!(next_matching(&mut anon_rx, T, is_connack).await.is_some());
    let mut claimed = MqttOptions::new(unique("claim"), "127.0.0.1", broker.plain_port);
    claimed.set_credentials("dev-a", "wrong");
    let (_claimed, mut claimed_rx) = drive(claimed);
    assert!(
        next_matching(&mut claimed_rx, Duration::from_secs(1), is_connack)
            .await
            .is_none()
    );
    let mut authed = MqttOptions::new(unique("auth"), "127.0.0.1", broker.plain_port);
    authed.set_credentials("dev-a", "dev-a");
    let (_authed, mut authed_rx) = drive(authed);
    assert!(next_matching(&mut authed_rx, T, is_connack).await.is_some());
}
