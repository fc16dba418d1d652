//! Issuing a cluster's certificates (`concord certs init`, and `concord dev` for itself): a
//! certificate authority of the cluster's own, and one certificate per node naming it as
//! [`crate::tls`] checks.
//!
//! The CA's key is written once and reused: issuing again (a new node, a renewal) signs with
//! it, so certificates already on the nodes stay valid. Keys are written readable by their
//! owner only.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::config::ClusterConfig;
use crate::tls::{node_name, CertFiles, ANY_NODE};
use concord_types::NodeId;

/// How long a node certificate is valid.
pub const NODE_CERT_DAYS: u64 = 397;
/// How long the CA certificate is valid.
pub const CA_CERT_DAYS: u64 = 3_650;

/// What [`issue`] did, one line per file, for the operator.
pub type Report = Vec<String>;

fn at(offset_days: i64) -> time::OffsetDateTime {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX / 2) + offset_days * 86_400;
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn days(d: u64) -> i64 {
    i64::try_from(d).expect("a handful of years")
}

/// A new CA's parameters.
fn ca_params(cluster: &str) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    params.distinguished_name.push(DnType::OrganizationName, "Concord");
    params.distinguished_name.push(DnType::CommonName, format!("Concord CA of cluster {cluster}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = at(-1);
    params.not_after = at(days(CA_CERT_DAYS));
    Ok(params)
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let shown = path.display();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(|e| format!("{shown}: {e}"))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{shown}: {e}"))
}

/// Writes `text` to `path`, readable by its owner only (a key, a token).
pub fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    write_file(path, text, true)
}

/// Whom a certificate is for: its files' name (`<file>.pem`, `<file>.key`), the id it names
/// (as [`node_name`] writes it), and what its common name says of it.
#[derive(Debug, Clone)]
pub struct Subject {
    pub file: String,
    pub id: NodeId,
    pub about: String,
}

/// Writes the cluster's certificates under `files.dir`: the CA if there is none, and a
/// certificate for every node of `config` that has none (every node's again with `renew`).
pub fn issue(config: &ClusterConfig, files: &CertFiles, renew: bool) -> Result<Report, String> {
    let subjects: Vec<Subject> = config
        .nodes
        .iter()
        .map(|node| Subject {
            file: node.name.clone(),
            id: NodeId(node.id),
            about: format!("{} ({} {})", node.name, node.role, node.id),
        })
        .collect();
    issue_for(&config.cluster, &subjects, files, renew)
}

/// [`issue`] for any set of subjects of `cluster` (the database coordinator's replicas, say):
/// the CA if `files` has none, then each subject's certificate if it has none (or `renew`).
pub fn issue_for(
    cluster: &str,
    subjects: &[Subject],
    files: &CertFiles,
    renew: bool,
) -> Result<Report, String> {
    let mut report = Vec::new();
    std::fs::create_dir_all(&files.dir).map_err(|e| format!("{}: {e}", files.dir.display()))?;
    let issuer = if files.ca_key().exists() {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let key = KeyPair::from_pem(&read(files.ca_key())?)
            .map_err(|e| format!("{}: {e}", files.ca_key().display()))?;
        // The CA certificate first in the file signs (a rotation appends the old one after).
        Issuer::from_ca_cert_pem(&read(files.ca())?, key)
            .map_err(|e| format!("{}: {e}", files.ca().display()))?
    } else if files.ca().exists() {
        return Err(format!(
            "{} exists but {} does not: cannot issue certificates without the CA's key",
            files.ca().display(),
            files.ca_key().display()
        ));
    } else {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let params = ca_params(cluster)?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        write_file(&files.ca_key(), &key.serialize_pem(), true)?;
        write_file(&files.ca(), &cert.pem(), false)?;
        report.push(format!(
            "wrote {} (the cluster's CA; its key: {})",
            files.ca().display(),
            files.ca_key().display()
        ));
        Issuer::new(params, key)
    };
    for subject in subjects {
        let cert_path = files.node_cert(&subject.file);
        if cert_path.exists() && !renew {
            continue;
        }
        let name = node_name(cluster, subject.id);
        let mut params = CertificateParams::new(vec![name.clone(), ANY_NODE.to_string()])
            .map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::OrganizationName, "Concord");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} of cluster {cluster}", subject.about));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = at(-1);
        params.not_after = at(days(NODE_CERT_DAYS));
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        write_file(&files.node_key(&subject.file), &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        report.push(format!("wrote {} ({name})", cert_path.display()));
    }
    Ok(report)
}
