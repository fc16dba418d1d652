//! `concord dev` and `concord serve`: running nodes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use concord_node::config::ClusterConfig;
use tokio::sync::watch;

/// The tokio runtime every networked command runs on.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// A watch that turns true on Ctrl-C or SIGTERM.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// `concord serve --config FILE --node NAME`: one node in this process.
pub fn serve(config: &Path, node: &str, data_dir: Option<PathBuf>) -> Result<ExitCode, String> {
    let config = ClusterConfig::load(config).map_err(|e| e.to_string())?;
    let me = config.node(node).ok_or_else(|| {
        let names: Vec<&str> = config.nodes.iter().map(|n| n.name.as_str()).collect();
        format!("--node {node}: no such node; the configuration has {}", names.join(", "))
    })?;
    let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("./concord-data").join(&me.name));
    println!("concord: {} ({}) on {}, data in {}", me.name, me.role, me.listen, data_dir.display());
    let name = node.to_string();
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        concord_node::serve(config, &name, &data_dir, shutdown).await.map_err(|e| e.to_string())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `concord dev`: a coordinator and shards on loopback, in this process.
pub fn dev(data_dir: &Path, shards: u32, port: u16) -> Result<ExitCode, String> {
    if !(1..=16).contains(&shards) {
        return Err("--shards must be between 1 and 16".into());
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let config_path = data_dir.join("concord.toml");
    let config = if config_path.exists() {
        // The cluster this directory already holds: its nodes' data must keep their names.
        ClusterConfig::load(&config_path).map_err(|e| e.to_string())?
    } else {
        let config = ClusterConfig::local("dev", shards, port);
        std::fs::write(&config_path, config.to_toml())
            .map_err(|e| format!("cannot write {}: {e}", config_path.display()))?;
        config
    };
    let coordinator = config.coordinator().listen;
    runtime()?.block_on(async move {
        let shutdown = shutdown_on_signal();
        let mut nodes = tokio::task::JoinSet::new();
        for node in &config.nodes {
            let (config, name, dir) =
                (config.clone(), node.name.clone(), data_dir.join(&node.name));
            let shutdown = shutdown.clone();
            nodes.spawn(async move {
                concord_node::serve(config, &name, &dir, shutdown)
                    .await
                    .map_err(|e| format!("{name}: {e}"))
            });
        }
        println!("Concord dev cluster `{}` (2PC, durable logs under {})", config.cluster, data_dir.display());
        for node in &config.nodes {
            println!("  {:<12} {:<12} {}", node.name, node.role.to_string(), node.listen);
        }
        let first = config.shards().next().map_or("shard-1", |n| n.name.as_str()).to_string();
        let second = config.shards().nth(1).map_or(first.as_str(), |n| n.name.as_str()).to_string();
        println!("\nTry, in another terminal (add --coordinator {coordinator} if you changed the port):");
        println!("  concord txn submit {first}:1=+100            # deposit 100 into account 1 of {first}");
        println!("  concord transfer --from {first}:1 --to {second}:2 --amount 30");
        println!("  concord txn ls");
        println!("  concord txn show <ID>");
        println!("  concord shard read {first}");
        println!("  concord bench transfer --shards 3 --clients 1,16 --duration 5s");
        println!("\nCtrl-C stops the cluster; its data stays in {}.", data_dir.display());
        while let Some(ended) = nodes.join_next().await {
            match ended {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(panic) => return Err(format!("a node panicked: {panic}")),
            }
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
