//! Pulls from a registry served by the test itself on 127.0.0.1 (never a real registry).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use common::*;
use serde_json::json;
use warren_images::{
    ImageError, ImageStore, ImageStoreConfig, NoProgress, RegistryAuth, RegistryCredential,
};

const TOKEN: &str = "test-token-123";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";

#[derive(Default)]
struct Registry {
    /// tag or digest -> (media type, body)
    manifests: HashMap<String, (String, Vec<u8>)>,
    blobs: HashMap<String, Vec<u8>>,
    require_auth: bool,
    requests: AtomicUsize,
    token_requests: AtomicUsize,
    port: AtomicUsize,
    tamper_blobs: AtomicBool,
}

impl Registry {
    fn add_image(&mut self, img: &TestImage) {
        for l in &img.layers {
            self.blobs.insert(sha(&l.stored), l.stored.clone());
        }
        self.blobs
            .insert(img.config_digest.clone(), img.config.clone());
        self.manifests.insert(
            img.manifest_digest.clone(),
            (
                "application/vnd.oci.image.manifest.v1+json".into(),
                img.manifest.clone(),
            ),
        );
    }

    fn tag(&mut self, tag: &str, media_type: &str, body: Vec<u8>) {
        self.manifests
            .insert(sha(&body), (media_type.to_string(), body.clone()));
        self.manifests
            .insert(tag.to_string(), (media_type.to_string(), body));
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        !self.require_auth
            || headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {TOKEN}"))
    }

    fn challenge(&self, repo: &str) -> Response {
        let port = self.port.load(Ordering::SeqCst);
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!(
                    "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\",scope=\"repository:{repo}:pull\""
                ),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response()
    }
}

async fn v2_root(State(r): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    if !r.authorized(&headers) {
        return r.challenge("");
    }
    (StatusCode::OK, "{}").into_response()
}

async fn v2(
    State(r): State<Arc<Registry>>,
    UrlPath(rest): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"NOT_FOUND","message":"no such thing"}]}"#,
        )
            .into_response()
    };
    let (repo, kind, reference) = if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        (repo, "manifests", reference)
    } else if let Some((repo, reference)) = rest.rsplit_once("/blobs/") {
        (repo, "blobs", reference)
    } else {
        return not_found();
    };
    if repo != "test/img" {
        return not_found();
    }
    if !r.authorized(&headers) {
        return r.challenge(repo);
    }
    match kind {
        "manifests" => match r.manifests.get(reference) {
            Some((mt, body)) => (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, mt.clone()),
                    (
                        header::HeaderName::from_static("docker-content-digest"),
                        sha(body),
                    ),
                ],
                body.clone(),
            )
                .into_response(),
            None => not_found(),
        },
        _ => match r.blobs.get(reference) {
            Some(body) => {
                let mut body = body.clone();
                if r.tamper_blobs.load(Ordering::SeqCst) && body.len() > 100 {
                    let i = body.len() / 2;
                    body[i] ^= 1;
                }
                (StatusCode::OK, body).into_response()
            }
            None => not_found(),
        },
    }
}

async fn token(State(r): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    r.requests.fetch_add(1, Ordering::SeqCst);
    r.token_requests.fetch_add(1, Ordering::SeqCst);
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(want.as_str())
    {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    axum::Json(json!({ "token": TOKEN })).into_response()
}

/// Start the registry; returns its state, its `127.0.0.1:port` and the server task.
async fn serve(mut reg: Registry) -> (Arc<Registry>, String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    reg.port = AtomicUsize::new(port as usize);
    let state = Arc::new(reg);
    let app = Router::new()
        .route("/v2/", get(v2_root))
        .route("/v2/{*rest}", get(v2))
        .route("/token", get(token))
        .with_state(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (state, format!("127.0.0.1:{port}"), task)
}

fn count(r: &Registry) -> usize {
    r.requests.load(Ordering::SeqCst)
}

fn store(cache: &std::path::Path, creds: Vec<RegistryCredential>) -> ImageStore {
    let mut cfg = ImageStoreConfig::new(cache);
    cfg.registry_auth = creds;
    ImageStore::new(cfg).expect("store")
}

fn alice(host: &str) -> Vec<RegistryCredential> {
    vec![RegistryCredential {
        host: host.to_string(),
        auth: RegistryAuth::Basic {
            username: USER.into(),
            password: PASSWORD.into(),
        },
    }]
}

/// An arm64 image that must never be picked.
fn arm64_image() -> TestImage {
    let l = tar_layer(&[E::File("ARM64", "wrong platform\n", 0o644)]);
    make_image(vec![gzipped(l)], json!({"Cmd": ["/arm"]}), "arm64")
}

fn index_of(amd: &TestImage, arm: &TestImage) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm.manifest_digest,
             "size": arm.manifest.len(), "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd.manifest_digest,
             "size": amd.manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))
    .expect("json")
}

#[tokio::test]
async fn anonymous_pull_then_cache_hits_without_network() {
    let img = standard_image();
    let mut reg = Registry::default();
    reg.add_image(&img);
    reg.tag(
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        img.manifest.clone(),
    );
    let (state, host, server) = serve(reg).await;
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let s = store(&cache, vec![]);
    let rec = Recorder::default();

    let reference = format!("{host}/test/img:v1");
    let image = s.resolve(&reference, &rec).await.expect("pull");
    assert_eq!(image.digest, img.config_digest);
    assert_eq!(image.reference, reference);
    assert_eq!(names(&image.rootfs, "/etc"), vec!["hello.txt", "new.txt"]);
    assert_eq!(names(&image.rootfs, "/opaque"), vec!["upper.txt"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/srv"));
    assert!(
        *rec.bytes_events.lock().expect("lock") > 0,
        "no download progress"
    );
    let phases = rec.phases.lock().expect("lock").clone();
    assert_eq!(
        phases
            .iter()
            .filter(|p| p.starts_with("pulling layer"))
            .count(),
        3
    );
    // manifest + config + 3 layers, anonymously.
    assert_eq!(count(&state), 5);
    assert_eq!(state.token_requests.load(Ordering::SeqCst), 0);
    // Downloaded layers live in the build dir only.
    assert!(cache_leftovers(&cache)
        .iter()
        .all(|p| p.starts_with(cache.join("images"))));

    // Pinned by the manifest digest: no request at all.
    let before = count(&state);
    let pinned = s
        .resolve(
            &format!("{host}/test/img@{}", img.manifest_digest),
            &NoProgress,
        )
        .await
        .expect("pinned");
    assert_eq!(pinned.digest, img.config_digest);
    assert_eq!(count(&state), before, "a pinned digest touched the network");

    // The tag again: one HEAD to see that it has not moved, no download.
    let again = s
        .resolve(&format!("registry:{host}/test/img:v1"), &NoProgress)
        .await
        .expect("tag again");
    assert_eq!(again.digest, img.config_digest);
    assert_eq!(count(&state), before + 1);

    // Registry gone: the tag pulled before is still served from the cache.
    server.abort();
    let _ = server.await;
    let offline = s.resolve(&reference, &NoProgress).await.expect("offline");
    assert_eq!(offline.digest, img.config_digest);
    // But something never pulled fails with a registry error naming the host.
    let err = s
        .resolve(&format!("{host}/test/img:other"), &NoProgress)
        .await
        .expect_err("offline, never pulled");
    assert!(
        matches!(&err, ImageError::Registry { registry, .. } if registry == &host),
        "{err:?}"
    );
}

#[tokio::test]
async fn manifest_list_resolves_to_amd64_with_bearer_token_auth() {
    let amd = standard_image();
    let arm = arm64_image();
    let index = index_of(&amd, &arm);
    let index_digest = sha(&index);
    let mut reg = Registry {
        require_auth: true,
        ..Default::default()
    };
    reg.add_image(&amd);
    reg.add_image(&arm);
    reg.tag("multi", "application/vnd.oci.image.index.v1+json", index);
    let (state, host, _server) = serve(reg).await;

    // Without credentials, and with wrong ones: Unauthorized.
    let t = tempfile::tempdir().expect("tmp");
    let anon = store(&t.path().join("anon"), vec![]);
    let err = anon
        .resolve(&format!("{host}/test/img:multi"), &NoProgress)
        .await
        .expect_err("needs auth");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    let wrong = store(
        &t.path().join("wrong"),
        vec![RegistryCredential {
            host: host.clone(),
            auth: RegistryAuth::Basic {
                username: USER.into(),
                password: "nope".into(),
            },
        }],
    );
    let err = wrong
        .resolve(&format!("{host}/test/img:multi"), &NoProgress)
        .await
        .expect_err("wrong password");
    assert!(matches!(err, ImageError::Unauthorized { .. }), "{err:?}");
    assert!(anon.list().expect("list").is_empty() && wrong.list().expect("list").is_empty());

    // With credentials, by index digest: the token flow runs and amd64 is chosen.
    let cache = t.path().join("cache");
    let s = store(&cache, alice(&host));
    let pinned = format!("{host}/test/img@{index_digest}");
    let tokens_before = state.token_requests.load(Ordering::SeqCst);
    let image = s.resolve(&pinned, &NoProgress).await.expect("pull");
    assert_eq!(image.digest, amd.config_digest, "did not pick linux/amd64");
    assert!(state.token_requests.load(Ordering::SeqCst) > tokens_before);
    assert!(names(&image.rootfs, "/").iter().all(|n| n != "ARM64"));
    assert_eq!(cat(&image.rootfs, "/etc/hello.txt"), "hello\n");

    // Second resolve by digest: the server is not contacted at all.
    let before = count(&state);
    let again = s.resolve(&pinned, &NoProgress).await.expect("again");
    assert_eq!(again.digest, amd.config_digest);
    assert_eq!(again.rootfs, image.rootfs);
    assert_eq!(
        count(&state),
        before,
        "second resolve by digest contacted the registry"
    );

    // The tag, through the same index: the image is already built, so no layer is fetched.
    let tagged = s
        .resolve(&format!("{host}/test/img:multi"), &NoProgress)
        .await
        .expect("tag");
    assert_eq!(tagged.digest, amd.config_digest);
    assert_eq!(s.list().expect("list").len(), 1);
}

#[tokio::test]
async fn tampered_blob_from_registry_is_corrupt_and_not_cached() {
    let img = standard_image();
    let mut reg = Registry::default();
    reg.add_image(&img);
    reg.tag(
        "v1",
        "application/vnd.oci.image.manifest.v1+json",
        img.manifest.clone(),
    );
    reg.tamper_blobs = AtomicBool::new(true);
    let (_state, host, _server) = serve(reg).await;
    let t = tempfile::tempdir().expect("tmp");
    let cache = t.path().join("cache");
    let s = store(&cache, vec![]);
    let err = s
        .resolve(&format!("{host}/test/img:v1"), &NoProgress)
        .await
        .expect_err("tampered");
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err:?}");
    assert!(
        cache_leftovers(&cache).is_empty(),
        "{:?}",
        cache_leftovers(&cache)
    );

    let missing = s
        .resolve(&format!("{host}/test/nothere:v1"), &NoProgress)
        .await
        .expect_err("404");
    assert!(
        matches!(missing, ImageError::NotFound { .. }),
        "{missing:?}"
    );
}
