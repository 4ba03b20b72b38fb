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

/// Records progress through an entry (inside the caller's transaction).
fn write_progress(
    conn: &Connection,
    applied: Option<LogId>,
    membership: &StoredMembership,
) -> rusqlite::Result<()> {
    let applied = serde_json::to_string(&applied).unwrap_or_default();
    let membership = serde_json::to_string(membership).unwrap_or_default();
    sqlite::write_meta(conn, "applied", &applied)?;
    sqlite::write_meta(conn, "membership", &membership)
}

fn work(entry: &Entry) -> Option<Work<'_>> {
    match &entry.payload {
        EntryPayload::Normal(Command::Statements {
            stmts,
            transaction,
            mode,
        }) => Some(Work {
            seed: entry.log_id.index,
            stmts,
            transaction: *transaction,
            mode: *mode,
        }),
        _ => None,
    }
}

/// Applies again, inside a new transaction, entries that were applied in the one a statement
/// rolled back. Only the first can roll back again (one that did would have started the batch).
fn reapply(writer: &mut Writer, entries: &[Entry]) -> Result<(), ApplyError> {
    for (k, entry) in entries.iter().enumerate() {
        match &entry.payload {
            EntryPayload::Normal(Command::LoadChunk { load, seq, data }) => {
                load::stage(writer.conn(), *load, *seq, data).map_err(|source| {
                    ApplyError::Sqlite {
                        context: "staging a load piece",
                        source,
                    }
                })?;
            }
            _ => {
                if let Some(w) = work(entry) {
                    writer.reapply(w, k == 0)?;
                }
            }
        }
    }
    Ok(())
}

impl Worker {
    pub(super) fn save_progress(&self) -> rusqlite::Result<()> {
        write_progress(self.writer.conn(), self.applied, &self.membership)
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
        Ok(())
    }

    fn apply_in_tx(
        &mut self,
        entries: &[Entry],
        responses: &mut Vec<CommandResponse>,
    ) -> crate::Result<()> {
        // First entry of the open transaction.
        let mut start = 0;
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
                }) => {
                    let expect = Expect {
                        load: *load,
                        chunks: *chunks,
                        len: *len,
                        crc32: *crc32,
                    };
                    let resp = self.load(entry.log_id, Source::Staged(expect))?;
                    start = i + 1;
                    resp
                }
                EntryPayload::Normal(Command::Load { image }) => {
                    let resp = self.load(entry.log_id, Source::Image(image))?;
                    start = i + 1;
                    resp
                }
                EntryPayload::Normal(Command::Statements { .. }) => {
                    let w = work(entry).expect("a statements entry");
                    let prior = &entries[start..i];
                    let (applied, membership) = (self.applied, &self.membership);
                    let mut again = |writer: &mut Writer| -> Result<bool, ApplyError> {
                        reapply(writer, prior)?;
                        write_progress(writer.conn(), applied, membership).map_err(|source| {
                            ApplyError::Sqlite {
                                context: "recording progress",
                                source,
                            }
                        })?;
                        Ok(!prior.is_empty())
                    };
                    let out = self.writer.apply(w, &mut again)?;
                    if out.committed_prior {
                        start = i;
                    }
                    CommandResponse {
                        results: out.results,
                        error: None,
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
                sqlite::META_TABLE,
                &[("applied", &applied), ("membership", &membership)],
            )
        });
        let _ = std::fs::remove_file(&image);
        self.reads.reset();
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
                    results: Vec::new(),
                    error: Some(msg),
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
