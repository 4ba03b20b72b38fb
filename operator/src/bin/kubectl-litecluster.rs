//! `kubectl litecluster`: a SqliteCluster in one screen, and the day-two actions, all through
//! the operator (the plugin only reads the cluster, writes its annotations and creates
//! SqliteBackups, so it needs no access to the members). Install it on `PATH` as `kubectl-litecluster`.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use litecluster_operator::backup::{SqliteBackup, SqliteBackupSpec, phase};
use litecluster_operator::crd::{
    PAUSED_ANNOTATION, RESTART_ANNOTATION, SWITCHOVER_ANNOTATION, SqliteCluster,
};

#[derive(Parser)]
#[command(
    name = "kubectl-litecluster",
    version,
    about = "Inspect and operate litecluster SqliteClusters"
)]
struct Cli {
    /// Namespace of the cluster (default: the kubeconfig context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Members, roles, leader, applied index, snapshot health, conditions, rollout.
    Status { name: String },
    /// Restart every member one at a time (leader last), or only MEMBER.
    Restart {
        name: String,
        member: Option<String>,
    },
    /// Hand leadership to MEMBER (a voter).
    Switchover { name: String, member: String },
    /// Stop the operator from changing the cluster.
    Pause { name: String },
    /// Let the operator change the cluster again.
    Resume { name: String },
    /// Take a backup now: creates a SqliteBackup of the cluster (the operator asks the leader).
    Backup {
        name: String,
        /// Wait until it completed or failed, and say where it went.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot reach the Kubernetes API (check your kubeconfig)")?;
    let ns = cli
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let backups: Api<SqliteBackup> = Api::namespaced(client.clone(), &ns);
    let api: Api<SqliteCluster> = Api::namespaced(client, &ns);
    let get = |name: &str| {
        let api = api.clone();
        let (name, ns) = (name.to_owned(), ns.clone());
        async move {
            api.get_opt(&name)
                .await
                .with_context(|| format!("reading SqliteCluster {ns}/{name}"))?
                .with_context(|| format!("no SqliteCluster {name} in namespace {ns}"))
        }
    };
    match cli.command {
        Cmd::Status { name } => {
            let c = get(&name).await?;
            // Recent backups of this cluster; a user who may not list them just sees none.
            let mut recent: Vec<SqliteBackup> = backups
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
                .into_iter()
                .filter(|b| b.spec.cluster == name)
                .collect();
            recent.sort_by_key(|b| b.metadata.creation_timestamp.clone().map(|t| t.0));
            let from = recent.len().saturating_sub(5);
            print!("{}", render_status(&c, &recent[from..]));
        }
        Cmd::Pause { name } => {
            get(&name).await?;
            annotate(&api, &name, PAUSED_ANNOTATION, Some("true")).await?;
            println!("{ns}/{name} paused: the operator changes nothing until `resume`");
        }
        Cmd::Resume { name } => {
            get(&name).await?;
            annotate(&api, &name, PAUSED_ANNOTATION, None).await?;
            println!("{ns}/{name} resumed");
        }
        Cmd::Restart { name, member } => {
            let c = get(&name).await?;
            match member {
                Some(m) => {
                    known_member(&c, &m)?;
                    annotate(&api, &name, RESTART_ANNOTATION, Some(&m)).await?;
                    println!(
                        "{m} will restart when the cluster is healthy (leadership handed over first if it leads); the annotation goes when done"
                    );
                }
                None => {
                    // A new pod-template annotation: every member is outdated, and the operator
                    // replaces them one at a time, learners first, the leader last.
                    let now = k8s_openapi::jiff::Timestamp::now().to_string();
                    let patch = serde_json::json!({"spec": {"podTemplate": {"annotations": {
                        "kubectl.kubernetes.io/restartedAt": now}}}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .context("requesting a rolling restart")?;
                    println!(
                        "{ns}/{name}: rolling restart requested; watch it with `kubectl litecluster status {name}`"
                    );
                }
            }
        }
        Cmd::Backup {
            name,
            wait,
            timeout,
        } => {
            let c = get(&name).await?;
            if c.spec.backup.is_none() {
                bail!(
                    "{ns}/{name} has no spec.backup.storages: add at least one storage to back it up"
                );
            }
            let stamp = k8s_openapi::jiff::Timestamp::now().strftime("%Y%m%d%H%M%S");
            let mut backup = SqliteBackup::new(
                &format!("{name}-{stamp}"),
                SqliteBackupSpec {
                    cluster: name.clone(),
                },
            );
            backup.metadata.namespace = Some(ns.clone());
            let made = backups
                .create(&PostParams::default(), &backup)
                .await
                .context("creating the SqliteBackup")?;
            let made_name = made.metadata.name.unwrap_or_default();
            println!("sqlitebackup/{made_name} created");
            if wait {
                let done = wait_backup(&backups, &made_name, timeout).await?;
                let st = done.status.unwrap_or_default();
                let msg = st.message.unwrap_or_default();
                if st.phase.as_deref() == Some(phase::COMPLETED) {
                    println!("completed: {msg}");
                } else {
                    bail!("backup {made_name} failed: {msg}");
                }
            }
        }
        Cmd::Switchover { name, member } => {
            let c = get(&name).await?;
            known_member(&c, &member)?;
            if c.status.as_ref().and_then(|s| s.leader.as_deref()) == Some(member.as_str()) {
                println!("{member} already leads");
                return Ok(());
            }
            annotate(&api, &name, SWITCHOVER_ANNOTATION, Some(&member)).await?;
            println!("leadership will move to {member}; the annotation goes when it leads");
        }
    }
    Ok(())
}

/// Polls the backup until it finished.
async fn wait_backup(
    api: &Api<SqliteBackup>,
    name: &str,
    timeout: u64,
) -> anyhow::Result<SqliteBackup> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
    loop {
        let b = api
            .get(name)
            .await
            .with_context(|| format!("reading SqliteBackup {name}"))?;
        if b.finished() {
            return Ok(b);
        }
        if std::time::Instant::now() > deadline {
            let phase = b.status.and_then(|s| s.phase).unwrap_or_default();
            bail!(
                "backup {name} not finished after {timeout}s (phase {phase:?}); see kubectl describe slb {name}"
            );
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn known_member(c: &SqliteCluster, member: &str) -> anyhow::Result<()> {
    let members: Vec<&str> = c
        .status
        .iter()
        .flat_map(|s| &s.members)
        .map(|m| m.name.as_str())
        .collect();
    if !members.contains(&member) {
        bail!(
            "{member} is not a member of {}: members are {}",
            c.metadata.name.as_deref().unwrap_or_default(),
            members.join(", ")
        );
    }
    Ok(())
}

async fn annotate(
    api: &Api<SqliteCluster>,
    name: &str,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting {key} on {name}"))?;
    Ok(())
}

fn render_status(c: &SqliteCluster, backups: &[SqliteBackup]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let name = c.metadata.name.as_deref().unwrap_or_default();
    let ns = c.metadata.namespace.as_deref().unwrap_or_default();
    let Some(s) = &c.status else {
        return format!("{ns}/{name}: no status yet (is the operator running?)\n");
    };
    let _ = writeln!(
        out,
        "{ns}/{name}  {}  ready {}  voters {}  leader {}{}",
        s.phase.as_deref().unwrap_or("-"),
        s.ready_members.as_deref().unwrap_or("-"),
        s.voters,
        s.leader.as_deref().unwrap_or("none"),
        if c.paused() { "  PAUSED" } else { "" }
    );
    let _ = writeln!(
        out,
        "\nMEMBER{:14}ROLE     RAFT       APPLIED   READY  SNAPSHOTS",
        ""
    );
    for m in &s.members {
        let snap = match &m.snapshot {
            None => "-".to_owned(),
            Some(h) if h.consecutive_failures > 0 => {
                format!("{} failures in a row", h.consecutive_failures)
            }
            Some(h) if h.full_needed => "full snapshot due".to_owned(),
            Some(h) => h
                .last_success_index
                .map_or("ok".to_owned(), |i| format!("ok at {i}")),
        };
        let _ = writeln!(
            out,
            "{:20}{:9}{:11}{:10}{:7}{snap}",
            m.name,
            m.role,
            m.raft_state,
            m.applied_index.map_or("-".to_owned(), |i| i.to_string()),
            if m.ready { "yes" } else { "no" },
        );
    }
    let _ = writeln!(out, "\nCONDITION          STATUS   REASON");
    for cond in &s.conditions {
        let _ = writeln!(
            out,
            "{:19}{:9}{}: {}",
            cond.type_, cond.status, cond.reason, cond.message
        );
    }
    match &s.rollout {
        Some(r) => {
            let _ = writeln!(
                out,
                "\nRollout: to {} ({}), {} of {} updated",
                r.revision, r.reason, s.updated_replicas, s.replicas
            );
        }
        None => {
            let _ = writeln!(out, "\nRollout: none");
        }
    }
    if let Some(r) = &s.last_restart {
        let _ = writeln!(
            out,
            "Last restart: {} ({}) at {}",
            r.member, r.reason, r.at.0
        );
    }
    match c.spec.backup.as_ref() {
        Some(b) => {
            let names: Vec<&str> = b.storages.iter().map(|s| s.name.as_str()).collect();
            let _ = writeln!(
                out,
                "Backups: every {} to {} (first that accepts wins)",
                b.interval,
                names.join(", ")
            );
        }
        None => {
            let _ = writeln!(out, "Backups: none configured (spec.backup)");
        }
    }
    if let Some(a) = &s.archive {
        let _ = writeln!(
            out,
            "Archive: up to index {} at {}, lag {} ms, to {}{}{}",
            a.archived_index.map_or("-".to_owned(), |i| i.to_string()),
            a.archived_at.as_deref().unwrap_or("-"),
            a.lag_ms.map_or("-".to_owned(), |l| l.to_string()),
            a.storage.as_deref().unwrap_or("-"),
            if a.failover { " (a failover)" } else { "" },
            a.last_error
                .as_ref()
                .map(|e| format!("; FAILING: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(r) = &s.recovery {
        let _ = writeln!(
            out,
            "Recovered from backup {} (index {}) up to index {}{}{}",
            r.backup_id,
            r.backup_index,
            r.index,
            r.time
                .as_ref()
                .map(|t| format!(", last write {t}"))
                .unwrap_or_default(),
            match (&r.target, r.target_reached) {
                (Some(t), true) => format!(", target {t}"),
                (Some(t), false) =>
                    format!(", target {t} NOT reached: the archive ended before it"),
                (None, _) => String::new(),
            }
        );
    }
    for b in backups {
        let st = b.status.clone().unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:40}{:10}{:10}{}",
            b.metadata.name.as_deref().unwrap_or_default(),
            st.phase.as_deref().unwrap_or("-"),
            st.storage.as_deref().unwrap_or("-"),
            st.raft_index
                .map_or("-".to_owned(), |i| format!("index {i}")),
        );
    }
    let pending: Vec<String> = [RESTART_ANNOTATION, SWITCHOVER_ANNOTATION]
        .iter()
        .filter_map(|k| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(*k))
                .map(|v| format!("{k}={v}"))
        })
        .collect();
    if !pending.is_empty() {
        let _ = writeln!(out, "Pending requests: {}", pending.join(", "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_shows_the_archive_and_what_a_recovery_restored() {
        let c: SqliteCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "litecluster.io/v1alpha1", "kind": "SqliteCluster",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": {"replicas": 3, "storage": {"size": "1Gi"}},
            "status": {
                "archive": {"archivedIndex": 40, "archivedAt": "2026-12-02T10:00:00.000Z", "lagMs": 900,
                    "storage": "spare", "failover": true, "lastError": "no writable storage"},
                "recovery": {"backupId": "b-1", "backupIndex": 7, "index": 42,
                    "target": "2026-12-02T09:00:00.000Z", "targetReached": false}
            }
        }))
        .unwrap();
        let out = render_status(&c, &[]);
        assert!(
            out.contains("Archive: up to index 40 at 2026-12-02T10:00:00.000Z, lag 900 ms, to spare (a failover); FAILING: no writable storage"),
            "{out}"
        );
        assert!(
            out.contains("Recovered from backup b-1 (index 7) up to index 42, target 2026-12-02T09:00:00.000Z NOT reached"),
            "{out}"
        );
    }
}
