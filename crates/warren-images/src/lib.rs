//! Workspace images: every Warren workspace boots from a read-only ext4 root file system
//! (with a writable overlay on top). This crate turns what a user names into such a file
//! system, builds it once per digest and caches it.
//!
//! # API
//!
//! ```no_run
//! use warren_images::{ImageStore, ImageStoreConfig, NoProgress};
//!
//! # async fn demo() -> Result<(), warren_images::ImageError> {
//! let store = ImageStore::new(ImageStoreConfig::new("/var/lib/warren/images"))?;
//! let image = store.resolve("busybox", &NoProgress).await?;
//! println!("{} -> {} ({} bytes)", image.reference, image.rootfs.display(), image.size_bytes);
//! let argv = image.config.command(None); // Entrypoint + Cmd, Docker-style
//! # let _ = argv;
//! for cached in store.list()? { println!("{}", cached.digest); }
//! store.remove(&image.digest)?;
//! # Ok(()) }
//! ```
//!
//! * [`ImageStore::new`]`(ImageStoreConfig) -> Result<ImageStore, ImageError>`
//! * [`ImageStore::resolve`]`(&self, reference: &str, progress: &dyn Progress) -> Result<Image, ImageError>` (async)
//! * [`ImageStore::list`]`(&self) -> Result<Vec<Image>, ImageError>`
//! * [`ImageStore::catalog`]`(&self) -> &[CatalogEntry]`
//! * [`ImageStore::remove`]`(&self, digest: &str) -> Result<(), ImageError>`
//! * [`ImageConfig::command`]`(&self, user_cmd: Option<Vec<String>>) -> Option<Vec<String>>`
//! * [`Progress`] (`phase`, `bytes`), with [`NoProgress`] and the indicatif-backed [`BarProgress`].
//!
//! # References `resolve` accepts
//!
//! 1. **Catalog names** (always win): `busybox`, `debian-12` (the default, [`DEFAULT_IMAGE`]),
//!    `python-3.11`, `node-18`, `postgres-15`, and aliases such as `debian:12`, `python:3.11`,
//!    `node:18`, `postgres:15`. `busybox` is built from Debian's `busybox-static` .deb in
//!    seconds; the others with `debootstrap --variant=minbase` (minutes, once per recipe digest).
//! 2. **An OCI image layout directory**: `/path/to/dir`, `./dir` or `oci:/path/to/dir[:tag]`.
//! 3. **A `docker save` tarball** (legacy or OCI-style, or an OCI archive):
//!    `/path/img.tar` or `docker-archive:/path/img.tar[:tag]`.
//! 4. **A registry reference**: `docker.io/library/alpine:3.19`, `ghcr.io/org/x@sha256:...`,
//!    `localhost:5000/test/img:v1`, `registry:HOST/NAME:TAG`, or a Docker Hub short name
//!    (`alpine` = `docker.io/library/alpine:latest`). Indexes resolve to linux/amd64.
//! 5. **A bare digest** `sha256:...` of a cached image.
//!
//! # Identity and caching
//!
//! An image's digest is its OCI config digest (so the same image from a layout, an archive
//! or a registry is built once), or for catalog images a hash over the recipe (a version
//! constant, suite, packages, runtime config and, for busybox, the .deb's sha256). Builds
//! take a per-digest `flock`, so concurrent callers, in this process or others, build once
//! and the others wait and reuse the result. Results appear in the cache by an atomic rename.
//! A registry reference pinned by digest resolves from the cache without any network; a tag
//! is re-checked with a `HEAD` and, if the registry is unreachable, the previous pull is used.
//!
//! # Cache layout
//!
//! ```text
//! CACHE/images/sha256-<hex>/rootfs.ext4   the root file system (0444; attach read-only)
//! CACHE/images/sha256-<hex>/config.json   ImageConfig
//! CACHE/images/sha256-<hex>/meta.json     reference, digest, source, manifest digest, size
//! CACHE/images/refs/<escaped reference>   what a catalog name or registry reference last resolved to
//! CACHE/locks/sha256-<hex>.lock           per-digest build lock (flock)
//! CACHE/tmp/build-<pid>-*/                in-progress builds: staging dir, downloads, mkfs output
//! CACHE/debs/                             busybox-static .debs
//! ```
//!
//! Layers are unpacked into `CACHE/tmp`, so the cache must sit on a file system that keeps
//! ownership, modes and xattrs (ext4, xfs, btrfs; not a FUSE or vfat mount).
//!
//! # Why each dependency
//!
//! * `tokio` – `resolve` is async (the node agent and CLI are tokio programs); blocking work
//!   (unpacking, mkfs, debootstrap) runs on its blocking pool.
//! * `reqwest` (rustls) – the registry client: HTTP/1.1+2, redirects to blob CDNs (dropping
//!   credentials across hosts), streaming bodies, TLS without OpenSSL.
//! * `serde`, `serde_json` – OCI manifests/indexes/configs and the cache's JSON records.
//! * `sha2`, `hex` – sha256 digest verification of every blob.
//! * `tar` – reading layer tarballs and `docker save` archives (incl. PAX/GNU long names,
//!   sparse files); we do the file creation ourselves to get overlay semantics and safe paths.
//! * `flate2` – gzip layers (the common case), pure Rust backend.
//! * `ruzstd` – zstd layers; pure Rust decoder, so no C toolchain or libzstd needed.
//! * `base64` – the `Authorization: Basic` header for registries that ask for it.
//! * `libc` – `flock`, `mknod`, `lsetxattr`, `utimensat(AT_SYMLINK_NOFOLLOW)`, `umount2`:
//!   the few syscalls std does not expose.
//! * `tempfile` – build directories and atomically persisted records inside the cache.
//! * `indicatif` – the terminal implementation of [`Progress`] for the CLI.
//! * `thiserror` – the typed [`ImageError`]; `tracing` – spans and logs for the node agent.
//!
//! External tools: `mkfs.ext4` (e2fsprogs >= 1.43 for `-d`), `dpkg` and `apt-get` (busybox),
//! `debootstrap` (the Debian recipes). Building needs root to preserve ownership and device
//! nodes.

mod catalog;
mod digest;
mod error;
mod ext4;
mod image;
mod layers;
mod oci;
mod progress;
mod recipes;
mod reference;
mod registry;
mod store;

pub use catalog::{CatalogEntry, Recipe, DEFAULT_IMAGE};
pub use error::ImageError;
pub use image::{Image, ImageConfig};
pub use progress::{BarProgress, NoProgress, Progress};
pub use store::{ImageStore, ImageStoreConfig, RegistryAuth, RegistryCredential};
