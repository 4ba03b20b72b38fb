//! Becoming a member: bootstrap a new cluster, resume with existing state, or ask the members
//! given by `--join` to add us until one of them (or the leader it forwards to) does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::{MemberInfo, NodeId, Raft};

/// What joining needs: who we are, whom to ask, and how.
pub struct Joiner {
    pub id: NodeId,
    pub info: MemberInfo,
    pub raft: Arc<Raft>,
    /// Base URLs of members to ask (`--join`).
    pub join: Vec<String>,
    pub voter: bool,
    pub bootstrap: bool,
    pub client: reqwest::Client,
}

impl Joiner {
    /// Bootstraps or resumes at once; a join runs in the background until it succeeds.
    pub async fn start(self) -> anyhow::Result<()> {
        let initialized = self.raft.is_initialized().await?;
        if initialized {
            tracing::info!(id = self.id, "resuming with existing state");
        } else if self.bootstrap {
            let members = BTreeMap::from([(self.id, self.info.clone())]);
            self.raft
                .initialize(members)
                .await
                .context("bootstrapping a new cluster")?;
            tracing::info!(id = self.id, "bootstrapped a new single-member cluster");
        }
        if !self.join.is_empty() && !self.has_role() {
            tokio::spawn(async move { self.join_loop().await });
        } else if !initialized && !self.bootstrap {
            tracing::warn!(
                "data dir is empty and neither --bootstrap nor --join was given: waiting to be added by a leader"
            );
        }
        Ok(())
    }

    /// Whether our membership view has us in the role we asked for (a voter, or at least a
    /// member).
    fn has_role(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let ms = m.membership_config.membership();
        if self.voter {
            ms.voter_ids().any(|v| v == self.id)
        } else {
            ms.get_node(&self.id).is_some()
        }
    }

    async fn join_loop(&self) {
        let body = serde_json::json!({
            "id": self.info.name,
            "raft_addr": self.info.raft_addr,
            "api_addr": self.info.api_addr,
            "voter": self.voter,
        });
        let credentials = join_credentials();
        let mut attempt = 0u32;
        loop {
            for base in &self.join {
                let url = format!("{}/join", base.trim_end_matches('/'));
                let mut req = self
                    .client
                    .post(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(60));
                if let Some(h) = &credentials {
                    req = req.header(reqwest::header::AUTHORIZATION, h);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(via = %url, voter = self.voter, "joined the cluster");
                        return;
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        tracing::warn!(via = %url, %status, body = %text.trim(), attempt, "join refused; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(via = %url, error = %e, attempt, "join target unreachable; retrying")
                    }
                }
            }
            // A leader busy with another change may refuse us after adding us as a learner:
            // keep asking until we hold the role we asked for.
            if self.has_role() {
                tracing::info!("added to the cluster by the leader");
                return;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(4)))).await;
        }
    }
}

/// Basic-auth header for joining, from `LITECLUSTER_JOIN_USER`/`LITECLUSTER_JOIN_PASSWORD`.
fn join_credentials() -> Option<String> {
    use base64::Engine;
    let user = std::env::var("LITECLUSTER_JOIN_USER").ok()?;
    let pass = std::env::var("LITECLUSTER_JOIN_PASSWORD").unwrap_or_default();
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    ))
}
