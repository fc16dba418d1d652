//! `concord certs init`: the cluster's CA and a certificate for each node (docs/security.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use concord_node::config::ClusterConfig;
use concord_node::tls::CertFiles;

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Writes, under the configuration's `[tls] dir`, the cluster's CA (if there is none) and
    /// a certificate and key for every node that has none. Copy each node's files (and
    /// ca.pem) to its machine; keep ca.key off the nodes.
    Init {
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
        /// Instead of a cluster's nodes, a replicated database coordinator's replicas: the
        /// `[tls] dir` of this databases.toml gets the CA (if none) and `replica-ID.pem` /
        /// `.key` for each `[[replica]]`, for their replica links.
        #[arg(long, conflicts_with = "config")]
        db: Option<PathBuf>,
        /// Issue every node's certificate again (rotation), signed by the same CA.
        #[arg(long)]
        renew: bool,
    },
    /// A new bearer token for a client: writes it to --out (readable by its owner only) and
    /// prints the `[[token]]` entry to add to every node's configuration.
    Token {
        /// Who holds it: named in refusals and audit lines.
        #[arg(long)]
        name: String,
        /// client, operator or monitor (docs/security.md).
        #[arg(long)]
        role: String,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: CertsCommand) -> Result<ExitCode, String> {
    match command {
        CertsCommand::Token { name, role, out } => {
            if !matches!(role.as_str(), "client" | "operator" | "monitor") {
                return Err(format!("--role takes client, operator or monitor, not `{role}`"));
            }
            concord_types::fields::check_name(
                "--name",
                &name,
                concord_node::config::MAX_NAME_BYTES,
            )?;
            let token = concord_node::auth::new_token()?;
            concord_node::certs::write_secret(&out, &format!("{token}\n"))?;
            println!("wrote the token to {}; add to every node's configuration:\n", out.display());
            println!(
                "[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{}\"",
                concord_node::auth::token_sha256(&token)
            );
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Init { db: Some(path), renew, .. } => {
            let loaded = concord_db_coordinator::config::DatabasesConfig::load(&path)
                .map_err(|e| e.to_string())?;
            let dir = tls_dir(&path, loaded.tls.as_ref().map(|t| &t.dir))?;
            let subjects: Vec<concord_node::certs::Subject> = loaded
                .replicas
                .iter()
                .map(|r| concord_node::certs::Subject {
                    file: concord_db_coordinator::config::DatabasesConfig::replica_cert_name(r.id),
                    id: concord_types::NodeId(r.id),
                    about: format!("database coordinator replica {}", r.id),
                })
                .collect();
            let cluster = loaded.replica_cluster();
            let report = concord_node::certs::issue_for(&cluster, &subjects, &dir, renew)?;
            Ok(said(report, "replica", &path))
        }
        CertsCommand::Init { config, renew, db: None } => {
            let loaded = ClusterConfig::load(&config).map_err(|e| e.to_string())?;
            let dir = tls_dir(&config, loaded.tls.as_ref().map(|t| &t.dir))?;
            let report = concord_node::certs::issue(&loaded, &dir, renew)?;
            Ok(said(report, "node", &config))
        }
    }
}

/// The `[tls] dir` of the configuration at `path`, or how to add one.
fn tls_dir(path: &Path, dir: Option<&PathBuf>) -> Result<CertFiles, String> {
    let dir = dir.ok_or_else(|| {
        format!(
            "{} has no [tls] section: add\n\n[tls]\ndir = \"certs\"\n\nand run this again",
            path.display()
        )
    })?;
    Ok(CertFiles { dir: dir.clone() })
}

/// Prints what was issued (or that every `who` of `path` already has a certificate).
fn said(report: concord_node::certs::Report, who: &str, path: &Path) -> ExitCode {
    if report.is_empty() {
        println!("every {who} of {} has a certificate (--renew issues them again)", path.display());
    }
    for line in report {
        println!("{line}");
    }
    ExitCode::SUCCESS
}
