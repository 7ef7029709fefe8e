//! Runtime endpoints of the official client that this agent does not serve yet: each
//! answers 501 `not_implemented` naming the feature, never a fake success.

use crate::api::AppState;
use crate::error::ApiError;
use axum::routing::any;
use axum::Router;

/// (path, feature).
pub const LATER: &[(&str, &str)] = &[
    ("/files/search", "content search"),
    ("/files/search/files", "file-name search"),
    ("/files/search/init", "content search"),
];

/// Add every later endpoint to `r`.
pub fn add(mut r: Router<AppState>) -> Router<AppState> {
    for (path, feature) in LATER {
        let handler = move || async move {
            ApiError::NotImplemented(format!(
                "{feature}: not implemented by this Warren agent yet (issue 6)"
            ))
        };
        r = r.route(path, any(handler));
    }
    r
}
