//! The log's append path without the disk's sync: framing (length + crc32c) and the write into
//! the segment file's buffer. `cargo bench -p concord-wal`. The sync itself is the physical
//! floor (`concord bench floor`); group commit shares one sync among many appends.

use concord_wal::{append_frame, crc32c, FileLog};

fn main() {
    divan::main();
}

/// Framing one record into a buffer (what every append does before any I/O).
#[divan::bench(args = [64, 256, 4096])]
fn frame(bencher: divan::Bencher, bytes: usize) {
    let payload = vec![7u8; bytes];
    let mut buf = Vec::with_capacity(bytes + 16);
    bencher.counter(divan::counter::BytesCount::new(bytes)).bench_local(|| {
        buf.clear();
        append_frame(&mut buf, divan::black_box(&payload));
    });
}

/// crc32c alone (the checksum over length and payload).
#[divan::bench(args = [64, 4096])]
fn checksum(bencher: divan::Bencher, bytes: usize) {
    let payload = vec![7u8; bytes];
    bencher
        .counter(divan::counter::BytesCount::new(bytes))
        .bench_local(|| crc32c(divan::black_box(&payload)));
}

/// An append to a real segment file, unsynced (the page cache), 256-byte records.
#[divan::bench]
fn file_append(bencher: divan::Bencher) {
    let dir = std::env::temp_dir().join(format!("concord-wal-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut log, _) = FileLog::open(&dir, 64 << 20).expect("a log in the temp directory");
    let payload = vec![7u8; 256];
    bencher.bench_local(|| log.append(divan::black_box(&payload)).expect("append"));
    drop(log);
    let _ = std::fs::remove_dir_all(&dir);
}
