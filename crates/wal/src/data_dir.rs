//! Data directories carry an `IDENTITY` file saying what they were made for (format, cluster,
//! node, role), so a process pointed at another node's directory refuses it untouched.

use std::fs;
use std::path::Path;

pub const IDENTITY_FILE: &str = "IDENTITY";

/// Creates `dir` if needed and checks (or, in an empty directory, durably writes) its identity
/// `expected`. Errors are the reason, for the caller to name the directory.
pub fn claim_data_dir(dir: &Path, expected: &str) -> Result<(), String> {
    let text = |e: std::io::Error| e.to_string();
    fs::create_dir_all(dir).map_err(text)?;
    let path = dir.join(IDENTITY_FILE);
    match fs::read_to_string(&path) {
        Ok(found) if found == expected => Ok(()),
        Ok(found) => Err(format!(
            "this directory belongs to another node or version of Concord; refusing to touch it.\n  it holds: {}\n  this node: {}",
            found.trim().replace('\n', ", "),
            expected.trim().replace('\n', ", ")
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if fs::read_dir(dir).map_err(text)?.next().is_some() {
                return Err(format!(
                    "not empty and has no {IDENTITY_FILE} file: not a Concord data directory"
                ));
            }
            let tmp = dir.join("IDENTITY.tmp");
            fs::write(&tmp, expected).map_err(text)?;
            fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(text)?;
            fs::rename(&tmp, &path).map_err(text)?;
            fs::File::open(dir).and_then(|f| f.sync_all()).map_err(text)
        }
        Err(e) => Err(e.to_string()),
    }
}
