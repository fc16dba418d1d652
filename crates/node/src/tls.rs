//! TLS on a node's one port: every link (peer, call, gRPC) authenticated and encrypted with
//! rustls (TLS 1.3 only) against the cluster's own certificate authority (docs/security.md).
//!
//! * **Who a node is.** A node's certificate names it as `node-<id>.<cluster label>.concord`
//!   (a DNS subject-alternative name), where the label is a digest of the cluster's name, and
//!   as `node.concord`, the name clients check. A node dialling a peer checks that the peer's
//!   certificate names the node it meant to reach; a node accepting a peer link checks that the
//!   dialler's certificate names the node its hello claims to be. A certificate of another
//!   cluster fails both: another CA (`concord certs init` makes one per cluster), or another
//!   label even under a shared CA.
//! * **One port, told apart by ALPN.** gRPC clients offer `h2`; Concord's links offer
//!   `concord`. Without TLS the first byte tells them apart (`crate::link`).
//! * **Clients** need no certificate: they check that they reached a node of the cluster
//!   (`node.concord` under the cluster's CA) and present a bearer token (`crate::auth`).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use concord_types::NodeId;

/// ALPN of Concord's own links (peer and call); gRPC's is `h2`.
pub(crate) const ALPN_LINK: &[u8] = b"concord";
const ALPN_H2: &[u8] = b"h2";
/// The name every node's certificate carries, which clients check.
pub const ANY_NODE: &str = "node.concord";

/// The cluster's part of every node name: a digest of the cluster's name (names may hold
/// characters a DNS label may not, and two clusters must never share a label).
pub fn cluster_label(cluster: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cluster.as_bytes());
    let hex: String = digest.as_ref()[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("c{hex}")
}

/// The name a node's certificate must carry.
pub fn node_name(cluster: &str, node: NodeId) -> String {
    format!("node-{}.{}.concord", node.0, cluster_label(cluster))
}

fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).expect("node names are valid DNS names")
}

/// The files of a cluster's certificates: `ca.pem` (the trusted CA certificates: more than one
/// while a CA is being rotated), `ca.key` (the CA's key: needed only to issue certificates;
/// keep it off the nodes), and `<node name>.pem` / `<node name>.key` for each node.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub dir: PathBuf,
}

impl CertFiles {
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.pem"))
    }
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.key"))
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{shown}: {e}"))? {
        let cert = cert.map_err(|e| format!("{shown}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{shown}: not a CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: holds no certificate"));
    }
    Ok(roots)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{shown}: holds no certificate"));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A node's TLS: what it serves with and what it dials with.
#[derive(Debug, Clone)]
pub struct NodeTls {
    cluster: String,
    server: Arc<ServerConfig>,
    /// For Concord's links (ALPN `concord`), presenting the node's certificate.
    links: Arc<ClientConfig>,
    /// The same, for gRPC (ALPN `h2`): tonic's TLS takes PEM.
    pem: Arc<PemIdentity>,
}

#[derive(Debug)]
struct PemIdentity {
    ca: String,
    cert: String,
    key: String,
}

impl NodeTls {
    /// Loads node `node`'s certificate and key and the cluster's CA; refuses a certificate that
    /// does not name this node of this cluster, so a misplaced file fails at start, not as
    /// every peer refusing the node later.
    pub fn load(files: &CertFiles, cluster: &str, node: &str, id: NodeId) -> Result<Self, String> {
        let roots = Arc::new(read_roots(&files.ca())?);
        let chain = read_chain(&files.node_cert(node))?;
        let key = read_key(&files.node_key(node))?;
        if !names(&chain[0], &node_name(cluster, id)) {
            return Err(format!(
                "{}: does not name node {node} (id {}) of cluster `{cluster}` ({}): issued for another node or cluster?",
                files.node_cert(node).display(),
                id.0,
                node_name(cluster, id)
            ));
        }
        let tls13 = &[&rustls::version::TLS13];
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                // Clients present no certificate; a node must, and the links check its name.
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", files.ca().display()))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(tls13)
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| format!("{}: {e}", files.node_key(node).display()))?;
        server.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_LINK.to_vec()];
        let mut links = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(tls13)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", files.node_key(node).display()))?;
        links.alpn_protocols = vec![ALPN_LINK.to_vec()];
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let pem = PemIdentity {
            ca: read(files.ca())?,
            cert: read(files.node_cert(node))?,
            key: read(files.node_key(node))?,
        };
        Ok(NodeTls {
            cluster: cluster.to_string(),
            server: Arc::new(server),
            links: Arc::new(links),
            pem: Arc::new(pem),
        })
    }

    /// Whether a verified peer certificate names node `id` of this cluster.
    pub(crate) fn is_node(&self, cert: &CertificateDer<'_>, id: NodeId) -> bool {
        names(cert, &node_name(&self.cluster, id))
    }

    /// Which configured node a verified peer certificate names, if any.
    pub(crate) fn node_of(
        &self,
        cert: &CertificateDer<'_>,
        config: &crate::config::ClusterConfig,
    ) -> Option<NodeId> {
        config.nodes.iter().map(|n| NodeId(n.id)).find(|&id| self.is_node(cert, id))
    }

    /// How this node dials node `to` on a Concord link: the peer must prove it is `to`.
    pub(crate) fn dial(&self, to: NodeId) -> Dial {
        let name = server_name(&node_name(&self.cluster, to));
        Dial { tls: Some((Arc::clone(&self.links), name)), token: None }
    }

    /// How this node calls node `to` over gRPC, presenting its own certificate.
    pub(crate) fn grpc(&self, to: NodeId) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.pem.ca))
            .identity(tonic::transport::Identity::from_pem(&self.pem.cert, &self.pem.key))
            .domain_name(node_name(&self.cluster, to))
    }
}

/// Whether `cert` (already verified against the CA) carries `name`.
fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else { return false };
    cert.verify_is_valid_for_subject_name(&server_name(name)).is_ok()
}

/// How a Concord link is dialled: over TLS (a configuration and the name the server must
/// prove) or plain TCP, and the token a client presents when the link opens.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    token: Option<Arc<str>>,
}

impl Dial {
    /// Completes the TLS handshake on a connected `tcp` (nothing, for plain TCP).
    pub(crate) async fn connect(&self, tcp: TcpStream) -> io::Result<Conn> {
        let Some((config, name)) = &self.tls else { return Ok(Conn::Plain(tcp)) };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
        let tls = connector.connect(name.clone(), tcp).await?;
        Ok(Conn::Tls(Box::new(tls.into())))
    }

    /// The token presented when a call link opens (empty: none).
    pub(crate) fn token(&self) -> &[u8] {
        self.token.as_deref().map_or(&[], str::as_bytes)
    }
}

/// A client's credentials: the cluster's CA (then it talks TLS, and knows it reached a node
/// of the cluster) and its bearer token, either or both.
#[derive(Debug, Clone, Default)]
pub struct ClientCredentials {
    tls: Option<(Arc<ClientConfig>, Arc<str>)>,
    token: Option<Arc<str>>,
}

impl ClientCredentials {
    /// Trusting the CA in file `ca` (TLS), presenting `token`.
    pub fn new(ca: Option<&Path>, token: Option<String>) -> Result<Self, String> {
        let tls = match ca {
            Some(ca) => Some(Self::trust(ca)?),
            None => None,
        };
        let max = crate::auth::MAX_TOKEN_BYTES;
        if token.as_ref().is_some_and(|t| t.is_empty() || t.len() > max) {
            return Err(format!("a token is 1 to {max} bytes (`concord certs token` makes one)"));
        }
        Ok(ClientCredentials { tls, token: token.map(Into::into) })
    }

    /// Trusting the CA in file `ca`, with no token.
    pub fn load(ca: &Path) -> Result<Self, String> {
        Self::new(Some(ca), None)
    }

    fn trust(ca: &Path) -> Result<(Arc<ClientConfig>, Arc<str>), String> {
        let roots = read_roots(ca)?;
        let mut links = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        links.alpn_protocols = vec![ALPN_LINK.to_vec()];
        let ca_pem = std::fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        Ok((Arc::new(links), ca_pem.into()))
    }

    pub(crate) fn dial(&self) -> Dial {
        Dial {
            tls: self.tls.as_ref().map(|(links, _)| (Arc::clone(links), server_name(ANY_NODE))),
            token: self.token.clone(),
        }
    }

    pub(crate) fn grpc(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.as_ref().map(|(_, ca_pem)| {
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&**ca_pem))
                .domain_name(ANY_NODE)
        })
    }

    pub(crate) fn token(&self) -> Option<Arc<str>> {
        self.token.clone()
    }

    /// The token's text, for HTTP services (the database coordinator, the orchestrator).
    pub fn token_text(&self) -> Option<String> {
        self.token.as_deref().map(ToString::to_string)
    }
}

/// Opens a call link on a connected `tcp` as a client holding `credentials` (the handshake,
/// then the opener with the token), for tools that write the link's frames themselves
/// (`concord bench flood`). Not an API.
#[doc(hidden)]
pub async fn dial_call_link(credentials: &ClientCredentials, tcp: TcpStream) -> io::Result<Conn> {
    use tokio::io::AsyncWriteExt as _;
    let dial = credentials.dial();
    let mut conn = dial.connect(tcp).await?;
    conn.write_all(&crate::call_link::opener(dial.token())).await?;
    Ok(conn)
}

/// How a node accepts: the handshake, then what the dialler proved.
pub(crate) struct Accepted {
    pub conn: Conn,
    /// The dialler's certificate, verified against the CA (a node's; clients present none).
    pub cert: Option<CertificateDer<'static>>,
    /// It asked for gRPC.
    pub grpc: bool,
}

impl NodeTls {
    pub(crate) async fn accept(&self, tcp: TcpStream) -> io::Result<Accepted> {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
        let tls = acceptor.accept(tcp).await?;
        let (_, session) = tls.get_ref();
        let cert = session.peer_certificates().and_then(|c| c.first()).cloned();
        let grpc = session.alpn_protocol() == Some(ALPN_H2);
        Ok(Accepted { conn: Conn::Tls(Box::new(tls.into())), cert, grpc })
    }
}

/// Replica links (the replicated log's, `concord_replication::tcp`) under mutual TLS: a
/// replica dialling another checks that the peer's certificate names the replica it meant
/// and presents its own; a replica accepting a link lets in only a dialler whose certificate
/// names one of the replicas. Any other certificate of the cluster (a shard's, a client's
/// none) is turned away before a byte reaches the codec: a forged AppendEntries would
/// rewrite decisions.
#[derive(Debug, Clone)]
pub struct ReplicaLinks {
    tls: Arc<NodeTls>,
    replicas: Arc<[NodeId]>,
}

impl ReplicaLinks {
    pub fn new(tls: Arc<NodeTls>, replicas: impl IntoIterator<Item = NodeId>) -> Self {
        ReplicaLinks { tls, replicas: replicas.into_iter().collect() }
    }
}

impl concord_replication::Connect for ReplicaLinks {
    fn connect<'a>(&'a self, target: u64, addr: &'a str) -> concord_replication::Connecting<'a> {
        Box::pin(async move {
            let id = u32::try_from(target).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a replica id is a node id")
            })?;
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let conn = self.tls.dial(NodeId(id)).connect(tcp).await?;
            Ok(Box::new(conn) as Box<dyn concord_replication::Link>)
        })
    }
}

impl concord_replication::Accept for ReplicaLinks {
    fn accept(&self, tcp: TcpStream) -> concord_replication::Accepting {
        let links = self.clone();
        Box::pin(async move {
            let accepted = links.tls.accept(tcp).await?;
            let replica = accepted
                .cert
                .as_ref()
                .is_some_and(|cert| links.replicas.iter().any(|&id| links.tls.is_node(cert, id)));
            if !replica {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "a replica link needs a certificate naming one of the replicas",
                ));
            }
            Ok(Box::new(accepted.conn) as Box<dyn concord_replication::Link>)
        })
    }
}

/// A connection on a node's port, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl Conn {
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Conn::Plain(tcp) => tcp.peer_addr().ok(),
            Conn::Tls(tls) => tls.get_ref().0.peer_addr().ok(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a gRPC handler learns of its caller's connection (`Request::extensions`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The node the caller proved it is, by its certificate.
    pub node: Option<NodeId>,
    /// The connection's number on this node, to bind what it opens to it.
    pub conn: u64,
}

/// A connection handed to the gRPC server, with what its handshake proved and its place in
/// the node's count of connections (given back when the server drops it).
#[derive(Debug)]
pub(crate) struct GrpcConn {
    pub conn: Conn,
    pub info: ConnInfo,
    /// Held, not read: dropping it gives the slot back.
    pub _slot: crate::connections::Slot,
}

impl tonic::transport::server::Connected for GrpcConn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for GrpcConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for GrpcConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }
}
