//! Client authentication: `X-Client-ID` + `X-Client-Secret`, or
//! `Authorization: Bearer <client_id>:<client_secret>`.

use crate::error::ApiError;
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use warren_state::Client;

/// The authenticated client of a request.
#[derive(Debug, Clone)]
pub struct Authed(pub Client);

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The (id, secret) pair a request carries, if any.
pub fn credentials(h: &HeaderMap) -> Option<(String, String)> {
    if let (Some(id), Some(secret)) = (header(h, "x-client-id"), header(h, "x-client-secret")) {
        return Some((id.to_string(), secret.to_string()));
    }
    let auth = header(h, "authorization")?;
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))?
        .trim();
    let (id, secret) = token.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, ApiError> {
        let (id, secret) = credentials(&parts.headers).ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "send X-Client-ID and X-Client-Secret (or Authorization: Bearer <client_id>:<client_secret>)",
            )
        })?;
        match st.manager.store.verify_client(&id, &secret).await? {
            Some(c) => {
                st.manager.rate_limiter.check(&c.id)?;
                Ok(Authed(c))
            }
            None => Err(ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid client id or secret",
            )),
        }
    }
}
