//! A pull-only client for the OCI distribution API (Docker Registry HTTP API v2).
//!
//! Anonymous first; on `401` the `WWW-Authenticate` challenge decides: `Bearer` runs the token
//! flow (anonymously or with basic credentials from `registry_auth`), `Basic` retries with the
//! configured username/password. Plain http is used only for loopback and
//! `insecure_registries` hosts. Manifests and blobs are verified against their digests; blobs
//! are streamed to disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::digest::{sha256_hex, sha256_of};
use crate::error::{ImageError, IoContext};
use crate::oci::{
    parse_document, select_platform, Descriptor, Document, Manifest, MAX_JSON, MT_DOCKER_LIST,
    MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST,
};
use crate::progress::Progress;
use crate::reference::{host_part, is_loopback, RegistryRef, DOCKER_HUB};
use crate::store::{RegistryAuth, RegistryCredential};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// The HTTP client shared by all pulls of a store.
pub(crate) fn http_client() -> Result<reqwest::Client, ImageError> {
    reqwest::Client::builder()
        .user_agent(concat!("warren-images/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| {
            ImageError::registry("(client)", format!("cannot set up the HTTP client: {e}"))
        })
}

/// Outcome of re-checking a tag.
#[derive(Debug)]
pub(crate) enum HeadOutcome {
    /// The registry's current manifest digest for the tag, if it said.
    Digest(Option<String>),
    /// The registry could not be reached (or failed with a 5xx).
    Unreachable(String),
}

/// What a reference resolved to.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// Digest of the document the reference named (index or manifest).
    pub top_digest: String,
    pub manifest: Manifest,
}

enum SendError {
    Transport(String),
    Image(ImageError),
}

impl From<ImageError> for SendError {
    fn from(e: ImageError) -> Self {
        SendError::Image(e)
    }
}

pub(crate) struct RegistryClient<'a> {
    http: &'a reqwest::Client,
    r: &'a RegistryRef,
    credential: Option<&'a RegistryCredential>,
    scheme: &'static str,
    /// The Authorization header value to send, once known.
    auth: Mutex<Option<String>>,
}

/// Whether `cred_host` names the registry `domain` (Docker Hub has several names).
fn host_matches(cred_host: &str, domain: &str) -> bool {
    let norm = |h: &str| -> String {
        let h = h
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .trim_end_matches("/v2")
            .to_string();
        match h.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
                DOCKER_HUB.to_string()
            }
            _ => h,
        }
    };
    norm(cred_host) == norm(domain)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Parse `Bearer realm="...",service="...",scope="..."` into (scheme, params).
pub(crate) fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = match h.find(' ') {
        Some(i) => (&h[..i], &h[i + 1..]),
        None => (h, ""),
    };
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' {
            i += 1;
        }
        let key = rest[ks..i].trim().to_ascii_lowercase();
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                val.push(b[i] as char);
                i += 1;
            }
            i += 1;
        } else {
            let vs = i.min(b.len());
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[vs..i.min(b.len())].trim().to_string();
        }
        if !key.is_empty() {
            params.push((key, val));
        }
    }
    (scheme.to_ascii_lowercase(), params)
}

impl<'a> RegistryClient<'a> {
    pub(crate) fn new(
        http: &'a reqwest::Client,
        r: &'a RegistryRef,
        credentials: &'a [RegistryCredential],
        insecure: &[String],
    ) -> Self {
        let plain = is_loopback(&r.domain)
            || insecure
                .iter()
                .any(|h| h == &r.domain || h == host_part(&r.domain) || h == r.api_host());
        let credential = credentials
            .iter()
            .find(|c| host_matches(&c.host, &r.domain));
        let auth = match credential.map(|c| &c.auth) {
            Some(RegistryAuth::Token { token }) => Some(format!("Bearer {token}")),
            _ => None,
        };
        RegistryClient {
            http,
            r,
            credential,
            scheme: if plain { "http" } else { "https" },
            auth: Mutex::new(auth),
        }
    }

    fn registry(&self) -> String {
        self.r.domain.clone()
    }

    fn url(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.scheme,
            self.r.api_host(),
            self.r.path
        )
    }

    fn transport_error(&self, e: &reqwest::Error) -> String {
        let mut m = format!(
            "cannot reach {}://{} ({})",
            self.scheme,
            self.r.api_host(),
            error_chain(e)
        );
        if self.scheme == "https" {
            m.push_str(
                "; check the host name and the network, or add the host to insecure_registries \
                 if it only speaks plain http",
            );
        } else {
            m.push_str("; is the registry running?");
        }
        m
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        accept: Option<&str>,
    ) -> Result<Response, SendError> {
        let mut authenticated = false;
        loop {
            let mut req = self.http.request(method.clone(), url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(h) = self.auth.lock().await.clone() {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| SendError::Transport(self.transport_error(&e)))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !authenticated {
                authenticated = true;
                self.authenticate(resp.headers()).await?;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<(), SendError> {
        let unauthorized = |reason: String| {
            SendError::Image(ImageError::Unauthorized {
                registry: self.registry(),
                repository: self.r.path.clone(),
                reason,
            })
        };
        let Some(challenge) = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()) else {
            return Err(unauthorized(
                "it answered 401 without a WWW-Authenticate challenge".into(),
            ));
        };
        let (scheme, params) = parse_challenge(challenge);
        let param = |k: &str| {
            params
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.clone())
        };
        let basic = match self.credential.map(|c| &c.auth) {
            Some(RegistryAuth::Basic { username, password }) => {
                Some((username.clone(), password.clone()))
            }
            _ => None,
        };
        match scheme.as_str() {
            "bearer" => {
                let Some(realm) = param("realm") else {
                    return Err(unauthorized(format!(
                        "its challenge '{challenge}' has no realm"
                    )));
                };
                let scope =
                    param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.r.path));
                let mut query: Vec<(&str, String)> = vec![("scope", scope)];
                if let Some(s) = param("service") {
                    query.push(("service", s));
                }
                let mut req = self.http.get(&realm).query(&query);
                if let Some((u, p)) = &basic {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.map_err(|e| {
                    SendError::Transport(format!(
                        "cannot reach the token service {realm} ({})",
                        error_chain(&e)
                    ))
                })?;
                let status = resp.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    let what = if basic.is_some() {
                        "the token service rejected the configured credentials"
                    } else {
                        "the token service requires credentials"
                    };
                    return Err(unauthorized(what.to_string()));
                }
                if !status.is_success() {
                    return Err(SendError::Image(ImageError::registry(
                        self.registry(),
                        format!("token service {realm} answered {status}"),
                    )));
                }
                let body = read_limited(resp, MAX_JSON)
                    .await
                    .map_err(|e| SendError::Transport(format!("reading the token: {e}")))?;
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = serde_json::from_slice(&body).map_err(|e| {
                    SendError::Image(ImageError::registry(
                        self.registry(),
                        format!("token service {realm} returned malformed JSON: {e}"),
                    ))
                })?;
                let Some(token) = t.token.or(t.access_token).filter(|t| !t.is_empty()) else {
                    return Err(SendError::Image(ImageError::registry(
                        self.registry(),
                        format!("token service {realm} returned no token"),
                    )));
                };
                *self.auth.lock().await = Some(format!("Bearer {token}"));
                Ok(())
            }
            "basic" => match basic {
                Some((u, p)) => {
                    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                    *self.auth.lock().await = Some(format!("Basic {enc}"));
                    Ok(())
                }
                None => Err(unauthorized("it requires a username and password".into())),
            },
            other => Err(unauthorized(format!(
                "unsupported authentication scheme '{other}'"
            ))),
        }
    }

    /// Turn an unsuccessful status into the matching error.
    async fn check(&self, resp: Response, what: &str) -> Result<Response, ImageError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_limited(resp, 64 * 1024).await.unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("errors")?
                    .get(0)?
                    .get("message")?
                    .as_str()
                    .map(|s| s.to_string())
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ImageError::Unauthorized {
                registry: self.registry(),
                repository: self.r.path.clone(),
                reason: format!("{status} for {what}: {message}"),
            },
            StatusCode::NOT_FOUND => ImageError::NotFound {
                reference: self.r.to_string(),
                detail: format!(
                    "registry {} has no {what} ({message}); check the repository name and tag",
                    self.registry()
                ),
            },
            StatusCode::TOO_MANY_REQUESTS => ImageError::registry(
                self.registry(),
                format!("rate limited while fetching {what}; wait and retry, or configure credentials in registry_auth for a higher limit"),
            ),
            _ => ImageError::registry(self.registry(), format!("{status} for {what}: {message}")),
        })
    }

    /// Ask for the tag's current digest without downloading the manifest.
    pub(crate) async fn head_manifest(&self) -> HeadOutcome {
        let url = self.url("manifests", self.r.manifest_ref());
        match self.send(Method::HEAD, &url, Some(MANIFEST_ACCEPT)).await {
            Err(SendError::Transport(m)) => HeadOutcome::Unreachable(m),
            Err(SendError::Image(e)) => {
                tracing::debug!(error = %e, "HEAD manifest failed");
                HeadOutcome::Digest(None)
            }
            Ok(resp) if resp.status().is_server_error() => {
                HeadOutcome::Unreachable(format!("{} answered {}", self.registry(), resp.status()))
            }
            Ok(resp) if resp.status().is_success() => HeadOutcome::Digest(
                resp.headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.to_string()),
            ),
            Ok(_) => HeadOutcome::Digest(None),
        }
    }

    /// GET a manifest or index; verified against `expect` when given.
    async fn get_manifest(
        &self,
        reference: &str,
        expect: Option<&str>,
    ) -> Result<(Vec<u8>, String), ImageError> {
        let url = self.url("manifests", reference);
        let what = format!("manifest '{reference}' of {}", self.r.path);
        let resp = self
            .send(Method::GET, &url, Some(MANIFEST_ACCEPT))
            .await
            .map_err(|e| self.send_error(e))?;
        let resp = self.check(resp, &what).await?;
        let body = read_limited(resp, MAX_JSON)
            .await
            .map_err(|e| ImageError::registry(self.registry(), format!("reading {what}: {e}")))?;
        let digest = sha256_of(&body);
        if let Some(want) = expect {
            if digest != want {
                return Err(ImageError::corrupt(
                    format!("{what} from {}", self.registry()),
                    format!("content hashes to {digest}, expected {want}"),
                ));
            }
        }
        Ok((body, digest))
    }

    fn send_error(&self, e: SendError) -> ImageError {
        match e {
            SendError::Transport(m) => ImageError::registry(self.registry(), m),
            SendError::Image(e) => e,
        }
    }

    /// Resolve the reference to a linux/amd64 image manifest.
    pub(crate) async fn resolve(&self) -> Result<Resolved, ImageError> {
        let reference = self.r.to_string();
        let mref = self.r.manifest_ref().to_string();
        let (body, top_digest) = self.get_manifest(&mref, self.r.digest.as_deref()).await?;
        let mut doc = parse_document(&reference, &format!("manifest of {reference}"), &body)?;
        for _ in 0..4 {
            match doc {
                Document::Manifest(manifest) => {
                    return Ok(Resolved {
                        top_digest,
                        manifest,
                    })
                }
                Document::Index(idx) => {
                    let d = select_platform(&reference, &idx)?.clone();
                    if !matches!(
                        d.media_type.as_str(),
                        "" | MT_OCI_MANIFEST | MT_DOCKER_MANIFEST | MT_OCI_INDEX | MT_DOCKER_LIST
                    ) {
                        tracing::debug!(media_type = %d.media_type, "unusual manifest media type in index");
                    }
                    let (b, _) = self.get_manifest(&d.digest, Some(&d.digest)).await?;
                    doc = parse_document(
                        &reference,
                        &format!("manifest {} of {reference}", d.digest),
                        &b,
                    )?;
                }
            }
        }
        Err(ImageError::corrupt(
            format!("manifest of {reference}"),
            "image indexes nest more than 4 deep",
        ))
    }

    /// Fetch a small blob (the config) into memory, verified.
    pub(crate) async fn fetch_small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, ImageError> {
        let what = format!("blob {} of {}", desc.digest, self.r.path);
        if sha256_hex(&desc.digest).is_none() {
            return Err(ImageError::corrupt(
                &what,
                "unsupported or malformed digest",
            ));
        }
        let resp = self
            .send(Method::GET, &self.url("blobs", &desc.digest), None)
            .await
            .map_err(|e| self.send_error(e))?;
        let resp = self.check(resp, &what).await?;
        let body = read_limited(resp, MAX_JSON)
            .await
            .map_err(|e| ImageError::registry(self.registry(), format!("reading {what}: {e}")))?;
        crate::digest::verify_bytes(
            &format!("{what} from {}", self.registry()),
            &body,
            &desc.digest,
        )?;
        Ok(body)
    }

    /// Stream a blob to `dir/<hex>`, verifying its digest and size. Returns the path.
    pub(crate) async fn fetch_blob(
        &self,
        desc: &Descriptor,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<PathBuf, ImageError> {
        let what = format!(
            "blob {} of {}/{}",
            desc.digest,
            self.registry(),
            self.r.path
        );
        let Some(hex) = sha256_hex(&desc.digest) else {
            return Err(ImageError::corrupt(
                &what,
                "unsupported or malformed digest",
            ));
        };
        let dest = dir.join(hex);
        let partial = dir.join(format!("{hex}.partial"));
        let resp = self
            .send(Method::GET, &self.url("blobs", &desc.digest), None)
            .await
            .map_err(|e| self.send_error(e))?;
        let mut resp = self.check(resp, &what).await?;
        let total = desc.size.or(resp.content_length());
        let mut file = tokio::fs::File::create(&partial)
            .await
            .ctx("create", &partial)?;
        let mut hasher = Sha256::new();
        let mut done: u64 = 0;
        let mut last = 0u64;
        progress.bytes(0, total);
        loop {
            let chunk = resp.chunk().await.map_err(|e| {
                ImageError::registry(
                    self.registry(),
                    format!("download of {what} broke off: {}", error_chain(&e)),
                )
            })?;
            let Some(chunk) = chunk else { break };
            hasher.update(&chunk);
            file.write_all(&chunk).await.ctx("write", &partial)?;
            done += chunk.len() as u64;
            if let Some(t) = desc.size {
                if done > t {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(ImageError::corrupt(
                        &what,
                        format!("the registry sent more than the {t} bytes the manifest declares"),
                    ));
                }
            }
            if done - last >= 256 * 1024 {
                last = done;
                progress.bytes(done, total);
            }
        }
        progress.bytes(done, total);
        file.flush().await.ctx("write", &partial)?;
        drop(file);
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        let size_ok = desc.size.map(|s| s == done).unwrap_or(true);
        if got != desc.digest || !size_ok {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ImageError::corrupt(
                &what,
                format!(
                    "received {done} bytes hashing to {got}; expected {}{}",
                    desc.digest,
                    desc.size
                        .map(|s| format!(" and {s} bytes"))
                        .unwrap_or_default()
                ),
            ));
        }
        tokio::fs::rename(&partial, &dest)
            .await
            .ctx("move into place", &dest)?;
        Ok(dest)
    }
}

/// Read a response body, refusing more than `limit` bytes.
async fn read_limited(mut resp: Response, limit: u64) -> Result<Vec<u8>, String> {
    if resp.content_length().map(|l| l > limit).unwrap_or(false) {
        return Err(format!("response larger than {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        out.extend_from_slice(&chunk);
        if out.len() as u64 > limit {
            return Err(format!("response larger than {limit} bytes"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(
            p,
            vec![
                (
                    "realm".to_string(),
                    "https://auth.docker.io/token".to_string()
                ),
                ("service".to_string(), "registry.docker.io".to_string()),
                (
                    "scope".to_string(),
                    "repository:library/alpine:pull".to_string()
                ),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "basic");
        assert_eq!(p, vec![("realm".to_string(), "Registry Realm".to_string())]);
    }

    #[test]
    fn credential_hosts() {
        assert!(host_matches("docker.io", "docker.io"));
        assert!(host_matches("https://index.docker.io/v1/", "docker.io"));
        assert!(host_matches("registry-1.docker.io", "docker.io"));
        assert!(host_matches("localhost:5000", "localhost:5000"));
        assert!(!host_matches("ghcr.io", "docker.io"));
    }
}
