//! tar.gz transfer: download paths (with excludes) and upload an archive into dest.

mod common;

use bytes::Bytes;
use common::{assert_error, Agent, TOKEN};
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use std::io::Read;

#[tokio::test]
async fn download_and_upload_round_trip() {
    let a = Agent::start();
    let root = a.path("proj");
    std::fs::create_dir_all(format!("{root}/sub")).unwrap();
    std::fs::create_dir_all(format!("{root}/node_modules/x")).unwrap();
    std::fs::write(format!("{root}/a.txt"), "alpha\n").unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(format!("{root}/sub/big.bin"), &big).unwrap();
    std::fs::write(format!("{root}/node_modules/x/skip.js"), "no").unwrap();

    let resp = a
        .send(
            Method::POST,
            "/files/transfer/download",
            Some(TOKEN),
            Bytes::from(json!({"paths": [root], "exclude_patterns": ["node_modules"]}).to_string()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/gzip");
    let gz = resp.into_body().collect().await.unwrap().to_bytes();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&gz[..]));
    let mut files = std::collections::BTreeMap::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        files.insert(name, data);
    }
    let rel = root.trim_start_matches('/');
    assert_eq!(files[&format!("{rel}/a.txt")], b"alpha\n");
    assert!(files[&format!("{rel}/sub/big.bin")] == big);
    assert!(
        files.keys().all(|k| !k.contains("node_modules")),
        "{:?}",
        files.keys()
    );

    // Upload it again somewhere else: the same files come out.
    let dest = a.path("restored");
    let (s, body) = a
        .raw(
            Method::POST,
            &format!("/files/transfer/upload?dest={dest}"),
            gz.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["files_extracted"], 2);
    assert_eq!(
        std::fs::read(format!("{dest}/{rel}/sub/big.bin")).unwrap(),
        big
    );

    let (s, v) = a
        .json(
            Method::POST,
            &format!("/files/transfer/upload?dest={dest}"),
            Some(json!("not a tarball")),
        )
        .await;
    assert_error(s, &v, 422, "invalid_archive");
    let (s, v) = a
        .post(
            "/files/transfer/download",
            json!({"paths": ["/definitely/missing"]}),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
    let (s, v) = a
        .post("/files/transfer/download", json!({"paths": []}))
        .await;
    assert_error(s, &v, 422, "validation_error");
}
