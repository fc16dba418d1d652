//! What the replication tests share: a machine that records every command it applies.

use std::time::Duration;

use concord_replication::{Machine, Options};

/// Elections only after a second of silence: on a loaded machine (two cores running the whole
/// test suite) a 50 ms heartbeat can be late enough to depose a leader in mid-test, and a test
/// that expects its writes to commit would fail for a reason it does not test.
pub fn patient(options: &mut Options) {
    options.heartbeat = Duration::from_millis(100);
    options.election_timeout = (Duration::from_secs(1), Duration::from_secs(2));
}

/// Every command applied, in order: what each replica's machine must agree on.
#[derive(Debug, Default)]
pub struct Ledger {
    pub applied: Vec<(u64, Vec<u8>)>,
}

impl Machine for Ledger {
    fn apply(&mut self, index: u64, command: &[u8]) {
        if let Some((last, _)) = self.applied.last() {
            assert!(index >= *last, "applied in log order: {index} after {last}");
        }
        self.applied.push((index, command.to_vec()));
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (index, command) in &self.applied {
            bytes.extend_from_slice(&index.to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(command.len()).unwrap().to_le_bytes());
            bytes.extend_from_slice(command);
        }
        bytes
    }

    fn restore(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        self.applied.clear();
        while !bytes.is_empty() {
            if bytes.len() < 12 {
                return Err("a torn snapshot".into());
            }
            let index = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
            let command = bytes.get(12..12 + len).ok_or("a torn snapshot")?;
            self.applied.push((index, command.to_vec()));
            bytes = &bytes[12 + len..];
        }
        Ok(())
    }
}

pub fn commands(ledger: &Ledger) -> Vec<Vec<u8>> {
    ledger.applied.iter().map(|(_, c)| c.clone()).collect()
}
