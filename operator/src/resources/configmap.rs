//! ConfigMap with the cluster's node configuration files: the backup storages, and the ones a
//! recovery restores from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Names, owned_meta};
use crate::crd::{BackupStorage, SqliteCluster};
use crate::{Error, Result};

/// Key of the backup configuration inside the ConfigMap (mounted at `/etc/litecluster/config`).
pub const BACKUP_CONFIG_KEY: &str = "backup.json";

/// Key of the storages `spec.bootstrap.recovery` restores from (read by `--restore-from`).
pub const RECOVERY_CONFIG_KEY: &str = "recovery.json";

/// Where the credentials Secret of backup storage `name` is mounted.
pub fn backup_secret_dir(name: &str) -> String {
    format!("/etc/litecluster/backup/{name}")
}

/// Where the credentials Secret of recovery storage `name` is mounted.
pub fn recovery_secret_dir(name: &str) -> String {
    format!("/etc/litecluster/recovery/{name}")
}

/// Storages in the node's backup config format (node/src/backup/config.rs); credentials are
/// read from the files of the Secret mounted under `dir(name)`.
fn storages_json(storages: &[BackupStorage], dir: fn(&str) -> String) -> Vec<serde_json::Value> {
    storages
        .iter()
        .map(|s| {
            let dir = dir(&s.name);
            serde_json::json!({
                "name": s.name,
                "type": "s3",
                "endpoint": s.endpoint,
                "bucket": s.bucket,
                "prefix": s.prefix.clone().unwrap_or_default(),
                "region": s.region,
                "access_key_id_file": format!("{dir}/accessKeyId"),
                "secret_access_key_file": format!("{dir}/secretAccessKey"),
            })
        })
        .collect()
}

/// `backup.json` mirrors `spec.backup`, and `recovery.json` `spec.bootstrap.recovery`, with
/// each storage's credentials replaced by the path where its Secret is mounted; secrets never
/// enter the ConfigMap.
pub fn desired_configmap(c: &SqliteCluster) -> Result<ConfigMap> {
    let mut data = BTreeMap::new();
    let text = |doc: &serde_json::Value, what: &'static str| {
        serde_json::to_string_pretty(doc).map_err(|source| Error::Serialize { what, source })
    };
    if let Some(r) = c.spec.bootstrap.as_ref().and_then(|b| b.recovery.as_ref()) {
        // Restores read only; no interval, so this config never takes backups.
        let doc =
            serde_json::json!({ "storages": storages_json(&r.storages, recovery_secret_dir) });
        data.insert(
            RECOVERY_CONFIG_KEY.to_string(),
            text(&doc, "recovery config")?,
        );
    }
    if let Some(backup) = &c.spec.backup {
        let storages = storages_json(&backup.storages, backup_secret_dir);
        let mut doc = serde_json::json!({ "storages": storages, "interval": backup.interval });
        if let Some(keep) = backup.retention {
            doc["retention"] = serde_json::json!({ "keep": keep });
        }
        data.insert(BACKUP_CONFIG_KEY.to_string(), text(&doc, "backup config")?);
    }
    Ok(ConfigMap {
        metadata: owned_meta(c, Names::config(c)),
        data: Some(data),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{BackupSpec, BackupStorage, SecretReference};
    use crate::resources::testing::cluster;

    #[test]
    fn recovery_storages_get_a_config_of_their_own_that_takes_no_backups() {
        let mut c = cluster();
        c.spec.bootstrap = Some(
            serde_json::from_value(serde_json::json!({"recovery": {
                "storages": [{"name": "old", "endpoint": "http://s3", "bucket": "b",
                    "credentialsSecret": {"name": "old-s3"}}]}}))
            .unwrap(),
        );
        let data = desired_configmap(&c).unwrap().data.unwrap();
        assert!(!data.contains_key(BACKUP_CONFIG_KEY));
        let doc: serde_json::Value = serde_json::from_str(&data[RECOVERY_CONFIG_KEY]).unwrap();
        assert_eq!(
            doc["storages"][0]["access_key_id_file"],
            "/etc/litecluster/recovery/old/accessKeyId"
        );
        assert!(doc.get("interval").is_none());
    }

    #[test]
    fn configmap_is_empty_without_backup() {
        let cm = desired_configmap(&cluster()).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("db-config"));
        assert!(cm.data.unwrap().is_empty());
    }

    #[test]
    fn backup_config_lists_storages_in_order_without_secrets() {
        let mut c = cluster();
        let storage = |name: &str| BackupStorage {
            name: name.into(),
            endpoint: "https://s3.example".into(),
            bucket: "b".into(),
            prefix: None,
            region: None,
            credentials_secret: SecretReference {
                name: format!("{name}-creds"),
            },
        };
        c.spec.backup = Some(BackupSpec {
            storages: vec![storage("primary"), storage("fallback")],
            interval: "1h".into(),
            retention: Some(3),
            archive_interval: "5s".into(),
        });
        let data = desired_configmap(&c).unwrap().data.unwrap();
        let doc: serde_json::Value = serde_json::from_str(&data[BACKUP_CONFIG_KEY]).unwrap();
        assert_eq!(doc["storages"][0]["name"], "primary");
        assert_eq!(doc["storages"][1]["type"], "s3");
        assert_eq!(
            doc["storages"][1]["secret_access_key_file"],
            "/etc/litecluster/backup/fallback/secretAccessKey"
        );
        assert_eq!(doc["interval"], "1h");
        // Archiving goes by env (statefulset.rs), so older members still read this file.
        assert!(doc.get("archive_interval").is_none());
        assert_eq!(doc["retention"]["keep"], 3);
        assert!(!data[BACKUP_CONFIG_KEY].contains("creds"));
    }
}
