//! What a resolved image is: a read-only ext4 root file system and its runtime configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A built, cached root image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// The reference it was (first) resolved from.
    pub reference: String,
    /// `sha256:<hex>`: the image config digest for OCI/registry images, the recipe digest for
    /// catalog images.
    pub digest: String,
    /// The ext4 root file system (mode 0444; attach it read-only).
    pub rootfs: PathBuf,
    /// Size of `rootfs` in bytes.
    pub size_bytes: u64,
    pub config: ImageConfig,
}

/// The parts of an OCI image config a workspace needs to start its process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `KEY=VALUE` pairs, in image order.
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as in the OCI config.
    pub user: Option<String>,
}

impl ImageConfig {
    /// The command to run, combining Entrypoint and Cmd the way Docker does:
    /// `entrypoint ++ (user_cmd or cmd)`, or just `user_cmd or cmd` without an entrypoint.
    /// A `user_cmd` replaces the image's Cmd (an empty one means "no arguments").
    /// Returns `None` when that leaves nothing to run.
    pub fn command(&self, user_cmd: Option<Vec<String>>) -> Option<Vec<String>> {
        let args = match user_cmd {
            Some(c) => c,
            None => self.cmd.clone().unwrap_or_default(),
        };
        let mut out = self.entrypoint.clone().unwrap_or_default();
        out.extend(args);
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }

    /// The value of an environment variable.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parse OCI `KEY=VALUE` strings (a bare `KEY` gets an empty value).
    pub(crate) fn env_from_oci(env: &[String]) -> Vec<(String, String)> {
        env.iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Option<Vec<String>> {
        Some(s.iter().map(|x| x.to_string()).collect())
    }

    #[test]
    fn command_follows_docker_rules() {
        let cmd_only = ImageConfig {
            cmd: v(&["/bin/sh"]),
            ..Default::default()
        };
        assert_eq!(cmd_only.command(None), v(&["/bin/sh"]));
        assert_eq!(cmd_only.command(v(&["ls", "-l"])), v(&["ls", "-l"]));

        let both = ImageConfig {
            entrypoint: v(&["/entry.sh", "--flag"]),
            cmd: v(&["serve"]),
            ..Default::default()
        };
        assert_eq!(both.command(None), v(&["/entry.sh", "--flag", "serve"]));
        assert_eq!(
            both.command(v(&["shell"])),
            v(&["/entry.sh", "--flag", "shell"])
        );
        assert_eq!(both.command(v(&[])), v(&["/entry.sh", "--flag"]));

        let none = ImageConfig::default();
        assert_eq!(none.command(None), None);
        assert_eq!(none.command(v(&["x"])), v(&["x"]));
    }

    #[test]
    fn env_parsing() {
        let env = ImageConfig::env_from_oci(&["A=1".into(), "B=x=y".into(), "C".into()]);
        assert_eq!(
            env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
    }
}
