//! What client commands trust: the cluster's CA (`--ca`, or `CONCORD_CA`), so they talk TLS to
//! the nodes and know they reached one. Set once at start.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use concord_client::KvClient;
use concord_node::tls::ClientCredentials;
use tonic::transport::Channel;

static CREDENTIALS: OnceLock<Option<ClientCredentials>> = OnceLock::new();

/// Loads the credentials named on the command line or in the environment.
pub fn init(ca: Option<PathBuf>) -> Result<(), String> {
    let credentials = match ca {
        Some(ca) => Some(ClientCredentials::load(&ca)?),
        None => None,
    };
    let _ = CREDENTIALS.set(credentials);
    Ok(())
}

fn get() -> Option<&'static ClientCredentials> {
    CREDENTIALS.get().and_then(Option::as_ref)
}

/// A gRPC channel to a node, over TLS when a CA was given.
pub fn channel(address: SocketAddr) -> Channel {
    match get() {
        Some(credentials) => concord_node::client_channel(address, credentials),
        None => concord_node::channel(address),
    }
}

/// A key-value client of the gateway at `address`, over TLS when a CA was given.
pub fn kv_client(gateway: SocketAddr) -> KvClient {
    match get() {
        Some(credentials) => KvClient::connect_with(gateway, credentials),
        None => KvClient::connect(gateway),
    }
}
