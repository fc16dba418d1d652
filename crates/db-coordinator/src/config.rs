//! The database coordinator's configuration file (`databases.toml`).
//!
//! ```toml
//! cluster = "prod"                 # part of every gid; letters, digits, - and _, ≤ 16
//! node_id = 9                      # part of every transaction id; unique per coordinator
//! listen = "127.0.0.1:7800"        # HTTP: the API the CLI uses, and Prometheus /metrics
//!
//! [[database]]
//! name = "ledger"
//! kind = "postgres"                # needs max_prepared_transactions > 0
//! url = "host=127.0.0.1 user=postgres dbname=bank"
//!
//! [[database]]
//! name = "wallet"
//! kind = "mariadb"                 # MariaDB or MySQL, InnoDB tables
//! url = "mysql://root@127.0.0.1:3306/wallet"
//!
//! [[database]]
//! name = "points"
//! kind = "redis"                   # appendonly yes, appendfsync always, noeviction
//! url = "redis://127.0.0.1:6379/0"
//!
//! [recovery]                       # optional; milliseconds
//! interval_ms = 5000               # how often prepared branches are reconciled with the log
//!
//! [timeouts]                       # optional; milliseconds
//! statement_ms = 5000              # every database call (connect, statement, prepare, commit)
//!
//! [console]                        # optional: the web console at /ui
//! recent_transactions = 100000     # how many recent transactions it keeps timelines of
//! sample_ms = 10000                # how often its charts sample the metrics (an hour kept)
//!
//! [[token]]                        # optional, one per client (docs/security.md); with any,
//! name = "payments-api"            # every request but /health needs one
//! role = "client"                  # client | operator | monitor
//! sha256 = "…"                     # `concord certs token` prints the entry
//! ```
//!
//! A replicated coordinator (3 or 5 machines, none of which holds a decision alone) replaces
//! `listen` by one `[[replica]]` per machine; each runs `concord db serve --replica ID`:
//!
//! ```toml
//! [[replica]]
//! id = 1                           # 1..=255, unique
//! listen = "10.0.0.1:7800"         # its HTTP API (a standby redirects to the leader's)
//! raft = "10.0.0.1:7900"           # its replica link (openraft), for the other replicas
//!
//! [tls]                            # mutual TLS on the replica links; needed off loopback
//! dir = "certs"                    # `concord certs init --db databases.toml` writes them
//! ```
//!
//! A `[[database]]` runs data statements only (`SELECT`, `INSERT`, `UPDATE`, `DELETE`, …) unless
//! it says `schema_changes = true` (`concord_participants::statements`).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use concord_types::fields::{check_name, check_range};

pub use concord_participants::config::{
    DatabaseConfig, Kind, MAX_DATABASES, MAX_DATABASE_NAME, MAX_URL_BYTES,
};
use concord_participants::gid::{valid_cluster_name, MAX_CLUSTER_NAME};

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabasesConfig {
    pub cluster: String,
    pub node_id: u32,
    /// The HTTP API's address; absent when `[[replica]]` entries give one per replica.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The replicas of a replicated coordinator (none: one process, its own log).
    #[serde(rename = "replica", default)]
    pub replicas: Vec<ReplicaConfig>,
    #[serde(rename = "database")]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub recovery: RecoveryConfig,
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Clients' bearer tokens (by SHA-256); with any, the API demands one.
    #[serde(rename = "token", default)]
    pub tokens: Vec<concord_types::tokens::TokenConfig>,
    /// Mutual TLS on the replicas' replica links.
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

/// `[tls]`: the directory of the replicas' certificates (`ca.pem`, and `replica-ID.pem` /
/// `replica-ID.key` for each replica). Relative to the configuration file's directory.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub dir: std::path::PathBuf,
}

/// One replica of a replicated database coordinator.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReplicaConfig {
    pub id: u32,
    /// Its HTTP API.
    pub listen: SocketAddr,
    /// Its replica link, which only the other replicas dial.
    pub raft: SocketAddr,
}

/// Replica ids are small: they name replicas in operators' output and in openraft.
pub const MAX_REPLICA_ID: u32 = 255;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RecoveryConfig {
    pub interval_ms: u64,
    /// Accepted from earlier versions' files and ignored (see [`RecoveryConfig::ignored`]): the
    /// 2PC core answers for every branch, so no undecided branch waits out a grace period.
    pub grace_ms: Option<u64>,
}

impl RecoveryConfig {
    /// A warning for a setting this version reads but no longer uses.
    pub fn ignored(&self) -> Option<String> {
        self.grace_ms.map(|_| {
            "recovery.grace_ms is no longer used and is ignored: an undecided branch is rolled back as soon as the coordinator has no record of its transaction".to_string()
        })
    }
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig { interval_ms: 5_000, grace_ms: None }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    pub statement_ms: u64,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig { statement_ms: 5_000 }
    }
}

/// The web console's memory: recent transactions' timelines and the charts' samples.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub recent_transactions: usize,
    pub sample_ms: u64,
}

/// The most recent transactions the console may be asked to keep (about 2 KB each).
pub const MAX_RECENT_TRANSACTIONS: usize = 1_000_000;

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { recent_transactions: crate::trace::DEFAULT_CAPACITY, sample_ms: 10_000 }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl DatabasesConfig {
    pub fn load(path: &Path) -> Result<DatabasesConfig, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: shown.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config =
            Self::parse(&text).map_err(|message| ConfigError { path: shown, message })?;
        if let (Some(tls), Some(parent)) = (&mut config.tls, path.parent()) {
            if tls.dir.is_relative() {
                tls.dir = parent.join(&tls.dir);
            }
        }
        Ok(config)
    }

    /// The name the replicas' log and links carry (openraft's cluster name, and the cluster
    /// their certificates name): never a node cluster's, nor another database coordinator's.
    pub fn replica_cluster(&self) -> String {
        format!("db-{}-n{}", self.cluster, self.node_id)
    }

    /// The file name (without `.pem` / `.key`) of replica `id`'s certificate and key.
    pub fn replica_cert_name(id: u32) -> String {
        format!("replica-{id}")
    }

    pub fn parse(text: &str) -> Result<DatabasesConfig, String> {
        let config: DatabasesConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !valid_cluster_name(&self.cluster) {
            return Err(format!(
                "cluster `{}`: use 1 to {MAX_CLUSTER_NAME} letters, digits, `-` or `_` (it is part of every gid)",
                self.cluster
            ));
        }
        if self.databases.is_empty() {
            return Err("no [[database]] entries: the coordinator has nothing to drive".into());
        }
        if self.databases.len() > MAX_DATABASES {
            return Err(format!("{} databases; at most {MAX_DATABASES}", self.databases.len()));
        }
        match (self.listen, self.replicas.is_empty()) {
            (Some(listen), true) => check_range("listen (port)", listen.port(), 1..=u16::MAX)?,
            (None, true) => {
                return Err("no `listen` address (or `[[replica]]` entries, one per replica)".into())
            }
            (Some(_), false) => {
                return Err("`listen` and `[[replica]]` both given: with replicas, each \
                            `[[replica]]` names its own `listen` address"
                    .into())
            }
            (None, false) => self.validate_replicas()?,
        }
        if self.tls.is_some() && self.replicas.is_empty() {
            return Err("[tls] covers the replica links of [[replica]] entries, and this \
                        configuration has none (the HTTP API is plain HTTP: keep it on loopback \
                        or behind a TLS proxy, with tokens)"
                .into());
        }
        let mut names = BTreeSet::new();
        for (i, db) in self.databases.iter().enumerate() {
            let within = |e: String| format!("database[{i}]: {e}");
            check_name("name", &db.name, MAX_DATABASE_NAME).map_err(within)?;
            check_range("url (bytes)", db.url.len(), 1..=MAX_URL_BYTES).map_err(within)?;
            if !names.insert(db.name.as_str()) {
                return Err(format!("database `{}` is configured twice", db.name));
            }
        }
        concord_types::tokens::validate_all(&self.tokens)?;
        check_range("timeouts.statement_ms", self.timeouts.statement_ms, 1..=600_000)?;
        check_range("recovery.interval_ms", self.recovery.interval_ms, 10..=3_600_000)?;
        check_range(
            "console.recent_transactions",
            self.console.recent_transactions,
            1..=MAX_RECENT_TRANSACTIONS,
        )?;
        check_range("console.sample_ms", self.console.sample_ms, 100..=600_000)?;
        Ok(())
    }

    fn validate_replicas(&self) -> Result<(), String> {
        let count = self.replicas.len();
        if ![3, 5].contains(&count) {
            return Err(format!(
                "{count} [[replica]] entries: a replicated coordinator has 3 or 5 (an even \
                 number tolerates no more failures than one fewer, and one needs no [[replica]])"
            ));
        }
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for replica in &self.replicas {
            let within = |e: String| format!("replica {}: {e}", replica.id);
            check_range("id", replica.id, 1..=MAX_REPLICA_ID).map_err(within)?;
            check_range("listen (port)", replica.listen.port(), 1..=u16::MAX).map_err(within)?;
            check_range("raft (port)", replica.raft.port(), 1..=u16::MAX).map_err(within)?;
            if !ids.insert(replica.id) {
                return Err(format!("two [[replica]] entries claim id {}", replica.id));
            }
            for address in [replica.listen, replica.raft] {
                if !addresses.insert(address) {
                    return Err(format!("replica {}: address {address} is used twice", replica.id));
                }
            }
        }
        Ok(())
    }

    /// The replica `id`, or an error naming it and the configured ones.
    pub fn replica(&self, id: u32) -> Result<&ReplicaConfig, String> {
        self.replicas.iter().find(|r| r.id == id).ok_or_else(|| {
            let known: Vec<String> = self.replicas.iter().map(|r| r.id.to_string()).collect();
            if known.is_empty() {
                format!("--replica {id}: the configuration has no [[replica]] entries")
            } else {
                format!(
                    "--replica {id} is not in the configuration (replicas: {})",
                    known.join(", ")
                )
            }
        })
    }

    /// The HTTP address this process serves on: `listen`, or the replica's own.
    pub fn listen_of(&self, replica: Option<u32>) -> Result<SocketAddr, String> {
        match (replica, self.listen) {
            (None, Some(listen)) => Ok(listen),
            (None, None) => Err("this configuration has [[replica]] entries: start each \
                                 replica with --replica ID"
                .into()),
            (Some(id), _) => self.replica(id).map(|r| r.listen),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "t"
node_id = 9
listen = "127.0.0.1:7800"
[[database]]
name = "ledger"
kind = "postgres"
url = "host=127.0.0.1 user=postgres dbname=test"
[[database]]
name = "wallet"
kind = "mariadb"
url = "mysql://root@127.0.0.1:3306/test"
"#;

    #[test]
    fn a_good_file_parses_with_defaults() {
        let config = DatabasesConfig::parse(GOOD).unwrap();
        assert_eq!(config.databases.len(), 2);
        assert_eq!(config.databases[1].kind, Kind::Mariadb);
        assert_eq!(config.recovery, RecoveryConfig::default());
        assert_eq!(config.recovery.ignored(), None);
        let old = DatabasesConfig::parse(&format!("{GOOD}[recovery]\ngrace_ms = 100\n")).unwrap();
        assert!(old.recovery.ignored().unwrap().contains("grace_ms"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (GOOD.replace("kind = \"postgres\"", "kind = \"oracle\""), "oracle"),
            (GOOD.replace("node_id", "nodeid"), "nodeid"),
            (GOOD.replace("cluster = \"t\"", "cluster = \"a'b\""), "cluster `a'b`"),
            (GOOD.replace("name = \"wallet\"", "name = \"ledger\""), "configured twice"),
            (format!("{GOOD}[timeouts]\nstatement_ms = 18446744073709551615\n"), "statement_ms"),
            (format!("{GOOD}[timeouts]\nstatement_ms = 600001\n"), "statement_ms"),
            (format!("{GOOD}[recovery]\ninterval_ms = 0\n"), "interval_ms"),
            (format!("{GOOD}[console]\nrecent_transactions = 0\n"), "recent_transactions"),
            (format!("{GOOD}[console]\nrecent_transactions = 1000001\n"), "recent_transactions"),
            (format!("{GOOD}[console]\nsample_ms = 99\n"), "sample_ms"),
            (format!("{GOOD}[console]\nsamples = 1\n"), "samples"),
            (format!("{GOOD}[tls]\ndir = \"certs\"\n"), "[tls] covers the replica links"),
            (GOOD.replace("127.0.0.1:7800", "127.0.0.1:0"), "listen (port)"),
            (GOOD.replace("node_id = 9", "node_id = 4294967296"), "node_id"),
            (GOOD.replace("name = \"wallet\"", "name = \"wal let\""), "`name`"),
            (GOOD.replace("url = \"mysql://root@127.0.0.1:3306/test\"", "url = \"\""), "url"),
        ];
        for (text, expected) in cases {
            let error = DatabasesConfig::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }

    fn replicas(ids: &[u32]) -> String {
        let base = GOOD.replace("listen = \"127.0.0.1:7800\"\n", "");
        let entries: String = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                format!(
                    "[[replica]]\nid = {id}\nlisten = \"127.0.0.1:{}\"\nraft = \"127.0.0.1:{}\"\n",
                    7801 + i,
                    7901 + i
                )
            })
            .collect();
        format!("{base}{entries}")
    }

    #[test]
    fn replicas_are_three_or_five_with_unique_ids_and_addresses() {
        let three = DatabasesConfig::parse(&replicas(&[1, 2, 3])).unwrap();
        assert_eq!(three.listen_of(Some(2)).unwrap().port(), 7802);
        assert!(three.listen_of(None).unwrap_err().contains("--replica"));
        assert!(three.replica(4).unwrap_err().contains("replicas: 1, 2, 3"));
        assert!(DatabasesConfig::parse(&replicas(&[1, 2, 3, 4, 5])).is_ok());
        let single = DatabasesConfig::parse(GOOD).unwrap();
        assert!(single.listen_of(Some(1)).unwrap_err().contains("no [[replica]]"));
        let cases = [
            (replicas(&[1, 2]), "2 [[replica]] entries"),
            (replicas(&[1, 2, 3, 4]), "4 [[replica]] entries"),
            (replicas(&[1, 2, 2]), "two [[replica]] entries claim id 2"),
            (replicas(&[1, 2, 256]), "replica 256: field `id`"),
            (replicas(&[0, 1, 2]), "replica 0"),
            (replicas(&[1, 2, 3]).replace("7902", "7801"), "127.0.0.1:7801 is used twice"),
            (format!("listen = \"127.0.0.1:7800\"\n{}", replicas(&[1, 2, 3])), "both given"),
            (GOOD.replace("listen = \"127.0.0.1:7800\"\n", ""), "no `listen`"),
        ];
        for (text, expected) in cases {
            let error = DatabasesConfig::parse(&text).unwrap_err();
            assert!(error.contains(expected), "{error} should mention {expected}");
        }
    }
}
