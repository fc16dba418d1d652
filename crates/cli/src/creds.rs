//! What client commands present: the cluster's CA (`--ca`, or `CONCORD_CA`), so they talk TLS
//! to the nodes and know they reached one, and a bearer token (`--token-file`, or
//! `CONCORD_TOKEN_FILE`). Set once at start.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

use concord_client::KvClient;
use concord_node::tls::ClientCredentials;
use concord_node::ClientChannel;

static CREDENTIALS: OnceLock<ClientCredentials> = OnceLock::new();

/// Loads the credentials named on the command line or in the environment.
pub fn init(ca: Option<&Path>, token_file: Option<&Path>) -> Result<(), String> {
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            Some(text.trim().to_string())
        }
        None => None,
    };
    let credentials = ClientCredentials::new(ca, token)?;
    let _ = CREDENTIALS.set(credentials);
    Ok(())
}

/// The token given (`--token-file`), for the HTTP services.
pub fn token() -> Option<String> {
    get().token_text()
}

fn get() -> ClientCredentials {
    CREDENTIALS.get().cloned().unwrap_or_default()
}

/// A gRPC channel to a node with the credentials given.
pub fn channel(address: SocketAddr) -> ClientChannel {
    concord_node::client_channel(address, &get())
}

/// A key-value client of the gateway at `address` with the credentials given.
pub fn kv_client(gateway: SocketAddr) -> KvClient {
    KvClient::connect_with(gateway, &get())
}

/// A key-value client for a replicated coordinator's gateways, with the user's credentials.
pub fn kv_client_replicas(gateways: &[SocketAddr]) -> KvClient {
    KvClient::connect_replicas_with(gateways, &get())
}
