//! OCI/Docker image formats: manifests, indexes and configs, read from an OCI image layout
//! directory or a `docker save` tarball into an [`ImageSource`] (a config plus verified layer
//! blobs, not yet unpacked).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::{sha256_hex, sha256_of, verify_bytes};
use crate::error::{ImageError, IoContext};
use crate::image::ImageConfig;

pub(crate) const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest/index/config we are willing to hold in memory.
pub(crate) const MAX_JSON: u64 = 8 * 1024 * 1024;

/// The platform workspaces run on.
pub(crate) const WANT_OS: &str = "linux";
pub(crate) const WANT_ARCH: &str = "amd64";

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ContainerConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

impl ConfigFile {
    pub(crate) fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
        ImageConfig {
            env: ImageConfig::env_from_oci(&c.env.unwrap_or_default()),
            entrypoint: c.entrypoint.filter(|v| !v.is_empty()),
            cmd: c.cmd,
            working_dir: nonempty(c.working_dir),
            user: nonempty(c.user),
        }
    }

    pub(crate) fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }
}

/// A manifest-or-index document, told apart by its content.
pub(crate) enum Document {
    Index(Index),
    Manifest(Manifest),
}

/// Parse a manifest or an index. `what` names it in errors.
pub(crate) fn parse_document(
    reference: &str,
    what: &str,
    bytes: &[u8],
) -> Result<Document, ImageError> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ImageError::corrupt(what, format!("not valid JSON: {e}")))?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(ImageError::Unsupported {
            reference: reference.to_string(),
            detail: "it uses the Docker schema 1 manifest format (deprecated since 2017); \
                     re-push it with a current docker or buildah"
                .into(),
        });
    }
    if v.get("manifests").is_some() {
        return serde_json::from_value(v)
            .map(Document::Index)
            .map_err(|e| ImageError::corrupt(what, format!("malformed image index: {e}")));
    }
    if v.get("config").is_some() {
        return serde_json::from_value(v)
            .map(Document::Manifest)
            .map_err(|e| ImageError::corrupt(what, format!("malformed image manifest: {e}")));
    }
    Err(ImageError::corrupt(
        what,
        "neither an image manifest nor an image index",
    ))
}

pub(crate) fn parse_config(what: &str, bytes: &[u8]) -> Result<ConfigFile, ImageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ImageError::corrupt(what, format!("malformed image config: {e}")))
}

/// Pick the linux/amd64 entry of an index (ignoring attestation manifests).
pub(crate) fn select_platform<'a>(
    reference: &str,
    index: &'a Index,
) -> Result<&'a Descriptor, ImageError> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.annotations
                .get("vnd.docker.reference.type")
                .map(|t| t != "attestation-manifest")
                .unwrap_or(true)
        })
        .collect();
    let matching: Vec<&Descriptor> = candidates
        .iter()
        .copied()
        .filter(|d| {
            d.platform
                .as_ref()
                .map(|p| p.os == WANT_OS && p.architecture == WANT_ARCH)
                .unwrap_or(false)
        })
        .collect();
    // Prefer the baseline variant (no variant, or v1) over v2/v3 micro-architecture levels.
    if let Some(d) = matching
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .and_then(|p| p.variant.as_deref())
                .map(|v| v == "v1")
                .unwrap_or(true)
        })
        .or(matching.first())
    {
        return Ok(d);
    }
    // An index without platform information that holds exactly one manifest is just a wrapper.
    if candidates.len() == 1 && candidates[0].platform.is_none() {
        return Ok(candidates[0]);
    }
    let have: Vec<String> = candidates
        .iter()
        .map(|d| match &d.platform {
            Some(p) => format!(
                "{}/{}{}",
                p.os,
                p.architecture,
                p.variant
                    .as_ref()
                    .map(|v| format!("/{v}"))
                    .unwrap_or_default()
            ),
            None => "unknown".into(),
        })
        .collect();
    Err(ImageError::Unsupported {
        reference: reference.to_string(),
        detail: format!(
            "no {WANT_OS}/{WANT_ARCH} image in its index (it has: {}); workspaces run on \
             {WANT_OS}/{WANT_ARCH}, so build or pull an amd64 variant",
            if have.is_empty() {
                "nothing".to_string()
            } else {
                have.join(", ")
            }
        ),
    })
}

/// Where a layer's bytes are.
#[derive(Debug, Clone)]
pub(crate) enum BlobLocation {
    File(PathBuf),
    /// A byte range of a (tar) file.
    Range {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl BlobLocation {
    pub(crate) fn open(&self) -> Result<Box<dyn Read + Send>, ImageError> {
        match self {
            BlobLocation::File(p) => Ok(Box::new(File::open(p).ctx("open blob", p)?)),
            BlobLocation::Range { path, offset, len } => {
                let mut f = File::open(path).ctx("open", path)?;
                f.seek(SeekFrom::Start(*offset)).ctx("seek in", path)?;
                Ok(Box::new(f.take(*len)))
            }
        }
    }
}

/// A layer to apply, with what its bytes must hash to.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    /// Names the layer in messages, e.g. `layer 2/3 (sha256:ab12...)`.
    pub name: String,
    /// Digest of the blob as stored (compressed), when known.
    pub digest: Option<String>,
    /// Digest of the uncompressed tar (the config's diff_id), when known.
    pub diff_id: Option<String>,
    pub size: Option<u64>,
    pub location: BlobLocation,
}

/// An image ready to be unpacked: verified config plus layers to verify while applying.
#[derive(Debug, Clone)]
pub(crate) struct ImageSource {
    /// `sha256:` digest of the config blob: the image's identity in the cache.
    pub config_digest: String,
    /// Digest of the manifest (or index) the image was selected through, if any.
    pub manifest_digest: Option<String>,
    pub config: ImageConfig,
    pub layers: Vec<LayerBlob>,
}

/// Build the layer list from a manifest and its config, checking they agree.
pub(crate) fn layers_from_manifest(
    reference: &str,
    manifest: &Manifest,
    config: &ConfigFile,
    locate: impl Fn(&Descriptor) -> Result<BlobLocation, ImageError>,
) -> Result<Vec<LayerBlob>, ImageError> {
    let diff_ids = config.diff_ids();
    if !diff_ids.is_empty() && diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::corrupt(
            format!("image '{reference}'"),
            format!(
                "manifest lists {} layers but config has {} diff_ids",
                manifest.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let n = manifest.layers.len();
    manifest
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if sha256_hex(&d.digest).is_none() {
                return Err(ImageError::corrupt(
                    format!("layer {}/{n} of '{reference}'", i + 1),
                    format!("unsupported or malformed digest '{}'", d.digest),
                ));
            }
            Ok(LayerBlob {
                name: format!("layer {}/{n} (blob {})", i + 1, d.digest),
                digest: Some(d.digest.clone()),
                diff_id: diff_ids.get(i).cloned(),
                size: d.size,
                location: locate(d)?,
            })
        })
        .collect()
}

/// Files of a directory or of a tarball, read by path.
enum Container {
    Dir(PathBuf),
    Tar {
        path: PathBuf,
        /// Regular files: path -> (offset, size). Symlinks are resolved at index time.
        files: HashMap<String, (u64, u64)>,
    },
}

fn clean(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_string()
}

impl Container {
    fn index_tar(path: &Path) -> Result<Container, ImageError> {
        let what = format!("archive {}", path.display());
        let f = File::open(path).ctx("open", path)?;
        let len = f.metadata().ctx("stat", path)?.len();
        let mut ar = tar::Archive::new(f);
        let mut files = HashMap::new();
        let mut links: Vec<(String, String)> = Vec::new();
        let entries = ar
            .entries_with_seek()
            .map_err(|e| ImageError::corrupt(&what, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| ImageError::corrupt(&what, format!("unreadable tar entry: {e}")))?;
            let name = entry
                .path()
                .map_err(|e| ImageError::corrupt(&what, format!("bad entry name: {e}")))?
                .to_string_lossy()
                .to_string();
            let name = clean(&name);
            let kind = entry.header().entry_type();
            if kind.is_file() {
                let (off, size) = (entry.raw_file_position(), entry.size());
                if off.saturating_add(size) > len {
                    return Err(ImageError::corrupt(
                        &what,
                        format!(
                            "'{name}' needs {size} bytes at offset {off} but the file ends at \
                             {len}: the archive is truncated"
                        ),
                    ));
                }
                files.insert(name, (off, size));
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Ok(Some(target)) = entry.link_name() {
                    let t = target.to_string_lossy().to_string();
                    let resolved = if kind.is_symlink() && !t.starts_with('/') {
                        match name.rfind('/') {
                            Some(i) => format!("{}/{}", &name[..i], t),
                            None => t,
                        }
                    } else {
                        t
                    };
                    links.push((name, normalize_rel(&resolved)));
                }
            }
        }
        for (name, target) in links {
            if let Some(v) = files.get(&target).copied() {
                files.insert(name, v);
            }
        }
        Ok(Container::Tar {
            path: path.to_path_buf(),
            files,
        })
    }

    fn exists(&self, rel: &str) -> bool {
        match self {
            Container::Dir(d) => d.join(rel).is_file(),
            Container::Tar { files, .. } => files.contains_key(&clean(rel)),
        }
    }

    fn location(&self, rel: &str, what: &str) -> Result<(BlobLocation, u64), ImageError> {
        match self {
            Container::Dir(d) => {
                let p = d.join(rel);
                match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => Ok((BlobLocation::File(p), m.len())),
                    Ok(_) => Err(ImageError::corrupt(
                        what,
                        format!("{} is not a file", p.display()),
                    )),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ImageError::corrupt(
                        what,
                        format!("{} is missing", p.display()),
                    )),
                    Err(e) => Err(ImageError::io("stat", p, e)),
                }
            }
            Container::Tar { path, files } => match files.get(&clean(rel)) {
                Some(&(offset, len)) => Ok((
                    BlobLocation::Range {
                        path: path.clone(),
                        offset,
                        len,
                    },
                    len,
                )),
                None => Err(ImageError::corrupt(
                    what,
                    format!(
                        "'{rel}' is missing from archive {} (truncated or incomplete export?)",
                        path.display()
                    ),
                )),
            },
        }
    }

    fn read_small(&self, rel: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        let (loc, len) = self.location(rel, what)?;
        if len > MAX_JSON {
            return Err(ImageError::corrupt(
                what,
                format!("{len} bytes is too large for a JSON document (limit {MAX_JSON})"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        loc.open()?
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::corrupt(what, format!("unreadable: {e}")))?;
        Ok(buf)
    }

    fn describe(&self) -> String {
        match self {
            Container::Dir(d) => format!("OCI layout {}", d.display()),
            Container::Tar { path, .. } => format!("archive {}", path.display()),
        }
    }

    /// Read the blob `digest` (from `blobs/<alg>/<hex>`), verified.
    fn read_blob(&self, digest: &str, what: &str) -> Result<Vec<u8>, ImageError> {
        let rel = blob_path(digest, what)?;
        let bytes = self.read_small(&rel, what)?;
        verify_bytes(what, &bytes, digest)?;
        Ok(bytes)
    }

    fn blob_location(&self, digest: &str, what: &str) -> Result<BlobLocation, ImageError> {
        let rel = blob_path(digest, what)?;
        Ok(self.location(&rel, what)?.0)
    }
}

fn blob_path(digest: &str, what: &str) -> Result<String, ImageError> {
    match sha256_hex(digest) {
        Some(hex) => Ok(format!("blobs/sha256/{hex}")),
        None => Err(ImageError::corrupt(
            what,
            format!("unsupported or malformed digest '{digest}' (only sha256 is supported)"),
        )),
    }
}

/// Lexically normalise a relative path inside an archive (`a/./b/../c` -> `a/c`).
fn normalize_rel(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Open an OCI image layout directory.
pub(crate) fn open_layout(
    reference: &str,
    dir: &Path,
    tag: Option<&str>,
) -> Result<ImageSource, ImageError> {
    let c = Container::Dir(dir.to_path_buf());
    if !c.exists("oci-layout") || !c.exists("index.json") {
        return Err(ImageError::NotFound {
            reference: reference.to_string(),
            detail: format!(
                "{} is not an OCI image layout (it needs an oci-layout file and index.json); \
                 export one with `skopeo copy ... oci:DIR` or `docker buildx build -o type=oci`",
                dir.display()
            ),
        });
    }
    from_oci_index(reference, &c, tag)
}

/// Open a `docker save` tarball (or an OCI archive tarball).
pub(crate) fn open_archive(
    reference: &str,
    path: &Path,
    tag: Option<&str>,
) -> Result<ImageSource, ImageError> {
    let c = Container::index_tar(path)?;
    if c.exists("manifest.json") {
        return from_docker_manifest(reference, &c, tag);
    }
    if c.exists("index.json") {
        return from_oci_index(reference, &c, tag);
    }
    Err(ImageError::corrupt(
        format!("archive {}", path.display()),
        "it has neither manifest.json (docker save) nor index.json (OCI): it is truncated or \
         not an image archive",
    ))
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn tag_matches(name: &str, tag: &str) -> bool {
    name == tag
        || name
            .rsplit_once(':')
            .map(|(_, t)| t == tag)
            .unwrap_or(false)
}

fn from_docker_manifest(
    reference: &str,
    c: &Container,
    tag: Option<&str>,
) -> Result<ImageSource, ImageError> {
    let what = format!("manifest.json of {}", c.describe());
    let bytes = c.read_small("manifest.json", &what)?;
    let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::corrupt(&what, format!("malformed: {e}")))?;
    let entry = match tag {
        Some(t) => entries
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|n| tag_matches(n, t))),
        None if entries.len() == 1 => entries.first(),
        None => None,
    };
    let Some(entry) = entry else {
        let tags: Vec<&str> = entries
            .iter()
            .flat_map(|e| e.repo_tags.iter().flatten().map(|s| s.as_str()))
            .collect();
        return Err(ImageError::NotFound {
            reference: reference.to_string(),
            detail: format!(
                "{} holds {} image(s) (tags: {}); name one with docker-archive:PATH:TAG",
                c.describe(),
                entries.len(),
                if tags.is_empty() {
                    "none".into()
                } else {
                    tags.join(", ")
                }
            ),
        });
    };

    let cfg_what = format!("config {} in {}", entry.config, c.describe());
    let cfg_bytes = c.read_small(&entry.config, &cfg_what)?;
    // Legacy format names the config `<hex>.json`; OCI-style saves use `blobs/sha256/<hex>`.
    let base = entry.config.rsplit('/').next().unwrap_or(&entry.config);
    let expected = base
        .strip_suffix(".json")
        .filter(|h| crate::digest::is_hex64(h))
        .or_else(|| {
            entry
                .config
                .strip_prefix("blobs/sha256/")
                .filter(|h| crate::digest::is_hex64(h))
        })
        .map(|h| format!("sha256:{h}"));
    let config_digest = match expected {
        Some(d) => {
            verify_bytes(&cfg_what, &cfg_bytes, &d)?;
            d
        }
        None => sha256_of(&cfg_bytes),
    };
    let config = parse_config(&cfg_what, &cfg_bytes)?;
    let diff_ids = config.diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(ImageError::corrupt(
            &what,
            format!(
                "lists {} layers but the config has {} diff_ids",
                entry.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let n = entry.layers.len();
    let layers = entry
        .layers
        .iter()
        .enumerate()
        .map(|(i, rel)| {
            let name = format!("layer {}/{n} ({rel} in {})", i + 1, c.describe());
            let digest = normalize_rel(rel)
                .strip_prefix("blobs/sha256/")
                .filter(|h| crate::digest::is_hex64(h))
                .map(|h| format!("sha256:{h}"));
            let (location, size) = c.location(rel, &name)?;
            Ok(LayerBlob {
                name,
                digest,
                diff_id: diff_ids.get(i).cloned(),
                size: Some(size),
                location,
            })
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    Ok(ImageSource {
        config_digest,
        manifest_digest: None,
        config: config.image_config(),
        layers,
    })
}

fn from_oci_index(
    reference: &str,
    c: &Container,
    tag: Option<&str>,
) -> Result<ImageSource, ImageError> {
    let what = format!("index.json of {}", c.describe());
    let bytes = c.read_small("index.json", &what)?;
    let index = match parse_document(reference, &what, &bytes)? {
        Document::Index(i) => i,
        Document::Manifest(_) => {
            return Err(ImageError::corrupt(&what, "is a manifest, not an index"))
        }
    };
    const REF_NAME: &str = "org.opencontainers.image.ref.name";
    const CONTAINERD_NAME: &str = "io.containerd.image.name";
    let name_of = |d: &Descriptor| -> Vec<String> {
        [REF_NAME, CONTAINERD_NAME]
            .iter()
            .filter_map(|k| d.annotations.get(*k).cloned())
            .collect()
    };
    let chosen: Option<&Descriptor> = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|d| name_of(d).iter().any(|n| tag_matches(n, t))),
        None if index.manifests.len() == 1 => index.manifests.first(),
        None => index
            .manifests
            .iter()
            .find(|d| name_of(d).iter().any(|n| tag_matches(n, "latest"))),
    };
    let Some(desc) = chosen else {
        let names: Vec<String> = index.manifests.iter().flat_map(name_of).collect();
        return Err(ImageError::NotFound {
            reference: reference.to_string(),
            detail: format!(
                "{} has {} manifest(s) (names: {}) and none matches{}; pick one with oci:PATH:TAG",
                c.describe(),
                index.manifests.len(),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                },
                tag.map(|t| format!(" tag '{t}'")).unwrap_or_default()
            ),
        });
    };
    let mut desc = desc.clone();
    let manifest_digest = desc.digest.clone();
    // Follow nested indexes (multi-platform images) down to a manifest.
    for _depth in 0..4 {
        let what = format!("manifest {} in {}", desc.digest, c.describe());
        let bytes = c.read_blob(&desc.digest, &what)?;
        match parse_document(reference, &what, &bytes)? {
            Document::Index(idx) => {
                desc = select_platform(reference, &idx)?.clone();
            }
            Document::Manifest(m) => {
                let cfg_what = format!("config {} in {}", m.config.digest, c.describe());
                let cfg_bytes = c.read_blob(&m.config.digest, &cfg_what)?;
                let config = parse_config(&cfg_what, &cfg_bytes)?;
                let layers = layers_from_manifest(reference, &m, &config, |d| {
                    c.blob_location(
                        &d.digest,
                        &format!("layer {} in {}", d.digest, c.describe()),
                    )
                })?;
                return Ok(ImageSource {
                    config_digest: m.config.digest.clone(),
                    manifest_digest: Some(manifest_digest),
                    config: config.image_config(),
                    layers,
                });
            }
        }
    }
    Err(ImageError::corrupt(
        &what,
        "image indexes nest more than 4 deep",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(os: &str, arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        Descriptor {
            media_type: MT_OCI_MANIFEST.into(),
            digest: digest.into(),
            size: Some(1),
            platform: Some(Platform {
                architecture: arch.into(),
                os: os.into(),
                variant: variant.map(|s| s.into()),
            }),
            annotations: HashMap::new(),
        }
    }

    #[test]
    fn selects_amd64() {
        let idx = Index {
            manifests: vec![
                desc("linux", "arm64", Some("v8"), "a"),
                desc("linux", "amd64", Some("v3"), "b3"),
                desc("linux", "amd64", None, "b"),
                desc("windows", "amd64", None, "c"),
            ],
        };
        assert_eq!(
            select_platform("x", &idx).map(|d| d.digest.as_str()).ok(),
            Some("b")
        );
        let arm = Index {
            manifests: vec![desc("linux", "arm64", None, "a")],
        };
        assert!(matches!(
            select_platform("x", &arm),
            Err(ImageError::Unsupported { .. })
        ));
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize_rel("a/./b/../c"), "a/c");
        assert_eq!(normalize_rel("../../x"), "x");
    }
}
