//! Tokens a dispatcher can get (issue #16): the `token` command's HS256
//! token against a real gateway; RS256 and ES256 tokens against a PEM
//! public key and against a JWKS served by the test itself, with key
//! rotation; what must be refused (wrong algorithm, wrong key, expired,
//! `none`, the HS/RS confusion). Keys are made by the `openssl` CLI, so
//! no key-generation crate is compiled for the tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use fieldcast_testkit::wait_until;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_fieldcast-gateway");

/// A private key made by openssl, its public half as a PEM file, and its
/// JWK with a kid.
struct TestKey {
    alg: Algorithm,
    kid: String,
    signing: EncodingKey,
    public_pem: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestKey {
    fn rsa(dir: &Path, kid: &str) -> TestKey {
        Self::generate(dir, kid, Algorithm::RS256)
    }

    fn ec(dir: &Path, kid: &str) -> TestKey {
        Self::generate(dir, kid, Algorithm::ES256)
    }

    fn generate(dir: &Path, kid: &str, alg: Algorithm) -> TestKey {
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
        );
        let key = format!("{kid}.key.pem");
        let der = format!("{kid}.key.der");
        let public = format!("{kid}.pub.pem");
        match alg {
            Algorithm::RS256 => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:2048",
                        "-out",
                        &key,
                    ],
                );
                // aws-lc signs RS256 with a PKCS#1 key.
                openssl(
                    dir,
                    &[
                        "rsa",
                        "-in",
                        &key,
                        "-traditional",
                        "-outform",
                        "DER",
                        "-out",
                        &der,
                    ],
                );
            }
            _ => {
                openssl(
                    dir,
                    &[
                        "genpkey",
                        "-algorithm",
                        "EC",
                        "-pkeyopt",
                        "ec_paramgen_curve:P-256",
                        "-out",
                        &key,
                    ],
                );
                // aws-lc signs ES256 with a PKCS#8 key (`pkey` writes SEC1).
                openssl(
                    dir,
                    &[
                        "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &der,
                    ],
                );
            }
        }
        openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
        let der = std::fs::read(dir.join(der)).unwrap();
        let signing = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_der(&der),
            _ => EncodingKey::from_ec_der(&der),
        };
        TestKey {
            alg,
            kid: kid.to_owned(),
            signing,
            public_pem: dir.join(public),
        }
    }

    /// The public key as a JWKS entry, as identity providers publish it.
    fn jwk(&self) -> Value {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.signing, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        serde_json::to_value(jwk).unwrap()
    }

    /// A token signed with this key, its kid in the header.
    fn token(&self, extra: Value) -> String {
        self.token_as(self.alg, Some(&self.kid), extra, 3600)
    }

    fn token_as(&self, alg: Algorithm, kid: Option<&str>, extra: Value, valid_for: i64) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims(extra, valid_for), &self.signing).unwrap()
    }
}

fn claims(extra: Value, valid_for: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = json!({"sub": "idp-user", "exp": now + valid_for});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    c
}

/// `GET /api/devices` with `token`: the status and the device ids seen.
async fn devices(gw: &Gateway, token: &str) -> (u16, Vec<String>) {
    let (status, body) = get_json(gw.addr, "/api/devices", token).await;
    let ids = body
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["device"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (status, ids)
}

async fn status_of(gw: &Gateway, token: &str) -> u16 {
    devices(gw, token).await.0
}

/// Two devices in Redis, one in `truck-*` and one outside it.
async fn two_devices(env: &Env) {
    assert!(env.location("truck-1", 1_000, 51.5, -0.1).await);
    assert!(env.location("van-1", 1_000, 52.5, 13.4).await);
}

fn run_token(args: &[&str], secret: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("token")
        .args(args)
        .env_remove("FIELDCAST_JWT_SECRET");
    if let Some(s) = secret {
        cmd.env("FIELDCAST_JWT_SECRET", s);
    }
    cmd.output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_mints_what_the_gateway_accepts_with_its_scope() {
    let env = Env::new().await;
    two_devices(&env).await;
    let gw = env.gateway().await;

    let out = run_token(
        &["--sub", "alice", "--devices", "truck-*", "--ttl", "8h"],
        Some(SECRET),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(
        devices(&gw, &token).await,
        (200, vec!["truck-1".to_owned()])
    );

    // Without --publish the holder may not publish; with it, it may.
    let publish = |t: String| {
        let addr = gw.addr;
        async move {
            let body = json!({"channel":"user:1","data":{"x":1}}).to_string();
            http(addr, "POST", "/api/publish", Some(&t), Some(&body))
                .await
                .0
        }
    };
    assert_eq!(publish(token.clone()).await, 403);
    let out = run_token(&["--sub", "bob", "--publish", "--ttl", "1h"], Some(SECRET));
    let publisher = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(publish(publisher.clone()).await, 202);
    assert_eq!(
        devices(&gw, &publisher).await,
        (200, vec!["truck-1".to_owned(), "van-1".to_owned()]),
        "no --devices: every device"
    );

    // Signed with another secret: refused.
    let out = run_token(&["--sub", "mallory", "--ttl", "1h"], Some("another-secret"));
    let forged = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(status_of(&gw, &forged).await, 401);
    gw.stop().await;
}

#[test]
fn the_token_command_refuses_bad_input_with_exit_2_and_one_line() {
    let cases: [(&[&str], Option<&str>, &str); 4] = [
        (&["--sub", "a", "--ttl", "8h"], None, "FIELDCAST_JWT_SECRET"),
        (&["--sub", "a", "--ttl", "soon"], Some(SECRET), "ttl"),
        (&["--sub", "a", "--ttl", "0s"], Some(SECRET), "ttl"),
        (&["--ttl", "8h"], Some(SECRET), "sub"),
    ];
    for (args, secret, needle) in cases {
        let out = run_token(args, secret);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed a token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_and_es256_tokens_verify_against_a_pem_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = TestKey::rsa(dir.path(), "rsa");
    let ec = TestKey::ec(dir.path(), "ec");
    let other_rsa = TestKey::rsa(dir.path(), "other");
    let env = Env::new().await;
    two_devices(&env).await;

    let mut config = env.config();
    config.jwt_public_key = Some(rsa.public_pem.clone());
    let gw = Gateway::start(config).await;
    let scoped = rsa.token(json!({"devices": ["van-*"]}));
    assert_eq!(devices(&gw, &scoped).await, (200, vec!["van-1".to_owned()]));
    // A kid the gateway has no JWKS for does not matter to the file key.
    let no_kid = rsa.token_as(
        Algorithm::RS256,
        None,
        json!({"devices": ["truck-1"]}),
        3600,
    );
    assert_eq!(
        devices(&gw, &no_kid).await,
        (200, vec!["truck-1".to_owned()])
    );
    assert_eq!(status_of(&gw, &token(json!({}))).await, 200, "HS256 stays");
    refused_around(&gw, &rsa, &other_rsa).await;
    let es256 = ec.token(json!({}));
    assert_eq!(status_of(&gw, &es256).await, 401, "ES256 without an EC key");
    gw.stop().await;

    let mut config = env.config();
    config.jwt_public_key = Some(ec.public_pem.clone());
    let gw = Gateway::start(config).await;
    assert_eq!(
        devices(&gw, &ec.token(json!({"devices": ["truck-*"]}))).await,
        (200, vec!["truck-1".to_owned()])
    );
    assert_eq!(
        status_of(&gw, &rsa.token(json!({}))).await,
        401,
        "RS256 without an RSA key"
    );
    let other_ec = TestKey::ec(dir.path(), "other-ec");
    assert_eq!(
        status_of(&gw, &other_ec.token(json!({}))).await,
        401,
        "another EC key"
    );
    gw.stop().await;
}

/// What a gateway holding `good`'s public key must refuse.
async fn refused_around(gw: &Gateway, good: &TestKey, other_key: &TestKey) {
    let cases = [
        ("signed by another key", other_key.token(json!({}))),
        (
            "expired",
            good.token_as(good.alg, Some(&good.kid), json!({}), -3600),
        ),
        ("alg none", token_alg_none()),
        (
            "HS256 keyed with the public key",
            hs256_with_public_key(good),
        ),
        ("garbage", "a.b.c".to_owned()),
    ];
    for (what, token) in cases {
        let (status, body) = get_json(gw.addr, "/api/devices", &token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
}

/// The HS/RS confusion: an HS256 token whose HMAC key is the PEM text of
/// the public key (what a verifier that trusts the header would use).
fn hs256_with_public_key(key: &TestKey) -> String {
    let pem = std::fs::read(&key.public_pem).unwrap();
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({}), 3600),
        &EncodingKey::from_secret(&pem).unwrap(),
    )
    .unwrap()
}

/// An identity provider's JWKS endpoint on 127.0.0.1:0: serves whatever
/// set the test puts, counts fetches, and answers 500 while `failing`.
struct Idp {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    stop: tokio_util::sync::CancellationToken,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let app = {
            let (keys, fetches, failing) = (keys.clone(), fetches.clone(), failing.clone());
            axum::Router::new().route(
                "/jwks.json",
                axum::routing::get(move || {
                    let (keys, fetches, failing) = (keys.clone(), fetches.clone(), failing.clone());
                    async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        if failing.load(Ordering::SeqCst) {
                            return Err(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                        }
                        let set = keys.lock().unwrap().clone();
                        Ok(axum::Json(json!({ "keys": set })))
                    }
                }),
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(until.cancelled_owned())
                .await
        });
        Idp {
            url,
            keys,
            fetches,
            failing,
            stop,
        }
    }

    fn publish(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn jwks_config(env: &Env, idp: &Idp) -> fieldcast_gateway::Config {
    let mut config = env.config();
    config.jwt_jwks_url = Some(idp.url.clone());
    // Only unknown kids refresh within a test's time; the periodic fetch
    // would hide whether they do.
    config.jwt_jwks_refresh = std::time::Duration::from_secs(3600);
    config.jwt_jwks_min_interval = std::time::Duration::from_millis(200);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_by_kid_and_rotation_takes_effect_on_an_unknown_kid() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = TestKey::rsa(dir.path(), "k1");
    let e1 = TestKey::ec(dir.path(), "e1");
    let k2 = TestKey::rsa(dir.path(), "k2");
    let k3 = TestKey::ec(dir.path(), "k3");
    let env = Env::new().await;
    two_devices(&env).await;
    let idp = Idp::start(vec![]).await;
    idp.publish(&[&k1, &e1]);
    let gw = Gateway::start(jwks_config(&env, &idp)).await;

    assert_eq!(
        devices(&gw, &k1.token(json!({"devices": ["truck-*"]}))).await,
        (200, vec!["truck-1".to_owned()])
    );
    assert_eq!(
        devices(&gw, &e1.token(json!({"devices": ["van-*"]}))).await,
        (200, vec!["van-1".to_owned()])
    );
    assert_eq!(status_of(&gw, &token(json!({}))).await, 200, "HS256 stays");
    // The header's alg is held to the key its kid names.
    let e1_as_k1 = e1.token_as(Algorithm::ES256, Some("k1"), json!({}), 3600);
    assert_eq!(
        status_of(&gw, &e1_as_k1).await,
        401,
        "ES256 under an RSA key's kid"
    );
    let other = TestKey::rsa(dir.path(), "other");
    let forged = other.token_as(Algorithm::RS256, Some("k1"), json!({}), 3600);
    assert_eq!(status_of(&gw, &forged).await, 401, "k1's kid, another key");
    refused_around(&gw, &k1, &other).await;

    // The provider publishes its next key; the first token signed with it
    // is refused but makes the gateway fetch again.
    let before = idp.fetches.load(Ordering::SeqCst);
    idp.publish(&[&k1, &k2]);
    let t2 = k2.token(json!({}));
    wait_until(WAIT, "k2 accepted after a refresh", || {
        let t2 = t2.clone();
        let gw = &gw;
        async move { status_of(gw, &t2).await == 200 }
    })
    .await
    .unwrap();
    assert!(
        idp.fetches.load(Ordering::SeqCst) > before,
        "an unknown kid fetched the JWKS"
    );
    // Tokens of the old key keep working while it is published; e1's
    // stop at the refresh that no longer finds it.
    assert_eq!(
        status_of(&gw, &k1.token(json!({}))).await,
        200,
        "k1 still published"
    );
    assert_eq!(
        status_of(&gw, &e1.token(json!({}))).await,
        401,
        "e1 withdrawn"
    );

    // The next rotation drops k1: once k3 verifies, k1 is gone too.
    idp.publish(&[&k2, &k3]);
    let t3 = k3.token(json!({}));
    wait_until(WAIT, "k3 accepted after a refresh", || {
        let t3 = t3.clone();
        let gw = &gw;
        async move { status_of(gw, &t3).await == 200 }
    })
    .await
    .unwrap();
    assert_eq!(
        status_of(&gw, &k1.token(json!({}))).await,
        401,
        "k1 withdrawn"
    );
    assert_eq!(status_of(&gw, &t2).await, 200, "k2 still published");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_kids_do_not_make_the_gateway_hammer_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = TestKey::ec(dir.path(), "k1");
    let env = Env::new().await;
    let idp = Idp::start(vec![]).await;
    idp.publish(&[&k1]);
    let mut config = jwks_config(&env, &idp);
    config.jwt_jwks_min_interval = std::time::Duration::from_secs(3600);
    let gw = Gateway::start(config).await;
    assert_eq!(idp.fetches.load(Ordering::SeqCst), 1, "the fetch at start");

    for i in 0..20 {
        let t = k1.token_as(
            Algorithm::ES256,
            Some(&format!("made-up-{i}")),
            json!({}),
            3600,
        );
        assert_eq!(status_of(&gw, &t).await, 401);
    }
    // Without the rate limit the refresh would have fetched within
    // milliseconds of the first request; give it ample time to (wrongly) do so.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        idp.fetches.load(Ordering::SeqCst),
        1,
        "no fetch within the min interval"
    );
    assert_eq!(status_of(&gw, &k1.token(json!({}))).await, 200);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_not_ready_until_its_jwks_is_fetched_and_keeps_keys_when_the_idp_fails() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = TestKey::ec(dir.path(), "k1");
    let env = Env::new().await;
    let idp = Idp::start(vec![]).await;
    idp.publish(&[&k1]);
    idp.failing.store(true, Ordering::SeqCst);
    let gw = Gateway::start_unready(jwks_config(&env, &idp)).await;

    let addr = gw.addr;
    wait_until(WAIT, "a failed JWKS fetch", || async {
        idp.fetches.load(Ordering::SeqCst) >= 1
    })
    .await
    .unwrap();
    let (status, _, body) = http(addr, "GET", "/readyz", None, None).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &body["token_keys"]),
        (503, &json!(false)),
        "{body}"
    );
    assert_eq!(status_of(&gw, &k1.token(json!({}))).await, 401);

    // The provider recovers: the retry (backoff from 1 s) loads the keys.
    idp.failing.store(false, Ordering::SeqCst);
    let gw = gw.ready().await;
    assert_eq!(status_of(&gw, &k1.token(json!({}))).await, 200);

    // A failing provider from now on: the keys held still verify, and an
    // unknown kid's refresh failing changes nothing.
    idp.failing.store(true, Ordering::SeqCst);
    let k2 = TestKey::ec(dir.path(), "k2");
    let before = idp.fetches.load(Ordering::SeqCst);
    assert_eq!(status_of(&gw, &k2.token(json!({}))).await, 401);
    wait_until(WAIT, "the failed refresh", || async {
        idp.fetches.load(Ordering::SeqCst) > before
    })
    .await
    .unwrap();
    assert_eq!(status_of(&gw, &k1.token(json!({}))).await, 200, "keys kept");
    assert_eq!(
        http(addr, "GET", "/readyz", None, None).await.0,
        200,
        "still ready"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_bind_provider_tokens_only() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = TestKey::rsa(dir.path(), "k1");
    let env = Env::new().await;
    let mut config = env.config();
    config.jwt_public_key = Some(k1.public_pem.clone());
    config.jwt_issuer = Some("https://idp.example".into());
    config.jwt_audience = Some("fieldcast".into());
    let gw = Gateway::start(config).await;
    let good = json!({"iss": "https://idp.example", "aud": "fieldcast"});
    assert_eq!(status_of(&gw, &k1.token(good)).await, 200);
    for bad in [
        json!({"iss": "https://idp.example"}),
        json!({"aud": "fieldcast"}),
        json!({"iss": "https://other.example", "aud": "fieldcast"}),
        json!({"iss": "https://idp.example", "aud": "another-app"}),
    ] {
        assert_eq!(status_of(&gw, &k1.token(bad.clone())).await, 401, "{bad}");
    }
    assert_eq!(
        status_of(&gw, &token(json!({}))).await,
        200,
        "HS256 is not bound"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_json_carries_the_login_url() {
    let env = Env::new().await;
    let mut config = env.config();
    config.login_url = Some("https://sso.example/login?app=map".into());
    let gw = Gateway::start(config).await;
    let (status, _, body) = http(gw.addr, "GET", "/config.json", None, None).await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["login_url"], "https://sso.example/login?app=map");
    gw.stop().await;
}
