//! Bearer tokens with roles, as every Concord service configures them (`[[token]]`, by the
//! SHA-256 of the token's text, never the text) and looks them up: the nodes
//! (`concord_node::auth`), the database coordinator and the saga orchestrator
//! (docs/security.md).

use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Longest token a caller may present.
pub const MAX_TOKEN_BYTES: usize = 256;

/// A client's role, as a token grants it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum ClientRole {
    /// Runs transactions (or sagas) and asks about them.
    Client,
    /// Resolves and recovers by hand; sees everything a monitor sees.
    Operator,
    /// Reads: listings, contents, health, metrics.
    Monitor,
}

impl std::fmt::Display for ClientRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientRole::Client => "client",
            ClientRole::Operator => "operator",
            ClientRole::Monitor => "monitor",
        })
    }
}

/// `[[token]]`: a named bearer token, stored as its SHA-256.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    pub role: ClientRole,
    /// Lowercase hex of the SHA-256 of the token's text.
    pub sha256: String,
}

impl TokenConfig {
    /// The entry's fields in range; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        crate::fields::check_name("name", &self.name, 64)?;
        let hex = self.sha256.len() == 64
            && self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(
                "field `sha256` must be 64 lowercase hex digits (`concord certs token` prints it)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Validates a configuration's tokens: each in range, names unique.
pub fn validate_all(tokens: &[TokenConfig]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let at = format!("token[{i}] ({})", token.name);
        token.validate().map_err(|e| format!("{at}: {e}"))?;
        if !names.insert(&token.name) {
            return Err(format!("{at}: field `name` repeats an earlier token's"));
        }
    }
    Ok(())
}

/// What `[[token]]` stores for `token`.
pub fn token_sha256(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A service's tokens, ready to look up.
#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    entries: Vec<(Arc<str>, ClientRole, [u8; 32])>,
}

impl TokenTable {
    /// From validated entries.
    pub fn new(tokens: &[TokenConfig]) -> Self {
        let entries = tokens
            .iter()
            .map(|t| {
                let mut digest = [0u8; 32];
                for (i, byte) in digest.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(t.sha256.get(2 * i..2 * i + 2).unwrap_or("00"), 16)
                        .unwrap_or(0);
                }
                (Arc::from(t.name.as_str()), t.role, digest)
            })
            .collect();
        TokenTable { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Who holds `token`: its name and role.
    pub fn find(&self, token: &[u8]) -> Result<(Arc<str>, ClientRole), String> {
        if token.is_empty() {
            return Err("no credentials: present a token (docs/security.md)".into());
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!("a token longer than {MAX_TOKEN_BYTES} bytes"));
        }
        let digest = Sha256::digest(token);
        // Every entry is compared, each byte, so the time taken says nothing of which matched
        // or how nearly (of digests, besides: nothing about the token itself).
        let mut found = None;
        for (name, role, expected) in &self.entries {
            let differ = digest.iter().zip(expected).fold(0u8, |d, (a, b)| d | (a ^ b));
            if differ == 0 {
                found = Some((Arc::clone(name), *role));
            }
        }
        found.ok_or_else(|| "an unknown token".to_string())
    }

    /// Who presents an HTTP `Authorization` header (`Bearer <token>`).
    pub fn find_bearer(&self, header: Option<&str>) -> Result<(Arc<str>, ClientRole), String> {
        let token = header.map(|h| h.strip_prefix("Bearer ").unwrap_or(h).trim()).unwrap_or("");
        self.find(token.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_finds_its_tokens_and_nothing_else() {
        let entries = [
            TokenConfig {
                name: "app".into(),
                role: ClientRole::Client,
                sha256: token_sha256("secret-app"),
            },
            TokenConfig {
                name: "ops".into(),
                role: ClientRole::Operator,
                sha256: token_sha256("secret-ops"),
            },
        ];
        validate_all(&entries).unwrap();
        let table = TokenTable::new(&entries);
        assert_eq!(table.find(b"secret-app").unwrap().1, ClientRole::Client);
        assert_eq!(&*table.find_bearer(Some("Bearer secret-ops")).unwrap().0, "ops");
        assert!(table.find(b"secret-other").is_err());
        assert!(table.find(b"").is_err());
        assert!(table.find_bearer(None).is_err());
        assert!(table.find(&[b'x'; 300]).is_err());
        // The SHA-256 of "abc", as every implementation has it.
        assert_eq!(
            token_sha256("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let twice = [entries[0].clone(), entries[0].clone()];
        assert!(validate_all(&twice).unwrap_err().contains("repeats"));
        let bad = TokenConfig { sha256: "XYZ".into(), ..entries[0].clone() };
        assert!(bad.validate().is_err());
    }
}
