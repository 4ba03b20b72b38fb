//! ConfigMap with the cluster's node configuration files (today: the backup configuration).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::{Names, owned_meta};
use crate::crd::SqliteCluster;
use crate::{Error, Result};

/// Key of the backup configuration inside the ConfigMap (mounted at `/etc/litecluster/config`).
pub const BACKUP_CONFIG_KEY: &str = "backup.json";

/// `backup.json` mirrors `spec.backup`, with each storage's credentials replaced by the path
/// where its Secret is mounted (`/etc/litecluster/backup/<storage>/`); secrets never enter the
/// ConfigMap.
pub fn desired_configmap(c: &SqliteCluster) -> Result<ConfigMap> {
    let mut data = BTreeMap::new();
    if let Some(backup) = &c.spec.backup {
        let storages: Vec<_> = backup
            .storages
            .iter()
            .map(|s| {
                // The node's backup config format (node/src/backup/config.rs); credentials
                // are read from the mounted Secret's files.
                let dir = format!("/etc/litecluster/backup/{}", s.name);
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
            .collect();
        let mut doc = serde_json::json!({ "storages": storages, "interval": backup.interval });
        if let Some(keep) = backup.retention {
            doc["retention"] = serde_json::json!({ "keep": keep });
        }
        let text = serde_json::to_string_pretty(&doc).map_err(|source| Error::Serialize {
            what: "backup config",
            source,
        })?;
        data.insert(BACKUP_CONFIG_KEY.to_string(), text);
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
        assert_eq!(doc["retention"]["keep"], 3);
        assert!(!data[BACKUP_CONFIG_KEY].contains("creds"));
    }
}
