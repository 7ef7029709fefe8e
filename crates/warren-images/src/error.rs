//! The crate's one error type.
//!
//! Every message says what went wrong and what the user can do about it, because
//! these errors end up verbatim in the `warren` CLI's output.

use std::path::PathBuf;

/// Why an image could not be resolved, built, listed or removed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is neither a catalog name, a path, a registry reference nor a digest.
    #[error(
        "unknown image '{reference}'{detail}: use a catalog name ({catalog}), an OCI layout \
         directory, a `docker save` tarball, a registry reference such as \
         docker.io/library/alpine:3.19, or the sha256 digest of a cached image"
    )]
    UnknownImage {
        reference: String,
        /// Comma-separated catalog names.
        catalog: String,
        /// Extra context (already formatted with a leading separator), may be empty.
        detail: String,
    },

    /// The reference is well formed but what it names does not exist.
    #[error("image '{reference}' not found: {detail}")]
    NotFound { reference: String, detail: String },

    /// The image exists but uses something this crate cannot build from.
    #[error("image '{reference}' is not supported: {detail}")]
    Unsupported { reference: String, detail: String },

    /// A blob's content does not match its digest, or an archive/layer cannot be read.
    #[error(
        "{what} is corrupt: {reason}. Nothing was cached; re-export or re-pull the image \
         (if it came from a registry, the registry or a proxy in between served bad data)"
    )]
    Corrupt { what: String, reason: String },

    /// Talking to a registry failed.
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },

    /// The registry refused our credentials (or we had none).
    #[error(
        "registry {registry} refused access to '{repository}': {reason}. Add credentials for \
         host '{registry}' to registry_auth (username/password or token), or check the \
         repository name"
    )]
    Unauthorized {
        registry: String,
        repository: String,
        reason: String,
    },

    /// An external build step (apt-get, dpkg, debootstrap, mkfs.ext4) failed.
    #[error("building {what} failed: {reason}")]
    Build { what: String, reason: String },

    /// A filesystem operation failed.
    #[error(
        "cannot {action} {}: {source} (check that it exists, that this user may write there, \
         and that the file system has free space)",
        path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The cache directory holds something we did not write (or a different version wrote).
    #[error(
        "image cache entry {} is unreadable: {reason}. Remove it (warren image rm, or delete \
         the directory) and resolve the image again",
        path.display()
    )]
    BadCacheEntry { path: PathBuf, reason: String },
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn build(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Build {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn registry(registry: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::Registry {
            registry: registry.into(),
            reason: reason.into(),
        }
    }
}

/// Attach a path and an action to `std::io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, action: &'static str, path: impl Into<PathBuf>) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(action, path, e))
    }
}
