//! What every process the agent starts has in common: environment, default working
//! directory and user.
//!
//! User names are resolved by reading the image's `/etc/passwd` and `/etc/group`
//! ourselves: the binary is statically linked against glibc, where NSS lookups
//! (`getpwnam`) would try to dlopen modules that are not there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Credentials to drop to in the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub home: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Workspace {
    /// Base environment for every process; shared by every clone, so a warm VM that
    /// becomes a workspace (`HostMessage::Adopt`) changes it for all of them.
    base: Arc<RwLock<BaseEnv>>,
    /// Default working directory.
    pub workdir: PathBuf,
    /// `None`: processes run as the agent's own user.
    pub user: Option<Credentials>,
}

#[derive(Debug, Default)]
struct BaseEnv {
    /// Defaults filled in.
    vars: BTreeMap<String, String>,
    /// `HOSTNAME` follows the system's hostname (the user did not set it): a fork gets
    /// a new hostname after its processes' base environment was made.
    hostname_from_system: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UserError {
    #[error("user {0:?} not found in /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in /etc/group")]
    UnknownGroup(String),
    #[error("empty user specification")]
    Empty,
}

impl Workspace {
    /// Build from an explicit env (image env merged with the user's), filling in PATH,
    /// HOME and TERM when absent.
    pub fn new(
        env: BTreeMap<String, String>,
        workdir: Option<PathBuf>,
        user: Option<Credentials>,
    ) -> Workspace {
        let w = Workspace {
            base: Arc::default(),
            workdir: workdir.unwrap_or_else(|| PathBuf::from("/")),
            user,
        };
        w.set_env(env, "");
        w
    }

    /// Replace the base environment (PATH, HOME and TERM filled in when absent). With
    /// a `hostname` and no `HOSTNAME` in `env`, `HOSTNAME` follows the system's
    /// hostname from now on.
    pub fn set_env(&self, mut env: BTreeMap<String, String>, hostname: &str) {
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.to_string());
        let home = self
            .user
            .as_ref()
            .and_then(|u| u.home.clone())
            .unwrap_or_else(|| "/root".to_string());
        env.entry("HOME".into()).or_insert(home);
        env.entry("TERM".into()).or_insert_with(|| "xterm".into());
        let hostname_from_system = !hostname.is_empty() && !env.contains_key("HOSTNAME");
        if hostname_from_system {
            env.insert("HOSTNAME".into(), hostname.to_string());
        }
        let mut base = self.base.write().unwrap_or_else(|p| p.into_inner());
        *base = BaseEnv {
            vars: env,
            hostname_from_system,
        };
    }

    /// The base environment of a new process: `env`, with `HOSTNAME` the system's
    /// hostname as it is now when it follows the system.
    pub fn env(&self) -> BTreeMap<String, String> {
        let base = self.base.read().unwrap_or_else(|p| p.into_inner());
        let mut env = base.vars.clone();
        if base.hostname_from_system {
            if let Some(h) = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
            {
                env.insert("HOSTNAME".into(), h);
            }
        }
        env
    }

    /// The working directory used when a request names none: the workspace's, if it
    /// exists, else `/`.
    pub fn default_cwd(&self) -> PathBuf {
        if self.workdir.is_dir() {
            self.workdir.clone()
        } else {
            PathBuf::from("/")
        }
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// Resolve an image `User` (`user[:group]`, names or numbers) against the given
/// passwd/group file contents, Docker style: a numeric uid missing from passwd gets gid 0
/// and HOME `/`.
pub fn resolve_user(spec: &str, passwd: &str, group: &str) -> Result<Credentials, UserError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(UserError::Empty);
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = parse_passwd(passwd);
    let groups = parse_group(group);

    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| UserError::UnknownUser(user_part.to_string()))?,
        ),
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(e)) => e.uid,
        (Err(_), None) => return Err(UserError::UnknownUser(user_part.to_string())),
    };
    let gid = match group_part {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        },
        _ => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut supplementary = vec![gid];
    if group_part.is_none() {
        if let Some(e) = entry {
            for g in &groups {
                if g.members.contains(&e.name) && !supplementary.contains(&g.gid) {
                    supplementary.push(g.gid);
                }
            }
        }
    }
    Ok(Credentials {
        uid,
        gid,
        groups: supplementary,
        home: Some(entry.map(|e| e.home.clone()).unwrap_or_else(|| "/".into())),
    })
}

/// Resolve `spec` against the files under `root` (`/` inside the guest).
pub fn resolve_user_in(spec: &str, root: &Path) -> Result<Credentials, UserError> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap_or_default();
    resolve_user(spec, &passwd, &group)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n";
    const GROUP: &str = "root:x:0:\nwheel:x:10:app,other\napp:x:1000:\nstaff:x:50:\n";

    #[test]
    fn names_and_numbers() {
        let c = resolve_user("app", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 1000));
        assert_eq!(c.groups, vec![1000, 10]);
        assert_eq!(c.home.as_deref(), Some("/home/app"));

        let c = resolve_user("app:staff", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.groups.clone()), (1000, 50, vec![50]));

        let c = resolve_user("1000:0", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid), (1000, 0));

        // Unknown numeric uid: Docker's behaviour.
        let c = resolve_user("4242", PASSWD, GROUP).unwrap();
        assert_eq!((c.uid, c.gid, c.home.as_deref()), (4242, 0, Some("/")));

        assert_eq!(
            resolve_user("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser("nobody".into()))
        );
        assert_eq!(
            resolve_user("app:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
    }

    #[test]
    fn env_defaults() {
        let w = Workspace::new(BTreeMap::new(), None, None);
        assert_eq!(w.env()["PATH"], DEFAULT_PATH);
        assert_eq!(w.env()["HOME"], "/root");
        assert_eq!(w.workdir, PathBuf::from("/"));
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), "/x".to_string());
        let w = Workspace::new(env, Some("/w".into()), None);
        assert_eq!(w.env()["PATH"], "/x");
        assert!(!w.env().contains_key("HOSTNAME"));
    }

    #[test]
    fn hostname_follows_the_system_when_the_user_did_not_set_it() {
        let w = Workspace::new(BTreeMap::new(), None, None);
        w.set_env(BTreeMap::new(), "boot-time-name");
        let now = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert_eq!(w.env()["HOSTNAME"], now);
        let mut env = BTreeMap::new();
        env.insert("HOSTNAME".to_string(), "users-own".to_string());
        env.insert("A".to_string(), "1".to_string());
        // A clone (the API's, a workload's) sees the replacement.
        let clone = w.clone();
        w.set_env(env, "boot-time-name");
        assert_eq!(clone.env()["HOSTNAME"], "users-own");
        assert_eq!(clone.env()["A"], "1");
        assert_eq!(clone.env()["PATH"], DEFAULT_PATH);
    }
}
