//! The images the store knows how to build from Debian packages, without any registry.

use serde::{Deserialize, Serialize};

use crate::image::ImageConfig;

/// How a catalog image is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Recipe {
    /// Debian's `busybox-static`: one static binary and a symlink per applet. Builds in seconds.
    Busybox,
    /// `debootstrap --variant=minbase --include=PACKAGES SUITE`, then `extra` installed with
    /// `apt-get install --no-install-recommends` inside the new root (apt orders large
    /// dependency graphs such as npm's correctly; debootstrap does not). Takes minutes; built
    /// once per digest.
    Debootstrap {
        packages: Vec<String>,
        extra: Vec<String>,
    },
}

/// An image name the store can build by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// The canonical name, e.g. `debian-12`.
    pub name: String,
    /// Other spellings that resolve to the same image, e.g. `debian:12`.
    pub aliases: Vec<String>,
    pub description: String,
    pub recipe: Recipe,
    /// The runtime configuration baked into the image.
    pub config: ImageConfig,
}

impl CatalogEntry {
    /// Whether `s` names this entry.
    pub fn matches(&self, s: &str) -> bool {
        self.name == s || self.aliases.iter().any(|a| a == s)
    }
}

/// The name used when a workspace does not say which image it wants.
pub const DEFAULT_IMAGE: &str = "debian-12";

pub(crate) const STANDARD_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Small packages every Debian-based catalog image gets on top of minbase.
const BASE_PACKAGES: &[&str] = &[
    "ca-certificates",
    "curl",
    "iproute2",
    "iputils-ping",
    "less",
    "procps",
    "netbase",
];

fn config(env: &[(&str, &str)], cmd: &[&str]) -> ImageConfig {
    let mut all = vec![("PATH".to_string(), STANDARD_PATH.to_string())];
    for (k, v) in env {
        if let Some(slot) = all.iter_mut().find(|(ek, _)| ek == k) {
            slot.1 = v.to_string();
        } else {
            all.push((k.to_string(), v.to_string()));
        }
    }
    ImageConfig {
        env: all,
        entrypoint: None,
        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
        working_dir: None,
        user: None,
    }
}

fn debootstrap(extra: &[&str]) -> Recipe {
    Recipe::Debootstrap {
        packages: BASE_PACKAGES.iter().map(|s| s.to_string()).collect(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The built-in catalog. Package versions come from the configured suite (bookworm by default,
/// whose python3 is 3.11, nodejs 18 and postgresql 15).
pub fn builtin() -> Vec<CatalogEntry> {
    let lang = [("LANG", "C.UTF-8")];
    vec![
        CatalogEntry {
            name: "busybox".into(),
            aliases: strings(&["busybox:latest", "busybox-static"]),
            description: "Debian's static busybox: a shell and the core utilities, a few MiB".into(),
            recipe: Recipe::Busybox,
            config: config(&[], &["/bin/sh"]),
        },
        CatalogEntry {
            name: "debian-12".into(),
            aliases: strings(&["debian:12", "debian:bookworm", "bookworm"]),
            description: "Debian 12 (bookworm) minbase with ca-certificates, curl, iproute2, procps, less; the default image".into(),
            recipe: debootstrap(&[]),
            config: config(&lang, &["/bin/bash"]),
        },
        CatalogEntry {
            name: "python-3.11".into(),
            aliases: strings(&["python:3.11", "python3.11"]),
            description: "debian-12 plus Python 3.11, pip and venv".into(),
            recipe: debootstrap(&["python3", "python3-pip", "python3-venv"]),
            config: config(&lang, &["/usr/bin/python3"]),
        },
        CatalogEntry {
            name: "node-18".into(),
            aliases: strings(&["node:18", "nodejs-18"]),
            description: "debian-12 plus Node.js 18 and npm".into(),
            recipe: debootstrap(&["nodejs", "npm"]),
            config: config(&lang, &["/usr/bin/node"]),
        },
        CatalogEntry {
            name: "postgres-15".into(),
            aliases: strings(&["postgres:15", "postgresql-15"]),
            description: "debian-12 plus PostgreSQL 15 (server and client; Debian cluster 15/main, start it with pg_ctlcluster 15 main start)".into(),
            recipe: debootstrap(&["postgresql-15", "postgresql-client-15"]),
            config: config(
                &[
                    ("LANG", "C.UTF-8"),
                    (
                        "PATH",
                        "/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    ),
                ],
                &["/bin/bash"],
            ),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let cat = builtin();
        let mut all: Vec<&str> = cat
            .iter()
            .flat_map(|e| {
                std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(|s| s.as_str()))
            })
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(cat.iter().any(|e| e.name == DEFAULT_IMAGE));
    }
}
