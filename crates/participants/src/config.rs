//! One `[[database]]` of the database coordinator's `databases.toml`: what an adapter needs
//! to reach it (the file as a whole is `concord_db_coordinator::config`).

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Postgres,
    Mariadb,
    /// Writes staged and prepared by Lua scripts (`crate::redis`); needs AOF with
    /// `appendfsync always` and `maxmemory-policy noeviction` to vote YES.
    Redis,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub name: String,
    pub kind: Kind,
    /// PostgreSQL: a libpq-style string (`host=… user=… dbname=…`) or URL;
    /// MariaDB/MySQL: `mysql://user:password@host:port/database`;
    /// Redis: `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Whether the API may run schema statements (`CREATE`, `ALTER`, `DROP`, …) here.
    #[serde(default)]
    pub schema_changes: bool,
}

/// Most databases one coordinator drives (each branch index must fit a gid).
pub const MAX_DATABASES: usize = 64;
/// Database names: 1 to this many letters, digits, `-` or `_`.
pub const MAX_DATABASE_NAME: usize = 64;
/// A connection string's length at most.
pub const MAX_URL_BYTES: usize = 4_096;
