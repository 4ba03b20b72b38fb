//! Choosing storages: writes go to the first storage alive for read-write, reads look at every
//! storage alive for reading. Verdicts come from the status cache while fresh, from a probe
//! otherwise; when every storage looks dead, all are probed again before giving up.

use std::time::Duration;

use super::status_cache::{CacheFile, Check, Entry, StatusCache, now_ms};
use super::storage::Storage;
use super::{Error, Result};

/// The storage to write to, and the ones passed over before it (name, why).
#[derive(Debug)]
pub struct Choice {
    pub index: usize,
    pub passed_over: Vec<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    Write,
}

fn cached(file: &CacheFile, s: &Storage, mode: Mode, ttl: Duration) -> Option<Check> {
    let e = file.storages.get(&s.key)?;
    let c = match mode {
        Mode::Read => e.read.as_ref().or(e.write.as_ref().filter(|w| w.alive)),
        Mode::Write => e.write.as_ref(),
    }?;
    c.fresh(now_ms(), ttl).then(|| c.clone())
}

async fn probe(s: &Storage, mode: Mode) -> Check {
    let res = match mode {
        Mode::Read => s.probe_read().await,
        Mode::Write => s.probe_write().await,
    };
    if let Err(e) = &res {
        tracing::info!(storage = s.name(), mode = if mode == Mode::Read { "read" } else { "write" }, error = %super::chain(e), "storage alive check failed");
    }
    Check::now(&res)
}

/// Stores the outcome of checks (or of real operations) in the shared cache; a failure to write
/// the cache is logged, never fatal to a backup.
pub fn record(cache: &StatusCache, results: &[(&Storage, Option<Check>, Option<Check>)]) {
    if results.is_empty() {
        return;
    }
    let mut f = CacheFile::default();
    for (s, read, write) in results {
        f.storages.insert(
            s.key.clone(),
            Entry {
                name: s.name().to_owned(),
                read: read.clone(),
                write: write.clone(),
            },
        );
    }
    if let Err(e) = cache.record(&f) {
        tracing::warn!(path = %cache.path().display(), error = %e, "could not update the storage status cache");
    }
}

/// The first storage (in config order, skipping `exclude`) alive for read-write.
pub async fn writable(
    storages: &[Storage],
    cache: &StatusCache,
    ttl: Duration,
    exclude: &[usize],
) -> Result<Choice> {
    let file = cache.read();
    let mut passed_over = Vec::new();
    let mut recorded = Vec::new();
    let mut trusted_cache = false;
    for recheck in [false, true] {
        passed_over.clear();
        for (i, s) in storages.iter().enumerate() {
            if exclude.contains(&i) {
                continue;
            }
            let check = match cached(&file, s, Mode::Write, ttl).filter(|_| !recheck) {
                Some(c) => {
                    trusted_cache |= !c.alive;
                    c
                }
                None => {
                    let c = probe(s, Mode::Write).await;
                    recorded.push((s, None, Some(c.clone())));
                    c
                }
            };
            if check.alive {
                record(cache, &recorded);
                return Ok(Choice {
                    index: i,
                    passed_over,
                });
            }
            passed_over.push((
                s.name().to_owned(),
                check
                    .error
                    .unwrap_or_else(|| "not writable at the last check".into()),
            ));
        }
        if !trusted_cache {
            break;
        }
        tracing::info!("every storage looked unwritable in the status cache; checking them again");
    }
    record(cache, &recorded);
    Err(Error::NoStorage {
        mode: "writable",
        tried: describe(&passed_over),
    })
}

/// Every storage alive for reading, in config order.
pub async fn readable(
    storages: &[Storage],
    cache: &StatusCache,
    ttl: Duration,
) -> Result<Vec<usize>> {
    let file = cache.read();
    let mut recorded = Vec::new();
    let mut last = Vec::new();
    for recheck in [false, true] {
        let checks = futures::future::join_all(storages.iter().map(|s| {
            let hit = cached(&file, s, Mode::Read, ttl).filter(|_| !recheck);
            async move {
                match hit {
                    Some(c) => (c, true),
                    None => (probe(s, Mode::Read).await, false),
                }
            }
        }))
        .await;
        let mut any_cached_dead = false;
        for (s, (c, from_cache)) in storages.iter().zip(&checks) {
            if !from_cache {
                recorded.push((s, Some(c.clone()), None));
            }
            any_cached_dead |= *from_cache && !c.alive;
        }
        let alive: Vec<usize> = (0..storages.len()).filter(|&i| checks[i].0.alive).collect();
        if !alive.is_empty() {
            record(cache, &recorded);
            return Ok(alive);
        }
        last = storages
            .iter()
            .zip(checks)
            .map(|(s, (c, _))| {
                (
                    s.name().to_owned(),
                    c.error
                        .unwrap_or_else(|| "not readable at the last check".into()),
                )
            })
            .collect();
        if !any_cached_dead {
            break;
        }
        tracing::info!("every storage looked unreadable in the status cache; checking them again");
    }
    record(cache, &recorded);
    Err(Error::NoStorage {
        mode: "readable",
        tried: describe(&last),
    })
}

fn describe(list: &[(String, String)]) -> String {
    list.iter()
        .map(|(n, why)| format!("{n}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::config::StorageConfig;

    fn file_storage(root: &std::path::Path, name: &str) -> Storage {
        let c: StorageConfig = serde_json::from_value(serde_json::json!({
            "name": name, "type": "file", "path": root.join(name),
        }))
        .unwrap();
        Storage::open(&c, Duration::from_secs(2), Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn dead_primary_is_passed_over_and_cached_until_the_ttl() {
        let root = std::env::temp_dir().join(format!("lc-failover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let storages = vec![file_storage(&root, "a"), file_storage(&root, "b")];
        let cache = StatusCache::new(&root);
        let ttl = Duration::from_secs(60);
        assert_eq!(
            writable(&storages, &cache, ttl, &[]).await.unwrap().index,
            0
        );
        // Make "a" unwritable: its directory becomes a plain file.
        std::fs::remove_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a"), b"x").unwrap();
        // The cached "alive" still holds within the TTL...
        assert_eq!(
            writable(&storages, &cache, ttl, &[]).await.unwrap().index,
            0
        );
        // ...and after it, "a" is probed, found dead, and "b" takes the write.
        let c = writable(&storages, &cache, Duration::ZERO, &[])
            .await
            .unwrap();
        assert_eq!(c.index, 1);
        assert_eq!(c.passed_over[0].0, "a");
        // With "b" excluded and "a" cached dead, "a" is re-checked before giving up.
        let err = writable(&storages, &cache, ttl, &[1]).await.unwrap_err();
        assert!(err.to_string().contains("no writable storage"), "{err}");
        // Reads do not trust a failed write check (a read-only bucket is still readable).
        assert!(readable(&storages, &cache, ttl).await.unwrap().contains(&1));
        let _ = std::fs::remove_dir_all(&root);
    }
}
