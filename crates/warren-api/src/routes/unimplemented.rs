//! Endpoints of the client that belong to later work: each answers 501 with a problem
//! body naming the feature and the issue it waits on. Never a fake success.

use crate::auth::Authed;
use crate::error::ApiError;
use crate::AppState;
use axum::routing::{on, MethodFilter};
use axum::Router;

/// (method, path, feature, issue it waits on).
pub const LATER: &[(&str, &str, &str, &str)] = &[
    (
        "GET",
        "/workspace/estimate",
        "cost estimates",
        "billing (not planned for self-hosting)",
    ),
    (
        "GET",
        "/workspace/usage",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "GET",
        "/workspace/activity",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "GET",
        "/workspace/{id}/usage",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "DELETE",
        "/workspace/{id}/usage",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "GET",
        "/workspace/{id}/usage/totals",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "GET",
        "/workspace/{id}/usage/credits/chart",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "POST",
        "/workspace/{id}/usage/tracking/start",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "POST",
        "/workspace/{id}/usage/tracking/stop",
        "usage accounting",
        "the usage and metering issue",
    ),
    (
        "POST",
        "/workspace/{id}/desktop/install",
        "desktops",
        "a later desktop issue",
    ),
    (
        "GET",
        "/workspace/{id}/desktop/installation",
        "desktops",
        "a later desktop issue",
    ),
    (
        "POST",
        "/workspace/{id}/desktop/ssh",
        "desktops",
        "a later desktop issue",
    ),
    (
        "DELETE",
        "/workspace/{id}/logs",
        "clearing logs",
        "a later logs issue",
    ),
    ("GET", "/namespaces", "namespaces", "the namespaces issue"),
    ("POST", "/namespaces", "namespaces", "the namespaces issue"),
    ("POST", "/tokens", "scoped tokens", "the tenancy issue"),
];

fn method(m: &str) -> MethodFilter {
    match m {
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        _ => MethodFilter::GET,
    }
}

/// Add every later endpoint to `r`. Paths given twice (several methods) share a
/// method router.
pub fn add(mut r: Router<AppState>) -> Router<AppState> {
    for (m, path, feature, issue) in LATER {
        let handler = move |_: Authed| async move { ApiError::not_implemented(feature, issue) };
        r = r.route(path, on(method(m), handler));
    }
    r
}
