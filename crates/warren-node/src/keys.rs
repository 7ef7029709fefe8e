//! The node's side of key management: which master key wraps the workspaces' disk
//! keys, checked at start before anything touches a workspace, and where each
//! workspace's wrapped key lives (`workspaces/<id>/data.key`, mode 0600, bound to
//! the workspace id).

use crate::config::NodeConfig;
use crate::{NodeError, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warren_kms::{KeyManager, KmsError, LocalKeyManager};

/// A workspace's wrapped data key, in its run directory.
pub const KEY_FILE: &str = "data.key";
/// A fork child's wrapped overlay key: the passphrase QEMU encrypts the child's own
/// writes with (see crate::overlay).
pub const OVERLAY_KEY_FILE: &str = "overlay.key";

/// What workspace `id`'s overlay key is bound to when wrapped (its data key is
/// bound to `id` itself): one wrapped key cannot stand in for the other.
pub fn overlay_context(id: &str) -> String {
    format!("{id}/overlay")
}

/// Every `(wrapped key file, context it is bound to)` under `data_dir`.
pub fn wrapped_keys(data_dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = std::fs::read_dir(data_dir.join("workspaces"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .flat_map(|e| {
                    let id = e.file_name().to_string_lossy().into_owned();
                    [
                        (e.path().join(KEY_FILE), id.clone()),
                        (e.path().join(OVERLAY_KEY_FILE), overlay_context(&id)),
                    ]
                })
                .filter(|(p, _)| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Crypto-erasure of workspace directory `dir`: destroy every wrapped key in it.
/// Returns whether there was one.
pub fn destroy_keys(dir: &Path) -> warren_kms::Result<bool> {
    let data = warren_kms::destroy_wrapped(&dir.join(KEY_FILE))?;
    let overlay = warren_kms::destroy_wrapped(&dir.join(OVERLAY_KEY_FILE))?;
    Ok(data || overlay)
}

/// Open the master key for `config` and prove it unwraps every stored data key.
///
/// * The key file exists: it must be 0600 and well formed, and every workspace's
///   wrapped key must unwrap under it (else: an error naming the workspace).
/// * It is missing: an error if a path was configured or any workspace has a
///   wrapped key (its disk would be unreadable); otherwise, with encryption on, a
///   new key is created. With encryption off and no keys: `None`.
///
/// Nothing else is read or written, so a bad key stops the node before it changes
/// any workspace.
pub fn open_key_manager(config: &NodeConfig) -> Result<Option<Arc<dyn KeyManager>>> {
    let path = config.master_key_path();
    let wrapped = wrapped_keys(&config.data_dir);
    let km = if path.exists() {
        LocalKeyManager::open(&path)?
    } else if config.master_key_file.is_some() || !wrapped.is_empty() {
        tracing::error!(
            path = %path.display(),
            wrapped_keys = wrapped.len(),
            "the master key is missing"
        );
        return Err(KmsError::MasterKeyMissing(path).into());
    } else if config.encrypt_disks {
        LocalKeyManager::create(&path)?
    } else {
        return Ok(None);
    };
    for (file, id) in &wrapped {
        let w = warren_kms::read_wrapped(file)?;
        km.unwrap(&w, id).map_err(|e| {
            NodeError::Kms(match e {
                KmsError::UnknownMasterKey { kek_id, have } => KmsError::UnknownMasterKey {
                    kek_id: format!("{kek_id} (workspace {id})"),
                    have,
                },
                other => other,
            })
        })?;
    }
    tracing::info!(
        key_id = %km.current_key_id(),
        wrapped_keys = wrapped.len(),
        "master key loaded"
    );
    Ok(Some(Arc::new(km)))
}

/// Re-wrap every workspace's data key under a new master key (`warren key
/// rotate`); run it while no server uses this data directory.
pub fn rotate_master_key(config: &NodeConfig) -> Result<usize> {
    // Proves the current key first: a wrong key must not "rotate" anything.
    open_key_manager(config)?;
    let n = warren_kms::rotate_local(&config.master_key_path(), &wrapped_keys(&config.data_dir))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_kms::{DataKey, KeyManager};

    /// A fork child's overlay key is listed with its own context, so a master key
    /// rotation re-wraps it (and the start-up check proves it unwraps); destroying
    /// a workspace's keys takes both.
    #[test]
    fn overlay_keys_are_rotated_and_destroyed_with_data_keys() {
        let d = tempfile::tempdir().unwrap();
        let master = d.path().join("master.key");
        let km = LocalKeyManager::create(&master).unwrap();
        let ws = d.path().join("workspaces/ws_child");
        std::fs::create_dir_all(&ws).unwrap();
        let (data, overlay) = (DataKey::generate(), DataKey::generate());
        warren_kms::write_wrapped(&ws.join(KEY_FILE), &km.wrap(&data, "ws_child").unwrap())
            .unwrap();
        let ctx = overlay_context("ws_child");
        warren_kms::write_wrapped(
            &ws.join(OVERLAY_KEY_FILE),
            &km.wrap(&overlay, &ctx).unwrap(),
        )
        .unwrap();
        let listed = wrapped_keys(d.path());
        assert_eq!(
            listed,
            vec![
                (ws.join(KEY_FILE), "ws_child".to_string()),
                (ws.join(OVERLAY_KEY_FILE), ctx.clone()),
            ]
        );
        // The overlay key is bound to its context: it does not pass for a data key.
        let w = warren_kms::read_wrapped(&ws.join(OVERLAY_KEY_FILE)).unwrap();
        assert!(km.unwrap(&w, "ws_child").is_err());

        assert_eq!(warren_kms::rotate_local(&master, &listed).unwrap(), 2);
        let km2 = LocalKeyManager::open(&master).unwrap();
        assert_ne!(km2.current_key_id(), km.current_key_id());
        let w = warren_kms::read_wrapped(&ws.join(OVERLAY_KEY_FILE)).unwrap();
        assert_eq!(km2.unwrap(&w, &ctx).unwrap().as_bytes(), overlay.as_bytes());

        assert!(destroy_keys(&ws).unwrap());
        assert!(wrapped_keys(d.path()).is_empty());
        assert!(!destroy_keys(&ws).unwrap());
    }
}
