//! Concord's log: the byte format and recovery scan (pure), the segmented file log
//! ([`FileLog`]) and group commit ([`GroupCommit`]).
//!
//! ```text
//!  ┌──────────────┬──────────────────────────────┬───────────────┐
//!  │ len: u32 LE  │ crc32c(len ‖ payload): u32 LE │ payload (len) │  … next frame
//!  └──────────────┴──────────────────────────────┴───────────────┘
//! ```
//!
//! Recovery reads frames from the start. What it may find at the end of the log:
//! * nothing — a clean end;
//! * a frame whose declared length runs past the end, or a complete last frame whose checksum
//!   fails, or zeroed bytes — a **torn tail**: the last write did not finish before the crash.
//!   It was never acknowledged (acknowledgement waits for the sync), so it is truncated;
//! * a frame whose checksum fails with more frames after it — **corruption in the middle**. That
//!   is never silently skipped: the scan reports the offset and the caller refuses to start.

mod crc32c;
mod data_dir;
mod file_log;
mod frame;
mod group_commit;
mod manifest;

pub use crc32c::{crc32c, crc32c_update};
pub use data_dir::{claim_data_dir, DirLock, IDENTITY_FILE, LOCK_FILE, LOG_LINE};
pub use file_log::{CheckReport, FileLog, OpenError, SalvageReport, MAGIC, MANIFEST_EVERY};
pub use frame::{append_frame, scan, ScanError, Scanned, Tail, FRAME_HEADER_LEN, MAX_FRAME_LEN};
pub use group_commit::{GroupCommit, OnDurable};
pub use manifest::MANIFEST_FILE;
