//! Branch ids ("gids"): the name a prepared branch carries inside a database.
//!
//! `concord:CLUSTER:EPOCH.SEQUENCE@nNODE:BRANCH`, e.g. `concord:prod:3.17@n9:1`. The transaction
//! id inside carries the coordinator's node id and epoch, so a coordinator listing
//! `pg_prepared_xacts` or `XA RECOVER` recognises its own branches, tells a branch of an earlier
//! run of itself (older epoch: that run is dead, so an undecided branch is presumed aborted) from
//! one of the running epoch, and never touches another coordinator's or a non-Concord gid.
//!
//! The gid is spliced into SQL as a quoted literal (`PREPARE TRANSACTION` and the XA statements
//! take no placeholders), so its characters are restricted to ones that need no quoting.

use std::fmt;

use concord_types::TxnId;

/// Every Concord gid starts with this.
pub const PREFIX: &str = "concord";
/// MariaDB/MySQL limit an XA gtrid to 64 bytes (PostgreSQL allows 200): the tighter one binds.
pub const MAX_GID_BYTES: usize = 64;
/// Cluster names are at most this long, so that a gid always fits in [`MAX_GID_BYTES`].
pub const MAX_CLUSTER_NAME: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gid {
    pub cluster: String,
    pub txn: TxnId,
    /// The branch's index within its transaction.
    pub branch: u16,
}

impl Gid {
    pub fn new(cluster: &str, txn: TxnId, branch: u16) -> Gid {
        assert!(valid_cluster_name(cluster), "cluster names are validated with the config");
        let gid = Gid { cluster: cluster.to_string(), txn, branch };
        assert!(gid.to_string().len() <= MAX_GID_BYTES, "gid {gid} exceeds {MAX_GID_BYTES} bytes");
        gid
    }

    /// `None` for anything that is not a Concord gid (another application's prepared
    /// transactions live in the same listing).
    pub fn parse(text: &str) -> Option<Gid> {
        let rest = text.strip_prefix(PREFIX)?.strip_prefix(':')?;
        let (cluster, rest) = rest.split_once(':')?;
        let (txn, branch) = rest.rsplit_once(':')?;
        if !valid_cluster_name(cluster) {
            return None;
        }
        let gid = Gid {
            cluster: cluster.to_string(),
            txn: txn.parse().ok()?,
            branch: branch.parse().ok()?,
        };
        // Only the canonical spelling is ours: "007" or "+1" would name a different string.
        (gid.to_string() == text).then_some(gid)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}:{}:{}:{}", self.cluster, self.txn, self.branch)
    }
}

/// Letters, digits, `-` and `_`, 1 to [`MAX_CLUSTER_NAME`] characters.
pub fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLUSTER_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use concord_types::NodeId;

    use super::*;

    fn txn(epoch: u32, sequence: u32) -> TxnId {
        TxnId { coordinator: NodeId(9), epoch, sequence }
    }

    #[test]
    fn round_trips_and_fits_the_tightest_database_limit() {
        let gid = Gid::new("prod-eu", txn(3, 17), 1);
        assert_eq!(gid.to_string(), "concord:prod-eu:3.17@n9:1");
        assert_eq!(Gid::parse(&gid.to_string()), Some(gid));
        let widest = Gid {
            cluster: "x".repeat(MAX_CLUSTER_NAME),
            txn: TxnId { coordinator: NodeId(u32::MAX), epoch: u32::MAX, sequence: u32::MAX },
            branch: u16::MAX,
        };
        assert!(widest.to_string().len() <= MAX_GID_BYTES, "{widest}");
    }

    #[test]
    fn foreign_and_malformed_gids_are_not_ours() {
        for text in [
            "",
            "pgbench-42",
            "concord:prod",
            "concord:prod:3.17@n9",
            "concord:prod:3.17@n9:x",
            "concord:prod:3.17:1",
            "concord:pr od:3.17@n9:1",
            "concord:prod:3.17@n9:01",
            "concord:prod:3.17@n9:+1",
            "concord:prod:3.17@n9:1'; DROP TABLE t; --",
            "xconcord:prod:3.17@n9:1",
        ] {
            assert_eq!(Gid::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn only_quote_free_cluster_names_are_accepted() {
        assert!(valid_cluster_name("dev_1-a"));
        for bad in ["", "a'b", "a:b", "a b", &"x".repeat(MAX_CLUSTER_NAME + 1)] {
            assert!(!valid_cluster_name(bad), "{bad:?}");
        }
    }
}
