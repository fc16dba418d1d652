//! Who may call what: bearer tokens with roles for clients, certificates for nodes
//! (docs/security.md).
//!
//! A cluster configures tokens by the SHA-256 of their text (`[[token]]`; `concord certs
//! token` makes one), never the token itself. A request presents its token as gRPC metadata
//! (`authorization: Bearer <token>`) or, on a call link, once when the link opens. A node
//! proves who it is by its certificate under `[tls]` and may call everything a node calls.
//!
//! Authentication is required once the cluster has `[tls]` or any token; without either (a
//! cluster on loopback, `concord dev`) every caller is [`Caller::Anyone`] and may do anything,
//! as before there were roles.
//!
//! | right | client | monitor | operator | node |
//! |---|---|---|---|---|
//! | transact: submit, reserve, the key-value methods | yes | | | yes |
//! | read: status by id, topology, health | yes | yes | yes | yes |
//! | inspect: list transactions, read a shard | | yes | yes | yes |
//! | operate: move a replicated coordinator's leadership | | | yes | yes |

use std::sync::Arc;

use concord_types::NodeId;
use tonic::{Request, Status};

use crate::config::ClusterConfig;
use crate::tls::ConnInfo;

use concord_types::tokens::TokenTable;
pub use concord_types::tokens::{token_sha256, ClientRole, TokenConfig, MAX_TOKEN_BYTES};

/// A new token: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "no randomness from the operating system".to_string())?;
    Ok(format!("concord_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node of the cluster, by its certificate.
    Node(NodeId),
    /// A client, by its token.
    Client { name: Arc<str>, role: ClientRole },
    /// Authentication is off (no `[tls]`, no tokens): anyone may do anything.
    Anyone,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Node(id) => write!(f, "node {id}"),
            Caller::Client { name, role } => write!(f, "{name} ({role})"),
            Caller::Anyone => f.write_str("an unauthenticated caller"),
        }
    }
}

/// What a request needs (the table in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Transact,
    Read,
    Inspect,
    Operate,
}

impl Caller {
    pub fn may(&self, right: Right) -> bool {
        match self {
            Caller::Anyone | Caller::Node(_) => true,
            Caller::Client { role: ClientRole::Client, .. } => {
                matches!(right, Right::Transact | Right::Read)
            }
            Caller::Client { role: ClientRole::Operator, .. } => {
                matches!(right, Right::Read | Right::Inspect | Right::Operate)
            }
            Caller::Client { role: ClientRole::Monitor, .. } => {
                matches!(right, Right::Read | Right::Inspect)
            }
        }
    }
}

/// A caller and the connection it came on: key-value sessions belong to both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub caller: Caller,
    /// The connection's number on this node (`0`: not known).
    pub conn: u64,
}

/// A node's table of tokens and whether it demands them.
#[derive(Debug, Default)]
pub struct Auth {
    required: bool,
    tokens: TokenTable,
    /// Refusals so far: the first is logged, then every thousandth, so a flood of refused
    /// requests does not flood the log.
    refusals: std::sync::atomic::AtomicU64,
}

impl Auth {
    pub fn new(config: &ClusterConfig) -> Self {
        Auth {
            required: config.tls.is_some() || !config.tokens.is_empty(),
            tokens: TokenTable::new(&config.tokens),
            refusals: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// Who presents `token` over a connection whose certificate named `node`.
    pub fn identify(&self, token: Option<&[u8]>, node: Option<NodeId>) -> Result<Caller, String> {
        if let Some(node) = node {
            return Ok(Caller::Node(node));
        }
        let token = token.unwrap_or_default();
        if token.is_empty() && !self.required {
            return Ok(Caller::Anyone);
        }
        let (name, role) = self.tokens.find(token)?;
        Ok(Caller::Client { name, role })
    }

    /// Writes a refusal to stderr: the first, then every thousandth, with the count.
    fn log_refusal(&self, line: &str) {
        let n = self.refusals.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if n % 1_000 == 1 {
            eprintln!("{line} ({n} refused so far)");
        }
    }

    /// The caller of a gRPC request (or of a call, whose link put its identity in the
    /// extensions when it opened), if it may do `right`; else PERMISSION_DENIED or
    /// UNAUTHENTICATED, and a line on stderr naming who tried what.
    pub fn check<T>(
        &self,
        request: &Request<T>,
        right: Right,
        what: &str,
    ) -> Result<Identity, Status> {
        let identity = match request.extensions().get::<Identity>() {
            Some(identity) => identity.clone(),
            None => {
                let info = request.extensions().get::<ConnInfo>();
                let token = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim().as_bytes());
                let caller = self.identify(token, info.and_then(|i| i.node)).map_err(|why| {
                    let from = info
                        .and_then(|i| i.remote)
                        .map_or_else(String::new, |a| format!(" from {a}"));
                    self.log_refusal(&format!("refused {what}{from}: {why}"));
                    Status::unauthenticated(why)
                })?;
                Identity { caller, conn: info.map_or(0, |i| i.conn) }
            }
        };
        if !identity.caller.may(right) {
            self.log_refusal(&format!(
                "refused {what} to {}: not its role's right",
                identity.caller
            ));
            return Err(Status::permission_denied(format!(
                "{} may not {what} (docs/security.md lists each role's rights)",
                identity.caller
            )));
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let mut config = ClusterConfig::local("c", 1, 7700);
        for (name, role) in [("app", ClientRole::Client), ("ops", ClientRole::Operator)] {
            config.tokens.push(TokenConfig {
                name: name.into(),
                role,
                sha256: token_sha256(&format!("secret-{name}")),
            });
        }
        Auth::new(&config)
    }

    #[test]
    fn a_token_names_its_holder_and_role_and_nothing_else_passes() {
        let auth = auth();
        assert!(auth.required());
        let app = auth.identify(Some(b"secret-app"), None).unwrap();
        assert_eq!(app, Caller::Client { name: "app".into(), role: ClientRole::Client });
        assert!(app.may(Right::Transact) && app.may(Right::Read) && !app.may(Right::Inspect));
        let ops = auth.identify(Some(b"secret-ops"), None).unwrap();
        assert!(!ops.may(Right::Transact) && ops.may(Right::Inspect));
        assert!(auth.identify(Some(b"secret-nobody"), None).is_err());
        assert!(auth.identify(None, None).is_err());
        assert!(auth.identify(Some(&[b'x'; 300]), None).is_err());
        assert_eq!(auth.identify(None, Some(NodeId(3))), Ok(Caller::Node(NodeId(3))));
        // Without [tls] or tokens, anyone.
        let open = Auth::new(&ClusterConfig::local("c", 1, 7700));
        assert_eq!(open.identify(None, None), Ok(Caller::Anyone));
    }

    #[test]
    fn new_tokens_differ_and_hash_to_64_hex_digits() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("concord_") && a.len() == 8 + 64);
        assert_eq!(token_sha256(&a).len(), 64);
    }
}
