//! Basic authentication with rqlite's credentials file: a JSON list of users, each with a
//! password and permissions. A user named `*` grants its permissions to anonymous requests.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine;
use serde::Deserialize;

/// Permissions, named as in rqlite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    Execute,
    Query,
    Load,
    Backup,
    Status,
    Ready,
    Join,
    JoinReadOnly,
    Remove,
    Snapshot,
    LeaderOps,
}

impl Perm {
    fn name(self) -> &'static str {
        match self {
            Perm::Execute => "execute",
            Perm::Query => "query",
            Perm::Load => "load",
            Perm::Backup => "backup",
            Perm::Status => "status",
            Perm::Ready => "ready",
            Perm::Join => "join",
            Perm::JoinReadOnly => "join-read-only",
            Perm::Remove => "remove",
            Perm::Snapshot => "snapshot",
            Perm::LeaderOps => "leader-ops",
        }
    }
}

#[derive(Debug, Deserialize)]
struct UserEntry {
    username: String,
    password: String,
    #[serde(default)]
    perms: Vec<String>,
}

#[derive(Debug)]
struct User {
    password: String,
    perms: Vec<String>,
}

/// Loaded credentials.
#[derive(Debug)]
pub struct CredentialStore {
    users: HashMap<String, User>,
}

impl CredentialStore {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context;
        let raw =
            std::fs::read(path).with_context(|| format!("reading auth file {}", path.display()))?;
        Self::parse(&raw).with_context(|| {
            format!(
                "parsing auth file {} (want a JSON list of {{username, password, perms}})",
                path.display()
            )
        })
    }

    pub fn parse(raw: &[u8]) -> serde_json::Result<Self> {
        let entries: Vec<UserEntry> = serde_json::from_slice(raw)?;
        let users = entries
            .into_iter()
            .map(|e| {
                (
                    e.username,
                    User {
                        password: e.password,
                        perms: e.perms,
                    },
                )
            })
            .collect();
        Ok(Self { users })
    }

    fn has(&self, user: &str, perm: Perm) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.perms.iter().any(|p| p == "all" || p == perm.name()))
    }

    /// Checks an `Authorization` header value against `perm`.
    pub fn allowed(&self, authorization: Option<&str>, perm: Perm) -> bool {
        if self.has("*", perm) {
            return true;
        }
        let Some((user, pass)) = authorization.and_then(decode_basic) else {
            return false;
        };
        let Some(u) = self.users.get(&user) else {
            return false;
        };
        constant_time_eq(u.password.as_bytes(), pass.as_bytes()) && self.has(&user, perm)
    }
}

fn decode_basic(header: &str) -> Option<(String, String)> {
    let b64 = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn permissions() {
        let store = CredentialStore::parse(
            br#"[{"username":"admin","password":"s3cret","perms":["all"]},
                 {"username":"reader","password":"r","perms":["query"]},
                 {"username":"*","password":"","perms":["status","ready"]}]"#,
        )
        .unwrap();
        assert!(store.allowed(Some(&basic("admin", "s3cret")), Perm::Execute));
        assert!(!store.allowed(Some(&basic("admin", "wrong")), Perm::Execute));
        assert!(store.allowed(Some(&basic("reader", "r")), Perm::Query));
        assert!(!store.allowed(Some(&basic("reader", "r")), Perm::Execute));
        assert!(store.allowed(None, Perm::Status), "anonymous status via *");
        assert!(!store.allowed(None, Perm::Query));
    }
}
