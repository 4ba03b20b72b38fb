//! Continuous archiving of committed Raft entries, and point-in-time restore from a base backup
//! plus the archived entries after it (see `DESIGN.md` beside this file, "Archive").
//!
//! Entries are deterministic (non-deterministic SQL is rewritten before it enters the log), so
//! replaying them through the state machine on top of a backup gives the bytes every member had.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use openraft::{EntryPayload, RaftLogReader};
use serde::{Deserialize, Serialize};

use super::manifest::sha256_hex;
use super::status_cache::now_ms;
use super::{Error, Manager, Result, chain};
use crate::raft::log_store::LogStore;
use crate::{Entry, Raft};

pub const DIR: &str = "archive";
const MAGIC: &[u8] = b"litecluster-segment\n";
/// A segment holds at most this many entries and about this many encoded bytes.
const MAX_ENTRIES: u64 = 20_000;
const MAX_BYTES: usize = 16 << 20;

/// Where the segments of one archive live: `archive/<id>`, or `archive` without an id.
/// Clusters that share storages keep apart by id (the operator uses the cluster's UID).
pub fn dir(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{DIR}/{id}"),
        None => DIR.to_owned(),
    }
}

/// `<dir>/<first>-<last>.seg`, indexes zero-padded so names sort by position.
pub fn segment_name(dir: &str, first: u64, last: u64) -> String {
    format!("{dir}/{first:020}-{last:020}.seg")
}

/// The range in a segment's object name directly below `dir` (not in a sub-directory, which
/// is another archive's).
pub fn parse_name(dir: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(dir)?.strip_prefix('/')?;
    let (a, b) = rest.strip_suffix(".seg")?.split_once('-')?;
    let (first, last) = (a.parse().ok()?, b.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// The first line of a segment object; the gzip of the entries (one JSON line each, the Raft
/// log's own encoding) follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub first: u64,
    pub last: u64,
    pub count: u64,
    /// Leader's clock when the first and last data-changing entries were proposed.
    pub first_ms: Option<u64>,
    pub last_ms: Option<u64>,
    pub node_id: String,
    pub term: u64,
    pub created_at_ms: u64,
    /// Size and SHA-256 of the compressed body.
    pub size: u64,
    pub sha256: String,
}

/// When the leader proposed `e`, for entries that change data.
pub fn entry_ms(e: &Entry) -> Option<u64> {
    match &e.payload {
        EntryPayload::Normal(c) => c.at_ms(),
        _ => None,
    }
}

/// Encodes contiguous `entries` as one segment object.
pub fn encode(entries: &[Entry], node_id: &str, term: u64, level: u32) -> Result<(Header, Bytes)> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(Error::Internal("an empty segment".into()));
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    for e in entries {
        serde_json::to_writer(&mut gz, e).map_err(|e| Error::Internal(e.to_string()))?;
        gz.write_all(b"\n")
            .map_err(|e| Error::io("compressing a segment", e))?;
    }
    let body = gz
        .finish()
        .map_err(|e| Error::io("compressing a segment", e))?;
    let header = Header {
        format: 1,
        first: first.log_id.index,
        last: last.log_id.index,
        count: entries.len() as u64,
        first_ms: entries.iter().find_map(entry_ms),
        last_ms: entries.iter().rev().find_map(entry_ms),
        node_id: node_id.to_owned(),
        term,
        created_at_ms: now_ms(),
        size: body.len() as u64,
        sha256: sha256_hex(&body),
    };
    let mut out = MAGIC.to_vec();
    serde_json::to_writer(&mut out, &header).map_err(|e| Error::Internal(e.to_string()))?;
    out.push(b'\n');
    out.extend_from_slice(&body);
    Ok((header, Bytes::from(out)))
}

/// Decodes and checks a segment object named for `range`: its checksum, and that it holds
/// exactly the entries `range` names, in order.
pub fn decode(
    range: (u64, u64),
    object: &[u8],
) -> std::result::Result<(Header, Vec<Entry>), String> {
    let rest = object
        .strip_prefix(MAGIC)
        .ok_or("not a litecluster segment")?;
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header: Header =
        serde_json::from_slice(&rest[..nl]).map_err(|e| format!("header is not valid: {e}"))?;
    let body = &rest[nl + 1..];
    if header.format != 1 {
        return Err(format!(
            "segment format {} is newer than this build reads (1): restore with a newer litecluster-node",
            header.format
        ));
    }
    if (header.first, header.last) != range {
        return Err(format!(
            "header says {}..={}, the name {}..={}",
            header.first, header.last, range.0, range.1
        ));
    }
    if body.len() as u64 != header.size || sha256_hex(body) != header.sha256 {
        return Err("body size or SHA-256 does not match the header".into());
    }
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut text)
        .map_err(|e| format!("body does not decompress: {e}"))?;
    let mut entries = Vec::with_capacity(header.count as usize);
    for line in text.lines() {
        let line = line.map_err(|e| e.to_string())?;
        let e: Entry =
            serde_json::from_str(&line).map_err(|e| format!("an entry is not valid: {e}"))?;
        let want = range.0 + entries.len() as u64;
        if e.log_id.index != want {
            return Err(format!("entry {} where {want} belongs", e.log_id.index));
        }
        entries.push(e);
    }
    if entries.len() as u64 != header.count || range.0 + header.count != range.1 + 1 {
        return Err(format!(
            "{} entries, the header says {}",
            entries.len(),
            header.count
        ));
    }
    Ok((header, entries))
}

/// The segments found across storages: range → index of a storage holding it.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    pub segments: BTreeMap<(u64, u64), usize>,
    /// Storages that could not be read (their segments are missing here), comma-separated.
    pub unreadable: String,
}

impl Catalog {
    /// The segments that continue a base backup at `base` without a hole, in order, each
    /// reaching further than the one before.
    pub fn chain_from(&self, base: u64) -> Vec<((u64, u64), usize)> {
        let mut out = Vec::new();
        let mut end = base;
        let mut it = self.segments.iter().peekable();
        loop {
            // Of the segments starting at or before end + 1, the one reaching furthest.
            let mut best: Option<((u64, u64), usize)> = None;
            while let Some(&(&(first, last), &s)) = it.peek() {
                if first > end + 1 {
                    break;
                }
                if last > end && best.is_none_or(|((_, l), _)| last > l) {
                    best = Some(((first, last), s));
                }
                it.next();
            }
            match best {
                Some(b) => {
                    end = b.0.1;
                    out.push(b);
                }
                None => return out,
            }
        }
    }

    /// The last index the archive holds without a hole after a base backup at `base`.
    pub fn end_from(&self, base: u64) -> u64 {
        self.chain_from(base).last().map_or(base, |((_, l), _)| *l)
    }

    /// The range of the first segment after a hole in the chain from `base`, if any.
    pub fn after_hole(&self, base: u64) -> Option<(u64, u64)> {
        let end = self.end_from(base);
        self.segments.keys().find(|(f, _)| *f > end + 1).copied()
    }
}

/// Why an archive may end before the cluster did: a hole, or storages that could not be read.
fn why_short(cat: &Catalog, base: u64) -> String {
    let mut why = Vec::new();
    if let Some((first, _)) = cat.after_hole(base) {
        why.push(format!(
            "the archive has a hole before index {first} (segments after it are not used)"
        ));
    }
    if !cat.unreadable.is_empty() {
        why.push(format!(
            "storages {} could not be read (their segments are missing)",
            cat.unreadable
        ));
    }
    if why.is_empty() {
        String::new()
    } else {
        format!(": {}", why.join("; "))
    }
}

/// What a restore is to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Everything archived after the newest backup.
    Latest,
    /// Every entry up to and including this Raft index.
    Index(u64),
    /// Every entry the leader proposed at or before this time (ms since the epoch).
    Time(u64),
}

impl Target {
    /// From the command line's `--to-time` / `--to-index`.
    pub fn from_args(time: Option<&str>, index: Option<u64>) -> Result<Self> {
        match (time, index) {
            (Some(_), Some(_)) => Err(Error::Source(
                "give a target time or a target index, not both".into(),
            )),
            (Some(t), None) => parse_time(t).map(Self::Time),
            (None, Some(i)) => Ok(Self::Index(i)),
            (None, None) => Ok(Self::Latest),
        }
    }

    fn allows(&self, e: &Entry) -> bool {
        match *self {
            Self::Latest => true,
            Self::Index(n) => e.log_id.index <= n,
            // Entries without a time (from earlier versions) go with the ones before them.
            Self::Time(t) => entry_ms(e).is_none_or(|at| at <= t),
        }
    }
}

/// Milliseconds since the epoch of an RFC 3339 time (`2026-12-02T18:20:38.5Z`, `...+01:00`),
/// parsed by SQLite's date functions.
pub fn parse_time(t: &str) -> Result<u64> {
    let bad = || {
        Error::Source(format!(
            "target time {t:?} is not an RFC 3339 time with a zone, e.g. 2026-12-02T18:20:38Z or 2026-12-02T19:20:38.250+01:00"
        ))
    };
    // SQLite reads only an upper-case T and Z.
    let t = t.trim().to_ascii_uppercase();
    let b = t.as_bytes();
    let zoned = t.ends_with('Z')
        || (b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':');
    if !t.is_ascii() || !zoned || b.get(10) != Some(&b'T') {
        return Err(bad());
    }
    let conn = rusqlite::Connection::open_in_memory()?;
    // SQLite rolls an impossible day over (02-30 is 03-02): the date must read back the same.
    let (ms, same_day): (Option<i64>, bool) = conn.query_row(
        "SELECT CAST(round(unixepoch(?1, 'subsec') * 1000) AS INTEGER),
                coalesce(date(substr(?1, 1, 10)) = substr(?1, 1, 10), 0)",
        [&t],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    ms.filter(|_| same_day)
        .and_then(|m| u64::try_from(m).ok())
        .ok_or_else(bad)
}

/// What a restore gave: the backup it started from and how far the archive took it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Restored {
    pub backup_id: String,
    pub backup_index: u64,
    pub storage: String,
    /// The Raft index the restored data reflects, and when its last entry was proposed.
    pub index: u64,
    pub time: Option<String>,
    pub time_ms: Option<u64>,
    pub segments: usize,
    pub entries: u64,
    pub target: Option<String>,
    /// False when the archive ends before a target time: everything archived was restored.
    pub target_reached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Default)]
pub(super) struct ArchiveState {
    /// (term, last archived index) as this leader knows it; `None` until it has looked.
    position: Option<(u64, u64)>,
    pub archived_index: Option<u64>,
    pub archived_at_ms: Option<u64>,
    pub last_segment: Option<serde_json::Value>,
    pub last_failure: Option<serde_json::Value>,
    /// Proposal time of the oldest entry not yet archived, as of the last pass.
    pub pending_since_ms: Option<u64>,
    /// Proposal-to-stored time of the last segment's first entry, and the largest seen.
    pub last_lag_ms: Option<u64>,
    pub max_lag_ms: u64,
    pub segments: u64,
    pub entries: u64,
    pub bytes: u64,
    pub failures: u64,
    pub failovers: u64,
    pub gaps: u64,
    pub last_gap_at_ms: Option<u64>,
}

impl Manager {
    /// Segment ranges on every readable storage. `strict`: a readable storage whose listing
    /// fails is an error (a restore must not stop early for it) rather than skipped.
    pub async fn catalog(&self, dir: &str, strict: bool) -> Result<Catalog> {
        let readable = super::failover::readable(&self.storages, &self.cache, self.ttl).await?;
        let mut cat = Catalog::default();
        if strict && readable.len() < self.storages.len() {
            let gone: Vec<&str> = (0..self.storages.len())
                .filter(|i| !readable.contains(i))
                .map(|i| self.storages[i].name())
                .collect();
            cat.unreadable = gone.join(", ");
        }
        for i in readable {
            match self.storages[i].list(dir).await {
                Ok(names) => {
                    for r in names.iter().filter_map(|n| parse_name(dir, n)) {
                        cat.segments.entry(r).or_insert(i);
                    }
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    tracing::warn!(storage = self.storages[i].name(), error = %chain(&e), "cannot list archived segments");
                }
            }
        }
        Ok(cat)
    }

    /// Deletes the segments that end at or before the oldest backup on any storage: no kept
    /// backup's recovery needs them. Only when every storage answers, since one that does not
    /// may hold an older backup that does need them. Returns how many were deleted.
    pub async fn prune_archive(&self) -> Result<usize> {
        let readable = super::failover::readable(&self.storages, &self.cache, self.ttl).await?;
        if readable.len() != self.storages.len() {
            return Ok(0);
        }
        let id = self.config.archive_id.as_deref();
        let mut oldest: Option<u64> = None;
        for i in 0..self.storages.len() {
            for m in self.manifests_strict(i).await? {
                if m.archive_id.as_deref() == id {
                    oldest = Some(oldest.map_or(m.raft_index, |o| o.min(m.raft_index)));
                }
            }
        }
        let Some(oldest) = oldest else { return Ok(0) };
        let dir = dir(id);
        let mut deleted = 0;
        for s in &self.storages {
            for name in s.list(&dir).await? {
                if parse_name(&dir, &name).is_some_and(|(_, last)| last <= oldest) {
                    s.delete(&name).await?;
                    deleted += 1;
                }
            }
        }
        Ok(deleted)
    }

    /// One archiving pass on the leader: ships the entries from the last archived one up to
    /// `applied`. After a leadership change the position comes from the storages (whatever
    /// the previous leader wrote), never from memory; a hole the log can no longer fill is
    /// answered with a new base backup.
    pub async fn archive_pass(
        &self,
        term: u64,
        applied: u64,
        log: &mut LogStore,
        db_path: &Path,
        node_id: &str,
    ) -> Result<()> {
        let known = self.archive().position.filter(|(t, _)| *t == term);
        let mut end = match known {
            Some((_, end)) => end,
            None => {
                let end = self.resume_point(log, db_path, node_id).await?;
                self.archive().position = Some((term, end));
                end
            }
        };
        while end < applied {
            let want = end + 1;
            let upto = applied.min(end + MAX_ENTRIES);
            let mut entries = log
                .try_get_log_entries(want..=upto)
                .await
                .map_err(|e| Error::Internal(format!("reading the Raft log: {e}")))?;
            if entries.first().map(|e| e.log_id.index) != Some(want) {
                end = self.fill_gap(want, db_path, node_id).await?;
                self.archive().position = Some((term, end));
                continue;
            }
            // Contiguous from `want`, and within the size limit.
            let mut bytes = 0;
            let keep = entries
                .iter()
                .enumerate()
                .position(|(k, e)| {
                    bytes += crate::command::encoded_len(e);
                    e.log_id.index != want + k as u64 || (k > 0 && bytes > MAX_BYTES)
                })
                .unwrap_or(entries.len());
            entries.truncate(keep);
            self.archive().pending_since_ms = entries.iter().find_map(entry_ms);
            end = self.write_segment(&entries, term, node_id).await?;
            self.archive().position = Some((term, end));
        }
        let mut st = self.archive();
        st.pending_since_ms = None;
        st.last_failure = None;
        // Covered by segments or by a base backup.
        st.archived_index = Some(end);
        Ok(())
    }

    /// Where the archive ends as the storages show it. From the oldest backup of this archive
    /// the segments are followed to their first hole; a hole the log can still fill is where
    /// archiving resumes (so a backup taken meanwhile never leaves the time before it out),
    /// otherwise the chain goes on from the next backup after the hole. Without any backup one
    /// is taken first.
    async fn resume_point(&self, log: &mut LogStore, db_path: &Path, node_id: &str) -> Result<u64> {
        let id = self.config.archive_id.as_deref();
        let mut bases: Vec<u64> = self
            .list_strict()
            .await?
            .into_iter()
            .filter(|l| l.manifest.archive_id.as_deref() == id)
            .map(|l| l.manifest.raft_index)
            .collect();
        bases.sort_unstable();
        bases.dedup();
        let Some(&oldest) = bases.first() else {
            tracing::info!("no base backup of this archive yet; taking one before archiving");
            return Ok(self.push_db(db_path, node_id).await?.raft_index);
        };
        let cat = self.catalog(&dir(id), false).await?;
        let mut end = cat.end_from(oldest);
        while let Some(&next_base) = bases.iter().find(|&&b| b > end) {
            let in_log = log
                .try_get_log_entries(end + 1..=end + 1)
                .await
                .map_err(|e| Error::Internal(format!("reading the Raft log: {e}")))?;
            if !in_log.is_empty() {
                tracing::warn!(
                    end,
                    "the archive has a hole after index {end}; filling it from the log"
                );
                break;
            }
            end = end.max(cat.end_from(next_base));
        }
        tracing::info!(end, "archiving resumes after index {end}");
        Ok(end)
    }

    /// The log no longer holds entry `want` (a snapshot purged it before it was archived): a
    /// new base backup restarts the chain. Returns the index it covers.
    async fn fill_gap(&self, want: u64, db_path: &Path, node_id: &str) -> Result<u64> {
        tracing::warn!(
            missing = want,
            "entries after the last archived one are no longer in the log; taking a new base backup"
        );
        let report = self.push_db(db_path, node_id).await?;
        let mut st = self.archive();
        st.gaps += 1;
        st.last_gap_at_ms = Some(now_ms());
        drop(st);
        if report.raft_index < want {
            return Err(Error::Internal(format!(
                "the new base backup covers index {} but the log starts after {want}",
                report.raft_index
            )));
        }
        Ok(report.raft_index)
    }

    async fn write_segment(&self, entries: &[Entry], term: u64, node_id: &str) -> Result<u64> {
        let level = self.config.compression_level;
        let owned = entries.to_vec();
        let node = node_id.to_owned();
        let (header, object) =
            tokio::task::spawn_blocking(move || encode(&owned, &node, term, level))
                .await
                .map_err(|e| Error::Internal(format!("segment task failed: {e}")))??;
        let name = segment_name(
            &dir(self.config.archive_id.as_deref()),
            header.first,
            header.last,
        );
        crate::failpoint("archive-before-put");
        let written = self
            .write_first("archive segment", |_| {
                (vec![(name.clone(), object.clone())], ())
            })
            .await?;
        crate::failpoint("archive-after-put");
        let storage = self.storages[written.index].name().to_owned();
        let now = now_ms();
        let lag = header.first_ms.map(|t| now.saturating_sub(t));
        let mut st = self.archive();
        st.archived_index = Some(header.last);
        st.archived_at_ms = Some(now);
        st.segments += 1;
        st.entries += header.count;
        st.bytes += header.size;
        st.last_lag_ms = lag;
        st.max_lag_ms = st.max_lag_ms.max(lag.unwrap_or(0));
        if written.note.is_some() {
            st.failovers += 1;
        }
        st.last_segment = Some(serde_json::json!({
            "name": name, "first": header.first, "last": header.last, "storage": storage,
            "size": header.size, "failover": written.note.is_some(), "note": written.note,
            "at": super::rfc3339_ms(now),
        }));
        tracing::debug!(first = header.first, last = header.last, storage = %storage, "segment archived");
        Ok(header.last)
    }

    pub(super) fn archive_failed(&self, e: &Error) {
        let msg = chain(e);
        tracing::warn!(error = %msg, "archiving failed; retrying next interval");
        let mut st = self.archive();
        st.failures += 1;
        st.last_failure = Some(serde_json::json!({
            "at": super::rfc3339_ms(now_ms()), "error": msg, "kind": e.metric_label(),
        }));
        // Look at the storages again: another process may have written, or a write may have
        // half-failed.
        st.position = None;
    }

    /// Downloads the backup `id` (or the newest one before `target`), verifies it, and replays
    /// the archived entries after it up to `target`. Returns the database file and what it is.
    pub async fn restore_to(
        &self,
        id: Option<&str>,
        target: Target,
    ) -> Result<(Restored, Vec<u8>)> {
        let list = self.list().await?;
        let storages = || {
            self.storages
                .iter()
                .map(|s| s.name().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if list.is_empty() {
            return Err(Error::NoBackups {
                storages: storages(),
            });
        }
        let chosen = match (id, target) {
            (Some(id), _) => list
                .into_iter()
                .find(|l| l.manifest.id == id)
                .ok_or_else(|| Error::NotFound { id: id.to_owned() })?,
            (None, Target::Latest) => list.into_iter().next().expect("not empty"),
            (None, Target::Index(n)) => list
                .into_iter()
                .find(|l| l.manifest.raft_index <= n)
                .ok_or_else(|| Error::Source(format!("no backup at or before index {n}; `backup list` shows each backup's raft_index")))?,
            (None, Target::Time(t)) => list
                .into_iter()
                .find(|l| l.manifest.created_at_ms <= t)
                .ok_or_else(|| Error::Source(format!("no backup taken at or before {}; `backup list` shows when each was taken", super::rfc3339_ms(t))))?,
        };
        match target {
            Target::Index(n) if chosen.manifest.raft_index > n => {
                return Err(Error::Source(format!(
                    "backup {} is at index {}, after the target index {n}",
                    chosen.manifest.id, chosen.manifest.raft_index
                )));
            }
            Target::Time(t) if chosen.manifest.created_at_ms > t => {
                return Err(Error::Source(format!(
                    "backup {} was taken at {}, after the target time {}",
                    chosen.manifest.id,
                    chosen.manifest.created_at,
                    super::rfc3339_ms(t)
                )));
            }
            _ => {}
        }
        let (manifest, db) = self.download(&chosen).await?;
        // Only the archive this backup started: another cluster's in the same storages never
        // mixes in. A backup named without a target is restored as it is.
        let dir = dir(manifest.archive_id.as_deref());
        let cat = if id.is_some() && target == Target::Latest {
            Catalog::default()
        } else {
            self.catalog(&dir, true).await?
        };
        let chain = cat.chain_from(manifest.raft_index);
        let target_text = match target {
            Target::Latest => None,
            Target::Index(n) => Some(format!("index {n}")),
            Target::Time(t) => Some(super::rfc3339_ms(t)),
        };
        let mut restored = Restored {
            backup_id: manifest.id.clone(),
            backup_index: manifest.raft_index,
            storage: chosen.found_in.clone(),
            index: manifest.raft_index,
            time: None,
            time_ms: None,
            segments: 0,
            entries: 0,
            target: target_text,
            // A time is reached only when an entry after it is seen (see `replay`).
            target_reached: !matches!(target, Target::Time(_)),
            note: None,
        };
        let work = self.scratch.join(format!(
            ".restore-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = self
            .replay(&work, db, &dir, &chain, target, &mut restored)
            .await;
        let _ = std::fs::remove_dir_all(&work);
        let db = result?;
        match target {
            Target::Index(n) if restored.index < n => {
                return Err(Error::Source(format!(
                    "the archive after backup {} reaches index {}, not the target {n}{}",
                    manifest.id,
                    restored.index,
                    cat.after_hole(manifest.raft_index)
                        .map(|(f, _)| format!(" (it has a hole before index {f})"))
                        .unwrap_or_default()
                )));
            }
            Target::Time(_) if !restored.target_reached => {
                // Nothing after the target was seen: the archive may simply end before it.
                // An entry after the target proves every one before it is in; without one the
                // cluster may have been idle since, or the archive ends early.
                restored.note = Some(format!(
                    "no write after the target time is archived (the cluster may have been idle since, or the archive ends at index {} before it{}); everything archived was restored",
                    restored.index,
                    why_short(&cat, manifest.raft_index)
                ));
            }
            Target::Latest if id.is_none() => {
                let why = why_short(&cat, manifest.raft_index);
                if !why.is_empty() {
                    restored.note = Some(format!("restored up to index {}{why}", restored.index));
                }
            }
            _ => {}
        }
        if let Some(n) = &restored.note {
            tracing::warn!("{n}");
        }
        tracing::info!(backup = %restored.backup_id, index = restored.index, segments = restored.segments, entries = restored.entries, "restored");
        Ok((restored, db))
    }

    /// Applies the chain's entries allowed by `target` to `db` in a scratch state machine.
    async fn replay(
        &self,
        work: &Path,
        db: Vec<u8>,
        dir: &str,
        chain: &[((u64, u64), usize)],
        target: Target,
        restored: &mut Restored,
    ) -> Result<Vec<u8>> {
        use openraft::storage::RaftStateMachine;
        if chain.is_empty() {
            return Ok(db);
        }
        std::fs::create_dir_all(work)
            .map_err(|e| Error::io(format!("creating {}", work.display()), e))?;
        let path = work.join("db.sqlite");
        std::fs::write(&path, &db).map_err(|e| Error::io("writing the base backup", e))?;
        drop(db);
        let mut sm = crate::raft::state_machine::StateMachine::open(
            &path,
            work.join("snapshots"),
            crate::sqlite::reader::ReadPool::new(path.clone(), 1),
            Arc::default(),
            Arc::default(),
            Duration::from_secs(3600),
        )
        .map_err(|e| Error::Internal(format!("opening the restore state machine: {e}")))?;
        let total = chain.len();
        'segments: for (n, (range, storage)) in chain.iter().enumerate() {
            let s = &self.storages[*storage];
            let name = segment_name(dir, range.0, range.1);
            let object = s.get(&name).await?;
            let (_, entries) = decode(*range, &object).map_err(|reason| Error::CorruptSegment {
                name: name.clone(),
                storage: s.name().to_owned(),
                reason,
                before: restored.index,
            })?;
            let mut batch = Vec::new();
            let mut stop = false;
            for e in entries {
                if e.log_id.index <= restored.index {
                    continue;
                }
                if !target.allows(&e) {
                    stop = true;
                    restored.target_reached = true;
                    break;
                }
                if let Some(t) = entry_ms(&e) {
                    restored.time_ms = Some(t);
                }
                restored.index = e.log_id.index;
                restored.entries += 1;
                batch.push(e);
            }
            restored.segments += 1;
            if !batch.is_empty() {
                for part in batch.chunks(512) {
                    sm.apply(part.to_vec())
                        .await
                        .map_err(|e| Error::Internal(format!("replaying archived entries: {e}")))?;
                }
            }
            if (n + 1) % 100 == 0 {
                tracing::info!(
                    segments = n + 1,
                    of = total,
                    index = restored.index,
                    "replaying the archive"
                );
            }
            if stop {
                break 'segments;
            }
        }
        drop(sm);
        restored.time = restored.time_ms.map(super::rfc3339_ms);
        let (path, scratch) = (path.clone(), work.to_owned());
        let image = tokio::task::spawn_blocking(move || super::image::from_db(&path, &scratch))
            .await
            .map_err(|e| Error::Internal(format!("copy task failed: {e}")))??;
        Ok(image.db)
    }

    /// The `archive` part of the backup status.
    pub(super) fn archive_json(&self) -> serde_json::Value {
        let Some(every) = self.config.archive_interval else {
            return serde_json::json!({"enabled": false});
        };
        let st = self.archive();
        let now = now_ms();
        serde_json::json!({
            "enabled": true,
            // Only the leader archives; a follower shows what it did when it last led.
            "active": st.position.is_some(),
            "interval": format!("{}ms", every.as_millis()),
            "archived_index": st.archived_index,
            "archived_at": st.archived_at_ms.map(super::rfc3339_ms),
            "lag_ms": st.pending_since_ms.map_or(0, |t| now.saturating_sub(t)),
            "last_lag_ms": st.last_lag_ms,
            "max_lag_ms": st.max_lag_ms,
            "last_segment": st.last_segment,
            "last_failure": st.last_failure,
            "segments": st.segments,
            "entries": st.entries,
            "failures": st.failures,
            "failovers": st.failovers,
            "gaps": st.gaps,
            "last_gap_at": st.last_gap_at_ms.map(super::rfc3339_ms),
            "archive_id": self.config.archive_id,
        })
    }

    pub(super) fn archive_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        if self.config.archive_interval.is_none() {
            return;
        }
        let st = self.archive();
        for (name, kind, help, v) in [
            (
                "litecluster_archive_segments_total",
                "counter",
                "Archive segments written.",
                st.segments,
            ),
            (
                "litecluster_archive_entries_total",
                "counter",
                "Raft entries archived.",
                st.entries,
            ),
            (
                "litecluster_archive_bytes_total",
                "counter",
                "Compressed archive bytes uploaded.",
                st.bytes,
            ),
            (
                "litecluster_archive_failures_total",
                "counter",
                "Archiving passes that failed.",
                st.failures,
            ),
            (
                "litecluster_archive_failovers_total",
                "counter",
                "Segments written to a failover storage.",
                st.failovers,
            ),
            (
                "litecluster_archive_gaps_total",
                "counter",
                "Holes answered with a new base backup.",
                st.gaps,
            ),
            (
                "litecluster_archive_index",
                "gauge",
                "Last archived Raft index.",
                st.archived_index.unwrap_or(0),
            ),
            (
                "litecluster_archive_lag_ms",
                "gauge",
                "Time from proposal to storage of the last segment's first entry.",
                st.last_lag_ms.unwrap_or(0),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
    }
}

/// Starts archiving on the leader every `archive_interval`, when the config sets one. It stops
/// with Raft.
pub fn spawn(
    manager: Arc<Manager>,
    raft: &Arc<Raft>,
    log: LogStore,
    db_path: std::path::PathBuf,
    member: String,
) {
    let Some(every) = manager.config.archive_interval else {
        return;
    };
    tracing::info!(interval = ?every, "archiving committed entries on the leader");
    let weak: Weak<Raft> = Arc::downgrade(raft);
    tokio::spawn(async move {
        let mut log = log;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(raft) = weak.upgrade() else { return };
            let (leader, term, applied) = {
                let m = raft.metrics();
                let m = m.borrow();
                if m.state == openraft::ServerState::Shutdown {
                    return;
                }
                (
                    m.state == openraft::ServerState::Leader,
                    m.current_term,
                    m.last_applied.map_or(0, |l| l.index),
                )
            };
            drop(raft);
            if !leader {
                manager.archive().position = None;
                continue;
            }
            if let Err(e) = manager
                .archive_pass(term, applied, &mut log, &db_path, &member)
                .await
            {
                manager.archive_failed(&e);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Mode, Statement};

    fn entry(index: u64, at_ms: Option<u64>) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Statements {
                stmts: vec![Statement::new(format!("INSERT INTO t VALUES({index})"))],
                transaction: false,
                mode: Mode::Execute,
                at_ms,
            }),
        }
    }

    #[test]
    fn segments_round_trip_and_refuse_any_change() {
        let entries: Vec<Entry> = (5..=9).map(|i| entry(i, Some(1000 + i))).collect();
        let (h, obj) = encode(&entries, "n1", 3, 6).unwrap();
        assert_eq!((h.first, h.last, h.count), (5, 9, 5));
        assert_eq!((h.first_ms, h.last_ms), (Some(1005), Some(1009)));
        assert_eq!(
            parse_name("archive", &segment_name("archive", 5, 9)),
            Some((5, 9))
        );
        // Another cluster's archive below ours is not ours.
        let theirs = segment_name(&dir(Some("uid-2")), 5, 9);
        assert_eq!(
            theirs,
            "archive/uid-2/00000000000000000005-00000000000000000009.seg"
        );
        assert_eq!(parse_name(&dir(None), &theirs), None);
        assert_eq!(parse_name("archive/uid-2", &theirs), Some((5, 9)));
        let (header, back) = decode((5, 9), &obj).unwrap();
        assert_eq!(header, h);
        assert_eq!(
            back.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            vec![5, 6, 7, 8, 9]
        );
        assert!(decode((5, 10), &obj).unwrap_err().contains("header says"));
        let mut flipped = obj.to_vec();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(decode((5, 9), &flipped).unwrap_err().contains("SHA-256"));
        assert!(decode((5, 9), b"garbage").is_err());
        assert_eq!(parse_name("archive", "archive/x-y.seg"), None);
        assert_eq!(parse_name("archive", &segment_name("archive", 9, 5)), None);
    }

    #[test]
    fn the_chain_follows_overlaps_across_storages_and_stops_at_a_hole() {
        let mut cat = Catalog::default();
        for (r, s) in [
            ((11, 20), 0),
            ((21, 30), 1),
            ((25, 40), 0),
            ((41, 50), 1),
            ((60, 70), 0),
            ((1, 5), 0),
        ] {
            cat.segments.insert(r, s);
        }
        let chain = cat.chain_from(10);
        assert_eq!(
            chain,
            vec![((11, 20), 0), ((21, 30), 1), ((25, 40), 0), ((41, 50), 1)]
        );
        assert_eq!(cat.end_from(10), 50);
        assert_eq!(cat.after_hole(10), Some((60, 70)));
        // A base inside a segment continues with it; one past every segment has no chain.
        assert_eq!(cat.chain_from(15)[0], ((11, 20), 0));
        assert_eq!(cat.end_from(70), 70);
        assert!(cat.chain_from(5).is_empty());
        assert_eq!(cat.end_from(5), 5);
    }

    #[test]
    fn target_times_are_rfc3339_with_a_zone() {
        assert_eq!(
            parse_time("2026-01-02T03:04:05.678Z").unwrap(),
            1_767_323_045_678
        );
        assert_eq!(
            parse_time("2026-01-02T04:04:05.678+01:00").unwrap(),
            1_767_323_045_678
        );
        assert_eq!(
            parse_time("2026-01-02t03:04:05.678z").unwrap(),
            1_767_323_045_678
        );
        assert!(parse_time("2026-01-02T03:04:05").is_err());
        assert!(parse_time("2026-02-30T03:04:05Z").is_err());
        assert!(parse_time("2026-01-02T03:04:05+01:0é").is_err());
        assert!(parse_time("yesterday").is_err());
        let t = Target::Time(1500);
        assert!(t.allows(&entry(1, Some(1500))));
        assert!(!t.allows(&entry(2, Some(1501))));
        assert!(t.allows(&entry(3, None)));
        assert!(Target::Index(3).allows(&entry(3, None)));
        assert!(!Target::Index(3).allows(&entry(4, None)));
    }
}
