//! Client of the control-plane API (`warren server`): workspaces, power, runtime API
//! access. Answers are the API's JSON (`serde_json::Value`), whose shape the server's
//! OpenAPI document describes.

use crate::{check, Result, RuntimeClient, SdkError};
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

#[derive(Clone)]
pub struct ControlClient {
    base: String,
    client_id: String,
    client_secret: String,
    http: reqwest::Client,
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    Stop,
    Restart,
    Pause,
    Resume,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Start => "start",
            Power::Stop => "stop",
            Power::Restart => "restart",
            Power::Pause => "pause",
            Power::Resume => "resume",
        }
    }
}

impl ControlClient {
    pub fn new(base_url: &str, client_id: &str, client_secret: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(ControlClient {
            base: base_url.trim_end_matches('/').to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            http,
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        query: &[(&str, String)],
    ) -> Result<Value> {
        let mut r = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("X-Client-ID", &self.client_id)
            .header("X-Client-Secret", &self.client_secret)
            .query(query);
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = check(r.send().await?).await?;
        resp.json::<Value>()
            .await
            .map_err(|e| SdkError::Decode(e.to_string()))
    }

    fn ws(id: &str) -> String {
        format!("/workspace/{}", urlencode(id))
    }

    /// `POST /workspace`; returns the whole answer (`workspace`, `created`).
    pub async fn create(&self, body: &Value) -> Result<Value> {
        self.call(Method::POST, "/workspace", Some(body), &[]).await
    }

    pub async fn list(&self, page: u32, limit: u32, status: Option<&str>) -> Result<Value> {
        let mut q = vec![("page", page.to_string()), ("limit", limit.to_string())];
        if let Some(s) = status {
            q.push(("status", s.to_string()));
        }
        self.call(Method::GET, "/workspace", None, &q).await
    }

    pub async fn get(&self, id: &str) -> Result<Value> {
        self.call(Method::GET, &Self::ws(id), None, &[]).await
    }

    pub async fn update(&self, id: &str, body: &Value) -> Result<Value> {
        self.call(Method::PUT, &Self::ws(id), Some(body), &[]).await
    }

    pub async fn delete(&self, id: &str) -> Result<Value> {
        self.call(Method::DELETE, &Self::ws(id), None, &[]).await
    }

    pub async fn power(&self, id: &str, action: Power) -> Result<Value> {
        let path = format!("{}/{}", Self::ws(id), action.as_str());
        self.call(Method::POST, &path, None, &[]).await
    }

    /// Fork a running workspace into `count` new ones (`POST /workspace/:id/fork`),
    /// each a copy of it at one instant with its own identity. `name`: children are
    /// `<name>-<i>`. The answer lists them under `workspaces`.
    pub async fn fork(&self, id: &str, count: u32, name: Option<&str>) -> Result<Value> {
        let mut body = serde_json::json!({ "count": count });
        if let Some(n) = name {
            body["name"] = Value::String(n.to_string());
        }
        let path = format!("{}/fork", Self::ws(id));
        self.call(Method::POST, &path, Some(&body), &[]).await
    }

    /// Any other endpoint.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        self.call(method, path, body, &[]).await
    }

    /// A runtime client for the workspace through the gateway (enabling runtime API
    /// access if needed).
    pub async fn runtime(&self, id: &str) -> Result<RuntimeClient> {
        let status = self
            .call(
                Method::GET,
                &format!("{}/runtime-api-access", Self::ws(id)),
                None,
                &[],
            )
            .await?;
        let path = if status["enabled"].as_bool() == Some(true) {
            (
                Method::GET,
                format!("{}/runtime-api-access/token", Self::ws(id)),
            )
        } else {
            (
                Method::POST,
                format!("{}/runtime-api-access/enable", Self::ws(id)),
            )
        };
        let t = self.call(path.0, &path.1, None, &[]).await?;
        let (Some(token), Some(url)) = (t["token"].as_str(), t["gateway_url"].as_str()) else {
            return Err(SdkError::Decode(
                "the token answer lacks token or gateway_url".into(),
            ));
        };
        RuntimeClient::new(url, token)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
