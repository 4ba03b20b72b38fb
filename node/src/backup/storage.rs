//! One configured storage behind `object_store`, with alive checks and time limits.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use super::config::{StorageConfig, StorageKind};
use super::{Error, Result};

/// A storage ready to use. `Debug` shows where it writes, never its credentials.
pub struct Storage {
    pub config: StorageConfig,
    pub key: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    probe_timeout: Duration,
    transfer_timeout: Duration,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("name", &self.config.name)
            .field("location", &self.config.location())
            .finish()
    }
}

impl Storage {
    pub fn open(
        config: &StorageConfig,
        probe_timeout: Duration,
        transfer_timeout: Duration,
    ) -> Result<Self> {
        let store = build(config, probe_timeout)?;
        Ok(Self {
            key: config.cache_key(),
            config: config.clone(),
            store,
            prefix: ObjPath::from(config.prefix.trim_matches('/')),
            probe_timeout,
            transfer_timeout,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The object path of `name` below this storage's prefix.
    pub fn path(&self, name: &str) -> ObjPath {
        name.split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        limit: Duration,
        fut: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Storage {
                storage: self.config.name.clone(),
                op,
                source: Box::new(source),
            }),
            Err(_) => Err(Error::Timeout {
                storage: self.config.name.clone(),
                op,
                after: limit,
            }),
        }
    }

    pub async fn put(&self, name: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(name);
        self.timed(
            "put",
            self.transfer_timeout,
            self.store.put(&path, PutPayload::from(bytes)),
        )
        .await
        .map(|_| ())
    }

    pub async fn get(&self, name: &str) -> Result<Bytes> {
        let path = self.path(name);
        self.timed("get", self.transfer_timeout, async {
            self.store.get(&path).await?.bytes().await
        })
        .await
    }

    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        self.timed("delete", self.probe_timeout, self.store.delete(&path))
            .await
    }

    /// Names (relative to the prefix) of every object below `dir`.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>> {
        let base = self.path(dir);
        let prefix_len = self.prefix.parts().count();
        self.timed("list", self.transfer_timeout, async {
            let metas: Vec<_> = self.store.list(Some(&base)).try_collect().await?;
            Ok(metas
                .into_iter()
                .map(|m| {
                    m.location
                        .parts()
                        .skip(prefix_len)
                        .map(|p| p.as_ref().to_owned())
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .collect())
        })
        .await
    }

    /// Read-only alive check: one listing below the prefix.
    pub async fn probe_read(&self) -> Result<()> {
        let prefix = self.prefix.clone();
        self.timed("list (alive check)", self.probe_timeout, async {
            self.store
                .list_with_delimiter(Some(&prefix))
                .await
                .map(|_| ())
        })
        .await
    }

    /// Read-write alive check: put a small probe object, then delete it.
    pub async fn probe_write(&self) -> Result<()> {
        let name = format!(
            ".litecluster-probe/{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = self.path(&name);
        self.timed("put (alive check)", self.probe_timeout, async {
            self.store
                .put(&path, PutPayload::from_static(b"probe"))
                .await?;
            self.store.delete(&path).await
        })
        .await
    }
}

fn build(c: &StorageConfig, probe_timeout: Duration) -> Result<Arc<dyn ObjectStore>> {
    let storage_err = storage_err(c);
    // Few quick retries: a dead storage must be noticed fast so the next one takes over.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: probe_timeout.max(Duration::from_secs(10)),
        ..RetryConfig::default()
    };
    let http = c
        .endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    // `allow_http` lives in the client options: set it there, not on the builder, so that
    // `with_client_options` cannot reset it.
    let options = ClientOptions::new()
        .with_connect_timeout(probe_timeout)
        .with_allow_http(http);
    Ok(match c.kind {
        StorageKind::File => {
            let dir = c.path.clone().unwrap_or_default();
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("creating storage dir {}", dir.display()), e))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(storage_err)?
                    .with_automatic_cleanup(true),
            )
        }
        StorageKind::S3 => s3(c, retry, options)?,
        StorageKind::Gcs => gcs(c, retry, options)?,
        StorageKind::Azure => azure(c, retry, options)?,
    })
}

type Built = Result<Arc<dyn ObjectStore>>;

#[cfg(feature = "s3")]
fn s3(c: &StorageConfig, retry: RetryConfig, options: ClientOptions) -> Built {
    let mut b = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name(c.bucket.clone().unwrap_or_default())
        .with_region(c.region.clone().unwrap_or_else(|| "us-east-1".into()))
        .with_virtual_hosted_style_request(c.virtual_hosted_style)
        .with_retry(retry)
        .with_client_options(options);
    if let Some(e) = &c.endpoint {
        b = b.with_endpoint(e);
    }
    let key_env = c.access_key_id_env.clone().or_else(|| {
        c.access_key_id_file
            .is_none()
            .then(|| "AWS_ACCESS_KEY_ID".to_owned())
    });
    let secret_env = c.secret_access_key_env.clone().or_else(|| {
        c.secret_access_key_file
            .is_none()
            .then(|| "AWS_SECRET_ACCESS_KEY".to_owned())
    });
    // Defaults to the standard AWS variables when nothing is named, and to the
    // builder's own credential chain (instance metadata, ...) when those are unset too.
    let explicit = c.access_key_id_env.is_some() || c.access_key_id_file.is_some();
    let id = match c.secret("access key id", &key_env, &c.access_key_id_file) {
        Ok(v) => v,
        Err(e) if explicit => return Err(e),
        Err(_) => None,
    };
    if let Some(id) = id {
        let secret = c
            .secret("secret access key", &secret_env, &c.secret_access_key_file)?
            .ok_or_else(|| Error::Credential {
                storage: c.name.clone(),
                what: "an access key id is set but no secret access key".into(),
            })?;
        b = b
            .with_access_key_id(id.expose())
            .with_secret_access_key(secret.expose());
        if let Some(token) = c.secret("session token", &c.session_token_env, &None)? {
            b = b.with_token(token.expose());
        }
    }
    Ok(Arc::new(b.build().map_err(storage_err(c))?))
}

#[cfg(feature = "gcs")]
fn gcs(c: &StorageConfig, retry: RetryConfig, options: ClientOptions) -> Built {
    let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
        .with_bucket_name(c.bucket.clone().unwrap_or_default())
        .with_retry(retry)
        .with_client_options(options);
    if let Some(p) = &c.service_account_file {
        b = b.with_service_account_path(p.to_string_lossy());
    }
    Ok(Arc::new(b.build().map_err(storage_err(c))?))
}

#[cfg(feature = "azure")]
fn azure(c: &StorageConfig, retry: RetryConfig, options: ClientOptions) -> Built {
    let mut b = object_store::azure::MicrosoftAzureBuilder::new()
        .with_account(c.account.clone().unwrap_or_default())
        .with_container_name(c.bucket.clone().unwrap_or_default())
        .with_retry(retry)
        .with_client_options(options);
    if let Some(e) = &c.endpoint {
        b = b.with_endpoint(e.clone());
    }
    if let Some(k) = c.secret("access key", &c.access_key_env, &c.access_key_file)? {
        b = b.with_access_key(k.expose());
    }
    Ok(Arc::new(b.build().map_err(storage_err(c))?))
}

#[cfg(not(feature = "s3"))]
fn s3(c: &StorageConfig, _: RetryConfig, _: ClientOptions) -> Built {
    Err(not_built(c, "s3"))
}

#[cfg(not(feature = "gcs"))]
fn gcs(c: &StorageConfig, _: RetryConfig, _: ClientOptions) -> Built {
    Err(not_built(c, "gcs"))
}

#[cfg(not(feature = "azure"))]
fn azure(c: &StorageConfig, _: RetryConfig, _: ClientOptions) -> Built {
    Err(not_built(c, "azure"))
}

#[allow(dead_code)] // used only by a build without some storage feature
fn not_built(c: &StorageConfig, feature: &'static str) -> Error {
    Error::NotBuilt {
        storage: c.name.clone(),
        feature,
    }
}

fn storage_err(c: &StorageConfig) -> impl Fn(object_store::Error) -> Error + '_ {
    |source| Error::Storage {
        storage: c.name.clone(),
        op: "configure",
        source: Box::new(source),
    }
}
