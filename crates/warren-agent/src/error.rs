//! Errors of the runtime API, rendered as `{"success":false,"code":..,"error":..,"message":..}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::io;
use warren_protocol::runtime::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// 422 with code `validation_error`.
    #[error("{0}")]
    Validation(String),
    /// 422 with a more specific code (`binary_file`, `file_too_large`).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("{0}")]
    Internal(String),
    /// 502: the app behind `/proxy` did not answer.
    #[error("{0}")]
    BadGateway(String),
    /// 501: a runtime feature this agent does not have yet.
    #[error("{0}")]
    NotImplemented(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Validation(_) | ApiError::Unprocessable { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::Validation(_) => "validation_error",
            ApiError::Unprocessable { code, .. } => code,
            ApiError::Internal(_) => "internal_error",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::BadGateway(_) => "bad_gateway",
        }
    }

    pub fn validation(msg: impl Into<String>) -> Self {
        ApiError::Validation(msg.into())
    }

    /// Map an I/O error on `path` to the matching API error, naming the path.
    pub fn io(path: &str, err: &io::Error) -> Self {
        let errno = err.raw_os_error();
        let is = |e: i32| errno == Some(e);
        if err.kind() == io::ErrorKind::NotFound || is(libc::ENOENT) {
            ApiError::NotFound(format!("no such file or directory: {path}"))
        } else if err.kind() == io::ErrorKind::PermissionDenied
            || is(libc::EACCES)
            || is(libc::EPERM)
        {
            ApiError::Forbidden(format!("permission denied: {path}"))
        } else if is(libc::EISDIR) {
            ApiError::Conflict(format!("is a directory: {path}"))
        } else if is(libc::ENOTDIR) {
            ApiError::Conflict(format!("not a directory: {path}"))
        } else if is(libc::EEXIST) || err.kind() == io::ErrorKind::AlreadyExists {
            ApiError::Conflict(format!("already exists: {path}"))
        } else if is(libc::ENOTEMPTY) {
            ApiError::Conflict(format!("directory not empty: {path}"))
        } else if is(libc::EROFS) {
            ApiError::Forbidden(format!("read-only file system: {path}"))
        } else {
            ApiError::Internal(format!("{path}: {err}"))
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody::new(self.code(), self.to_string());
        (status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_codes() {
        let e = ApiError::io("/x", &io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!((e.status(), e.code()), (StatusCode::NOT_FOUND, "not_found"));
        assert!(e.to_string().contains("/x"));
        let e = ApiError::io("/x", &io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(e.code(), "forbidden");
        for errno in [libc::EISDIR, libc::ENOTDIR, libc::EEXIST] {
            let e = ApiError::io("/x", &io::Error::from_raw_os_error(errno));
            assert_eq!((e.status(), e.code()), (StatusCode::CONFLICT, "conflict"));
        }
        let e = ApiError::io("/x", &io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
