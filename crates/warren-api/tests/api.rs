//! The API against a test backend (no VMs): authentication, validation, idempotency,
//! state transitions, TTL, errors, 501s, gateway tokens and the OpenAPI document. The
//! same behaviour against real VMs is covered by warren-cli's server tests and by
//! tests/compat.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::TestBackend;
use tokio::sync::mpsc;
use warren_api::backend::{BackendEvent, WorkspaceBackend};
use warren_api::{ApiConfig, AppState, Manager};
use warren_gateway::GatewayKeys;
use warren_state::Store;

struct Api {
    client: support::Client,
    backend: Arc<TestBackend>,
    keys: GatewayKeys,
}

impl std::ops::Deref for Api {
    type Target = support::Client;
    fn deref(&self) -> &support::Client {
        &self.client
    }
}

impl Api {
    async fn start(tweak: impl FnOnce(&mut ApiConfig)) -> Api {
        let store = Store::open_in_memory().await.unwrap();
        let c = store.create_client("admin", true).await.unwrap();
        Self::start_on(store, c, tweak).await
    }

    /// Start on a store that already holds rows, as a server does after a restart.
    async fn start_on(
        store: Store,
        c: warren_state::NewClientSecret,
        tweak: impl FnOnce(&mut ApiConfig),
    ) -> Api {
        let backend = Arc::new(TestBackend::default());
        let keys = GatewayKeys::from_secret(b"test-secret-test-secret-test-sec");
        let mut config = ApiConfig {
            default_image: "busybox".into(),
            ttl_check_interval: Duration::from_millis(100),
            ..ApiConfig::default()
        };
        config.capacity.max_memory_mb = 100_000;
        tweak(&mut config);
        let (tx, rx) = mpsc::unbounded_channel();
        backend.set_events(tx);
        let manager = Manager::new(store, backend.clone(), config, keys.clone());
        manager.startup().await.unwrap();
        manager.spawn_background(rx);
        let app = warren_api::router(AppState::new(manager));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Api {
            client: support::Client::new(url, c),
            backend,
            keys,
        }
    }

    async fn wait_for(&self, id: &str, what: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let (s, b) = self.call("GET", &format!("/workspace/{id}"), None).await;
            if s == 200 && what(&b["workspace"]) {
                return b["workspace"].clone();
            }
            if s == 404 && what(&Value::Null) {
                return Value::Null;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("workspace {id} never reached the expected state");
    }

    async fn total(&self) -> i64 {
        let (_, b) = self.call("GET", "/workspace", None).await;
        b["total"].as_i64().unwrap()
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"], body["message"], "{body}");
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "{body}"
    );
}

#[tokio::test]
async fn credentials_are_checked() {
    let api = Api::start(|_| {}).await;
    let r = api
        .http
        .get(format!("{}/workspace", api.url))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 401, "missing_credentials");
    let r = api
        .http
        .get(format!("{}/workspace", api.url))
        .header("X-Client-ID", &api.id)
        .header("X-Client-Secret", "wsk_wrong")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 401, "invalid_credentials");
    let r = api
        .http
        .get(format!("{}/workspace", api.url))
        .bearer_auth(format!("{}:{}", api.id, api.secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["success"].clone(), b["total"].clone()),
        (json!(true), json!(0))
    );
    // Public: health and the OpenAPI document.
    let r = api
        .http
        .get(format!("{}/openapi.json", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test]
async fn invalid_fields_get_422_naming_them_and_change_nothing() {
    let api = Api::start(|_| {}).await;
    let cases = [
        (json!({"cpus": 0}), "cpus"),
        (json!({"cpus": 64}), "cpus"),
        (json!({"memory_mb": "lots"}), "memory_mb"),
        (json!({"memory_mb": 64}), "memory_mb"),
        (json!({"mode": "forever"}), "mode"),
        (json!({"slug": "NO"}), "slug"),
        (json!({"name": ""}), "name"),
        (json!({"image": "two words"}), "image"),
        (json!({"config": {"ttl": "soon"}}), "config.ttl"),
        (
            json!({"config": {"ttl_action": "explode"}}),
            "config.ttl_action",
        ),
        (json!({"config": {"env": ["NOVALUE"]}}), "config.env"),
        (
            json!({"config": {"restart_policy": "sometimes"}}),
            "config.restart_policy",
        ),
        (json!({"config": 7}), "config"),
        (json!({"wait_ready": "yes"}), "wait_ready"),
    ];
    for (body, field) in cases {
        let (s, b) = api.call("POST", "/workspace", Some(body.clone())).await;
        assert_error(s, &b, 422, "validation_error");
        assert_eq!(b["details"]["field"], field, "{body} -> {b}");
    }
    // Malformed JSON too.
    let r = api
        .http
        .post(format!("{}/workspace", api.url))
        .header("X-Client-ID", &api.id)
        .header("X-Client-Secret", &api.secret)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    assert_error(s, &r.json().await.unwrap(), 422, "validation_error");
    assert_eq!(api.total().await, 0);
    assert!(api.backend.calls().is_empty(), "{:?}", api.backend.calls());

    // A valid create, then invalid updates leave it as it was.
    let (s, b) = api
        .call("POST", "/workspace", Some(json!({"name": "keep"})))
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    let before = api.wait_for(&id, |w| w["ready"] == true).await;
    for (body, field) in [
        (json!({"slug": "Bad Slug"}), "slug"),
        (json!({"name": 5}), "name"),
        (json!({"config": {"ttl": -1}}), "config.ttl"),
    ] {
        let (s, b) = api
            .call("PUT", &format!("/workspace/{id}"), Some(body))
            .await;
        assert_error(s, &b, 422, "validation_error");
        assert_eq!(b["details"]["field"], field);
    }
    let (s, b) = api
        .call(
            "PUT",
            &format!("/workspace/{id}/lifecycle/ttl"),
            Some(json!({"ttl": "1y"})),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = api
        .call(
            "PUT",
            &format!("/workspace/{id}/metadata"),
            Some(json!({"metadata": {"a": 1}})),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    let (_, after) = api.call("GET", &format!("/workspace/{id}"), None).await;
    assert_eq!(after["workspace"], before);
    let (_, m) = api
        .call("GET", &format!("/workspace/{id}/metadata"), None)
        .await;
    assert_eq!(m["metadata"], json!({}));
}

#[tokio::test]
async fn same_idempotency_key_never_creates_two() {
    let api = Arc::new(Api::start(|_| {}).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.call(
                "POST",
                "/workspace",
                Some(json!({"idempotency_key": "k-1", "name": "once"})),
            )
            .await
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for t in tasks {
        let (s, b) = t.await.unwrap();
        assert!(s == 200 || s == 201, "{s} {b}");
        if b["created"] == true {
            created += 1;
        }
        ids.insert(b["workspace"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(created, 1);
    let id = ids.into_iter().next().unwrap();
    api.wait_for(&id, |w| w["ready"] == true).await;
    assert_eq!(api.total().await, 1);
    let creates = api
        .backend
        .calls()
        .iter()
        .filter(|c| c.starts_with("create"))
        .count();
    assert_eq!(creates, 1, "{:?}", api.backend.calls());
    // Another key makes another workspace.
    let (s, _) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"idempotency_key": "k-2"})),
        )
        .await;
    assert_eq!(s, 201);
    assert_eq!(api.total().await, 2);
}

#[tokio::test]
async fn lifecycle_of_a_workspace() {
    let api = Api::start(|_| {}).await;
    let (s, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"name": "one", "slug": "one-ws", "cpus": 2, "config": {"env": ["A=1"]}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let w = &b["workspace"];
    let id = w["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ws_"));
    assert_eq!(w["resources"]["cpus"], 2);
    assert_eq!(w["image"], "busybox");
    assert!(["queued", "running", "ready"].contains(&w["provisioning"]["state"].as_str().unwrap()));
    let w = api.wait_for(&id, |w| w["ready"] == true).await;
    assert_eq!(w["status"], "running");
    assert_eq!(w["info"]["is_running"], true);
    assert_eq!(w["provisioning"]["state"], "ready");
    assert_eq!(w["internal_ip"], "10.88.0.6");
    // By slug too.
    let (s, b) = api.call("GET", "/workspace/one-ws", None).await;
    assert_eq!((s, b["workspace"]["id"].clone()), (200, json!(id)));

    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("stopped")), "{b}");
    assert_eq!(b["workspace"]["ready"], false);
    assert_eq!(b["workspace"]["info"]["user_requested_stop"], true);
    // Stop is safe to repeat.
    let (s, _) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!(s, 200);
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_error(s, &b, 409, "conflict");
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/start"), None)
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("running")), "{b}");
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("paused")), "{b}");
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/resume"), None)
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("running")), "{b}");
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/restart"), None)
        .await;
    assert_eq!((s, b["status"].clone()), (200, json!("running")), "{b}");
    assert_eq!(
        api.backend.calls()[1..],
        [
            format!("stop {id}"),
            format!("start {id}"),
            format!("pause {id}"),
            format!("resume {id}"),
            format!("stop {id}"),
            format!("start {id}")
        ]
    );

    // Update and metadata.
    let (s, b) = api
        .call(
            "PUT",
            &format!("/workspace/{id}"),
            Some(json!({"name": "renamed", "config": {"note": "x"}})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["workspace"]["name"], "renamed");
    assert_eq!(b["workspace"]["config"]["note"], "x");
    assert_eq!(b["workspace"]["config"]["env"], json!(["A=1"]));
    let (_, b) = api
        .call(
            "PUT",
            &format!("/workspace/{id}/metadata"),
            Some(json!({"metadata": {"a": "1"}})),
        )
        .await;
    assert_eq!(b["metadata"], json!({"a": "1"}));
    let (_, b) = api
        .call(
            "PATCH",
            &format!("/workspace/{id}/metadata"),
            Some(json!({"metadata": {"b": "2"}})),
        )
        .await;
    assert_eq!(b["metadata"], json!({"a": "1", "b": "2"}));
    let (_, b) = api
        .call("GET", &format!("/workspace/{id}/logs?tail_lines=2"), None)
        .await;
    assert_eq!(b["lines"], json!(["line two", "line three"]));
    let (_, b) = api
        .call("GET", &format!("/workspace/{id}/details"), None)
        .await;
    let ops: Vec<&str> = b["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap())
        .collect();
    assert!(ops.starts_with(&["create", "provision", "stop"]), "{ops:?}");

    // Lifecycle conversions.
    let (s, b) = api
        .call(
            "POST",
            &format!("/workspace/{id}/lifecycle/temporary"),
            Some(json!({"ttl": "1h", "ttl_action": "stop"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["mode"].clone(), b["ttl_seconds"].clone()),
        (json!("temporary"), json!(3600))
    );
    assert!(b["expires_at"].is_string());
    let (_, b) = api
        .call(
            "POST",
            &format!("/workspace/{id}/lifecycle/permanent"),
            None,
        )
        .await;
    assert_eq!(
        (b["mode"].clone(), b["expires_at"].clone()),
        (json!("permanent"), Value::Null)
    );

    // Delete is accepted and completes in the background.
    let (s, b) = api.call("DELETE", &format!("/workspace/{id}"), None).await;
    assert_eq!(
        (s, b["accepted"].clone(), b["success"].clone()),
        (202, json!(true), json!(true))
    );
    api.wait_for(&id, |w| w.is_null()).await;
    let (s, b) = api.call("GET", &format!("/workspace/{id}"), None).await;
    assert_error(s, &b, 404, "not_found");
    assert_eq!(api.backend.calls().last().unwrap(), &format!("remove {id}"));
}

#[tokio::test]
async fn unknown_ids_and_later_features() {
    let api = Api::start(|_| {}).await;
    for (m, p) in [
        ("GET", "/workspace/ws_nope"),
        ("POST", "/workspace/ws_nope/start"),
        ("DELETE", "/workspace/ws_nope"),
        ("GET", "/workspace/ws_nope/runtime-api-access/token"),
        ("PUT", "/workspace/ws_nope/metadata"),
    ] {
        let (s, b) = api.call(m, p, Some(json!({"metadata": {}}))).await;
        assert_error(s, &b, 404, "not_found");
        assert_eq!(b["details"]["workspace_id"], "ws_nope");
    }
    // Every endpoint left for later work answers 501 naming its feature and issue.
    for (m, p, feature, issue) in warren_api::routes::unimplemented::LATER {
        let path = p.replace("{id}", "ws_x").replace(['{', '}'], "");
        let (s, b) = api.call(m, &path, None).await;
        assert_error(s, &b, 501, "not_implemented");
        assert_eq!(b["details"]["feature"], *feature, "{m} {p}");
        assert_eq!(b["details"]["issue"], *issue, "{m} {p}");
    }
    let (s, b) = api.call("PATCH", "/workspace", None).await;
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = api.call("GET", "/nothing/here", None).await;
    assert_error(s, &b, 404, "not_found");
    let (s, b) = api
        .call("POST", "/workspace", Some(json!({"namespace": "team-a"})))
        .await;
    assert_error(s, &b, 501, "not_implemented");
    assert_eq!(api.total().await, 0);
}

/// The boot log as server-sent events: while the workspace boots, the lines so far
/// and then each new one until the boot ends (a last line without its newline
/// too), then the stream ends; after the boot, the tail and the end at once.
#[tokio::test]
async fn the_boot_log_streams_until_the_boot_ends() {
    let api = Api::start(|_| {}).await;
    api.backend.hold_create.store(true, Ordering::SeqCst);
    let (_, b) = api.call("POST", "/workspace", None).await;
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    api.wait_for(&id, |w| w["provisioning"]["phase"] == "preparing")
        .await;
    let path = format!("/workspace/{id}/logs/stream/boot");
    let client = (*api).clone();
    let p = path.clone();
    let reader = tokio::spawn(async move { client.sse(&p).await });
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !reader.is_finished(),
        "the stream ended while the workspace boots"
    );
    api.backend
        .boot_log
        .lock()
        .unwrap()
        .push_str("line four\nline five");
    tokio::time::sleep(Duration::from_millis(600)).await;
    api.backend.hold_create.store(false, Ordering::SeqCst);
    let (st, events) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the stream did not end after the boot")
        .unwrap();
    assert_eq!(st, 200);
    let lines: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            "line one",
            "line two",
            "line three",
            "line four",
            "line five"
        ]
    );
    assert!(events
        .iter()
        .all(|e| e["source"] == "boot" && e["timestamp"].is_string()));

    api.wait_for(&id, |w| w["ready"] == true).await;
    let (st, events) = api.sse(&format!("{path}?tail_lines=2")).await;
    assert_eq!(st, 200);
    let lines: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["line four", "line five"]);
    let (st, b) = api.sse(&format!("{path}?tail_lines=0")).await;
    assert_error(st, &b[0], 422, "validation_error");
    let (st, b) = api.sse("/workspace/ws_nonexistent0/logs/stream/boot").await;
    assert_error(st, &b[0], 404, "not_found");
    // The command's log is read from the running VM: a stopped one is a 409.
    let (st, _) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!(st, 200);
    api.wait_for(&id, |w| w["status"] == "stopped").await;
    let (st, b) = api.sse(&format!("/workspace/{id}/logs/stream/cmd")).await;
    assert_error(st, &b[0], 409, "workspace_not_running");
}

#[tokio::test]
async fn provisioning_reports_its_phase() {
    let api = Api::start(|_| {}).await;
    api.backend.hold_create.store(true, Ordering::SeqCst);
    let (_, b) = api.call("POST", "/workspace", None).await;
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    let w = api
        .wait_for(&id, |w| w["provisioning"]["phase"] == "preparing")
        .await;
    assert_eq!(w["provisioning"]["state"], "running");
    assert_eq!(w["provisioning"]["message"], "Preparing image busybox");
    assert_eq!(
        (w["ready"].clone(), w["status"].clone()),
        (json!(false), json!("creating"))
    );
    api.backend.hold_create.store(false, Ordering::SeqCst);
    let w = api.wait_for(&id, |w| w["ready"] == true).await;
    assert_eq!(
        (
            w["provisioning"]["state"].clone(),
            w["provisioning"]["phase"].clone()
        ),
        (json!("ready"), json!("ready"))
    );
    assert!(w["provisioning"]["completed_at"].is_string());
}

#[tokio::test]
async fn failed_creation_can_be_retried_or_deleted() {
    let api = Api::start(|_| {}).await;
    api.backend.fail_create.store(true, Ordering::SeqCst);
    let (_, b) = api
        .call("POST", "/workspace", Some(json!({"image": "nope"})))
        .await;
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    let w = api
        .wait_for(&id, |w| w["provisioning"]["state"] == "failed")
        .await;
    assert_eq!(w["provisioning"]["error"]["code"], "CREATE_FAILED");
    assert!(w["provisioning"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert_eq!(w["ready"], false);
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/start"), None)
        .await;
    assert_error(s, &b, 409, "conflict");
    api.backend.fail_create.store(false, Ordering::SeqCst);
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/provisioning/retry"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["workspace"]["id"], json!(id));
    api.wait_for(&id, |w| w["ready"] == true).await;
    let (s, b) = api
        .call("POST", &format!("/workspace/{id}/provisioning/retry"), None)
        .await;
    assert_error(s, &b, 409, "conflict");
}

#[tokio::test]
async fn capacity_is_checked_before_anything_is_allocated() {
    let api = Api::start(|c| {
        c.capacity.max_workspaces_per_client = 1;
        c.capacity.max_memory_mb = 1024;
    })
    .await;
    let (s, b) = api
        .call("POST", "/workspace", Some(json!({"memory_mb": 2048})))
        .await;
    assert_error(s, &b, 409, "POOL_LIMIT_REACHED");
    let (s, _) = api
        .call("POST", "/workspace", Some(json!({"memory_mb": 256})))
        .await;
    assert_eq!(s, 201);
    let (s, b) = api
        .call("POST", "/workspace", Some(json!({"memory_mb": 256})))
        .await;
    assert_error(s, &b, 409, "SANDBOX_LIMIT_REACHED");
    assert_eq!(api.total().await, 1);
}

#[tokio::test]
async fn ttl_expiry_acts_per_ttl_action_and_exit_removes() {
    let api = Api::start(|_| {}).await;
    let (_, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"mode": "temporary", "config": {"ttl": 1, "ttl_action": "stop"}})),
        )
        .await;
    let stop_id = b["workspace"]["id"].as_str().unwrap().to_string();
    let (_, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"mode": "temporary", "config": {"ttl": "1s", "ttl_action": "remove"}})),
        )
        .await;
    let rm_id = b["workspace"]["id"].as_str().unwrap().to_string();
    let (_, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"config": {"remove_on_exit": true, "cmd": "true"}})),
        )
        .await;
    let exit_id = b["workspace"]["id"].as_str().unwrap().to_string();
    api.wait_for(&exit_id, |w| w["ready"] == true).await;
    api.backend.emit(BackendEvent::CmdExited {
        id: exit_id.clone(),
        exit_code: 0,
    });

    let w = api.wait_for(&stop_id, |w| w["status"] == "stopped").await;
    assert_eq!(w["info"]["user_requested_stop"], false);
    api.wait_for(&rm_id, |w| w.is_null()).await;
    api.wait_for(&exit_id, |w| w.is_null()).await;
    assert_eq!(api.total().await, 1);
}

#[tokio::test]
async fn gateway_tokens_name_the_workspace_and_can_be_revoked() {
    let api = Api::start(|c| c.gateway_url = "http://gw.example:1".into()).await;
    let (_, b) = api.call("POST", "/workspace", None).await;
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    api.wait_for(&id, |w| w["ready"] == true).await;
    let (_, st) = api
        .call("GET", &format!("/workspace/{id}/runtime-api-access"), None)
        .await;
    assert_eq!(st["enabled"], false);
    let (s, b) = api
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token"),
            None,
        )
        .await;
    assert_error(s, &b, 409, "runtime_api_disabled");
    let (_, en) = api
        .call(
            "POST",
            &format!("/workspace/{id}/runtime-api-access/enable"),
            None,
        )
        .await;
    assert_eq!(en["enabled"], true);
    assert_eq!(en["gateway_url"], "http://gw.example:1");
    let claims = api.keys.verify(en["token"].as_str().unwrap()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.gen), (id.as_str(), 0));
    let (_, rot) = api
        .call(
            "POST",
            &format!("/workspace/{id}/runtime-api-access/token"),
            None,
        )
        .await;
    assert_eq!(
        api.keys.verify(rot["token"].as_str().unwrap()).unwrap().gen,
        1
    );
    let (_, raw) = api
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token/raw"),
            None,
        )
        .await;
    assert_eq!(
        (raw["token"].clone(), raw["ip"].clone(), raw["port"].clone()),
        (json!("tok"), json!("10.88.0.6"), json!(9990))
    );
    let (_, d) = api
        .call(
            "POST",
            &format!("/workspace/{id}/runtime-api-access/disable"),
            None,
        )
        .await;
    assert_eq!(d["enabled"], false);
    let (_, st) = api
        .call("GET", &format!("/workspace/{id}/runtime-api-access"), None)
        .await;
    assert_eq!(st["enabled"], false);
    // Stopped: no raw token.
    api.call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    let (s, b) = api
        .call(
            "GET",
            &format!("/workspace/{id}/runtime-api-access/token/raw"),
            None,
        )
        .await;
    assert_error(s, &b, 409, "workspace_not_running");
}

#[tokio::test]
async fn list_paginates_and_filters() {
    let api = Api::start(|_| {}).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (_, b) = api
            .call("POST", "/workspace", Some(json!({"name": format!("w{i}")})))
            .await;
        ids.push(b["workspace"]["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        api.wait_for(id, |w| w["ready"] == true).await;
    }
    api.call("POST", &format!("/workspace/{}/stop", ids[0]), None)
        .await;
    let (_, b) = api.call("GET", "/workspace?page=2&limit=2", None).await;
    assert_eq!(
        (b["total"].clone(), b["page"].clone(), b["limit"].clone()),
        (json!(3), json!(2), json!(2))
    );
    assert_eq!(b["workspaces"].as_array().unwrap().len(), 1);
    let (_, b) = api.call("GET", "/workspace?status=stopped", None).await;
    assert_eq!(b["total"], 1);
    assert_eq!(b["workspaces"][0]["id"], json!(ids[0]));
    let (s, b) = api.call("GET", "/workspace?limit=0", None).await;
    assert_error(s, &b, 422, "validation_error");
    let (s, b) = api.call("GET", "/workspace?status=sleeping", None).await;
    assert_error(s, &b, 422, "validation_error");
    let (_, q) = api.call("GET", "/workspace/quota", None).await;
    assert_eq!(q["usage"]["workspaces"], 3);
    let (_, im) = api.call("GET", "/workspace/images?search=busy", None).await;
    assert_eq!(im["images"][0]["id"], "busybox");
}

#[tokio::test]
async fn every_documented_route_is_routed() {
    let api = Api::start(|_| {}).await;
    let routes = warren_api::openapi::ROUTES
        .iter()
        .map(|(m, p, ..)| (*m, *p))
        .chain(
            warren_api::routes::unimplemented::LATER
                .iter()
                .map(|(m, p, ..)| (*m, *p)),
        );
    for (m, p) in routes {
        let path = p.replace("{id}", "ws_missing").replace(['{', '}'], "");
        let (s, b) = api.call(m, &path, Some(json!({}))).await;
        assert_ne!(s, 405, "{m} {p}: method not routed");
        let unrouted = s == 404
            && b["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no such endpoint"));
        assert!(!unrouted, "{m} {p} is documented but not routed");
    }
}

#[test]
fn checked_in_openapi_document_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let want = warren_api::openapi::document_text();
    if std::env::var_os("WARREN_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/openapi.json is stale: regenerate it with `WARREN_BLESS=1 cargo test -p warren-api --test api checked_in_openapi_document_is_current`"
    );
}

#[tokio::test]
async fn workloads_and_stats_need_a_running_workspace_and_valid_boot_workloads() {
    let api = Api::start(|_| {}).await;
    // config.workloads is checked before anything is stored.
    let (s, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"config": {"workloads": [{"name": "w", "cmd": ["x"], "restart_policy": "sometimes"}]}})),
        )
        .await;
    assert_error(s, &b, 422, "validation_error");
    assert_eq!(b["details"]["field"], "config.workloads[0].restart_policy");
    assert_eq!(api.total().await, 0);

    let (s, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"config": {"workloads": [{"name": "w", "cmd": ["sleep", "9"]}]}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    api.wait_for(&id, |w| w["ready"] == true).await;
    let (s, _) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!(s, 200);
    // Workloads live in the VM: a stopped workspace has none to show.
    for (m, p) in [
        ("GET", format!("/workspace/{id}/workloads")),
        ("POST", format!("/workspace/{id}/workloads")),
        ("GET", format!("/workspace/{id}/workloads/w/logs/stream")),
        ("POST", format!("/workspace/{id}/workloads/w/stop")),
        ("GET", format!("/workspace/{id}/stats/stream")),
    ] {
        let (s, b) = api.call(m, &p, None).await;
        assert_error(s, &b, 409, "workspace_not_running");
    }
    let (s, b) = api.call("GET", "/workspace/ws_nope/workloads", None).await;
    assert_error(s, &b, 404, "not_found");
    // The one-shot stats of a stopped workspace still answer (no guest figures).
    let (s, b) = api
        .call("GET", &format!("/workspace/{id}/stats"), None)
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "stopped");
    assert_eq!(b["guest_available"], false);
}

#[tokio::test]
async fn prometheus_metrics_count_states_boots_and_requests() {
    let api = Api::start(|_| {}).await;
    let (s, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"image": "busybox", "wait_ready": true})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    api.call("GET", &format!("/workspace/{id}"), None).await;

    // No credentials needed, aggregates only.
    let resp = reqwest::get(format!("{}/metrics", api.url)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("warren_workspaces{state=\"running\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("warren_workspaces{state=\"stopped\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("warren_workspace_boot_seconds_count{kind=\"create\",outcome=\"ok\"} 1"),
        "{text}"
    );
    // Requests are labelled by route template, never by workspace id.
    assert!(
        text.contains(
            "warren_api_request_seconds_count{method=\"GET\",route=\"/workspace/{id}\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains(&id), "{text}");

    // Stopping moves the count.
    let (s, _) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!(s, 200);
    api.wait_for(&id, |w| w["status"] == "stopped").await;
    let text = reqwest::get(format!("{}/metrics", api.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("warren_workspaces{state=\"running\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("warren_workspaces{state=\"stopped\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn fork_is_checked_and_a_failed_fork_leaves_nothing() {
    let api = Api::start(|c| c.capacity.max_workspaces_per_client = 3).await;
    let (s, b) = api
        .call(
            "POST",
            "/workspace",
            Some(json!({"memory_mb": 256, "wait_ready": true})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let id = b["workspace"]["id"].as_str().unwrap().to_string();
    let fork = format!("/workspace/{id}/fork");
    // Bad counts and names: 422 naming the field.
    for (body, field) in [
        (json!({"count": 0}), "count"),
        (json!({"count": 21}), "count"),
        (json!({"count": 1.5}), "count"),
        (json!({"name": ""}), "name"),
    ] {
        let (s, b) = api.call("POST", &fork, Some(body)).await;
        assert_error(s, &b, 422, "validation_error");
        assert_eq!(b["details"]["field"], field, "{b}");
    }
    // 1 + 3 > 3: refused before anything is stored.
    let (s, b) = api.call("POST", &fork, Some(json!({"count": 3}))).await;
    assert_error(s, &b, 409, "SANDBOX_LIMIT_REACHED");
    assert_eq!(api.total().await, 1);
    // This backend cannot fork: the rows made for the children go again.
    let (s, b) = api.call("POST", &fork, Some(json!({"count": 2}))).await;
    assert!(s >= 500, "{s} {b}");
    assert_eq!(api.total().await, 1);
    // Paused or stopped: 409, nothing made.
    let (s, _) = api
        .call("POST", &format!("/workspace/{id}/pause"), None)
        .await;
    assert_eq!(s, 200);
    let (s, b) = api.call("POST", &fork, None).await;
    assert_error(s, &b, 409, "workspace_not_running");
    let (s, _) = api
        .call("POST", &format!("/workspace/{id}/stop"), None)
        .await;
    assert_eq!(s, 200);
    api.wait_for(&id, |w| w["status"] == "stopped").await;
    let (s, b) = api.call("POST", &fork, Some(json!({"count": 1}))).await;
    assert_error(s, &b, 409, "workspace_not_running");
    assert_eq!(api.total().await, 1);
    assert!(
        !api.backend
            .calls()
            .iter()
            .any(|c| c.starts_with("create ") && !c.ends_with(&id)),
        "{:?}",
        api.backend.calls()
    );
    let (s, b) = api
        .call("POST", "/workspace/ws_missing00000/fork", None)
        .await;
    assert_error(s, &b, 404, "not_found");
}

/// The server died during a fork: its children's rows were stored, but the caller got
/// no answer. At the next start they are deleted (and not kept by the node's sweep),
/// not booted as empty workspaces nobody asked for; other unfinished creates go on.
#[tokio::test]
async fn children_of_a_fork_the_server_died_in_are_removed_at_start() {
    use warren_state::{InsertOutcome, NewWorkspace, ProvisioningPhase, ProvisioningState};
    let store = Store::open_in_memory().await.unwrap();
    let c = store.create_client("admin", true).await.unwrap();
    let new = |id: &str| NewWorkspace {
        disk_size_mb: 1024,
        ..NewWorkspace::basic(id, &c.client.id)
    };
    for (id, message) in [
        (
            "ws_forkchild01",
            format!("{}ws_parent00001", warren_api::manager::FORKING_FROM),
        ),
        ("ws_plaincreate", "Queued".to_string()),
    ] {
        let InsertOutcome::Created(mut w) = store.insert_workspace(&new(id)).await.unwrap() else {
            panic!("{id} exists");
        };
        w.set_provisioning(
            ProvisioningState::Running,
            ProvisioningPhase::Starting,
            &message,
        );
        store.save_observed(&w).await.unwrap();
    }
    let api = Api::start_on(store, c, |_| {}).await;
    api.wait_for("ws_forkchild01", |w| w.is_null()).await;
    let w = api
        .wait_for("ws_plaincreate", |w| w["status"] == "running")
        .await;
    assert_eq!(w["id"], "ws_plaincreate");
    let calls = api.backend.calls();
    assert_eq!(*api.backend.kept.lock().unwrap(), vec!["ws_plaincreate"]);
    assert!(
        calls.contains(&"remove ws_forkchild01".to_string()),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("create ") && c.contains("ws_forkchild01")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_limit_gets_429_with_retry_after_and_nothing_happens() {
    let api = Api::start(|c| {
        c.rate_limit = warren_api::ratelimit::RateLimit {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    for _ in 0..3 {
        let (st, b) = api.call("GET", "/workspace", None).await;
        assert_eq!(st, 200, "{b}");
    }
    // Over the limit: a create is refused before it does anything.
    let r = api
        .http
        .post(format!("{}/workspace", api.url))
        .header("X-Client-ID", &api.id)
        .header("X-Client-Secret", &api.secret)
        .json(&json!({"image": "busybox"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let b: Value = r.json().await.unwrap();
    assert_error(429, &b, 429, "rate_limited");
    assert_eq!(b["details"]["per_second"], 1, "{b}");
    assert!(api.backend.calls().is_empty(), "{:?}", api.backend.calls());
    // Bad credentials are still a 401, and unauthenticated endpoints are not limited.
    let r = api
        .http
        .get(format!("{}/workspace", api.url))
        .header("X-Client-ID", &api.id)
        .header("X-Client-Secret", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = api
        .http
        .get(format!("{}/health", api.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(1100 * retry)).await;
    let (st, b) = api.call("GET", "/workspace", None).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["total"], 0, "{b}");
}
