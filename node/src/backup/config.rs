//! The backup config file (YAML or JSON): storages in failover order, interval, retention.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{Error, Result};

/// What a backup config file holds.
///
/// ```yaml
/// interval: 1h            # auto-backup on the leader; absent or "0" turns it off
/// archive_interval: 5s    # ship committed Raft entries this often (point-in-time recovery)
/// archive_id: 3f2a...     # keeps this cluster's archive apart in shared storages
/// retention: {keep: 7, max_age: 30d}
/// probe_timeout: 5s       # alive checks (list, put+delete of a probe object)
/// storages:               # writes go to the first writable one, reads look at all
///   - name: primary
///     type: s3
///     bucket: backups
///     prefix: prod/db
///     endpoint: http://minio:9000
///     region: us-east-1
///     access_key_id_env: AWS_ACCESS_KEY_ID
///     secret_access_key_file: /secrets/s3/secret
///   - {name: local, type: file, path: /var/backups/litecluster}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub storages: Vec<StorageConfig>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
    /// Continuous archiving of committed Raft entries for point-in-time recovery; absent or "0"
    /// turns it off. The archive trails the log by about this much (the RPO).
    #[serde(default, deserialize_with = "opt_duration")]
    pub archive_interval: Option<Duration>,
    /// Keeps this cluster's archive apart from others' in the same storages
    /// (`archive/<id>/`); the operator sets the cluster's UID. Without it the archive is
    /// `archive/`, and the storages (or their prefix) must be this cluster's alone.
    #[serde(default)]
    pub archive_id: Option<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default = "default_probe_timeout", deserialize_with = "duration")]
    pub probe_timeout: Duration,
    /// Time limit of one upload or download.
    #[serde(default = "default_transfer_timeout", deserialize_with = "duration")]
    pub transfer_timeout: Duration,
    /// gzip level 0-9.
    #[serde(default = "default_level")]
    pub compression_level: u32,
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_transfer_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_level() -> u32 {
    6
}

/// How many backups a storage keeps. The newest backup is never deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep at most this many backups.
    pub keep: Option<usize>,
    /// Delete backups older than this.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    S3,
    Gcs,
    Azure,
    File,
}

/// One storage. Secrets are never written here: only the names of env vars or files holding them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: StorageKind,
    /// Bucket (S3, GCS) or container (Azure).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket (or sub-directory of `path`).
    #[serde(default)]
    pub prefix: String,
    /// Directory of a `file` storage.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Endpoint URL of an S3-compatible server or an Azure emulator.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// S3: address buckets as `https://bucket.host/` instead of `https://host/bucket/`.
    #[serde(default)]
    pub virtual_hosted_style: bool,
    /// Azure storage account.
    #[serde(default)]
    pub account: Option<String>,
    /// Where credentials come from: `<field>_env` names an env var, `<field>_file` a file.
    #[serde(default)]
    pub access_key_id_env: Option<String>,
    #[serde(default)]
    pub access_key_id_file: Option<PathBuf>,
    #[serde(default)]
    pub secret_access_key_env: Option<String>,
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub session_token_env: Option<String>,
    /// GCS service-account JSON file.
    #[serde(default)]
    pub service_account_file: Option<PathBuf>,
    /// Azure account key.
    #[serde(default)]
    pub access_key_env: Option<String>,
    #[serde(default)]
    pub access_key_file: Option<PathBuf>,
    /// Retention for this storage, overriding the file's top-level `retention`.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// A secret read from an env var or a file; its `Debug` never shows the value.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl StorageConfig {
    /// Reads the secret named by `env` or `file`; `None` when neither is set.
    pub fn secret(
        &self,
        what: &str,
        env: &Option<String>,
        file: &Option<PathBuf>,
    ) -> Result<Option<Secret>> {
        if let Some(var) = env {
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
                _ => Err(Error::Credential {
                    storage: self.name.clone(),
                    what: format!("{what}: env var {var} is not set"),
                }),
            };
        }
        if let Some(path) = file {
            return match std::fs::read_to_string(path) {
                Ok(v) => Ok(Some(Secret(v.trim().to_owned()))),
                Err(e) => Err(Error::Credential {
                    storage: self.name.clone(),
                    what: format!("{what}: cannot read {}: {e}", path.display()),
                }),
            };
        }
        Ok(None)
    }

    /// A short hash of everything that identifies where this storage writes (not its secrets),
    /// so that a status cached for an old definition is never used for a new one.
    pub fn identity_hash(&self) -> String {
        use sha2::Digest;
        let ident = serde_json::json!({
            "type": self.kind, "bucket": self.bucket, "prefix": self.prefix, "path": self.path,
            "endpoint": self.endpoint, "region": self.region, "account": self.account,
            "vhost": self.virtual_hosted_style,
        });
        let digest = sha2::Sha256::digest(ident.to_string().as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key of this storage in the status cache.
    pub fn cache_key(&self) -> String {
        format!("{}-{}", self.name, self.identity_hash())
    }

    /// Human-readable location, without credentials.
    pub fn location(&self) -> String {
        match self.kind {
            StorageKind::File => format!(
                "file://{}/{}",
                self.path.as_deref().unwrap_or(Path::new("?")).display(),
                self.prefix
            ),
            StorageKind::S3 => format!(
                "s3://{}/{}{}",
                self.bucket.as_deref().unwrap_or("?"),
                self.prefix,
                self.endpoint
                    .as_ref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            StorageKind::Gcs => format!(
                "gs://{}/{}",
                self.bucket.as_deref().unwrap_or("?"),
                self.prefix
            ),
            StorageKind::Azure => format!(
                "azure://{}/{}/{}",
                self.account.as_deref().unwrap_or("?"),
                self.bucket.as_deref().unwrap_or("?"),
                self.prefix
            ),
        }
    }
}

impl BackupConfig {
    /// Reads and checks a config file; JSON when it looks like JSON, YAML otherwise.
    pub fn load(path: &Path) -> Result<Self> {
        let raw = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_owned(),
            msg: format!("cannot read it: {e}"),
        })?;
        Self::parse(&raw).map_err(|msg| Error::Config {
            path: path.to_owned(),
            msg,
        })
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let cfg: Self = if raw.trim_start().starts_with('{') {
            serde_json::from_str(raw).map_err(|e| e.to_string())?
        } else {
            serde_saphyr::from_str(raw).map_err(|e| e.to_string())?
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.storages.is_empty() {
            return Err("`storages` is empty: list at least one storage".into());
        }
        if let Some(id) = &self.archive_id {
            check_archive_id(id)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.storages {
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!(
                    "storage name {:?} must be non-empty and use only letters, digits, '-', '_' and '.'",
                    s.name
                ));
            }
            if !names.insert(&s.name) {
                return Err(format!("storage name {:?} is used twice", s.name));
            }
            match s.kind {
                StorageKind::File if s.path.is_none() => {
                    return Err(format!("storage {:?} (type file) needs `path`", s.name));
                }
                StorageKind::S3 | StorageKind::Gcs | StorageKind::Azure if s.bucket.is_none() => {
                    return Err(format!("storage {:?} needs `bucket`", s.name));
                }
                StorageKind::Azure if s.account.is_none() => {
                    return Err(format!("storage {:?} (type azure) needs `account`", s.name));
                }
                _ => {}
            }
        }
        if self.compression_level > 9 {
            return Err("`compression_level` must be 0-9".into());
        }
        Ok(())
    }

    /// The retention that applies to storage `i`.
    pub fn retention_for(&self, i: usize) -> &Retention {
        self.storages[i]
            .retention
            .as_ref()
            .unwrap_or(&self.retention)
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    crate::config::parse_duration(&s).map_err(serde::de::Error::custom)
}

/// An archive id is one path segment: letters, digits, '-', '_' and '.', at most 128.
pub fn check_archive_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "archive_id {id:?} must be 1-128 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s {
        None => Ok(None),
        Some(s) => {
            // Days are common for retention; Go-style durations stop at hours.
            let parsed = match s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
                Some(days) => days
                    .checked_mul(86_400)
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("{s:?} is too long a duration")),
                None => crate::config::parse_duration(&s),
            };
            parsed
                .map(|d| (!d.is_zero()).then_some(d))
                .map_err(serde::de::Error::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    /// The exact shape `litecluster-operator` writes into the ConfigMap
    /// (operator/src/resources/configmap.rs); both sides must keep agreeing.
    #[test]
    fn accepts_the_operators_config() {
        let raw = r#"{
          "storages": [{
            "name": "primary", "type": "s3", "endpoint": "https://s3.example", "bucket": "b",
            "prefix": "", "region": null,
            "access_key_id_file": "/etc/litecluster/backup/primary/accessKeyId",
            "secret_access_key_file": "/etc/litecluster/backup/primary/secretAccessKey"
          }],
          "interval": "1h",
          "retention": {"keep": 3}
        }"#;
        let cfg = BackupConfig::parse(raw).unwrap();
        assert_eq!(cfg.interval, Some(Duration::from_secs(3600)));
        assert_eq!(cfg.storages[0].name, "primary");
        assert_eq!(cfg.retention.keep, Some(3));
    }

    use super::*;

    #[test]
    fn yaml_and_json_parse_the_same() {
        let yaml = "interval: 1h\nretention: {keep: 3, max_age: 7d}\nstorages:\n  - name: a\n    type: s3\n    bucket: b\n    endpoint: http://127.0.0.1:9000\n  - {name: local, type: file, path: /tmp/x}\n";
        let json = r#"{"interval":"1h","retention":{"keep":3,"max_age":"7d"},"storages":[{"name":"a","type":"s3","bucket":"b","endpoint":"http://127.0.0.1:9000"},{"name":"local","type":"file","path":"/tmp/x"}]}"#;
        let (y, j) = (
            BackupConfig::parse(yaml).unwrap(),
            BackupConfig::parse(json).unwrap(),
        );
        assert_eq!(y.interval, Some(Duration::from_secs(3600)));
        assert_eq!(y.retention, j.retention);
        assert_eq!(y.retention.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(y.storages[1].kind, StorageKind::File);
        assert_eq!(y.storages[0].cache_key(), j.storages[0].cache_key());
        assert_eq!(y.probe_timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = |s: &str| BackupConfig::parse(s).unwrap_err();
        assert!(err("storages: []").contains("at least one storage"));
        assert!(err("storages: [{name: a, type: file}]").contains("needs `path`"));
        assert!(err("storages: [{name: a, type: s3}]").contains("needs `bucket`"));
        assert!(
            err("storages: [{name: a, type: file, path: /x}, {name: a, type: file, path: /y}]")
                .contains("twice")
        );
        assert!(err("storages: [{name: a, type: ftp, path: /x}]").contains("ftp"));
        assert!(err("storages: [{name: a, type: file, path: /x, secret: y}]").contains("secret"));
    }

    #[test]
    fn cache_key_changes_with_location_not_with_secret_source() {
        let a: StorageConfig =
            serde_json::from_str(r#"{"name":"p","type":"s3","bucket":"b"}"#).unwrap();
        let mut b = a.clone();
        b.access_key_id_env = Some("OTHER".into());
        assert_eq!(a.cache_key(), b.cache_key());
        b.bucket = Some("c".into());
        assert_ne!(a.cache_key(), b.cache_key());
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
