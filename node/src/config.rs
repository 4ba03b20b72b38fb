//! Command-line flags of `litecluster-node`; each can also be set as `LITECLUSTER_<FLAG>`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "litecluster-node",
    version,
    about = "One member of a Raft-replicated SQLite cluster (rqlite-compatible HTTP API)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    #[command(flatten)]
    pub node: NodeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the node (the default).
    Serve,
    /// One-shot backup commands (each a fresh process sharing the data dir's status cache).
    Backup {
        #[command(subcommand)]
        action: BackupAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupAction {
    /// Copy the database and write it to the first writable storage.
    Push(BackupPushArgs),
    /// List backups across every readable storage, newest first (JSON on stdout).
    List(BackupCommon),
    /// Download and verify the newest backup (or `--id`) into a plain SQLite file.
    Restore(BackupRestoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BackupCommon {
    /// Backup config file (YAML or JSON) listing the storages in failover order.
    #[arg(long, env = "LITECLUSTER_BACKUP_CONFIG")]
    pub config: PathBuf,
    /// Data directory: holds the storage status cache, and the database `push` copies.
    #[arg(long, env = "LITECLUSTER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// How long a storage's alive/dead status in the status cache holds before a re-check.
    #[arg(long, env = "LITECLUSTER_BACKUP_STATUS_TTL", default_value = "60s", value_parser = parse_duration)]
    pub status_ttl: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct BackupPushArgs {
    #[command(flatten)]
    pub common: BackupCommon,
    /// Take the database from a running node's `/db/backup` instead of `<data-dir>/db.sqlite`.
    #[arg(long)]
    pub from_url: Option<String>,
    /// Name recorded in the manifest as the node the backup came from.
    #[arg(long, env = "LITECLUSTER_NODE_ID", default_value = "1")]
    pub node_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct BackupRestoreArgs {
    #[command(flatten)]
    pub common: BackupCommon,
    /// The backup to restore (default: the newest across all readable storages, or the newest
    /// before the target). Alone, it restores that backup without the archive after it.
    #[arg(long)]
    pub id: Option<String>,
    /// Point in time to recover to (RFC 3339 with a zone): the newest backup taken before it,
    /// plus every archived entry the leader proposed at or before it.
    #[arg(long, conflicts_with = "to_index")]
    pub to_time: Option<String>,
    /// Raft index to recover to: the newest backup at or before it, plus the archived entries
    /// up to it.
    #[arg(long)]
    pub to_index: Option<u64>,
    /// Where to write the restored SQLite file (load it with `/db/load`, or boot a cluster
    /// with `--restore-from` instead).
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct NodeConfig {
    /// This member's ID: a positive integer, or a StatefulSet pod name ending in `-<ordinal>`.
    #[arg(long, env = "LITECLUSTER_NODE_ID", default_value = "1")]
    pub node_id: String,
    /// Directory for the database, Raft log and snapshots.
    #[arg(long, env = "LITECLUSTER_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Address the HTTP API listens on.
    #[arg(long, env = "LITECLUSTER_HTTP_ADDR", default_value = "127.0.0.1:4001")]
    pub http_addr: String,
    /// Address other members and clients use for the HTTP API (host:port), if not `--http-addr`.
    #[arg(long, env = "LITECLUSTER_HTTP_ADVERTISE")]
    pub http_advertise: Option<String>,
    /// Address the Raft RPC listener binds.
    #[arg(long, env = "LITECLUSTER_RAFT_ADDR", default_value = "127.0.0.1:4002")]
    pub raft_addr: String,
    /// Address other members use for Raft RPCs, if not `--raft-addr`.
    #[arg(long, env = "LITECLUSTER_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// Initialise a new single-member cluster when the data directory is empty.
    #[arg(long, env = "LITECLUSTER_BOOTSTRAP")]
    pub bootstrap: bool,
    /// HTTP URLs of existing members to join through (comma-separated); retried until one answers.
    #[arg(long, env = "LITECLUSTER_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// Join as a read-only learner that never votes.
    #[arg(long, env = "LITECLUSTER_NON_VOTER")]
    pub non_voter: bool,
    /// JSON file of users, passwords and permissions (rqlite's format) enabling basic auth.
    #[arg(long, env = "LITECLUSTER_AUTH")]
    pub auth: Option<PathBuf>,
    /// PEM certificate chain for HTTPS on the API.
    #[arg(long, env = "LITECLUSTER_HTTP_CERT", requires = "http_key")]
    pub http_cert: Option<PathBuf>,
    /// PEM private key for HTTPS on the API.
    #[arg(long, env = "LITECLUSTER_HTTP_KEY", requires = "http_cert")]
    pub http_key: Option<PathBuf>,
    /// PEM CA bundle to trust when this node calls other members over HTTPS.
    #[arg(long, env = "LITECLUSTER_HTTP_CA_CERT")]
    pub http_ca_cert: Option<PathBuf>,
    /// Skip certificate verification when calling other members (testing only).
    #[arg(long, env = "LITECLUSTER_HTTP_INSECURE")]
    pub http_insecure: bool,
    /// Value of the `Access-Control-Allow-Origin` header (rqlite's `-http-allow-origin`), for
    /// browser applications that call the API directly, e.g. `*` or `https://app.example`.
    #[arg(long, env = "LITECLUSTER_HTTP_ALLOW_ORIGIN")]
    pub http_allow_origin: Option<String>,
    /// PEM certificate chain for mutual TLS between members on the Raft port; needs
    /// `--raft-key` and `--raft-ca-cert`, and every member must use the same CA.
    #[arg(long, env = "LITECLUSTER_RAFT_CERT", requires_all = ["raft_key", "raft_ca_cert"])]
    pub raft_cert: Option<PathBuf>,
    /// PEM private key for `--raft-cert`.
    #[arg(long, env = "LITECLUSTER_RAFT_KEY", requires = "raft_cert")]
    pub raft_key: Option<PathBuf>,
    /// PEM CA bundle that signs every member's Raft certificate.
    #[arg(long, env = "LITECLUSTER_RAFT_CA_CERT", requires = "raft_cert")]
    pub raft_ca_cert: Option<PathBuf>,
    /// Take a snapshot after this many new log entries (rqlite's `-raft-snap`).
    #[arg(long, env = "LITECLUSTER_SNAPSHOT_THRESHOLD", default_value_t = 8192)]
    pub snapshot_threshold: u64,
    /// Log entries kept after a snapshot so slightly-behind followers avoid a full transfer.
    #[arg(
        long,
        env = "LITECLUSTER_SNAPSHOT_TRAILING_LOGS",
        default_value_t = 10240
    )]
    pub snapshot_trailing_logs: u64,
    /// Take a snapshot when the WAL grows past this many bytes (rqlite's `-raft-snap-wal-size`).
    #[arg(long, env = "LITECLUSTER_SNAPSHOT_WAL_SIZE", default_value_t = 4 << 20)]
    pub snapshot_wal_size: u64,
    /// How often to check the WAL size and take a snapshot if anything was applied since the last.
    #[arg(long, env = "LITECLUSTER_SNAPSHOT_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// A checkpoint blocked by readers for longer than this interrupts the readers holding the
    /// WAL so that it can be reset (the WAL must stay bounded).
    #[arg(long, env = "LITECLUSTER_CHECKPOINT_STARVE_LIMIT", default_value = "5m", value_parser = parse_duration)]
    pub checkpoint_starve_limit: Duration,
    /// Queued writes (`/db/execute?queue`) held at most, in requests; more wait for room.
    #[arg(long, env = "LITECLUSTER_WRITE_QUEUE_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_queue_capacity: u32,
    /// Queued requests applied together at most.
    #[arg(long, env = "LITECLUSTER_WRITE_QUEUE_BATCH_SIZE", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    pub write_queue_batch_size: u32,
    /// How long the first queued request of a batch waits for others.
    #[arg(long, env = "LITECLUSTER_WRITE_QUEUE_TIMEOUT", default_value = "50ms", value_parser = parse_duration)]
    pub write_queue_timeout: Duration,
    /// Run each queued request in a transaction.
    #[arg(long, env = "LITECLUSTER_WRITE_QUEUE_TX")]
    pub write_queue_tx: bool,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(long, env = "LITECLUSTER_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,
    /// Largest Raft log entry one request may become, in bytes; larger requests get 413. One
    /// entry must reach a follower, be written and fsynced within a heartbeat, so keep it well
    /// below what the disk writes in that time. At most 64 MiB.
    #[arg(long, env = "LITECLUSTER_MAX_ENTRY_BYTES", default_value_t = 8 << 20, value_parser = parse_entry_bytes)]
    pub max_entry_bytes: usize,
    /// Largest database image `/db/load` accepts, in bytes. It is spooled to the data dir and
    /// replicated in pieces, so memory does not grow with it.
    #[arg(long, env = "LITECLUSTER_MAX_LOAD_BYTES", default_value_t = 4 << 30)]
    pub max_load_bytes: u64,
    /// Default time limit for a read statement (overridden per request by `db_timeout`).
    #[arg(long, env = "LITECLUSTER_DB_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub db_timeout: Duration,
    /// Raft election timeout: a voter calls an election (after a pre-vote) once the leader has
    /// been silent for 1.5 to 2 times this.
    #[arg(long, env = "LITECLUSTER_ELECTION_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub election_timeout: Duration,
    /// Raft heartbeat interval.
    #[arg(long, env = "LITECLUSTER_HEARTBEAT_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// How long SIGTERM waits to hand leadership over before shutting down anyway.
    #[arg(long, env = "LITECLUSTER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log format: `text` (coloured only on a terminal, never with `NO_COLOR` set) or `json`
    /// (one object per line, for log pipelines).
    #[arg(long, env = "LITECLUSTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Backup config file (YAML or JSON): storages in failover order, interval, retention.
    /// Enables `POST /backup` and interval backups on the leader.
    #[arg(long, env = "LITECLUSTER_BACKUP_CONFIG")]
    pub backup_config: Option<PathBuf>,
    /// Ship committed entries to the backup storages this often, for point-in-time recovery
    /// (`0s`: off); overrides the backup config's `archive_interval`.
    #[arg(long, env = "LITECLUSTER_ARCHIVE_INTERVAL", value_parser = parse_duration, requires = "backup_config")]
    pub archive_interval: Option<Duration>,
    /// Keeps this cluster's archive apart from others' in shared storages; overrides the
    /// backup config's `archive_id`.
    #[arg(long, env = "LITECLUSTER_ARCHIVE_ID", requires = "backup_config")]
    pub archive_id: Option<String>,
    /// Backup config file to boot an empty member from: the newest backup across its storages
    /// is loaded through Raft after bootstrapping.
    #[arg(long, env = "LITECLUSTER_RESTORE_FROM")]
    pub restore_from: Option<PathBuf>,
    /// With `--restore-from`: the id of the backup to restore (as `backup list` and a
    /// SqliteBackup's status show it) instead of the newest.
    #[arg(long, env = "LITECLUSTER_RESTORE_ID", requires = "restore_from")]
    pub restore_id: Option<String>,
    /// With `--restore-from`: recover to this time (RFC 3339 with a zone) from the archive.
    /// Without a target the archive after the backup is replayed to its end.
    #[arg(
        long,
        env = "LITECLUSTER_RESTORE_TO_TIME",
        requires = "restore_from",
        conflicts_with = "restore_to_index"
    )]
    pub restore_to_time: Option<String>,
    /// With `--restore-from`: recover to this Raft index from the archive.
    #[arg(long, env = "LITECLUSTER_RESTORE_TO_INDEX", requires = "restore_from")]
    pub restore_to_index: Option<u64>,
    /// How long a storage's alive/dead status in the shared status cache holds before a re-check.
    #[arg(long, env = "LITECLUSTER_BACKUP_STATUS_TTL", default_value = "60s", value_parser = parse_duration)]
    pub backup_status_ttl: Duration,
}

impl NodeConfig {
    pub fn http_advertise(&self) -> String {
        self.http_advertise
            .clone()
            .unwrap_or_else(|| self.http_addr.clone())
    }

    pub fn raft_advertise(&self) -> String {
        self.raft_advertise
            .clone()
            .unwrap_or_else(|| self.raft_addr.clone())
    }

    pub fn tls(&self) -> bool {
        self.http_cert.is_some()
    }

    /// The base URL other members and clients use for this node's API.
    pub fn api_url(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.http_advertise())
    }
}

/// Parses Go-style durations as rqlite accepts them: `500ms`, `2s`, `1m30s`, `1h`, `250us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a valid duration (examples: 500ms, 2s, 1m30s)");
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(err());
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        // Go's limit (about 292 years): anything larger, negative or not a number is refused
        // rather than overflowing.
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| err())?;
        total = total.checked_add(part).ok_or_else(err)?;
    }
    if total > MAX_DURATION {
        return Err(err());
    }
    Ok(total)
}

/// The hard limit on one entry: the receiver refuses frames over `MAX_FRAME`, and a frame holds
/// at least one entry.
pub const MAX_ENTRY_BYTES: usize = 64 << 20;

fn parse_entry_bytes(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if !(1024..=MAX_ENTRY_BYTES).contains(&n) {
        return Err(format!(
            "{n} is outside 1024..={MAX_ENTRY_BYTES}: one entry must fit a Raft frame and a heartbeat"
        ));
    }
    Ok(n)
}

/// The longest duration Go's `time.ParseDuration` accepts, which rqlite's flags use.
const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
        for bad in [
            "99999999999999999999s",
            "1e400s",
            "-5s",
            "NaN",
            "nans",
            "infs",
            "300y",
            "2562048h",
            "9223372037s",
            "1.5.5s",
            ".s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(
            parse_duration("2562047h"),
            Ok(Duration::from_secs(2562047 * 3600))
        );
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
