//! Applying a batch of committed entries: one SQLite transaction that also records the applied
//! log id and membership, so after a crash nothing is applied twice or skipped. Statements go
//! through [`Writer`](crate::sqlite::apply::Writer); loads are staged and then replace the
//! database in a transaction of their own.

use std::sync::atomic::Ordering;

use openraft::EntryPayload;
use rusqlite::Connection;

use super::Worker;
use crate::command::{Command, CommandResponse};
use crate::sqlite::apply::{ApplyError, Work, Writer};
use crate::sqlite::load::{self, Expect, LoadError};
use crate::sqlite::{self};
use crate::{Entry, LogId, StoredMembership};

/// Records progress (inside the caller's transaction): every entry up to `applied`, and of the
/// entry after it the first units `partial.1` (a batch committed part way, see [`reapply`]).
/// The membership is written unless `saved` says the database holds it already.
fn write_progress(
    conn: &Connection,
    applied: Option<LogId>,
    membership: &StoredMembership,
    partial: Option<Partial>,
    saved: Option<&mut Option<StoredMembership>>,
) -> rusqlite::Result<()> {
    let applied = serde_json::to_string(&applied).unwrap_or_default();
    sqlite::write_meta(conn, "applied", &applied)?;
    if let Some(saved) = &saved
        && saved.as_ref() == Some(membership)
    {
        // Already in the database: most batches change no membership.
    } else {
        let json = serde_json::to_string(membership).unwrap_or_default();
        sqlite::write_meta(conn, "membership", &json)?;
        if let Some(saved) = saved {
            *saved = Some(membership.clone());
        }
    }
    if let Some(p) = partial {
        sqlite::write_meta(
            conn,
            "partial",
            &serde_json::to_string(&p).unwrap_or_default(),
        )?;
    }
    Ok(())
}

/// Of the entry at log index `.0`, the first `.1` requests are applied and committed.
pub(super) type Partial = (u64, usize);

/// A unit of work: (entry in the batch, request within the entry).
type Unit = (usize, usize);

/// Seeds `random()` for request `k` of the entry at `index`: the index alone for the first, so
/// a one-request batch and a plain entry are the same.
fn seed(index: u64, k: usize) -> u64 {
    index ^ ((k as u64) << 48)
}

/// The requests of a statements entry, each applied as if it were an entry of its own.
fn works(entry: &Entry) -> Vec<Work<'_>> {
    let index = entry.log_id.index;
    match &entry.payload {
        EntryPayload::Normal(Command::Statements {
            stmts,
            transaction,
            mode,
            ..
        }) => vec![Work {
            seed: index,
            stmts,
            transaction: *transaction,
            mode: *mode,
        }],
        EntryPayload::Normal(Command::Batch { reqs, .. }) => reqs
            .iter()
            .enumerate()
            .map(|(k, r)| Work {
                seed: seed(index, k),
                stmts: &r.stmts,
                transaction: r.transaction,
                mode: r.mode,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Applies again, inside a new transaction, the units `from..to` that were applied in the one
/// a statement rolled back. Only the first can roll back again (one that did would have started
/// the batch).
fn reapply(writer: &mut Writer, entries: &[Entry], from: Unit, to: Unit) -> Result<(), ApplyError> {
    for (i, entry) in entries.iter().enumerate().take(to.0 + 1).skip(from.0) {
        if let EntryPayload::Normal(Command::LoadChunk { load, seq, data }) = &entry.payload {
            if i < to.0 {
                load::stage(writer.conn(), *load, *seq, data).map_err(|source| {
                    ApplyError::Sqlite {
                        context: "staging a load piece",
                        source,
                    }
                })?;
            }
            continue;
        }
        let works = works(entry);
        let first = if i == from.0 { from.1 } else { 0 };
        let end = if i == to.0 { to.1 } else { works.len() };
        for (k, w) in works.into_iter().enumerate().take(end).skip(first) {
            writer.reapply(w, (i, k) == from)?;
        }
    }
    Ok(())
}

impl Worker {
    pub(super) fn save_progress(&mut self) -> rusqlite::Result<()> {
        write_progress(
            self.writer.conn(),
            self.applied,
            &self.membership,
            None,
            Some(&mut self.membership_saved),
        )?;
        if self.partial_stored {
            sqlite::write_meta(self.writer.conn(), "partial", "null")?;
            self.partial_stored = false;
        }
        Ok(())
    }

    pub(super) fn apply(&mut self, entries: &[Entry]) -> crate::Result<Vec<CommandResponse>> {
        let mut responses = Vec::with_capacity(entries.len());
        self.writer.begin()?;
        let result = self.apply_in_tx(entries, &mut responses);
        if let Err(e) = result {
            self.writer.rollback();
            // The in-memory progress may be ahead of what committed; read it back.
            self.reload_progress()?;
            return Err(e);
        }
        self.metrics
            .applied_entries
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.metrics.apply_batches.fetch_add(1, Ordering::Relaxed);
        Ok(responses)
    }

    fn reload_progress(&mut self) -> crate::Result<()> {
        let conn = self.writer.conn();
        self.applied =
            sqlite::read_meta(conn, "applied")?.and_then(|s| serde_json::from_str(&s).ok());
        self.membership = sqlite::read_meta(conn, "membership")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        self.partial =
            sqlite::read_meta(conn, "partial")?.and_then(|s| serde_json::from_str(&s).ok());
        self.partial_stored = self.partial.is_some();
        self.membership_saved = None;
        Ok(())
    }

    fn apply_in_tx(
        &mut self,
        entries: &[Entry],
        responses: &mut Vec<CommandResponse>,
    ) -> crate::Result<()> {
        // First unit of the open transaction. After a crash mid-batch the first entry may be
        // partly applied already.
        let skip = |partial: Option<Partial>, index: u64| match partial {
            Some((at, done)) if at == index => done,
            _ => 0,
        };
        let mut start: Unit = (
            0,
            entries
                .first()
                .map_or(0, |e| skip(self.partial, e.log_id.index)),
        );
        for (i, entry) in entries.iter().enumerate() {
            let resp = match &entry.payload {
                EntryPayload::Blank => CommandResponse::default(),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResponse::default()
                }
                EntryPayload::Normal(Command::LoadChunk { load, seq, data }) => {
                    load::stage(self.writer.conn(), *load, *seq, data)?;
                    crate::failpoint("load-after-chunk");
                    CommandResponse::default()
                }
                EntryPayload::Normal(Command::LoadCommit {
                    load,
                    chunks,
                    len,
                    crc32,
                    ..
                }) => {
                    let expect = Expect {
                        load: *load,
                        chunks: *chunks,
                        len: *len,
                        crc32: *crc32,
                    };
                    let resp = self.load(entry.log_id, Source::Staged(expect))?;
                    start = (i + 1, 0);
                    resp
                }
                EntryPayload::Normal(Command::Load { image }) => {
                    let resp = self.load(entry.log_id, Source::Image(image))?;
                    start = (i + 1, 0);
                    resp
                }
                EntryPayload::Normal(Command::Statements { .. } | Command::Batch { .. }) => {
                    let done = skip(self.partial.take(), entry.log_id.index);
                    let mut parts = vec![Vec::new(); done];
                    for (k, w) in works(entry).into_iter().enumerate().skip(done) {
                        let (applied, membership) = (self.applied, &self.membership);
                        let partial = (k > 0).then_some((entry.log_id.index, k));
                        let prior = start;
                        let mut again = |writer: &mut Writer| -> Result<bool, ApplyError> {
                            if prior == (i, k) {
                                return Ok(false);
                            }
                            reapply(writer, entries, prior, (i, k))?;
                            write_progress(writer.conn(), applied, membership, partial, None)
                                .map_err(|source| ApplyError::Sqlite {
                                    context: "recording progress",
                                    source,
                                })?;
                            Ok(true)
                        };
                        let out = self.writer.apply(w, &mut again)?;
                        if out.committed_prior {
                            start = (i, k);
                            if partial.is_some() {
                                // Committed: the requests before `k`, with progress saying so.
                                self.partial_stored = true;
                                crate::failpoint("apply-after-partial");
                            }
                        }
                        parts.push(out.results);
                    }
                    match &entry.payload {
                        EntryPayload::Normal(Command::Batch { .. }) => CommandResponse {
                            batch: parts,
                            ..CommandResponse::default()
                        },
                        _ => CommandResponse {
                            results: parts.pop().unwrap_or_default(),
                            ..CommandResponse::default()
                        },
                    }
                }
            };
            self.applied = Some(entry.log_id);
            responses.push(resp);
        }
        self.save_progress()?;
        crate::failpoint("apply-before-commit");
        self.writer.commit()?;
        crate::failpoint("apply-after-commit");
        Ok(())
    }

    /// Replaces the database with a loaded image. What came before in the batch commits first;
    /// the image carries this entry's progress and replaces the database in one transaction.
    fn load(&mut self, at: LogId, source: Source<'_>) -> crate::Result<CommandResponse> {
        self.save_progress()?;
        self.writer.commit()?;
        let image = self.db_path.with_extension("load.tmp");
        let membership = serde_json::to_string(&self.membership).unwrap_or_default();
        let applied = serde_json::to_string(&Some(at)).unwrap_or_default();
        let outcome = match source {
            Source::Staged(expect) => load::assemble(self.writer.conn(), expect, &image),
            Source::Image(bytes) => std::fs::write(&image, bytes).map_err(|e| LoadError::Member {
                context: "writing the load image",
                source: Box::new(e),
            }),
        }
        .and_then(|()| {
            crate::failpoint("load-before-replace");
            load::replace(
                self.writer.conn_mut(),
                &image,
                &[("applied", &applied), ("membership", &membership)],
            )
        });
        let _ = std::fs::remove_file(&image);
        self.reads.reset();
        self.membership_saved = None;
        // The copy replaced pages under the WAL; only a full snapshot is safe next.
        self.control.health().full_needed = true;
        let resp = match outcome {
            Ok(()) => {
                crate::failpoint("load-after-replace");
                tracing::info!(index = at.index, "database replaced by a loaded image");
                CommandResponse::default()
            }
            Err(LoadError::Invalid(msg)) => {
                tracing::warn!(index = at.index, error = %msg, "load refused");
                self.writer.begin()?;
                load::clear(self.writer.conn())?;
                return Ok(CommandResponse {
                    error: Some(msg),
                    ..CommandResponse::default()
                });
            }
            Err(e @ LoadError::Member { .. }) => {
                return Err(crate::Error::Internal(format!("loading an image: {e}")));
            }
        };
        self.writer.begin()?;
        Ok(resp)
    }
}

enum Source<'a> {
    Staged(Expect),
    Image(&'a [u8]),
}
