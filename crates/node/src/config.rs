//! The cluster configuration file (`concord.toml`), shared by every node of a cluster.
//!
//! ```toml
//! cluster = "prod-eu"            # peer links from another cluster are refused
//! protocol = "2pc"               # optional: "2pc" (default) or "paxos-commit"
//! early_ack = true               # optional, 2pc only: a cross-shard commit is acknowledged once
//!                                # every prepare is durable (one round of fsyncs, not two)
//!
//! [[node]]
//! name = "coordinator"
//! id = 0
//! role = "coordinator"           # "coordinator", "shard" or "acceptor" (Paxos Commit: 2F+1 of them)
//! listen = "10.0.0.1:7700"
//!
//! [[node]]
//! name = "shard-1"
//! id = 1
//! role = "shard"
//! listen = "10.0.0.2:7701"
//!
//! [timeouts]                     # all optional; milliseconds
//! vote_ms = 2000                 # coordinator aborts when votes are not all in by then
//!                                # (early_ack: asks the silent shards instead, again each time)
//! resend_base_ms = 50            # first COMMIT resend; doubles per try, capped at resend_max_ms
//! resend_max_ms = 2000
//! inquiry_base_ms = 200          # a prepared shard first asks for the outcome after this long
//! inquiry_max_ms = 2000
//!
//! [log]                          # optional
//! segment_bytes = 67108864       # a segment is sealed at about this size
//! checkpoint_every = 100000      # records appended between checkpoints
//!
//! [kv]                           # optional: makes the cluster a key-value store
//! splits = ["g", "n"]            # shard i holds keys from splits[i-1] to splits[i] (shards by id);
//!                                # default: even splits of the letters a…z
//! max_offset_ms = 500            # timestamps further ahead of a node's clock are refused
//! gc_ttl_ms = 60000              # versions older than this (and superseded) are collected
//! txn_lifetime_ms = 30000        # a transaction open longer is ended (at most gc_ttl_ms)
//! ```
//!
//! Without `[kv]` the shards hold the delta model (`concord txn submit`, `concord transfer`).
//!
//! Unknown fields are errors that name the field and where it is, so a typo never silently
//! falls back to a default.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use concord_types::fields::{check_name, check_range};
use serde::Deserialize;

/// Limits on what one client request may ask for.
pub const MAX_WRITES_PER_TXN: usize = 1_024;
/// Cluster and node names: 1 to this many letters, digits, `-` or `_`.
pub const MAX_NAME_BYTES: usize = 64;
/// Nodes one cluster configures at most, and the highest node id.
pub const MAX_NODES: usize = 1_024;
pub const MAX_NODE_ID: u32 = 65_535;
/// Every timeout is at most an hour: longer is a typo (and would overflow in microseconds).
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// A split point is a key, at most as long as a key may be.
pub const MAX_SPLIT_BYTES: usize = 4_096;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub cluster: String,
    /// How cross-shard transactions commit.
    #[serde(default)]
    pub protocol: CommitProtocol,
    /// 2PC's early acknowledgement (`concord_commit::two_phase` module docs). Safe to switch
    /// either way between restarts: the participants read it from each PREPARE.
    #[serde(default)]
    pub early_ack: bool,
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub log: LogConfig,
    /// Present: the shards are a key-value store.
    #[serde(default)]
    pub kv: Option<KvConfig>,
    /// Present: every link is TLS, nodes prove who they are by certificate (docs/security.md).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Clients' bearer tokens, by their SHA-256 (`crate::auth`). With `[tls]` or any token,
    /// every client must present one.
    #[serde(rename = "token", default)]
    pub tokens: Vec<crate::auth::TokenConfig>,
    /// The coordinator's web console (`/ui` on its `metrics` address).
    #[serde(default)]
    pub console: ConsoleConfig,
    /// A replicated coordinator's timing (several coordinator nodes).
    #[serde(default)]
    pub replication: ReplicationConfig,
}

/// `[replication]`: how fast a replicated coordinator notices a lost leader. A follower that
/// hears nothing for a random time between the two election bounds stands for election; the
/// leader says it lives every `heartbeat_ms`. Shorter: faster failover; too short for the
/// machine or network: healthy leaders deposed (each change restarts the core: transactions in
/// flight abort or wait).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig { heartbeat_ms: 50, election_min_ms: 150, election_max_ms: 300 }
    }
}

/// `[console]`: how often the coordinator samples its own metrics for the console's charts
/// (one hour of samples is kept).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    pub sample_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig { sample_ms: 10_000 }
    }
}

/// `[tls]`: where the cluster's certificates are (`concord certs init` writes them).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// `ca.pem`, and `<node name>.pem` and `.key` for each node; a relative path is taken from
    /// the configuration file's directory.
    pub dir: std::path::PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// Split points between shards (shards in id order); empty: even splits of `a`…`z`.
    pub splits: Vec<String>,
    pub max_offset_ms: u64,
    pub gc_ttl_ms: u64,
    /// How long a transaction may stay open at the gateway, from its first operation.
    pub txn_lifetime_ms: u64,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            splits: Vec::new(),
            max_offset_ms: 500,
            gc_ttl_ms: 60_000,
            txn_lifetime_ms: 30_000,
        }
    }
}

impl KvConfig {
    /// The shard map for `shards` shards.
    pub fn shard_map(&self, shards: usize) -> Result<concord_kv::ShardMap, String> {
        let splits: Vec<Vec<u8>> = if self.splits.is_empty() {
            // Even splits of the lowercase alphabet: human-typed keys spread over the shards.
            (1..shards)
                .map(|i| vec![b'a' + u8::try_from(i * 26 / shards).expect("below 26")])
                .collect()
        } else {
            self.splits.iter().map(|s| s.as_bytes().to_vec()).collect()
        };
        if splits.len() + 1 != shards {
            return Err(format!(
                "kv: {} split points for {shards} shards (need {})",
                splits.len(),
                shards - 1
            ));
        }
        concord_kv::ShardMap::new(splits).map_err(|e| format!("kv: field `splits`: {e}"))
    }
}

/// The atomic-commit protocol a cluster runs.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum CommitProtocol {
    /// Two-phase commit with presumed abort: the coordinator's log decides.
    #[default]
    #[serde(rename = "2pc")]
    TwoPhase,
    /// Paxos Commit: 2F + 1 acceptor nodes decide; survives the coordinator and F acceptors.
    #[serde(rename = "paxos-commit")]
    PaxosCommit,
}

impl std::fmt::Display for CommitProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CommitProtocol::TwoPhase => "2pc",
            CommitProtocol::PaxosCommit => "paxos-commit",
        })
    }
}

impl std::str::FromStr for CommitProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "2pc" => Ok(CommitProtocol::TwoPhase),
            "paxos-commit" => Ok(CommitProtocol::PaxosCommit),
            other => Err(format!("unknown protocol `{other}`: use 2pc or paxos-commit")),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Coordinator,
    Shard,
    /// Paxos Commit only: keeps the instances that decide each participant's vote.
    Acceptor,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Coordinator => "coordinator",
            Role::Shard => "shard",
            Role::Acceptor => "acceptor",
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    pub id: u32,
    pub role: Role,
    pub listen: SocketAddr,
    /// Where the node answers `GET /metrics` (Prometheus text) and `GET /health`, over plain
    /// HTTP without tokens: counts only, no data; the coordinator serves its console here too
    /// (`/ui`, whose APIs take the cluster's tokens). None: not served.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub vote_ms: u64,
    pub resend_base_ms: u64,
    pub resend_max_ms: u64,
    pub inquiry_base_ms: u64,
    pub inquiry_max_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            vote_ms: 2_000,
            resend_base_ms: 50,
            resend_max_ms: 2_000,
            inquiry_base_ms: 200,
            inquiry_max_ms: 2_000,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub checkpoint_every: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { segment_bytes: 64 << 20, checkpoint_every: 100_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: shown, message },
            ConfigError::Invalid { message, .. } => ConfigError::Invalid { path: shown, message },
            other => other,
        })?;
        if let (Some(tls), Some(parent)) = (&mut config.tls, path.parent()) {
            if tls.dir.is_relative() {
                tls.dir = parent.join(&tls.dir);
            }
        }
        Ok(config)
    }

    /// Parses and validates; errors say which field is wrong.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        config
            .validate()
            .map_err(|message| ConfigError::Invalid { path: String::new(), message })?;
        Ok(config)
    }

    /// Every field in range and the nodes consistent; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        check_name("cluster", &self.cluster, MAX_NAME_BYTES)?;
        check_range("node (count)", self.nodes.len(), 1..=MAX_NODES)?;
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let at = format!("node[{i}] ({})", node.name);
            let within = |e: String| format!("{at}: {e}");
            check_name("name", &node.name, MAX_NAME_BYTES).map_err(within)?;
            check_range("id", node.id, 0..=MAX_NODE_ID).map_err(within)?;
            check_range("listen (port)", node.listen.port(), 1..=u16::MAX).map_err(within)?;
            if !names.insert(&node.name) {
                return Err(format!("{at}: field `name` repeats an earlier node's"));
            }
            if !ids.insert(node.id) {
                return Err(format!("{at}: field `id` {} repeats an earlier node's", node.id));
            }
            if !addresses.insert(node.listen) {
                return Err(format!(
                    "{at}: field `listen` {} repeats an earlier node's",
                    node.listen
                ));
            }
            if let Some(metrics) = node.metrics {
                check_range("metrics (port)", metrics.port(), 1..=u16::MAX).map_err(within)?;
                if !addresses.insert(metrics) {
                    return Err(format!(
                        "{at}: field `metrics` {metrics} repeats an address already in use"
                    ));
                }
            }
        }
        concord_types::tokens::validate_all(&self.tokens)?;
        let coordinators = self.coordinators().count();
        if coordinators == 0 || coordinators.is_multiple_of(2) || coordinators > 5 {
            return Err(format!(
                "1, 3 or 5 nodes must have role = \"coordinator\" (found {coordinators}): \
                 replicas of the coordinator decide by majority, and an even number could \
                 split with no majority"
            ));
        }
        if !self.nodes.iter().any(|n| n.role == Role::Shard) {
            return Err("at least one node must have role = \"shard\"".into());
        }
        let acceptors = self.acceptors().len();
        match self.protocol {
            CommitProtocol::TwoPhase if acceptors > 0 => {
                return Err(format!(
                    "{acceptors} node(s) have role = \"acceptor\", which only protocol = \"paxos-commit\" uses"
                ));
            }
            CommitProtocol::PaxosCommit if acceptors.is_multiple_of(2) => {
                return Err(format!(
                    "protocol = \"paxos-commit\" needs an odd number (2F + 1) of nodes with role = \"acceptor\" (found {acceptors})"
                ));
            }
            _ => {}
        }
        if self.early_ack && self.protocol != CommitProtocol::TwoPhase {
            return Err(format!(
                "early_ack = true is 2PC's option; protocol = \"{}\" decides with its acceptors",
                self.protocol
            ));
        }
        let t = &self.timeouts;
        let timeouts = |e: String| format!("timeouts: {e}");
        check_range("vote_ms", t.vote_ms, 1..=MAX_TIMEOUT_MS).map_err(timeouts)?;
        check_range("resend_base_ms", t.resend_base_ms, 1..=MAX_TIMEOUT_MS).map_err(timeouts)?;
        check_range("resend_max_ms", t.resend_max_ms, t.resend_base_ms..=MAX_TIMEOUT_MS)
            .map_err(timeouts)?;
        check_range("inquiry_base_ms", t.inquiry_base_ms, 1..=MAX_TIMEOUT_MS).map_err(timeouts)?;
        check_range("inquiry_max_ms", t.inquiry_max_ms, t.inquiry_base_ms..=MAX_TIMEOUT_MS)
            .map_err(timeouts)?;
        let r = &self.replication;
        let replication = |e: String| format!("replication: {e}");
        check_range("heartbeat_ms", r.heartbeat_ms, 10..=10_000).map_err(replication)?;
        // openraft wants the election timeout above the heartbeat, with room for a lost one.
        check_range("election_min_ms", r.election_min_ms, 2 * r.heartbeat_ms..=60_000)
            .map_err(|e| replication(format!("{e} (at least twice heartbeat_ms)")))?;
        check_range("election_max_ms", r.election_max_ms, r.election_min_ms + 1..=60_000)
            .map_err(|e| replication(format!("{e} (above election_min_ms)")))?;
        check_range("sample_ms", self.console.sample_ms, 100..=600_000)
            .map_err(|e| format!("console: {e}"))?;
        let log = |e: String| format!("log: {e}");
        check_range("checkpoint_every", self.log.checkpoint_every, 1..=100_000_000).map_err(log)?;
        check_range("segment_bytes", self.log.segment_bytes, 4_096..=1 << 30).map_err(log)?;
        if let Some(kv) = &self.kv {
            let within = |e: String| format!("kv: {e}");
            for (i, split) in kv.splits.iter().enumerate() {
                let field = format!("splits[{i}] (bytes)");
                check_range(&field, split.len(), 1..=MAX_SPLIT_BYTES).map_err(within)?;
            }
            kv.shard_map(self.shards().count())?;
            check_range("max_offset_ms", kv.max_offset_ms, 1..=60_000).map_err(within)?;
            check_range("gc_ttl_ms", kv.gc_ttl_ms, 1_000..=86_400_000).map_err(within)?;
            // A transaction's snapshot must not be collected while it may still read.
            check_range("txn_lifetime_ms", kv.txn_lifetime_ms, 1_000..=kv.gc_ttl_ms)
                .map_err(|e| within(format!("{e} (at most gc_ttl_ms)")))?;
        }
        Ok(())
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The coordinator: with several (replicas), the first one listed, whose id every replica's
    /// core takes, so shards see one coordinator whichever replica leads.
    pub fn coordinator(&self) -> &NodeConfig {
        self.coordinators().next().expect("validated: a coordinator")
    }

    /// Every node with role = "coordinator": one, or the 3 or 5 replicas of a replicated one.
    pub fn coordinators(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == Role::Coordinator)
    }

    /// Whether the coordinator is replicated (several coordinator nodes).
    pub fn replicated_coordinator(&self) -> bool {
        self.coordinators().nth(1).is_some()
    }

    pub fn shards(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == Role::Shard)
    }

    /// Acceptor node ids in id order (Paxos Commit's first F + 1 take the normal case).
    pub fn acceptors(&self) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.nodes.iter().filter(|n| n.role == Role::Acceptor).map(|n| n.id).collect();
        ids.sort_unstable();
        ids
    }

    /// This cluster on Paxos Commit, with `count` acceptors on the ports after its last node.
    pub fn with_paxos_commit(mut self, count: u32) -> Self {
        let next_id = self.nodes.iter().map(|n| n.id).max().unwrap_or(0) + 1;
        let next_port = self.nodes.iter().map(|n| n.listen.port()).max().unwrap_or(7700) + 1;
        for i in 0..count {
            self.nodes.push(NodeConfig {
                name: format!("acceptor-{}", i + 1),
                id: next_id + i,
                role: Role::Acceptor,
                listen: SocketAddr::from((
                    [127, 0, 0, 1],
                    next_port + u16::try_from(i).expect("a handful of local acceptors"),
                )),
                metrics: None,
            });
        }
        self.protocol = CommitProtocol::PaxosCommit;
        self
    }

    /// A cluster of one coordinator and `shards` shards on loopback ports from `base_port`.
    pub fn local(cluster: &str, shards: u32, base_port: u16) -> Self {
        let mut nodes = vec![NodeConfig {
            name: "coordinator".into(),
            id: 0,
            role: Role::Coordinator,
            listen: SocketAddr::from(([127, 0, 0, 1], base_port)),
            metrics: None,
        }];
        for i in 1..=shards {
            nodes.push(NodeConfig {
                name: format!("shard-{i}"),
                id: i,
                role: Role::Shard,
                listen: SocketAddr::from((
                    [127, 0, 0, 1],
                    base_port + u16::try_from(i).expect("a handful of local shards"),
                )),
                metrics: None,
            });
        }
        ClusterConfig {
            cluster: cluster.into(),
            protocol: CommitProtocol::default(),
            early_ack: false,
            nodes,
            timeouts: Timeouts::default(),
            log: LogConfig::default(),
            kv: None,
            tls: None,
            tokens: Vec::new(),
            console: ConsoleConfig::default(),
            replication: ReplicationConfig::default(),
        }
    }

    /// Shard nodes in id order (shard index `i` of the key-value store is the `i`-th).
    pub fn shards_by_id(&self) -> Vec<&NodeConfig> {
        let mut shards: Vec<&NodeConfig> = self.shards().collect();
        shards.sort_by_key(|n| n.id);
        shards
    }

    /// The file form of this configuration (what `concord dev` writes next to its data).
    pub fn to_toml(&self) -> String {
        let mut s = format!("cluster = \"{}\"\nprotocol = \"{}\"\n", self.cluster, self.protocol);
        if self.early_ack {
            s += "early_ack = true\n";
        }
        for n in &self.nodes {
            s += &format!(
                "\n[[node]]\nname = \"{}\"\nid = {}\nrole = \"{}\"\nlisten = \"{}\"\n",
                n.name, n.id, n.role, n.listen
            );
            if let Some(metrics) = n.metrics {
                s += &format!("metrics = \"{metrics}\"\n");
            }
        }
        let t = &self.timeouts;
        s += &format!(
            "\n[timeouts]\nvote_ms = {}\nresend_base_ms = {}\nresend_max_ms = {}\ninquiry_base_ms = {}\ninquiry_max_ms = {}\n",
            t.vote_ms, t.resend_base_ms, t.resend_max_ms, t.inquiry_base_ms, t.inquiry_max_ms
        );
        s += &format!(
            "\n[log]\nsegment_bytes = {}\ncheckpoint_every = {}\n",
            self.log.segment_bytes, self.log.checkpoint_every
        );
        if self.replication != ReplicationConfig::default() {
            let r = &self.replication;
            s += &format!(
                "\n[replication]\nheartbeat_ms = {}\nelection_min_ms = {}\nelection_max_ms = {}\n",
                r.heartbeat_ms, r.election_min_ms, r.election_max_ms
            );
        }
        if self.console != ConsoleConfig::default() {
            s += &format!("\n[console]\nsample_ms = {}\n", self.console.sample_ms);
        }
        if let Some(kv) = &self.kv {
            let splits: Vec<String> = kv.splits.iter().map(|s| format!("{s:?}")).collect();
            s += &format!(
                "\n[kv]\nsplits = [{}]\nmax_offset_ms = {}\ngc_ttl_ms = {}\ntxn_lifetime_ms = {}\n",
                splits.join(", "),
                kv.max_offset_ms,
                kv.gc_ttl_ms,
                kv.txn_lifetime_ms
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_form_reads_back() {
        let mut config = ClusterConfig::local("dev", 3, 7700);
        assert_eq!(ClusterConfig::parse(&config.to_toml()).unwrap(), config);
        config.kv = Some(KvConfig { splits: vec!["g".into(), "n".into()], ..KvConfig::default() });
        assert_eq!(ClusterConfig::parse(&config.to_toml()).unwrap(), config);
        config.kv = Some(KvConfig { splits: vec!["g".into()], ..KvConfig::default() });
        let error = ClusterConfig::parse(&config.to_toml()).unwrap_err().to_string();
        assert!(error.contains("1 split points for 3 shards"), "{error}");
        let paxos = ClusterConfig::local("dev", 3, 7700).with_paxos_commit(3);
        assert_eq!(ClusterConfig::parse(&paxos.to_toml()).unwrap(), paxos);
        assert_eq!(paxos.acceptors(), vec![4, 5, 6]);
        let early = ClusterConfig { early_ack: true, ..ClusterConfig::local("dev", 3, 7700) };
        assert_eq!(ClusterConfig::parse(&early.to_toml()).unwrap(), early);
        let mut sampled = ClusterConfig::local("dev", 2, 7700);
        sampled.console.sample_ms = 500;
        assert_eq!(ClusterConfig::parse(&sampled.to_toml()).unwrap(), sampled);
        for (bad, why) in [(99, "sample_ms"), (600_001, "sample_ms")] {
            sampled.console.sample_ms = bad;
            let error = ClusterConfig::parse(&sampled.to_toml()).unwrap_err().to_string();
            assert!(error.contains(why) && error.contains("console"), "{error}");
        }
    }

    #[test]
    fn early_acknowledgement_is_two_phase_commits_option() {
        let paxos = ClusterConfig::local("dev", 2, 7700).with_paxos_commit(3);
        let text = paxos.to_toml().replace(
            "protocol = \"paxos-commit\"\n",
            "protocol = \"paxos-commit\"\nearly_ack = true\n",
        );
        let error = ClusterConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("early_ack = true is 2PC's option"), "{error}");
    }

    #[test]
    fn acceptors_belong_to_paxos_commit_and_come_in_odd_numbers() {
        let even = ClusterConfig::local("dev", 2, 7700).with_paxos_commit(2).to_toml();
        let error = ClusterConfig::parse(&even).unwrap_err().to_string();
        assert!(error.contains("odd number (2F + 1)"), "{error}");
        let stray = ClusterConfig::local("dev", 2, 7700)
            .with_paxos_commit(1)
            .to_toml()
            .replace("protocol = \"paxos-commit\"", "protocol = \"2pc\"");
        let error = ClusterConfig::parse(&stray).unwrap_err().to_string();
        assert!(error.contains("only protocol = \"paxos-commit\" uses"), "{error}");
        let typo = stray.replace("protocol = \"2pc\"", "protocol = \"3pc\"");
        let error = ClusterConfig::parse(&typo).unwrap_err().to_string();
        assert!(error.contains("3pc"), "{error}");
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let text = ClusterConfig::local("dev", 1, 7700).to_toml().replace("listen =", "adress =");
        let error = ClusterConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
        let text =
            ClusterConfig::local("dev", 1, 7700).to_toml().replace("vote_ms", "vote_timeout");
        let error = ClusterConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("vote_timeout"), "{error}");
    }

    #[test]
    fn every_value_is_range_checked_at_load_naming_its_field() {
        let good = ClusterConfig::local("dev", 2, 7700).to_toml();
        let cases = [
            ("vote_ms = 2000", "vote_ms = 18446744073709551615", "`vote_ms`"),
            ("vote_ms = 2000", "vote_ms = 3600001", "`vote_ms`"),
            ("vote_ms = 2000", "vote_ms = 0", "`vote_ms`"),
            ("resend_max_ms = 2000", "resend_max_ms = 10", "`resend_max_ms`"),
            ("inquiry_max_ms = 2000", "inquiry_max_ms = 199", "`inquiry_max_ms`"),
            ("checkpoint_every = 100000", "checkpoint_every = 0", "`checkpoint_every`"),
            ("segment_bytes = 67108864", "segment_bytes = 4095", "`segment_bytes`"),
            ("cluster = \"dev\"", "cluster = \"\"", "`cluster`"),
            ("name = \"shard-1\"", "name = \"shard 1\"", "`name`"),
            ("listen = \"127.0.0.1:7701\"", "listen = \"127.0.0.1:0\"", "`listen (port)`"),
            ("id = 2", "id = 70000", "`id`"),
        ];
        for (from, to, named) in cases {
            assert!(good.contains(from), "{from}");
            let error = ClusterConfig::parse(&good.replace(from, to)).unwrap_err().to_string();
            assert!(error.contains(named), "{to}: {error}");
        }
        let long =
            good.replace("cluster = \"dev\"", &format!("cluster = \"{}\"", "c".repeat(2_000)));
        let error = ClusterConfig::parse(&long).unwrap_err().to_string();
        assert!(error.contains("`cluster`") && error.contains("1 to 64"), "{error}");
        let at_the_limit =
            good.replace("cluster = \"dev\"", &format!("cluster = \"{}\"", "c".repeat(64)));
        assert!(ClusterConfig::parse(&at_the_limit).is_ok());
        let mut kv = ClusterConfig::local("dev", 2, 7700);
        kv.kv = Some(KvConfig { max_offset_ms: 60_001, ..KvConfig::default() });
        let error = ClusterConfig::parse(&kv.to_toml()).unwrap_err().to_string();
        assert!(error.contains("kv: field `max_offset_ms`"), "{error}");
        kv.kv = Some(KvConfig { splits: vec!["m".repeat(4_097)], ..KvConfig::default() });
        let error = ClusterConfig::parse(&kv.to_toml()).unwrap_err().to_string();
        assert!(error.contains("splits[0]"), "{error}");
        // A transaction may live as long as its snapshot's versions are kept, no longer.
        let lifetime =
            |ms| KvConfig { gc_ttl_ms: 60_000, txn_lifetime_ms: ms, ..KvConfig::default() };
        kv.kv = Some(lifetime(60_000));
        assert!(ClusterConfig::parse(&kv.to_toml()).is_ok());
        kv.kv = Some(lifetime(60_001));
        let error = ClusterConfig::parse(&kv.to_toml()).unwrap_err().to_string();
        assert!(error.contains("`txn_lifetime_ms`") && error.contains("gc_ttl_ms"), "{error}");
        kv.kv = Some(lifetime(999));
        let error = ClusterConfig::parse(&kv.to_toml()).unwrap_err().to_string();
        assert!(error.contains("`txn_lifetime_ms`"), "{error}");
    }

    #[test]
    fn inconsistent_clusters_are_refused_with_the_field() {
        let text = ClusterConfig::local("dev", 2, 7700).to_toml().replace("id = 2", "id = 1");
        let error = ClusterConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("field `id` 1 repeats"), "{error}");
        let text = ClusterConfig::local("dev", 1, 7700)
            .to_toml()
            .replace("\"coordinator\"\nlisten", "\"shard\"\nlisten");
        let error = ClusterConfig::parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("1, 3 or 5 nodes must have role = \"coordinator\" (found 0)"),
            "{error}"
        );
    }

    fn with_coordinators(mut config: ClusterConfig, extra: u32) -> ClusterConfig {
        for i in 0..extra {
            config.nodes.push(NodeConfig {
                name: format!("coordinator-{i}"),
                id: 50 + i,
                role: Role::Coordinator,
                listen: SocketAddr::from(([127, 0, 0, 1], 7750 + u16::try_from(i).unwrap())),
                metrics: None,
            });
        }
        config
    }

    #[test]
    fn replication_timing_round_trips_and_is_checked() {
        let mut config = ClusterConfig::local("dev", 2, 7700);
        config.replication =
            ReplicationConfig { heartbeat_ms: 100, election_min_ms: 500, election_max_ms: 1_000 };
        let again = ClusterConfig::parse(&config.to_toml()).unwrap();
        assert_eq!(again.replication, config.replication);
        for (bad, why) in [
            (ReplicationConfig { heartbeat_ms: 5, ..config.replication }, "heartbeat_ms"),
            (
                ReplicationConfig { election_min_ms: 150, ..config.replication },
                "twice heartbeat_ms",
            ),
            (
                ReplicationConfig { election_max_ms: 500, ..config.replication },
                "above election_min_ms",
            ),
        ] {
            config.replication = bad;
            let error = config.validate().unwrap_err();
            assert!(error.contains(why), "{error}");
        }
    }

    /// Replicas decide by majority: an even count could split with none. What a replicated
    /// coordinator does not run yet is refused by name, not started half-working.
    #[test]
    fn a_replicated_coordinator_has_an_odd_count_and_runs_every_protocol_model_and_tls() {
        let base = ClusterConfig::local("dev", 2, 7700);
        assert!(with_coordinators(base.clone(), 2).validate().is_ok());
        assert!(with_coordinators(base.clone(), 4).validate().is_ok());
        for extra in [1, 3, 5] {
            let error = with_coordinators(base.clone(), extra).validate().unwrap_err();
            assert!(error.contains(&format!("(found {})", extra + 1)), "{error}");
        }
        let three = with_coordinators(base.clone(), 2);
        assert_eq!(three.coordinator().name, "coordinator", "the first listed speaks for all");
        assert!(three.replicated_coordinator() && !base.replicated_coordinator());
        let paxos = with_coordinators(base.clone().with_paxos_commit(3), 2);
        assert!(paxos.validate().is_ok(), "replicas run Paxos Commit's coordinator");
        let mut tls = with_coordinators(base.clone(), 2);
        tls.tls = Some(TlsConfig { dir: "certs".into() });
        assert!(tls.validate().is_ok(), "replicas run under [tls]");
        let mut kv = with_coordinators(base, 2);
        kv.kv = Some(KvConfig::default());
        assert!(kv.validate().is_ok(), "replicas run the key-value store");
    }
}
