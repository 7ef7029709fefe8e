//! The image cache and [`ImageStore::resolve`].
//!
//! Layout under `cache_dir`:
//!
//! ```text
//! images/sha256-<hex>/{rootfs.ext4,config.json,meta.json}   built images (complete or absent)
//! images/refs/<escaped reference>                            reference -> digest records
//! locks/sha256-<hex>.lock                                     flock: one builder per digest
//! tmp/build-<pid>-<random>/                                   in-progress builds
//! debs/                                                       downloaded .debs (busybox)
//! ```
//!
//! An image directory is assembled under `tmp/` and renamed into `images/` in one step, so a
//! crash never leaves a half image that looks complete; leftovers of dead processes in `tmp/`
//! are removed by the next [`ImageStore::new`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::catalog::{self, CatalogEntry, Recipe};
use crate::digest::sha256_hex;
use crate::error::{ImageError, IoContext};
use crate::ext4;
use crate::image::{Image, ImageConfig};
use crate::layers;
use crate::oci::{self, BlobLocation, ImageSource};
use crate::progress::{run_blocking, Progress};
use crate::recipes;
use crate::reference::{self, Reference, RegistryRef};
use crate::registry::{HeadOutcome, RegistryClient};

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// `ghcr.io`, `localhost:5000`, `docker.io` (also matches index/registry-1.docker.io).
    pub host: String,
    #[serde(flatten)]
    pub auth: RegistryAuth,
}

impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("host", &self.host)
            .field("auth", &self.auth)
            .finish()
    }
}

/// How to authenticate to a registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RegistryAuth {
    /// Sent to the token service (Bearer flow) or to the registry (Basic challenge).
    Basic { username: String, password: String },
    /// A ready-made registry bearer token, sent as `Authorization: Bearer <token>`.
    Token { token: String },
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryAuth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            RegistryAuth::Token { .. } => f
                .debug_struct("Token")
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// Where and how the store works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageStoreConfig {
    /// Root of the cache (created if missing). Must be on a file system that keeps ownership
    /// and xattrs, since layers are unpacked there before mkfs.
    pub cache_dir: PathBuf,
    /// Debian mirror for debootstrap recipes (`busybox` uses the host's apt sources).
    #[serde(default = "default_mirror")]
    pub debian_mirror: String,
    /// Debian suite for recipes.
    #[serde(default = "default_suite")]
    pub suite: String,
    #[serde(default)]
    pub registry_auth: Vec<RegistryCredential>,
    /// Registry hosts (`host` or `host:port`) spoken to over plain http. Loopback hosts
    /// (localhost, 127.0.0.0/8, `[::1]`) always are.
    #[serde(default)]
    pub insecure_registries: Vec<String>,
}

fn default_mirror() -> String {
    "http://deb.debian.org/debian".into()
}

fn default_suite() -> String {
    "bookworm".into()
}

impl ImageStoreConfig {
    /// Defaults (Debian's CDN, bookworm, no credentials) with the given cache directory.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ImageStoreConfig {
            cache_dir: cache_dir.into(),
            debian_mirror: default_mirror(),
            suite: default_suite(),
            registry_auth: Vec::new(),
            insecure_registries: Vec::new(),
        }
    }
}

impl Default for ImageStoreConfig {
    fn default() -> Self {
        Self::new("/var/lib/warren/images")
    }
}

/// What `meta.json` records about a built image.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    format: u32,
    reference: String,
    digest: String,
    size_bytes: u64,
    /// `recipe`, `oci-layout`, `archive` or `registry`.
    source: String,
    manifest_digest: Option<String>,
    created_unix: u64,
}

/// What a `refs/` record says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefRecord {
    reference: String,
    digest: String,
    manifest_digest: Option<String>,
    updated_unix: u64,
    /// For catalog images: the recipe's digest without its package inputs, so a
    /// resolve can tell the cached image still follows today's recipe without asking
    /// apt (which costs about a second) on every workspace create.
    #[serde(default)]
    recipe: Option<String>,
}

const META_FORMAT: u32 = 1;

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Escape a reference into a single file name.
fn ref_file_name(reference: &str) -> String {
    let mut s = String::with_capacity(reference.len());
    for b in reference.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@' | b'+') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// An exclusive `flock` on a lock file, released on drop.
struct LockGuard {
    _file: fs::File,
}

fn flock(file: &fs::File, nonblocking: bool) -> io::Result<()> {
    let op = libc::LOCK_EX | if nonblocking { libc::LOCK_NB } else { 0 };
    loop {
        // SAFETY: flock on a valid, open file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether a process with this pid exists.
fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A build's scratch space under `tmp/`, removed (after unmounting anything left in it)
/// when dropped.
struct WorkDir {
    dir: Option<tempfile::TempDir>,
    staging: PathBuf,
    scratch: PathBuf,
    out: PathBuf,
}

impl WorkDir {
    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            recipes::unmount_below(d.path());
            let p = d.path().to_path_buf();
            if let Err(e) = d.close() {
                tracing::warn!(dir = %p.display(), error = %e, "could not remove build directory");
            }
        }
    }
}

/// Builds, caches and finds workspace root images. Cheap to share behind an `Arc`; safe to
/// use from several tasks and several processes on the same cache directory.
pub struct ImageStore {
    cfg: ImageStoreConfig,
    catalog: Vec<CatalogEntry>,
    http: reqwest::Client,
    images: PathBuf,
    refs: PathBuf,
    locks: PathBuf,
    tmp: PathBuf,
    debs: PathBuf,
}

impl fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl ImageStore {
    /// Open (creating if needed) the cache at `cfg.cache_dir`.
    pub fn new(cfg: ImageStoreConfig) -> Result<Self, ImageError> {
        let root = cfg.cache_dir.clone();
        let store = ImageStore {
            catalog: catalog::builtin(),
            http: crate::registry::http_client()?,
            images: root.join("images"),
            refs: root.join("images/refs"),
            locks: root.join("locks"),
            tmp: root.join("tmp"),
            debs: root.join("debs"),
            cfg,
        };
        for d in [
            &store.images,
            &store.refs,
            &store.locks,
            &store.tmp,
            &store.debs,
        ] {
            fs::create_dir_all(d).ctx("create cache directory", d)?;
        }
        store.clean_stale_tmp();
        Ok(store)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &ImageStoreConfig {
        &self.cfg
    }

    /// Names the store knows how to build without a registry.
    pub fn catalog(&self) -> &[CatalogEntry] {
        &self.catalog
    }

    /// Remove build and download directories of processes that no longer exist.
    fn clean_stale_tmp(&self) {
        let entries = [&self.tmp, &self.debs]
            .into_iter()
            .filter_map(|d| fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten());
        for e in entries {
            let name = e.file_name().to_string_lossy().to_string();
            // build-<pid>-*, remove-<pid>-*, .download-<pid>-*
            let pid = name
                .trim_start_matches('.')
                .split('-')
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if !pid_alive(pid) {
                    tracing::info!(dir = %e.path().display(), "removing leftovers of an interrupted build");
                    recipes::unmount_below(&e.path());
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }

    fn image_dir(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(digest).ok_or_else(|| ImageError::NotFound {
            reference: digest.to_string(),
            detail: "a digest is 'sha256:' followed by 64 lowercase hex digits".into(),
        })?;
        Ok(self.images.join(format!("sha256-{hex}")))
    }

    /// Load a cached image, or `None` if it is not cached.
    fn load(&self, digest: &str) -> Result<Option<Image>, ImageError> {
        let dir = self.image_dir(digest)?;
        if !dir.is_dir() {
            return Ok(None);
        }
        let bad = |reason: String| ImageError::BadCacheEntry {
            path: dir.clone(),
            reason,
        };
        let meta: Meta = serde_json::from_slice(
            &fs::read(dir.join("meta.json")).ctx("read", dir.join("meta.json"))?,
        )
        .map_err(|e| bad(format!("meta.json: {e}")))?;
        let config: ImageConfig = serde_json::from_slice(
            &fs::read(dir.join("config.json")).ctx("read", dir.join("config.json"))?,
        )
        .map_err(|e| bad(format!("config.json: {e}")))?;
        let rootfs = dir.join("rootfs.ext4");
        let size = fs::metadata(&rootfs)
            .map_err(|e| bad(format!("rootfs.ext4: {e}")))?
            .len();
        if meta.digest != digest {
            return Err(bad(format!("meta.json names digest {}", meta.digest)));
        }
        Ok(Some(Image {
            reference: meta.reference,
            digest: meta.digest,
            rootfs,
            size_bytes: size,
            config,
        }))
    }

    fn read_ref(&self, reference: &str) -> Option<RefRecord> {
        let p = self.refs.join(ref_file_name(reference));
        let bytes = fs::read(&p).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_recipe_ref(&self, name: &str, digest: &str, recipe: &str) -> Result<(), ImageError> {
        self.write_ref_record(RefRecord {
            reference: name.to_string(),
            digest: digest.to_string(),
            manifest_digest: None,
            updated_unix: now_unix(),
            recipe: Some(recipe.to_string()),
        })
    }

    fn write_ref(
        &self,
        reference: &str,
        digest: &str,
        manifest_digest: Option<String>,
    ) -> Result<(), ImageError> {
        self.write_ref_record(RefRecord {
            reference: reference.to_string(),
            digest: digest.to_string(),
            manifest_digest,
            updated_unix: now_unix(),
            recipe: None,
        })
    }

    fn write_ref_record(&self, rec: RefRecord) -> Result<(), ImageError> {
        let path = self.refs.join(ref_file_name(&rec.reference));
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.refs).ctx("create a file in", &self.refs)?;
        tmp.write_all(&serde_json::to_vec_pretty(&rec).unwrap_or_default())
            .ctx("write", tmp.path().to_path_buf())?;
        tmp.persist(&path)
            .map_err(|e| ImageError::io("write", &path, e.error))?;
        Ok(())
    }

    fn all_refs(&self) -> Vec<RefRecord> {
        fs::read_dir(&self.refs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }

    /// All cached images (entries that cannot be read are skipped with a warning).
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.images).ctx("list", &self.images)? {
            let e = e.ctx("list", &self.images)?;
            let name = e.file_name().to_string_lossy().to_string();
            let Some(hex) = name.strip_prefix("sha256-") else {
                continue;
            };
            match self.load(&format!("sha256:{hex}")) {
                Ok(Some(img)) => out.push(img),
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(entry = %name, error = %err, "skipping unreadable cache entry")
                }
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference).then(a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// Remove a cached image (by `sha256:<hex>` or bare hex) and the references to it.
    /// Waits for a build of the same digest to finish first.
    pub fn remove(&self, digest: &str) -> Result<(), ImageError> {
        let digest = if digest.starts_with("sha256:") {
            digest.to_string()
        } else {
            format!("sha256:{digest}")
        };
        let dir = self.image_dir(&digest)?;
        let _lock = self.lock_blocking(&digest)?;
        if !dir.exists() {
            return Err(ImageError::NotFound {
                reference: digest,
                detail: "no cached image has this digest; `warren image ls` lists the cached ones"
                    .into(),
            });
        }
        let trash = self
            .tmp
            .join(format!("remove-{}-{}", std::process::id(), &digest[7..19]));
        fs::rename(&dir, &trash).ctx("move out of the cache", &dir)?;
        fs::remove_dir_all(&trash).ctx("remove", &trash)?;
        for r in self.all_refs() {
            if r.digest == digest {
                let _ = fs::remove_file(self.refs.join(ref_file_name(&r.reference)));
            }
        }
        Ok(())
    }

    fn lock_path(&self, digest: &str) -> PathBuf {
        self.locks
            .join(format!("{}.lock", digest.replace(':', "-")))
    }

    fn lock_blocking(&self, digest: &str) -> Result<LockGuard, ImageError> {
        let p = self.lock_path(digest);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open lock file", &p)?;
        flock(&f, false).ctx("lock", &p)?;
        Ok(LockGuard { _file: f })
    }

    /// Take the per-digest build lock, waiting (off the async threads) if another task or
    /// process holds it.
    async fn lock(&self, digest: &str, progress: &dyn Progress) -> Result<LockGuard, ImageError> {
        let p = self.lock_path(digest);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .ctx("open lock file", &p)?;
        match flock(&f, true) {
            Ok(()) => return Ok(LockGuard { _file: f }),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
            Err(e) => return Err(ImageError::io("lock", p, e)),
        }
        progress.phase(&format!("waiting for another build of {digest}"));
        tracing::info!(%digest, "waiting for a concurrent build of the same image");
        run_blocking(progress, move |_| {
            flock(&f, false).ctx("lock", &p)?;
            Ok(LockGuard { _file: f })
        })
        .await
    }

    fn new_workdir(&self) -> Result<WorkDir, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("build-{}-", std::process::id()))
            .tempdir_in(&self.tmp)
            .ctx("create a build directory in", &self.tmp)?;
        let staging = dir.path().join("rootfs");
        let scratch = dir.path().join("scratch");
        let out = dir.path().join("image");
        for d in [&staging, &scratch, &out] {
            fs::create_dir(d).ctx("create directory", d)?;
        }
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755)).ctx("chmod", &staging)?;
        Ok(WorkDir {
            dir: Some(dir),
            staging,
            scratch,
            out,
        })
    }

    /// Populate the staging dir, mkfs, and move the result into the cache. The caller holds
    /// the digest's lock and has checked that the image is not cached.
    #[allow(clippy::too_many_arguments)]
    async fn build<F>(
        &self,
        work: WorkDir,
        reference: &str,
        digest: &str,
        source: &str,
        manifest_digest: Option<String>,
        progress: &dyn Progress,
        populate: F,
    ) -> Result<Image, ImageError>
    where
        F: FnOnce(&Path, &Path, &dyn Progress) -> Result<ImageConfig, ImageError> + Send + 'static,
    {
        let final_dir = self.image_dir(digest)?;
        let images = self.images.clone();
        let reference = reference.to_string();
        let digest = digest.to_string();
        let source = source.to_string();
        let started = std::time::Instant::now();
        let image = run_blocking(progress, move |p| {
            let config = populate(&work.staging, &work.scratch, p)?;
            let rootfs = work.out.join("rootfs.ext4");
            ext4::make_ext4(&work.staging, &rootfs, p)?;
            p.phase("removing the staging directory");
            recipes::unmount_below(&work.staging);
            fs::remove_dir_all(&work.staging).ctx("remove", &work.staging)?;
            let size_bytes = fs::metadata(&rootfs).ctx("stat", &rootfs)?.len();
            let meta = Meta {
                format: META_FORMAT,
                reference: reference.clone(),
                digest: digest.clone(),
                size_bytes,
                source,
                manifest_digest,
                created_unix: now_unix(),
            };
            write_synced(&work.out.join("config.json"), &serde_json::to_vec_pretty(&config).unwrap_or_default())?;
            write_synced(&work.out.join("meta.json"), &serde_json::to_vec_pretty(&meta).unwrap_or_default())?;
            fs::File::open(&work.out).and_then(|d| d.sync_all()).ctx("sync", &work.out)?;
            match fs::rename(&work.out, &final_dir) {
                Ok(()) => {}
                Err(e) if final_dir.is_dir() => {
                    tracing::warn!(error = %e, "image appeared while building; keeping the existing one");
                }
                Err(e) => return Err(ImageError::io("move into the cache", &final_dir, e)),
            }
            fs::File::open(&images).and_then(|d| d.sync_all()).ctx("sync", &images)?;
            tracing::info!(path = %work.path().display(), "build directory done");
            drop(work);
            Ok(Image {
                reference,
                digest: digest.clone(),
                rootfs: final_dir.join("rootfs.ext4"),
                size_bytes,
                config,
            })
        })
        .await?;
        tracing::info!(digest = %image.digest, size = image.size_bytes, secs = started.elapsed().as_secs_f64(), "image built");
        Ok(image)
    }

    /// Resolve a user's image reference to a built, cached root image, building it once per
    /// digest. See the crate docs for the accepted forms.
    #[tracing::instrument(skip(self, progress), fields(cache = %self.cfg.cache_dir.display()))]
    pub async fn resolve(
        &self,
        reference: &str,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        self.resolve_opts(reference, progress, false).await
    }

    /// Like [`ImageStore::resolve`], but a catalog image also re-checks its package
    /// inputs (e.g. a newer busybox-static in apt) and is rebuilt if they changed.
    /// `resolve` trusts a cached catalog image built from today's recipe.
    pub async fn refresh(
        &self,
        reference: &str,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        self.resolve_opts(reference, progress, true).await
    }

    async fn resolve_opts(
        &self,
        reference: &str,
        progress: &dyn Progress,
        refresh: bool,
    ) -> Result<Image, ImageError> {
        let reference = reference.trim();
        let parsed = reference::parse(reference, &self.catalog)?;
        let mut image = match parsed {
            Reference::Digest(d) => self.load(&d)?.ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
                detail: "no cached image has this digest; `warren image ls` lists the cached ones"
                    .into(),
            })?,
            Reference::Catalog(i) => self.resolve_recipe(i, progress, refresh).await?,
            Reference::OciLayout { path, tag } => {
                let r = reference.to_string();
                let src = run_blocking(progress, move |_| {
                    oci::open_layout(&r, &path, tag.as_deref())
                })
                .await?;
                self.resolve_source(reference, "oci-layout", src, progress)
                    .await?
            }
            Reference::Archive { path, tag } => {
                let r = reference.to_string();
                progress.phase("reading the archive index");
                let src = run_blocking(progress, move |_| {
                    oci::open_archive(&r, &path, tag.as_deref())
                })
                .await?;
                self.resolve_source(reference, "archive", src, progress)
                    .await?
            }
            Reference::Registry(r) => self.resolve_registry(reference, &r, progress).await?,
        };
        image.reference = reference.to_string();
        Ok(image)
    }

    async fn resolve_recipe(
        &self,
        index: usize,
        progress: &dyn Progress,
        refresh: bool,
    ) -> Result<Image, ImageError> {
        let entry = self.catalog[index].clone();
        let suite = self.cfg.suite.clone();
        let recipe_key = recipes::recipe_digest(&entry, &suite, None);
        if !refresh {
            if let Some(img) = self
                .read_ref(&entry.name)
                .filter(|r| r.recipe.as_deref() == Some(recipe_key.as_str()))
                .and_then(|r| self.load(&r.digest).ok().flatten())
            {
                return Ok(img);
            }
        }
        let deb = match &entry.recipe {
            Recipe::Busybox => {
                let debs = self.debs.clone();
                match run_blocking(progress, move |p| recipes::busybox_deb(&debs, p)).await {
                    Ok(d) => Some(d),
                    Err(e) => {
                        // Offline without a cached .deb: the last build is still good.
                        if let Some(img) = self
                            .read_ref(&entry.name)
                            .and_then(|r| self.load(&r.digest).ok().flatten())
                        {
                            tracing::warn!(error = %e, "cannot check busybox-static; using the cached image");
                            return Ok(img);
                        }
                        return Err(e);
                    }
                }
            }
            Recipe::Debootstrap { .. } => None,
        };
        let digest = recipes::recipe_digest(&entry, &suite, deb.as_ref());
        if let Some(img) = self.load(&digest)? {
            self.write_recipe_ref(&entry.name, &digest, &recipe_key)?;
            return Ok(img);
        }
        let _lock = self.lock(&digest, progress).await?;
        if let Some(img) = self.load(&digest)? {
            self.write_recipe_ref(&entry.name, &digest, &recipe_key)?;
            return Ok(img);
        }
        let work = self.new_workdir()?;
        let log = work.path().join("debootstrap.log");
        let mirror = self.cfg.debian_mirror.clone();
        let name = entry.name.clone();
        let image = self
            .build(
                work,
                &name,
                &digest,
                "recipe",
                None,
                progress,
                move |staging, scratch, p| {
                    match (&entry.recipe, deb) {
                        (Recipe::Busybox, Some(deb)) => {
                            recipes::build_busybox(staging, &deb, scratch, p)?
                        }
                        (Recipe::Debootstrap { packages, extra }, _) => recipes::build_debootstrap(
                            staging, &suite, &mirror, packages, extra, &log, p,
                        )?,
                        (Recipe::Busybox, None) => {
                            return Err(ImageError::build(
                                "the busybox image",
                                "no busybox-static .deb",
                            ))
                        }
                    }
                    Ok(entry.config)
                },
            )
            .await?;
        self.write_recipe_ref(&name, &digest, &recipe_key)?;
        Ok(image)
    }

    /// Build (or find) an image from a local layout/archive.
    async fn resolve_source(
        &self,
        reference: &str,
        kind: &str,
        src: ImageSource,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        let digest = src.config_digest.clone();
        if let Some(img) = self.load(&digest)? {
            return Ok(img);
        }
        let _lock = self.lock(&digest, progress).await?;
        if let Some(img) = self.load(&digest)? {
            return Ok(img);
        }
        let work = self.new_workdir()?;
        let manifest_digest = src.manifest_digest.clone();
        self.build(
            work,
            reference,
            &digest,
            kind,
            manifest_digest,
            progress,
            move |staging, _, p| {
                layers::apply_layers(staging, &src.layers, p)?;
                Ok(src.config)
            },
        )
        .await
    }

    /// Turn "not found"/"denied" for a Docker Hub short name into "unknown image".
    fn hub_hint(&self, e: ImageError, r: &RegistryRef, reference: &str) -> ImageError {
        if r.short
            && matches!(
                e,
                ImageError::NotFound { .. } | ImageError::Unauthorized { .. }
            )
        {
            return reference::unknown_image(
                reference,
                &self.catalog,
                &format!(" (not in the catalog, and Docker Hub has no image {r}: {e})"),
            );
        }
        e
    }

    async fn resolve_registry(
        &self,
        reference: &str,
        r: &RegistryRef,
        progress: &dyn Progress,
    ) -> Result<Image, ImageError> {
        let canonical = r.to_string();
        let client = RegistryClient::new(
            &self.http,
            r,
            &self.cfg.registry_auth,
            &self.cfg.insecure_registries,
        );

        if let Some(rec) = self.read_ref(&canonical) {
            if let Some(img) = self.load(&rec.digest)? {
                if r.digest.is_some() {
                    return Ok(img);
                }
                match client.head_manifest().await {
                    HeadOutcome::Digest(Some(d)) if Some(&d) == rec.manifest_digest.as_ref() => {
                        return Ok(img)
                    }
                    HeadOutcome::Unreachable(why) => {
                        tracing::warn!(reference = %canonical, %why, "registry unreachable; using the image pulled before");
                        progress.phase(&format!(
                            "registry unreachable; using the cached {canonical}"
                        ));
                        return Ok(img);
                    }
                    other => tracing::debug!(?other, "tag may have moved; resolving again"),
                }
            }
        }
        if let Some(d) = &r.digest {
            // Pinned digest pulled before under another name: no network needed.
            if let Some(rec) = self
                .all_refs()
                .into_iter()
                .find(|x| x.manifest_digest.as_deref() == Some(d))
            {
                if let Some(img) = self.load(&rec.digest)? {
                    self.write_ref(&canonical, &rec.digest, Some(d.clone()))?;
                    return Ok(img);
                }
            }
        }

        progress.phase(&format!("resolving {canonical}"));
        let resolved = client
            .resolve()
            .await
            .map_err(|e| self.hub_hint(e, r, reference))?;
        let manifest = resolved.manifest;
        let config_digest = manifest.config.digest.clone();
        if let Some(img) = self.load(&config_digest)? {
            self.write_ref(&canonical, &config_digest, Some(resolved.top_digest))?;
            return Ok(img);
        }
        let config_bytes = client.fetch_small_blob(&manifest.config).await?;
        let config = oci::parse_config(&format!("config of {canonical}"), &config_bytes)?;
        if !config.os.is_empty()
            && (config.os != oci::WANT_OS || config.architecture != oci::WANT_ARCH)
        {
            return Err(ImageError::Unsupported {
                reference: reference.to_string(),
                detail: format!(
                    "it is a {}/{} image; workspaces run {}/{}",
                    config.os,
                    config.architecture,
                    oci::WANT_OS,
                    oci::WANT_ARCH
                ),
            });
        }

        let _lock = self.lock(&config_digest, progress).await?;
        if let Some(img) = self.load(&config_digest)? {
            self.write_ref(&canonical, &config_digest, Some(resolved.top_digest))?;
            return Ok(img);
        }
        let work = self.new_workdir()?;
        let n = manifest.layers.len();
        for (i, layer) in manifest.layers.iter().enumerate() {
            progress.phase(&format!(
                "pulling layer {}/{n} {} ({})",
                i + 1,
                &layer.digest[..layer.digest.len().min(19)],
                layer
                    .size
                    .map(human_size)
                    .unwrap_or_else(|| "size unknown".into())
            ));
            client.fetch_blob(layer, &work.scratch, progress).await?;
        }
        let scratch = work.scratch.clone();
        let layers = oci::layers_from_manifest(reference, &manifest, &config, |d| {
            let hex = sha256_hex(&d.digest).unwrap_or_default();
            Ok(BlobLocation::File(scratch.join(hex)))
        })?;
        let image_config = config.image_config();
        let image = self
            .build(
                work,
                &canonical,
                &config_digest,
                "registry",
                Some(resolved.top_digest.clone()),
                progress,
                move |staging, _, p| {
                    layers::apply_layers(staging, &layers, p)?;
                    Ok(image_config)
                },
            )
            .await?;
        self.write_ref(&canonical, &config_digest, Some(resolved.top_digest))?;
        Ok(image)
    }
}

fn human_size(n: u64) -> String {
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut f = fs::File::create(path).ctx("create", path)?;
    f.write_all(bytes).ctx("write", path)?;
    f.sync_all().ctx("sync", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_sync<T: Send + Sync>() {}
        assert_sync::<ImageStore>();
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::new(ImageStoreConfig::new(dir.path())).expect("store");
        let fut = store.resolve("busybox", &crate::NoProgress);
        assert_send(&fut);
    }

    #[test]
    fn ref_names_are_flat() {
        assert_eq!(
            ref_file_name("docker.io/library/alpine:3.19"),
            "docker.io%2Flibrary%2Falpine:3.19"
        );
        assert!(!ref_file_name("../../x").contains('/'));
    }

    #[test]
    fn credentials_are_redacted() {
        let c = RegistryCredential {
            host: "ghcr.io".into(),
            auth: RegistryAuth::Basic {
                username: "me".into(),
                password: "hunter2".into(),
            },
        };
        let s = format!("{c:?}");
        assert!(s.contains("me") && !s.contains("hunter2"));
        let json = serde_json::to_string(&c).unwrap_or_default();
        let back: RegistryCredential = serde_json::from_str(&json).expect("round trip");
        assert_eq!(back, c);
    }
}
