//! `concord data check DIR`: what a start would refuse in a node's data directory (or in every
//! node's under DIR, as `concord dev` lays them out), read without changing anything.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Read every file of a stopped node's data directory (or of every node's under DIR) and
    /// report: exit 0 when each would start with everything acknowledged, 1 when one would be
    /// refused (the message names the file, the offset and what was expected).
    Check { dir: PathBuf },
}

pub fn run(command: DataCommand) -> Result<ExitCode, String> {
    match command {
        DataCommand::Check { dir } => check(&dir),
    }
}

/// Node data directories at or under `dir` (those with an IDENTITY), a few levels deep.
fn node_dirs(dir: &Path, depth: u32, found: &mut Vec<PathBuf>) {
    if dir.join(concord_wal::IDENTITY_FILE).is_file() {
        found.push(dir.to_path_buf());
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut children: Vec<PathBuf> =
        entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    children.sort();
    for child in children {
        node_dirs(&child, depth - 1, found);
    }
}

fn check(dir: &Path) -> Result<ExitCode, String> {
    let mut dirs = Vec::new();
    node_dirs(dir, 3, &mut dirs);
    if dirs.is_empty() {
        return Err(format!(
            "{}: no node data directory (with an IDENTITY file) here",
            dir.display()
        ));
    }
    let mut refused = 0;
    // A core that finds its log inconsistent asserts; the check reports that as a refusal, so
    // the panic's own message is not printed on top of it.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let checked: Vec<_> = dirs.iter().map(|node| concord_node::check_data(node)).collect();
    std::panic::set_hook(hook);
    for (node, checked) in dirs.iter().zip(checked) {
        match checked {
            Ok(report) => {
                println!("ok       {} ({})", node.display(), report.identity);
                for line in &report.lines {
                    println!("           {line}");
                }
                if report.data_loss_accepted {
                    println!(
                        "           its operator accepted a loss of data here before: see {}",
                        node.join(concord_node::DATA_LOSS_FILE).display()
                    );
                }
            }
            Err(reason) => {
                refused += 1;
                println!(
                    "REFUSED  {}\n           {}",
                    node.display(),
                    reason.replace('\n', "\n           ")
                );
            }
        }
    }
    println!(
        "{} of {} data directories would start with everything acknowledged{}",
        dirs.len() - refused,
        dirs.len(),
        if refused > 0 {
            "; restore the others from a backup, or start them with --accept-data-loss (shards only: docs/log-format.md)"
        } else {
            ""
        }
    );
    Ok(if refused == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
