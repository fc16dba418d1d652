//! `concord cluster status | transfer-leader`: a replicated coordinator's replicas, each asked
//! how it sees the replicated log (`Node.Health`), and leadership moved by hand.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;
use concord_node::config::{ClusterConfig, NodeConfig};
use concord_node::proto::{self, node_client::NodeClient};

use crate::cluster::runtime;

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every coordinator replica: its state, term, log and applied index, the leader it knows;
    /// from the leader, each replica's match index and lag and how long ago a majority
    /// acknowledged it. Exits 1 if no leader is known.
    Status {
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
    },
    /// Moves the leadership to NODE, a coordinator replica: it stands for election and wins
    /// if its log is as complete as a majority's. Waits (at most 10 s) and says who leads.
    TransferLeader {
        node: String,
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
    },
    /// Makes NODE (a coordinator in the configuration, running — started with `serve --join`
    /// if its directory is new) a voting replica: the leader catches it up, then adds it.
    AddReplica {
        node: String,
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
    },
    /// Takes NODE out of the voting replicas (to replace its machine, or shrink 5 to 3).
    RemoveReplica {
        node: String,
        #[arg(long, default_value = "concord.toml")]
        config: PathBuf,
    },
}

/// What one replica answered (None: it did not answer within 2 s).
async fn ask(node: &NodeConfig) -> Option<proto::ReplicaHealth> {
    let mut client = NodeClient::new(crate::creds::channel(node.listen));
    let asked = client.health(proto::HealthRequest {});
    match tokio::time::timeout(Duration::from_secs(2), asked).await {
        Ok(Ok(reply)) => reply.into_inner().replica,
        _ => None,
    }
}

fn name_of(config: &ClusterConfig, id: u32) -> String {
    config
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map_or_else(|| format!("node {id}"), |n| n.name.clone())
}

pub fn run(command: ClusterCommand) -> Result<ExitCode, String> {
    match command {
        ClusterCommand::Status { config } => {
            let config = ClusterConfig::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(status(&config))
        }
        ClusterCommand::TransferLeader { node, config } => {
            let config = ClusterConfig::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(transfer_leader(&config, &node))
        }
        ClusterCommand::AddReplica { node, config } => {
            let config = ClusterConfig::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(change_replicas(&config, &node, true))
        }
        ClusterCommand::RemoveReplica { node, config } => {
            let config = ClusterConfig::load(&config).map_err(|e| e.to_string())?;
            runtime()?.block_on(change_replicas(&config, &node, false))
        }
    }
}

async fn status(config: &ClusterConfig) -> Result<ExitCode, String> {
    if !config.replicated_coordinator() {
        return Err(format!(
            "cluster `{}` has one coordinator ({}): nothing is replicated",
            config.cluster,
            config.coordinator().name
        ));
    }
    println!(
        "{:<16} {:<21} {:<9} {:>6} {:>9} {:>9} {:>8}  LEADER",
        "REPLICA", "ADDRESS", "STATE", "TERM", "LAST LOG", "APPLIED", "CHANGES"
    );
    let mut leader = None;
    for node in config.coordinators() {
        match ask(node).await {
            Some(health) => {
                let state = if health.leading {
                    leader = Some((node.name.clone(), health.clone()));
                    "leader"
                } else if health.leader == Some(node.id) {
                    // Elected, its core not running: it hears no majority (cut off, and it
                    // stood down), or it is still recovering from the log.
                    let lease = config.replication.election_max_ms;
                    if health.quorum_ack_ms.is_none_or(|ms| ms > lease) {
                        "no-quorum"
                    } else {
                        "starting"
                    }
                } else {
                    "follower"
                };
                let knows = health.leader.map_or_else(|| "-".to_string(), |id| name_of(config, id));
                // A configured coordinator outside the configuration the log holds: removed,
                // or waiting to be added.
                let state = if health.voters.is_empty() || health.voters.contains(&node.id) {
                    state
                } else {
                    "not-voter"
                };
                println!(
                    "{:<16} {:<21} {:<9} {:>6} {:>9} {:>9} {:>8}  {knows}",
                    node.name,
                    node.listen.to_string(),
                    state,
                    health.term,
                    health.last_log_index,
                    health.applied_index,
                    health.leader_changes
                );
            }
            None => println!("{:<16} {:<21} {:<9}", node.name, node.listen.to_string(), "down"),
        }
    }
    let Some((name, health)) = leader else {
        println!("no leader: an election is under way, or fewer than a majority are up");
        return Ok(ExitCode::from(1));
    };
    let acknowledged =
        health.quorum_ack_ms.map_or_else(|| "not yet".to_string(), |ms| format!("{ms} ms ago"));
    println!("\nleader {name}, term {}; a majority acknowledged it {acknowledged}", health.term);
    for m in &health.matched {
        let replica = name_of(config, m.replica);
        // The leader's own row has no contact: it is the one asking.
        let contact = match (m.replica == health.leader.unwrap_or(u32::MAX), m.last_contact_ms) {
            (true, _) => String::new(),
            (false, Some(ms)) => format!("   last contact {ms} ms ago"),
            (false, None) => "   never answered".to_string(),
        };
        match m.matched {
            Some(matched) => println!(
                "  {replica:<16} match index {matched:>9}   lag {} entries{contact}",
                health.last_log_index.saturating_sub(matched)
            ),
            None => {
                println!(
                    "  {replica:<16} match index         -   (nothing replicated yet){contact}"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn transfer_leader(config: &ClusterConfig, name: &str) -> Result<ExitCode, String> {
    let node = config.coordinators().find(|n| n.name == name).ok_or_else(|| {
        format!("`{name}` is not a coordinator replica of cluster `{}`", config.cluster)
    })?;
    if !config.replicated_coordinator() {
        return Err(format!(
            "cluster `{}` has one coordinator: there is no leadership to move",
            config.cluster
        ));
    }
    if ask(node).await.is_some_and(|h| h.leading) {
        return Err(format!("{name} already leads"));
    }
    // openraft refuses votes while a replica has heard its leader within the lease, and has
    // no transfer: every other replica holds back (no heartbeats, no candidacy) for a moment,
    // the leases run out, and the target stands. Tried a few times: another may still win.
    let lease = Duration::from_millis(config.replication.election_max_ms + 100);
    let hold = u32::try_from((lease * 4).as_millis()).unwrap_or(u32::MAX);
    for _attempt in 0..3 {
        for other in config.coordinators().filter(|n| n.name != name) {
            let mut client = NodeClient::new(crate::creds::channel(other.listen));
            let asked =
                client.stand_for_leader(proto::StandForLeaderRequest { hold_back_ms: hold });
            // A replica that is down holds nothing back, and needs not.
            let _ = tokio::time::timeout(Duration::from_secs(2), asked).await;
        }
        tokio::time::sleep(lease).await;
        let mut client = NodeClient::new(crate::creds::channel(node.listen));
        let asked = client.stand_for_leader(proto::StandForLeaderRequest { hold_back_ms: 0 });
        match tokio::time::timeout(Duration::from_secs(5), asked).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) if status.message().contains("already leads") => break,
            Ok(Err(status)) => return Err(format!("{name}: {}", status.message())),
            Err(_) => return Err(format!("{name} did not answer within 5 s")),
        }
        let settle = Instant::now() + lease * 3;
        while Instant::now() < settle {
            if ask(node).await.is_some_and(|h| h.leading) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if ask(node).await.is_some_and(|h| h.leading) {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = ask(node).await;
        if health.as_ref().is_some_and(|h| h.leading) {
            let term = health.map_or(0, |h| h.term);
            println!("{name} leads (term {term})");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            let leads = health
                .and_then(|h| h.leader)
                .map_or_else(|| "no one".into(), |id| name_of(config, id));
            return Err(format!(
                "{name} did not take over within 10 s ({leads} leads): its log may be behind a majority's; see `concord cluster status`"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks the leader to add or remove replica `name`; says the voters afterwards.
async fn change_replicas(
    config: &ClusterConfig,
    name: &str,
    add: bool,
) -> Result<ExitCode, String> {
    let node = config.coordinators().find(|n| n.name == name).ok_or_else(|| {
        format!(
            "`{name}` is not a coordinator of cluster `{}`: add it to concord.toml on every node first",
            config.cluster
        )
    })?;
    if !config.replicated_coordinator() {
        return Err(format!(
            "cluster `{}` has one coordinator: nothing is replicated",
            config.cluster
        ));
    }
    let mut leader = None;
    for replica in config.coordinators() {
        if ask(replica).await.is_some_and(|h| h.leading) {
            leader = Some(replica);
            break;
        }
    }
    let leader = leader.ok_or("no replica leads: see `concord cluster status`")?;
    let mut client = NodeClient::new(crate::creds::channel(leader.listen));
    let asked = client.change_replicas(proto::ChangeReplicasRequest { node: node.id, add });
    let reply = match tokio::time::timeout(Duration::from_secs(40), asked).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) => return Err(format!("{}: {}", leader.name, status.message())),
        Err(_) => return Err(format!("{} did not answer within 40 s", leader.name)),
    };
    let voters: Vec<String> = reply.voters.iter().map(|id| name_of(config, *id)).collect();
    let done = if add { "added" } else { "removed" };
    println!("{name} {done}; the voting replicas are now {}", voters.join(", "));
    Ok(ExitCode::SUCCESS)
}
