//! Data directories carry an `IDENTITY` file saying what they were made for (format, cluster,
//! node, role), so a process pointed at another node's directory refuses it untouched; and a
//! `LOCK` file that the process using the directory holds an advisory lock on for its whole
//! life, so a second process pointed at the same directory refuses it, naming the first.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::Path;

pub const IDENTITY_FILE: &str = "IDENTITY";
pub const LOCK_FILE: &str = "LOCK";

/// The advisory lock on a data directory: held until dropped (or the process ends, however it
/// ends — the kernel releases it, so a SIGKILLed process leaves no stale lock behind).
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
    dir: std::path::PathBuf,
    /// The identity as this version writes it (with [`LOG_LINE`]).
    identity: String,
    new: bool,
    legacy: bool,
}

/// The line this version adds to every identity: its log keeps a manifest. A directory whose
/// identity lacks it (and is otherwise this node's) was written before manifests existed.
pub const LOG_LINE: &str = "log = manifest\n";

impl DirLock {
    /// Whether the directory was new (its identity written just now): only then may a missing
    /// log be taken for a new one.
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// Whether the directory was written by a version without log manifests: its log is adopted
    /// once (`FileLog::open_claimed`), then [`DirLock::adopted`] marks it.
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// The log now has its manifest: the identity says so, durably.
    pub fn adopted(&mut self) -> Result<(), String> {
        write_identity(&self.dir, &self.identity)?;
        self.legacy = false;
        Ok(())
    }
}

fn write_identity(dir: &Path, identity: &str) -> Result<(), String> {
    let text = |e: std::io::Error| e.to_string();
    let tmp = dir.join("IDENTITY.tmp");
    fs::write(&tmp, identity).map_err(text)?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(text)?;
    fs::rename(&tmp, dir.join(IDENTITY_FILE)).map_err(text)?;
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(text)
}

/// What the identity check found.
enum Found {
    /// The directory was empty: the identity was written just now.
    New,
    Same,
    /// This node's, written before log manifests.
    Legacy,
}

/// How often (every 5 ms, so about 10 s in all) a directory held by this same process is
/// tried again.
const SAME_PROCESS_WAITS: u32 = 2_000;

/// Takes the directory's lock, or says which process holds it.
fn lock(dir: &Path) -> Result<DirLock, String> {
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let me = format!("process {}", std::process::id());
    // A holder in this very process is a predecessor (an in-process restart) whose log thread
    // is finishing what it was given; it lets go when done, so wait for it, bounded.
    let mut waits = 0u32;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.rewind().and_then(|()| file.read_to_string(&mut holder));
                let holder = holder.trim();
                if holder == me && waits < SAME_PROCESS_WAITS {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                }
                let holder = if holder.is_empty() { "another process" } else { holder };
                return Err(format!(
                    "in use by {holder} (it holds {}); stop it first, or point this one at another directory",
                    path.display()
                ));
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()))
            }
        }
    }
    // Who holds it, for the message a second process prints. Not synced: it is a hint.
    let written =
        file.set_len(0).and_then(|()| file.rewind()).and_then(|()| file.write_all(me.as_bytes()));
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(DirLock {
        _file: file,
        dir: dir.to_path_buf(),
        identity: String::new(),
        new: false,
        legacy: false,
    })
}

/// Creates `dir` if needed, takes its lock (refusing a directory another process uses) and
/// checks (or, in an empty directory, durably writes) its identity `expected`. Keep the
/// returned lock for as long as the directory is in use. Errors are the reason, for the caller
/// to name the directory.
pub fn claim_data_dir(dir: &Path, expected: &str) -> Result<DirLock, String> {
    let text = |e: std::io::Error| e.to_string();
    fs::create_dir_all(dir).map_err(text)?;
    let mut lock = lock(dir)?;
    lock.identity = format!("{expected}{LOG_LINE}");
    match check_identity(dir, &lock.identity, expected)? {
        Found::New => lock.new = true,
        Found::Same => {}
        Found::Legacy => lock.legacy = true,
    }
    Ok(lock)
}

/// Checks the identity (`expected`, or `legacy` as versions before log manifests wrote it), or
/// writes it in an empty directory.
fn check_identity(dir: &Path, expected: &str, legacy: &str) -> Result<Found, String> {
    let text = |e: std::io::Error| e.to_string();
    let path = dir.join(IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(Found::Same),
        Ok(found) if found == legacy => Ok(Found::Legacy),
        Ok(found) => Err(format!(
            "this directory belongs to another node or version of Concord; refusing to touch it.\n  it holds: {}\n  this node: {}",
            found.trim().replace('\n', ", "),
            expected.trim().replace('\n', ", ")
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut entries = fs::read_dir(dir).map_err(text)?;
            if entries.any(|e| e.map_or(true, |e| e.file_name() != LOCK_FILE)) {
                return Err(format!(
                    "not empty and has no {IDENTITY_FILE} file: not a Concord data directory"
                ));
            }
            write_identity(dir, expected)?;
            Ok(Found::New)
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("concord-dir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// (Another process is refused at once, naming its holder: `cli/tests/storage_faults.rs`.)
    #[test]
    fn a_directory_held_in_this_process_is_waited_for_until_released() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = scratch("lock");
        let held = claim_data_dir(&dir, "node = a\n").unwrap();
        let releasing = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&releasing);
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(100));
            flag.store(true, Ordering::SeqCst);
            drop(held);
        });
        let again = claim_data_dir(&dir, "node = a\n").unwrap();
        assert!(releasing.load(Ordering::SeqCst), "claimed while the holder still held it");
        releaser.join().unwrap();
        let holder = fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        assert_eq!(holder, format!("process {}", std::process::id()));
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_nodes_directory_is_refused_and_a_stranger_directory_too() {
        let dir = scratch("identity");
        drop(claim_data_dir(&dir, "node = a\n").unwrap());
        let error = claim_data_dir(&dir, "node = b\n").unwrap_err();
        assert!(error.contains("belongs to another node"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let error = claim_data_dir(&dir, "node = a\n").unwrap_err();
        assert!(error.contains("not a Concord data directory"), "{error}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
