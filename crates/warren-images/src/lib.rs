//! Workspace images.
