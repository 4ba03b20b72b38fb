//! A running member: opens storage, starts Raft, its RPC listener and the member's tasks
//! (snapshots, backups, joining), and hands leadership over on shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use openraft::{Config, ServerState, SnapshotPolicy};

use crate::auth::CredentialStore;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::raft::health::SnapshotControl;
use crate::raft::{log_store::LogStore, network::NetworkFactory, rpc, state_machine::StateMachine};
use crate::sqlite::reader::ReadPool;
use crate::{MemberInfo, NodeId, Raft};

pub struct Node {
    pub id: NodeId,
    pub info: MemberInfo,
    pub raft: Arc<Raft>,
    pub reads: ReadPool,
    pub metrics: Arc<Metrics>,
    pub config: NodeConfig,
    pub auth: Option<Arc<CredentialStore>>,
    /// Client for calls to other members (forwarding, joins, /nodes).
    pub client: reqwest::Client,
    pub started: SystemTime,
    pub started_at: Instant,
    pub db_path: PathBuf,
    /// Milliseconds since `started_at` when the leader last reached us (any Raft RPC).
    pub leader_contact_ms: Arc<AtomicU64>,
    /// Backups to object storage (`--backup-config`).
    pub backup: Option<Arc<crate::backup::Manager>>,
    /// What `--restore-from` restored into this data dir (read once, after the restore).
    pub restored: std::sync::OnceLock<Option<serde_json::Value>>,
    /// Snapshot health and requests for full snapshots.
    pub snapshots: Arc<SnapshotControl>,
    /// Serialises membership changes made through this member: Raft allows one at a time, and
    /// members joining together would otherwise see each other's change refused.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Mutual TLS on the Raft port, when configured.
    pub raft_tls: Option<crate::raft::tls::RaftTls>,
    /// Coalesces statement requests into batch entries.
    pub proposer: crate::raft::propose::Proposer,
    /// Queued writes (`?queue`), applied in batches.
    pub queue: crate::raft::queue::WriteQueue,
    /// Shares one leadership check among the linearizable reads waiting for it.
    pub leadership: Arc<crate::raft::leadership::LeaderCheck>,
    /// Hands leadership over (shutdown, `POST /leader`).
    handover: crate::raft::handover::HandOver,
}

impl Node {
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        let name = config.node_id.clone();
        let id = crate::raft_id_from_name(&name).with_context(|| {
            format!("--node-id {name:?} must be a positive integer or a name ending in -<ordinal>")
        })?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let info = MemberInfo {
            name,
            raft_addr: config.raft_advertise(),
            api_addr: config.api_url(),
        };
        let auth = match &config.auth {
            Some(p) => Some(Arc::new(CredentialStore::load(p)?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let db_path = config.data_dir.join("db.sqlite");
        let reads = ReadPool::new(db_path.clone(), 8);
        let log = LogStore::open(&config.data_dir.join("raft.db"), metrics.clone())
            .context("opening the raft log")?;
        let log_view = log.clone();
        let archive_log = log.clone();
        let snapshots = Arc::new(SnapshotControl::default());
        let sm = StateMachine::open(
            &db_path,
            config.data_dir.join("snapshots"),
            reads.clone(),
            metrics.clone(),
            snapshots.clone(),
            config.checkpoint_starve_limit,
        )
        .context("opening the database")?;

        let election = config.election_timeout.as_millis() as u64;
        let raft_config = Config {
            cluster_name: "litecluster".into(),
            // Elections are called by pre-vote (raft/prevote.rs), not by openraft's timer.
            enable_elect: false,
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            // Also openraft's leader lease, which pre-vote waits out: kept close to the minimum
            // so a lost leader is replaced quickly.
            election_timeout_max: election * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
            max_in_snapshot_log_to_keep: config.snapshot_trailing_logs,
            install_snapshot_timeout: 30_000,
            // Like AppendEntries: each chunk must arrive and be written well within a heartbeat.
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 512,
            ..Config::default()
        }
        .validate()
        .context(
            "invalid raft timing flags (the election timeout must exceed the heartbeat interval)",
        )?;

        let raft_tls = match (&config.raft_cert, &config.raft_key, &config.raft_ca_cert) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(crate::raft::tls::RaftTls::load(cert, key, ca).context(
                    "loading the Raft TLS files (--raft-cert, --raft-key, --raft-ca-cert)",
                )?)
            }
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(&config.raft_addr)
            .await
            .with_context(|| format!("binding raft address {}", config.raft_addr))?;
        let raft = Arc::new(
            Raft::new(
                id,
                Arc::new(raft_config),
                NetworkFactory::new(raft_tls.clone()),
                log,
                sm,
            )
            .await
            .context("starting raft")?,
        );
        let started_at = Instant::now();
        let leader_contact_ms = Arc::new(AtomicU64::new(0));
        let prevote = crate::raft::prevote::PreVote::new(
            id,
            raft.clone(),
            log_view,
            leader_contact_ms.clone(),
            started_at,
            Duration::from_millis(election * 3 / 2),
            raft_tls.clone(),
        );
        tokio::spawn(rpc::serve(
            listener,
            raft_tls.clone(),
            raft.clone(),
            started_at,
            leader_contact_ms.clone(),
            prevote.clone(),
        ));
        tokio::spawn(prevote.clone().run());

        let backup =
            crate::backup::Manager::for_node(&config).context("loading --backup-config")?;
        let client = http_client(&config)?;
        let write_gate = Arc::new(tokio::sync::RwLock::new(()));
        let proposer = crate::raft::propose::Proposer::start(raft.clone(), write_gate.clone());
        let leadership = crate::raft::leadership::LeaderCheck::new(raft.clone());
        let queue = crate::raft::queue::WriteQueue::start(
            crate::raft::queue::Settings {
                capacity: config.write_queue_capacity as usize,
                batch_size: config.write_queue_batch_size as usize,
                timeout: config.write_queue_timeout,
                transaction: config.write_queue_tx,
            },
            proposer.clone(),
            crate::raft::queue::Forwarding {
                client: client.clone(),
                raft: raft.clone(),
            },
        );
        let node = Arc::new(Self {
            id,
            info,
            reads,
            metrics,
            config,
            auth,
            client,
            started: SystemTime::now(),
            started_at,
            db_path,
            leader_contact_ms,
            backup,
            restored: std::sync::OnceLock::new(),
            snapshots,
            membership_lock: tokio::sync::Mutex::new(()),
            handover: crate::raft::handover::HandOver {
                id,
                raft: raft.clone(),
                write_gate,
                prevote,
                tls: raft_tls.clone(),
            },
            raft,
            raft_tls,
            proposer,
            queue,
            leadership,
        });
        let mut wal_path = node.db_path.clone().into_os_string();
        wal_path.push("-wal");
        tokio::spawn(crate::raft::scheduler::run(
            node.raft.clone(),
            node.snapshots.clone(),
            crate::raft::scheduler::Policy {
                wal_path: wal_path.into(),
                wal_size: node.config.snapshot_wal_size,
                interval: node.config.snapshot_interval,
            },
        ));
        crate::backup::restore::at_start(crate::backup::restore::Member {
            raft: &node.raft,
            writes: &node.proposer,
            id: node.id,
            info: &node.info,
            config: &node.config,
        })
        .await?;
        let _ = node
            .restored
            .set(crate::backup::restore::restored(&node.config.data_dir));
        crate::raft::join::Joiner {
            id: node.id,
            info: node.info.clone(),
            raft: node.raft.clone(),
            join: node.config.join.clone(),
            voter: !node.config.non_voter,
            bootstrap: node.config.bootstrap,
            client: node.client.clone(),
        }
        .start()
        .await?;
        if let Some(m) = node.backup.clone() {
            crate::backup::auto::spawn(
                m.clone(),
                &node.raft,
                node.db_path.clone(),
                node.info.name.clone(),
            );
            crate::backup::archive::spawn(
                m,
                &node.raft,
                archive_log,
                node.db_path.clone(),
                node.info.name.clone(),
            );
        }
        Ok(node)
    }

    /// Proposes `cmd` to Raft, waiting while a leadership hand-over holds writes back (they
    /// then find a follower and are forwarded to the new leader).
    pub async fn write(
        &self,
        cmd: crate::command::Command,
    ) -> Result<
        openraft::raft::ClientWriteResponse<crate::TypeConfig>,
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, MemberInfo>>,
    > {
        self.proposer.write(cmd).await
    }

    /// The leader once one is known, waiting at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, MemberInfo)> {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(l) = self.leader() {
                    return Some(l);
                }
                rx.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The current leader, if known, with its address.
    pub fn leader(&self) -> Option<(NodeId, MemberInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// On a leader of several voters that has not heard from a quorum for longer than the
    /// leader lease (it is cut off and a new leader is probably being elected), how long.
    pub fn quorum_silence(&self) -> Option<Duration> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader
            || m.membership_config.membership().voter_ids().count() < 2
        {
            return None;
        }
        let lease = self.config.election_timeout * 3 / 2;
        m.millis_since_quorum_ack
            .map(Duration::from_millis)
            .filter(|d| *d > lease)
    }

    /// Time since the leader last reached this member; zero on the leader itself.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        if self.is_leader() {
            return Some(Duration::ZERO);
        }
        let ms = self.leader_contact_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| {
            self.started_at
                .elapsed()
                .saturating_sub(Duration::from_millis(ms))
        })
    }

    pub fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Hands leadership to the most caught-up voter (see [`crate::raft::handover`]).
    pub async fn transfer_leadership(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        self.handover.run(None, timeout).await
    }

    /// Hands leadership to `target`, or to the most caught-up voter when `None`.
    pub async fn transfer_leadership_to(
        &self,
        target: Option<NodeId>,
        timeout: Duration,
    ) -> anyhow::Result<NodeId> {
        self.handover.run(target, timeout).await
    }

    /// Stops serving: a leader first hands leadership over so writes pause only briefly.
    /// Whether `id` votes in this member's current view of the membership.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters().contains(&id)
    }

    /// The voters in this member's current view of the membership.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    pub async fn shutdown(&self) {
        if self.is_leader() && self.voters().len() > 1 {
            match self.transfer_leadership(self.config.shutdown_timeout).await {
                Ok(to) => tracing::info!(new_leader = to, "leadership handed over before shutdown"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand leadership over; shutting down anyway")
                }
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

fn http_client(config: &NodeConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.http_ca_cert {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading CA bundle {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing CA bundle")? {
            b = b.add_root_certificate(cert);
        }
    }
    if config.http_insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().context("building the HTTP client")
}
