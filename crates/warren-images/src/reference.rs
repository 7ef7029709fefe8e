//! Parsing the strings users type into what they mean.

use std::fmt;
use std::path::PathBuf;

use crate::catalog::CatalogEntry;
use crate::digest::sha256_hex;
use crate::error::ImageError;

/// Docker Hub's canonical domain, and the host its API actually lives on.
pub(crate) const DOCKER_HUB: &str = "docker.io";
pub(crate) const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// What a reference string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reference {
    /// `sha256:<hex>` of a cached image.
    Digest(String),
    /// A catalog entry, by index.
    Catalog(usize),
    /// An OCI image layout directory.
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A `docker save` tarball (or an OCI archive tarball).
    Archive { path: PathBuf, tag: Option<String> },
    /// An image in a registry.
    Registry(RegistryRef),
}

/// `domain/path[:tag][@digest]`, normalised the way Docker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegistryRef {
    /// `docker.io`, `ghcr.io`, `localhost:5000`, ...
    pub domain: String,
    /// Repository path, e.g. `library/alpine`.
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// Whether the user left out the domain (a Docker Hub short name).
    pub short: bool,
}

impl RegistryRef {
    /// Host (and port) that serves the API.
    pub(crate) fn api_host(&self) -> &str {
        if self.domain == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.domain
        }
    }

    /// The tag or digest to ask the registry for.
    pub(crate) fn manifest_ref(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "latest",
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn unknown(reference: &str, catalog: &[CatalogEntry], detail: &str) -> ImageError {
    ImageError::UnknownImage {
        reference: reference.to_string(),
        catalog: catalog
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        detail: detail.to_string(),
    }
}

pub(crate) fn unknown_image(reference: &str, catalog: &[CatalogEntry], detail: &str) -> ImageError {
    unknown(reference, catalog, detail)
}

/// Split `path[:tag]` where the tag, if any, follows the last `/`.
fn split_path_tag(s: &str) -> (String, Option<String>) {
    let slash = s.rfind('/').map(|i| i + 1).unwrap_or(0);
    match s[slash..].rfind(':') {
        Some(i) if is_tag(&s[slash + i + 1..]) => (
            s[..slash + i].to_string(),
            Some(s[slash + i + 1..].to_string()),
        ),
        _ => (s.to_string(), None),
    }
}

/// Parse `s`. Catalog names win over everything but digests and explicit prefixes.
pub(crate) fn parse(s: &str, catalog: &[CatalogEntry]) -> Result<Reference, ImageError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(unknown(s, catalog, " (empty reference)"));
    }
    if s.starts_with("sha256:") {
        return match sha256_hex(s) {
            Some(_) => Ok(Reference::Digest(s.to_string())),
            None => Err(unknown(
                s,
                catalog,
                " (a digest is 'sha256:' followed by 64 lowercase hex digits)",
            )),
        };
    }
    if let Some(i) = catalog.iter().position(|e| e.matches(s)) {
        return Ok(Reference::Catalog(i));
    }
    if let Some(rest) = s.strip_prefix("oci:") {
        let (path, tag) = split_path_tag(rest);
        if path.is_empty() {
            return Err(unknown(s, catalog, " (oci: needs a directory path)"));
        }
        return Ok(Reference::OciLayout {
            path: PathBuf::from(path),
            tag,
        });
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        let (path, tag) = split_path_tag(rest);
        if path.is_empty() {
            return Err(unknown(s, catalog, " (docker-archive: needs a file path)"));
        }
        return Ok(Reference::Archive {
            path: PathBuf::from(path),
            tag,
        });
    }
    if let Some(rest) = s.strip_prefix("registry:") {
        return parse_registry(rest)
            .map(Reference::Registry)
            .ok_or_else(|| unknown(s, catalog, " (not a valid registry reference)"));
    }
    if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") || s == "." {
        let path = PathBuf::from(s);
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(Reference::OciLayout { path, tag: None }),
            Ok(_) => Ok(Reference::Archive { path, tag: None }),
            Err(e) => Err(ImageError::NotFound {
                reference: s.to_string(),
                detail: format!(
                    "cannot read {} ({e}); give the path of an OCI layout directory or a \
                     `docker save` tarball",
                    path.display()
                ),
            }),
        };
    }
    // A relative path that exists and looks like an image file or layout directory
    // (`img.tar`, `out/layout`) is meant locally, not on Docker Hub.
    let local = PathBuf::from(s);
    if s.ends_with(".tar") && local.is_file() {
        return Ok(Reference::Archive {
            path: local,
            tag: None,
        });
    }
    if s.contains('/') && local.join("oci-layout").is_file() {
        return Ok(Reference::OciLayout {
            path: local,
            tag: None,
        });
    }
    match parse_registry(s) {
        Some(r) => Ok(Reference::Registry(r)),
        None => Err(unknown(s, catalog, "")),
    }
}

/// Parse a Docker-style reference: `[domain/]path[:tag][@sha256:hex]`.
pub(crate) fn parse_registry(s: &str) -> Option<RegistryRef> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => {
            sha256_hex(d)?;
            (r, Some(d.to_string()))
        }
        None => (s, None),
    };
    let (name, tag) = split_path_tag(rest);
    if rest.ends_with(':') {
        return None;
    }
    let (domain, path, short) = match name.split_once('/') {
        Some((first, remainder))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), remainder.to_string(), false)
        }
        _ => (DOCKER_HUB.to_string(), name.clone(), true),
    };
    if !is_domain(&domain) || path.is_empty() {
        return None;
    }
    if !path.split('/').all(is_path_component) {
        return None;
    }
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_string()),
        _ => tag,
    };
    Some(RegistryRef {
        domain,
        path,
        tag,
        digest,
        short,
    })
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn is_path_component(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    // separators: '.', '_', '__', or any number of '-'
    let mut prev_sep: Option<u8> = None;
    let mut run = 0;
    for c in b {
        if alnum(c) {
            prev_sep = None;
            run = 0;
        } else if matches!(c, b'.' | b'_' | b'-') {
            match prev_sep {
                None => {
                    prev_sep = Some(*c);
                    run = 1;
                }
                Some(p) => {
                    run += 1;
                    let ok = (p == b'-' && *c == b'-') || (p == b'_' && *c == b'_' && run == 2);
                    if !ok {
                        return false;
                    }
                }
            }
        } else {
            return false;
        }
    }
    true
}

fn is_domain(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => {
                if h.is_empty() || !h.bytes().all(|c| c.is_ascii_hexdigit() || c == b':') {
                    return false;
                }
                (None, p)
            }
            None => return false,
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (Some(h), p),
            None => (Some(s), ""),
        }
    };
    let port_ok = if port.is_empty() {
        true
    } else {
        let p = port.strip_prefix(':').unwrap_or(port);
        !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit())
    };
    let host_ok = match host {
        None => true,
        Some(h) => {
            !h.is_empty()
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                })
        }
    };
    port_ok && host_ok
}

/// Whether `domain` is a loopback host, spoken to over plain http without configuration.
pub(crate) fn is_loopback(domain: &str) -> bool {
    let host = host_part(domain);
    matches!(host, "localhost" | "127.0.0.1" | "::1" | "[::1]") || host.starts_with("127.")
}

/// The host without the port.
pub(crate) fn host_part(domain: &str) -> &str {
    if domain.starts_with('[') {
        match domain.find(']') {
            Some(i) => &domain[..=i],
            None => domain,
        }
    } else {
        domain.split(':').next().unwrap_or(domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegistryRef {
        parse_registry(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn docker_hub_short_names() {
        let a = r("alpine");
        assert_eq!(a.to_string(), "docker.io/library/alpine:latest");
        assert!(a.short);
        assert_eq!(a.api_host(), "registry-1.docker.io");
        assert_eq!(r("user/repo:1.0").to_string(), "docker.io/user/repo:1.0");
        assert_eq!(
            r("docker.io/library/alpine:3.19").to_string(),
            "docker.io/library/alpine:3.19"
        );
    }

    #[test]
    fn hosts_ports_and_digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("ghcr.io/org/x@{d}"));
        assert_eq!(x.domain, "ghcr.io");
        assert_eq!(x.path, "org/x");
        assert_eq!(x.tag, None);
        assert_eq!(x.manifest_ref(), d);
        let l = r("localhost:5000/test/img:v1");
        assert_eq!(l.domain, "localhost:5000");
        assert_eq!(l.path, "test/img");
        assert_eq!(l.tag.as_deref(), Some("v1"));
        assert!(is_loopback(&l.domain));
        let ip = r("127.0.0.1:39999/a/b");
        assert_eq!(ip.domain, "127.0.0.1:39999");
        assert_eq!(ip.tag.as_deref(), Some("latest"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "Foo Bar!",
            "UPPER",
            "a//b",
            "a:",
            "-a",
            "a/b@sha256:zz",
            "a..b",
            "",
        ] {
            assert!(parse_registry(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn catalog_names_win() {
        let cat = crate::catalog::builtin();
        assert!(matches!(
            parse("python:3.11", &cat),
            Ok(Reference::Catalog(_))
        ));
        assert!(matches!(
            parse("debian-12", &cat),
            Ok(Reference::Catalog(_))
        ));
        assert!(matches!(parse("alpine", &cat), Ok(Reference::Registry(_))));
        assert!(matches!(
            parse("registry:localhost:5000/x:1", &cat),
            Ok(Reference::Registry(ref r)) if r.domain == "localhost:5000"
        ));
        assert!(matches!(
            parse("oci:/tmp/layout:v2", &cat),
            Ok(Reference::OciLayout { ref tag, .. }) if tag.as_deref() == Some("v2")
        ));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(parse(&d, &cat), Ok(Reference::Digest(_))));
        assert!(matches!(
            parse("sha256:xyz", &cat),
            Err(ImageError::UnknownImage { .. })
        ));
        assert!(matches!(
            parse("No Such Thing", &cat),
            Err(ImageError::UnknownImage { .. })
        ));
    }

    #[test]
    fn path_tags() {
        assert_eq!(
            split_path_tag("/tmp/x:v1"),
            ("/tmp/x".to_string(), Some("v1".to_string()))
        );
        assert_eq!(split_path_tag("/tmp/x"), ("/tmp/x".to_string(), None));
        assert_eq!(split_path_tag("/a:b/x"), ("/a:b/x".to_string(), None));
    }
}
