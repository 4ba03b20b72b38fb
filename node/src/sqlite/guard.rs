//! What user SQL may do on the writer connection, enforced by SQLite's authorizer at prepare
//! time, so every member reaches the same verdict for the same statement.
//!
//! Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints) is not run by SQLite: the
//! authorizer turns it into a no-op and records it, and the apply module emulates it inside the
//! node's own transaction. Statements that would reach state other members do not share
//! (attached files, temporary objects, connection settings, file offsets) or the node's own
//! tables are refused with a message that says why.

use std::sync::{Arc, Mutex};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization, TransactionOperation};

/// Prefixes of the node's own tables (today's and earlier versions'); user statements may read
/// them but never change them.
pub const RESERVED_PREFIXES: [&str; 2] = [super::META_TABLE, "_litecluster_"];

/// Transaction control found in a user statement, emulated by the apply module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    Release(String),
    RollbackTo(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The statement is transaction control: do not step it, emulate it.
    Control(Control),
    /// The statement is refused; the message is the user's error.
    Refused(String),
}

/// Shared between the writer and its authorizer callback.
#[derive(Default)]
pub struct Gate {
    /// Whether the statement being prepared is user SQL (internal statements are not checked).
    user: std::sync::atomic::AtomicBool,
    verdict: Mutex<Option<Verdict>>,
}

impl Gate {
    /// Installs the authorizer on `conn` and returns the gate that switches it on.
    pub fn install(conn: &mut rusqlite::Connection) -> rusqlite::Result<Arc<Gate>> {
        let gate = Arc::new(Gate::default());
        let g = gate.clone();
        conn.authorizer(Some(move |ctx: AuthContext<'_>| g.authorize(ctx)))?;
        Ok(gate)
    }

    /// Turns user SQL checks on until the scope is dropped.
    pub fn enter(&self) -> UserScope<'_> {
        self.lock().take();
        self.user.store(true, std::sync::atomic::Ordering::SeqCst);
        UserScope(self)
    }

    /// The verdict recorded since [`Gate::enter`], if any.
    pub fn take_verdict(&self) -> Option<Verdict> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Verdict>> {
        self.verdict.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, v: Verdict) {
        let mut slot = self.lock();
        if slot.is_none() {
            *slot = Some(v);
        }
    }

    fn authorize(&self, ctx: AuthContext<'_>) -> Authorization {
        if !self.user.load(std::sync::atomic::Ordering::SeqCst) {
            return Authorization::Allow;
        }
        match check(&ctx) {
            Check::Allow => Authorization::Allow,
            Check::Control(c) => {
                self.record(Verdict::Control(c));
                // IGNORE compiles the statement to a no-op, so a string of statements goes on.
                Authorization::Ignore
            }
            Check::Refuse(msg) => {
                self.record(Verdict::Refused(msg));
                Authorization::Deny
            }
        }
    }
}

/// While alive, statements prepared on the connection are user SQL.
pub struct UserScope<'a>(&'a Gate);

impl Drop for UserScope<'_> {
    fn drop(&mut self) {
        self.0
            .user
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

enum Check {
    Allow,
    Control(Control),
    Refuse(String),
}

fn check(ctx: &AuthContext<'_>) -> Check {
    use AuthAction as A;
    let temp = ctx.database_name == Some("temp");
    match ctx.action {
        A::Transaction { operation } => Check::Control(match operation {
            TransactionOperation::Begin => Control::Begin,
            TransactionOperation::Rollback => Control::Rollback,
            // SQLite reports COMMIT and END as "COMMIT", which rusqlite does not name.
            _ => Control::Commit,
        }),
        A::Savepoint {
            operation,
            savepoint_name,
        } => {
            let name = savepoint_name.to_owned();
            Check::Control(match operation {
                TransactionOperation::Begin => Control::Savepoint(name),
                TransactionOperation::Release => Control::Release(name),
                _ => Control::RollbackTo(name),
            })
        }
        A::Attach { .. } | A::Detach { .. } => Check::Refuse(
            "ATTACH and DETACH are not supported: a member's database is a single file that every member holds"
                .into(),
        ),
        A::CreateTempTable { .. }
        | A::CreateTempIndex { .. }
        | A::CreateTempTrigger { .. }
        | A::CreateTempView { .. } => Check::Refuse(
            "temporary tables, views, triggers and indexes are not supported: they live in one connection, and other members and restarts would not see them"
                .into(),
        ),
        A::Insert { .. } | A::Update { .. } | A::Delete { .. } if temp => Check::Refuse(
            "writing to the temp schema is not supported: it is not replicated".into(),
        ),
        A::Pragma {
            pragma_name,
            pragma_value,
        } => pragma(pragma_name, pragma_value),
        A::Function { function_name }
            if function_name.eq_ignore_ascii_case("total_changes")
                || function_name.eq_ignore_ascii_case("sqlite_offset") =>
        {
            Check::Refuse(format!(
                "{function_name}() is not supported in writes: its value differs between members"
            ))
        }
        A::Insert { table_name }
        | A::Update { table_name, .. }
        | A::Delete { table_name }
        | A::DropTable { table_name }
        | A::CreateTable { table_name }
        | A::AlterTable { table_name, .. }
        | A::CreateIndex { table_name, .. }
        | A::DropIndex { table_name, .. }
        | A::CreateTrigger { table_name, .. }
        | A::DropTrigger { table_name, .. }
            if reserved(table_name) =>
        {
            Check::Refuse(format!(
                "table {table_name} belongs to litecluster and cannot be changed"
            ))
        }
        _ => Check::Allow,
    }
}

fn reserved(name: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| {
        name.get(..p.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(p))
    })
}

/// Pragmas that may take an argument on the write path: introspection, and settings that live
/// in the database file (replicated like data). `foreign_keys` is a no-op inside a transaction,
/// where every apply runs, so dumps that start with `PRAGMA foreign_keys=OFF` still load.
const PRAGMAS_WITH_ARGUMENT: [&str; 13] = [
    "table_info",
    "table_xinfo",
    "table_list",
    "index_info",
    "index_xinfo",
    "index_list",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
    "user_version",
    "application_id",
    "foreign_keys",
];

/// Pragmas that act even without an argument.
const PRAGMA_ACTIONS: [&str; 3] = ["optimize", "wal_checkpoint", "incremental_vacuum"];

fn pragma(name: &str, value: Option<&str>) -> Check {
    let lower = name.to_ascii_lowercase();
    let allowed = if value.is_some() {
        PRAGMAS_WITH_ARGUMENT.contains(&lower.as_str())
    } else {
        !PRAGMA_ACTIONS.contains(&lower.as_str())
    };
    if allowed {
        Check::Allow
    } else {
        Check::Refuse(format!(
            "PRAGMA {name} is not supported in writes: it changes connection, journal or file state that is not replicated (the node manages WAL mode and checkpoints)"
        ))
    }
}
