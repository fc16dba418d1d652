use crate::crc32c::crc32c_update;

/// Bytes before each payload: length and checksum.
pub const FRAME_HEADER_LEN: usize = 8;
/// Largest payload a frame may carry; a larger declared length is corruption, not a record.
pub const MAX_FRAME_LEN: u32 = 16 << 20;

fn frame_checksum(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c_update(crc32c_update(0, &len_bytes), payload)
}

/// Appends one framed payload to `log`.
pub fn append_frame(log: &mut Vec<u8>, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payloads are bounded by MAX_FRAME_LEN");
    assert!(len <= MAX_FRAME_LEN, "a {len}-byte record exceeds the frame limit");
    let len_bytes = len.to_le_bytes();
    log.extend_from_slice(&len_bytes);
    log.extend_from_slice(&frame_checksum(len_bytes, payload).to_le_bytes());
    log.extend_from_slice(payload);
}

/// How the log ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last frame was complete.
    Clean,
    /// The bytes from `offset` on are an unfinished last write; truncate the log there.
    Torn { offset: usize },
}

/// The readable prefix of a log.
#[derive(Debug)]
pub struct Scanned<'a> {
    /// Payloads in log order.
    pub payloads: Vec<&'a [u8]>,
    /// Length of the valid prefix: where the next append must start.
    pub valid_len: usize,
    pub tail: Tail,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("corrupt record at offset {offset}: {reason}, with valid data after it")]
    CorruptInMiddle { offset: usize, reason: &'static str },
}

/// Reads every complete frame; classifies what follows the last one.
pub fn scan(log: &[u8]) -> Result<Scanned<'_>, ScanError> {
    let mut payloads = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &log[offset..];
        if rest.is_empty() {
            return Ok(Scanned { payloads, valid_len: offset, tail: Tail::Clean });
        }
        let torn =
            |payloads| Ok(Scanned { payloads, valid_len: offset, tail: Tail::Torn { offset } });
        if rest.len() < FRAME_HEADER_LEN {
            return torn(payloads);
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("checked: at least a header");
        let stored: [u8; 4] = rest[4..8].try_into().expect("checked: at least a header");
        let len = u32::from_le_bytes(len_bytes);
        let end = FRAME_HEADER_LEN + len as usize;
        if len > MAX_FRAME_LEN || end > rest.len() {
            // A length that runs past the end can only be the last, unfinished write — unless it
            // is absurd and valid frames could still follow, which we cannot tell apart from a
            // torn header; both leave nothing after it that we could trust.
            return torn(payloads);
        }
        let payload = &rest[FRAME_HEADER_LEN..end];
        if frame_checksum(len_bytes, payload) != u32::from_le_bytes(stored) {
            let after = &rest[end..];
            if after.iter().all(|&b| b == 0) {
                return torn(payloads);
            }
            return Err(ScanError::CorruptInMiddle { offset, reason: "checksum mismatch" });
        }
        payloads.push(payload);
        offset += end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(payloads: &[&[u8]]) -> Vec<u8> {
        let mut log = Vec::new();
        for p in payloads {
            append_frame(&mut log, p);
        }
        log
    }

    #[test]
    fn clean_log_yields_every_payload() {
        let log = log_of(&[b"one", b"", b"three"]);
        let s = scan(&log).unwrap();
        assert_eq!(s.payloads, vec![&b"one"[..], b"", b"three"]);
        assert_eq!(s.valid_len, log.len());
        assert_eq!(s.tail, Tail::Clean);
    }

    #[test]
    fn every_cut_of_the_last_frame_is_a_torn_tail() {
        let whole = log_of(&[b"first", b"second record"]);
        let first_len = FRAME_HEADER_LEN + 5;
        for cut in first_len + 1..whole.len() {
            let s = scan(&whole[..cut]).unwrap();
            assert_eq!(s.payloads, vec![&b"first"[..]], "cut at {cut}");
            assert_eq!(s.tail, Tail::Torn { offset: first_len }, "cut at {cut}");
            assert_eq!(s.valid_len, first_len);
        }
    }

    #[test]
    fn flipped_bit_in_the_last_frame_is_torn_but_in_the_middle_is_an_error() {
        let mut log = log_of(&[b"alpha", b"beta"]);
        let last = log.len() - 1;
        log[last] ^= 1;
        assert_eq!(scan(&log).unwrap().tail, Tail::Torn { offset: FRAME_HEADER_LEN + 5 });

        let mut log = log_of(&[b"alpha", b"beta"]);
        log[FRAME_HEADER_LEN] ^= 1;
        assert_eq!(
            scan(&log).unwrap_err(),
            ScanError::CorruptInMiddle { offset: 0, reason: "checksum mismatch" }
        );
    }

    #[test]
    fn zeroed_preallocated_tail_is_torn() {
        let mut log = log_of(&[b"alpha"]);
        let valid = log.len();
        log.extend_from_slice(&[0; 32]);
        let s = scan(&log).unwrap();
        assert_eq!(s.tail, Tail::Torn { offset: valid });
        assert_eq!(s.payloads.len(), 1);
    }
}
