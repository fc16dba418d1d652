//! The file log against real files in a temporary directory.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use concord_wal::{FileLog, GroupCommit, OpenError};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A fresh directory under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("concord-wal-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("record {i}").into_bytes()).collect()
}

/// The segment files (the manifest and leftovers aside).
fn segments(dir: &PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log" || e == "tmp"))
        .collect();
    v.sort();
    v
}

#[test]
fn records_survive_a_reopen_in_order() {
    let dir = TempDir::new();
    let (mut log, found) = FileLog::open(&dir.0, 1 << 20).unwrap();
    assert!(found.is_empty());
    for r in records(10) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let (_, found) = FileLog::open(&dir.0, 1 << 20).unwrap();
    assert_eq!(found, records(10));
}

#[test]
fn a_torn_last_record_is_truncated_and_the_log_goes_on() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    for r in records(3) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    // Cut the last record in half, as a crash during its write would.
    let active = segments(&dir.0).pop().unwrap();
    let len = fs::metadata(&active).unwrap().len();
    OpenOptions::new().write(true).open(&active).unwrap().set_len(len - 4).unwrap();
    let (mut log, found) = FileLog::open(&dir.0, 1 << 20).unwrap();
    assert_eq!(found, records(2));
    log.append(b"after").unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, found) = FileLog::open(&dir.0, 1 << 20).unwrap();
    assert_eq!(found, [records(2), vec![b"after".to_vec()]].concat());
}

#[test]
fn corruption_in_the_middle_is_an_error_naming_segment_and_offset() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    for r in records(3) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let active = segments(&dir.0).pop().unwrap();
    let mut file = OpenOptions::new().read(true).write(true).open(&active).unwrap();
    file.seek(SeekFrom::Start(9 + 8)).unwrap(); // the first record's payload
    let mut byte = [0u8];
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(9 + 8)).unwrap();
    file.write_all(&[byte[0] ^ 0xFF]).unwrap();
    drop(file);
    match FileLog::open(&dir.0, 1 << 20) {
        Err(OpenError::Corrupt { segment, offset, .. }) => {
            assert_eq!(segment, active);
            assert_eq!(offset, 9, "the first frame starts after the 9-byte header");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_directory_from_an_incompatible_version_is_refused() {
    let dir = TempDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join("00000000000000000001.log"), b"OTHERFMT\x00rest").unwrap();
    match FileLog::open(&dir.0, 1 << 20) {
        Err(OpenError::Incompatible { found, .. }) => assert_eq!(found, b"OTHERFMT"),
        other => panic!("expected an incompatible-version error, got {other:?}"),
    }
}

#[test]
fn segments_roll_over_and_all_are_read_back() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 64).unwrap();
    for r in records(20) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    drop(log);
    assert_eq!(FileLog::open(&dir.0, 64).unwrap().1, records(20));
}

/// A SIGKILL while a new segment was being started once left a segment file without its
/// header, and the node then refused to start ("incompatible version"). A segment now appears
/// only whole (header written under a temporary name, renamed into place): what a crash can
/// leave is the temporary file — here with nothing, and with half a header, in it — which
/// `open` removes, and every record stays readable.
#[test]
fn a_crash_while_starting_a_segment_leaves_nothing_that_stops_a_restart() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 64).unwrap();
    for r in records(20) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    let next = log.segment_count() as u64 + 1;
    drop(log);
    assert!(segments(&dir.0).iter().all(|p| p.extension().is_some_and(|e| e == "log")));
    for partial in [&b""[..], &b"CNCD"[..]] {
        let tmp = dir.0.join(format!("{next:020}.log.tmp"));
        fs::write(&tmp, partial).unwrap();
        let (mut log, found) = FileLog::open(&dir.0, 64).unwrap();
        assert_eq!(found, records(20));
        assert!(!tmp.exists(), "the unfinished segment is removed");
        log.append(b"after").unwrap();
        log.sync().unwrap();
        drop(log);
        let (_, found) = FileLog::open(&dir.0, 1 << 20).unwrap();
        assert_eq!(found.last().map(Vec::as_slice), Some(&b"after"[..]));
        // Back to the twenty for the next round.
        let (mut log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
        log.checkpoint(&records(20)).unwrap();
    }
}

#[test]
fn a_checkpoint_keeps_only_live_records_and_survives_a_crash_at_any_step() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 64).unwrap();
    for r in records(20) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    let old_segments: Vec<(PathBuf, Vec<u8>)> =
        segments(&dir.0).into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect();
    let live = vec![b"still needed".to_vec()];
    log.checkpoint(&live).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(b"after").unwrap();
    log.sync().unwrap();
    drop(log);
    let expected = vec![b"still needed".to_vec(), b"after".to_vec()];
    assert_eq!(FileLog::open(&dir.0, 64).unwrap().1, expected);

    // Crash after the rename but before the old segments were deleted: they reappear, and
    // recovery must ignore (and remove) them.
    for (path, bytes) in &old_segments {
        fs::write(path, bytes).unwrap();
    }
    assert_eq!(FileLog::open(&dir.0, 64).unwrap().1, expected);
    assert_eq!(segments(&dir.0).len(), 1, "superseded segments are removed");

    // Crash before the rename: a leftover temporary file is not a checkpoint.
    fs::write(dir.0.join("00000000000000000099.log.tmp"), b"CNCDLOG1\x01junk").unwrap();
    assert_eq!(FileLog::open(&dir.0, 64).unwrap().1, expected);
}

#[test]
fn concurrent_appends_share_syncs_and_each_is_durable_when_acknowledged() {
    let dir = TempDir::new();
    let (log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    let group = Arc::new(GroupCommit::start(log).unwrap());
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let group = Arc::clone(&group);
            std::thread::spawn(move || {
                for i in 0..100 {
                    group.append(format!("{t}:{i}").into_bytes()).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let (appends, syncs) = group.counts();
    assert_eq!(appends, 800);
    assert!(
        syncs < appends,
        "group commit should share syncs: {syncs} syncs for {appends} appends"
    );
    let log = Arc::into_inner(group).unwrap().stop();
    drop(log);
    let found = FileLog::open(&dir.0, 1 << 20).unwrap().1;
    assert_eq!(found.len(), 800);
    // Each writer's records are in its own order.
    for t in 0..8 {
        let mine: Vec<String> = found
            .iter()
            .map(|r| String::from_utf8(r.clone()).unwrap())
            .filter(|r| r.starts_with(&format!("{t}:")))
            .collect();
        let want: Vec<String> = (0..100).map(|i| format!("{t}:{i}")).collect();
        assert_eq!(mine, want);
    }
}

#[test]
fn submitted_records_and_checkpoints_keep_queue_order_and_callbacks_follow_the_sync() {
    let dir = TempDir::new();
    let (log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    let group = GroupCommit::start(log).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for i in 0..10u8 {
        let tx = tx.clone();
        let notify: concord_wal::OnDurable = Box::new(move |r| tx.send((i, r)).unwrap());
        group.submit(vec![i], Some(notify)).unwrap();
    }
    // The checkpoint keeps only the even records; later appends follow it.
    group.checkpoint((0..10u8).filter(|i| i % 2 == 0).map(|i| vec![i]).collect()).unwrap();
    group.submit(vec![100], None).unwrap();
    group.append(vec![101]).unwrap(); // waits: everything before it is durable too
    let mut told: Vec<u8> = rx.try_iter().map(|(i, r)| r.map(|()| i).unwrap()).collect();
    told.sort_unstable();
    assert_eq!(told, (0..10).collect::<Vec<_>>(), "every callback ran once, with success");
    assert_eq!(group.checkpoints(), 1);
    drop(group.stop());
    let found = FileLog::open(&dir.0, 1 << 20).unwrap().1;
    assert_eq!(found, vec![vec![0], vec![2], vec![4], vec![6], vec![8], vec![100], vec![101]]);
}

#[test]
fn lazy_records_wait_for_the_next_forced_sync_and_keep_their_order() {
    let dir = TempDir::new();
    let (log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    let group = GroupCommit::start(log).unwrap();
    for i in 0..3 {
        group.submit(format!("lazy {i}").into_bytes(), None).unwrap();
    }
    // Give the log thread time to take the lazy batch on its own (the case that used to sync).
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(group.counts(), (0, 0), "a batch of lazy records alone is not synced");
    group.append(b"forced".to_vec()).unwrap();
    assert_eq!(group.counts(), (4, 1), "the forced record's sync covers the lazy ones");
    group.submit(b"lazy after".to_vec(), None).unwrap();
    drop(group.stop());
    let found = FileLog::open(&dir.0, 1 << 20).unwrap().1;
    let found: Vec<String> = found.into_iter().map(|r| String::from_utf8(r).unwrap()).collect();
    assert_eq!(found, ["lazy 0", "lazy 1", "lazy 2", "forced", "lazy after"]);
}

/// A log written through group commit and stopped cleanly, as a node's is: its manifest is
/// exact, so every loss below it is refused.
fn stopped_log(dir: &TempDir, n: usize, segment_limit: u64) {
    let (log, _) = FileLog::open(&dir.0, segment_limit).unwrap();
    let group = GroupCommit::start(log).unwrap();
    for r in records(n) {
        group.append(r).unwrap();
    }
    drop(group.stop());
}

fn expect_damaged(dir: &TempDir, naming: &str, saying: &str) {
    match FileLog::open(&dir.0, 1 << 20) {
        Err(e @ OpenError::Damaged { .. }) | Err(e @ OpenError::Corrupt { .. }) => {
            let text = e.to_string();
            assert!(text.contains(naming) && text.contains(saying), "{text}");
        }
        other => panic!("expected a refusal naming {naming}, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_in_the_last_acknowledged_record_is_refused_not_truncated() {
    let dir = TempDir::new();
    stopped_log(&dir, 5, 1 << 20);
    let active = segments(&dir.0).pop().unwrap();
    let mut bytes = fs::read(&active).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x20;
    fs::write(&active, &bytes).unwrap();
    expect_damaged(&dir, &active.display().to_string(), "acknowledged records lost");
    assert!(FileLog::check(&dir.0).is_err(), "check reports the same");
    assert_eq!(fs::read(&active).unwrap(), bytes, "a refusal changes nothing");
}

#[test]
fn a_truncated_active_segment_is_refused_mid_record_and_at_a_record_boundary() {
    let dir = TempDir::new();
    stopped_log(&dir, 5, 1 << 20);
    let active = segments(&dir.0).pop().unwrap();
    let whole = fs::read(&active).unwrap();
    let frame = 8 + records(1)[0].len();
    for cut in [whole.len() - 3, whole.len() - frame] {
        fs::write(&active, &whole[..cut]).unwrap();
        expect_damaged(&dir, &active.display().to_string(), "acknowledged records lost");
    }
    fs::write(&active, &whole).unwrap();
    assert_eq!(FileLog::open(&dir.0, 1 << 20).unwrap().1, records(5), "put back, it opens");
}

#[test]
fn missing_segments_or_manifest_are_refused() {
    let dir = TempDir::new();
    stopped_log(&dir, 30, 64);
    let all = segments(&dir.0);
    assert!(all.len() > 3);
    let keep: Vec<(PathBuf, Vec<u8>)> =
        all.iter().map(|p| (p.clone(), fs::read(p).unwrap())).collect();
    let restore = || {
        for (p, b) in &keep {
            fs::write(p, b).unwrap();
        }
    };
    // The newest, the oldest, one in the middle.
    for victim in [all.len() - 1, 0, all.len() / 2] {
        fs::remove_file(&all[victim]).unwrap();
        expect_damaged(&dir, &all[victim].display().to_string(), "missing");
        restore();
    }
    for p in &all {
        fs::remove_file(p).unwrap();
    }
    expect_damaged(&dir, "MANIFEST", "missing");
    restore();
    let manifest = dir.0.join(concord_wal::MANIFEST_FILE);
    let saved = fs::read(&manifest).unwrap();
    fs::remove_file(&manifest).unwrap();
    expect_damaged(&dir, "MANIFEST", "missing");
    let mut flipped = saved.clone();
    flipped[10] ^= 1;
    fs::write(&manifest, &flipped).unwrap();
    expect_damaged(&dir, "MANIFEST", "checksum mismatch");
    fs::write(&manifest, &saved).unwrap();
    // A new log is made only where there was none: a node that ran before must find one.
    for p in &all {
        fs::remove_file(p).unwrap();
    }
    fs::remove_file(&manifest).unwrap();
    assert!(matches!(FileLog::open_existing(&dir.0, 64), Err(OpenError::Damaged { .. })));
    assert!(FileLog::open(&dir.0, 64).unwrap().1.is_empty(), "open makes a new one");
}

#[test]
fn a_stale_copy_of_a_segment_put_back_is_refused() {
    let dir = TempDir::new();
    let (mut log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    log.append(b"one").unwrap();
    log.sync().unwrap();
    drop(log);
    let active = segments(&dir.0).pop().unwrap();
    let stale = fs::read(&active).unwrap();
    stopped_log(&dir, 5, 1 << 20);
    fs::write(&active, &stale).unwrap();
    expect_damaged(&dir, &active.display().to_string(), "acknowledged records lost");
    // A sealed segment grown or shrunk, and one the manifest never listed.
    let dir = TempDir::new();
    stopped_log(&dir, 30, 64);
    let sealed = segments(&dir.0)[1].clone();
    let mut grown = fs::read(&sealed).unwrap();
    let last = grown.clone().split_off(grown.len() - 13);
    grown.extend_from_slice(&last);
    fs::write(&sealed, &grown).unwrap();
    expect_damaged(&dir, &sealed.display().to_string(), "sealed");
    let stranger = dir.0.join(format!("{:020}.log", 999));
    fs::write(&sealed, &grown[..grown.len() - 13]).unwrap();
    fs::write(&stranger, b"CNCDLOG1\x00").unwrap();
    expect_damaged(&dir, &stranger.display().to_string(), "not listed");
}

#[test]
fn a_quiet_log_records_what_is_durable_so_a_kill_then_damage_is_detected() {
    let dir = TempDir::new();
    let (log, _) = FileLog::open(&dir.0, 1 << 20).unwrap();
    let group = GroupCommit::start(log).unwrap();
    for r in records(4) {
        group.append(r).unwrap();
    }
    // Quiet for a while: the manifest catches up, as it would before a SIGKILL.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let active = segments(&dir.0).pop().unwrap();
    let whole = fs::read(&active).unwrap();
    fs::write(&active, &whole[..whole.len() - 5]).unwrap();
    expect_damaged(&dir, &active.display().to_string(), "acknowledged records lost");
    fs::write(&active, &whole).unwrap();
    drop(group.stop());
}

#[test]
fn check_reports_and_salvage_keeps_the_readable_prefix_setting_originals_aside() {
    let dir = TempDir::new();
    stopped_log(&dir, 30, 64);
    let report = FileLog::check(&dir.0).unwrap();
    assert_eq!(report.records, records(30));
    assert!(report.notes.is_empty(), "{:?}", report.notes);
    let all = segments(&dir.0);
    let victim = all.len() / 2;
    fs::remove_file(&all[victim]).unwrap();
    let refused = FileLog::check(&dir.0).unwrap_err().to_string();
    assert!(refused.contains("missing"), "{refused}");

    let (mut log, kept, report) = FileLog::salvage(&dir.0, 64).unwrap();
    assert!(!kept.is_empty() && kept.len() < 30, "{} kept", kept.len());
    assert_eq!(kept, records(kept.len()), "a prefix, in order");
    assert!(report.lost.iter().any(|l| l.contains("missing")), "{:?}", report.lost);
    let quarantine = report.quarantine.unwrap();
    assert_eq!(
        fs::read_dir(&quarantine).unwrap().count(),
        all.len(),
        "every original segment and the manifest set aside, minus the deleted one"
    );
    log.append(b"after").unwrap();
    log.sync().unwrap();
    drop(log);
    let (_, found) = FileLog::open_existing(&dir.0, 64).unwrap();
    assert_eq!(found, [kept, vec![b"after".to_vec()]].concat());
    assert!(FileLog::check(&dir.0).is_ok());
}

/// A data directory written before log manifests: its identity lacks the line this version
/// adds and its log has no MANIFEST. It is adopted once — read as that version read it, given
/// a manifest, its identity marked — and from then on is checked like any other. A gap in its
/// segments is refused, not adopted.
#[test]
fn a_directory_from_before_manifests_is_adopted_once_and_a_gap_is_refused() {
    let dir = TempDir::new();
    let log_dir = dir.0.join("log");
    let (mut log, _) = FileLog::open(&log_dir, 64).unwrap();
    for r in records(20) {
        log.append(&r).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    fs::remove_file(log_dir.join(concord_wal::MANIFEST_FILE)).unwrap();
    fs::write(dir.0.join(concord_wal::IDENTITY_FILE), "node = a\n").unwrap();
    let before: Vec<(PathBuf, Vec<u8>)> =
        segments(&log_dir).into_iter().map(|p| (p.clone(), fs::read(&p).unwrap())).collect();

    // A gap: refused, naming the missing segment; nothing changes.
    let (gap, gap_bytes) = before[2].clone();
    fs::remove_file(&gap).unwrap();
    let mut lock = concord_wal::claim_data_dir(&dir.0, "node = a\n").unwrap();
    assert!(lock.is_legacy());
    match FileLog::open_claimed(&mut lock, &log_dir, 64) {
        Err(e @ OpenError::Damaged { .. }) => assert!(e.to_string().contains("missing"), "{e}"),
        other => panic!("a gap was adopted: {other:?}"),
    }
    drop(lock);
    fs::write(&gap, gap_bytes).unwrap();

    let mut lock = concord_wal::claim_data_dir(&dir.0, "node = a\n").unwrap();
    assert!(lock.is_legacy());
    let (_, found) = FileLog::open_claimed(&mut lock, &log_dir, 64).unwrap();
    assert_eq!(found, records(20));
    assert!(!lock.is_legacy());
    drop(lock);
    let identity = fs::read_to_string(dir.0.join(concord_wal::IDENTITY_FILE)).unwrap();
    assert_eq!(identity, format!("node = a\n{}", concord_wal::LOG_LINE));
    let mut lock = concord_wal::claim_data_dir(&dir.0, "node = a\n").unwrap();
    assert!(!lock.is_legacy() && !lock.is_new());
    assert_eq!(FileLog::open_claimed(&mut lock, &log_dir, 64).unwrap().1, records(20));
    drop(lock);
    // Adopted, it is checked like any other: the manifest now guards the newest segment.
    fs::remove_file(segments(&log_dir).pop().unwrap()).unwrap();
    let mut lock = concord_wal::claim_data_dir(&dir.0, "node = a\n").unwrap();
    assert!(matches!(
        FileLog::open_claimed(&mut lock, &log_dir, 64),
        Err(OpenError::Damaged { .. })
    ));
}

/// A segment named with an absurd id is refused at the door (one past it would overflow).
#[test]
fn a_segment_id_out_of_range_is_refused() {
    let dir = TempDir::new();
    stopped_log(&dir, 2, 1 << 20);
    fs::write(dir.0.join(format!("{}.log", u64::MAX)), b"CNCDLOG1\x00").unwrap();
    let error = FileLog::open(&dir.0, 1 << 20).unwrap_err().to_string();
    assert!(error.contains("out of range"), "{error}");
}
