//! Bytes for what replicas write to disk and send each other: openraft's entries, votes and
//! RPCs in a small binary form of our own (openraft leaves the encoding to its user).
//!
//! Every decoder takes untrusted bytes — a peer may be an adversary, a disk may be damaged — and
//! answers with an error, never a panic and never an allocation bigger than its input: counts
//! are checked against the bytes that remain before anything is reserved.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LeaderId, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use crate::TypeConfig;

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed replication bytes: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

type Result<T> = std::result::Result<T, DecodeError>;

fn bad<T>(what: impl Into<String>) -> Result<T> {
    Err(DecodeError(what.into()))
}

/// Appends to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn len(&mut self, n: usize) {
        self.bytes.extend_from_slice(&u32::try_from(n).expect("under 4 GiB").to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.bytes.extend_from_slice(v);
    }
    pub fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
}

/// Reads from untrusted bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return bad(format!("{n} bytes wanted, {} left", self.rest.len()));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items, each at least `min_item` bytes long: refused if the rest cannot hold
    /// them, so a forged count cannot make us reserve memory.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        if n.saturating_mul(min_item.max(1)) > self.rest.len() {
            return bad(format!("{n} items cannot fit in {} bytes", self.rest.len()));
        }
        Ok(n)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.count(1)?;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError("not UTF-8".into()))
    }
    pub fn bool(&mut self) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => bad(format!("{other} is not a boolean")),
        }
    }
    /// Refuses trailing bytes: a message is exactly its encoding.
    pub fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            bad(format!("{} bytes after the end", self.rest.len()))
        }
    }
}

pub fn put_log_id(w: &mut Writer, id: &LogId<u64>) {
    w.u64(id.leader_id.term);
    w.u64(id.leader_id.node_id);
    w.u64(id.index);
}

pub fn get_log_id(r: &mut Reader) -> Result<LogId<u64>> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let index = r.u64()?;
    Ok(LogId::new(CommittedLeaderId::new(term, node_id), index))
}

pub fn put_opt_log_id(w: &mut Writer, id: Option<&LogId<u64>>) {
    match id {
        None => w.u8(0),
        Some(id) => {
            w.u8(1);
            put_log_id(w, id);
        }
    }
}

pub fn get_opt_log_id(r: &mut Reader) -> Result<Option<LogId<u64>>> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(get_log_id(r)?)),
        other => bad(format!("log id tag {other}")),
    }
}

pub fn put_vote(w: &mut Writer, vote: &Vote<u64>) {
    w.u64(vote.leader_id.term);
    w.u64(vote.leader_id.node_id);
    w.bool(vote.committed);
}

pub fn get_vote(r: &mut Reader) -> Result<Vote<u64>> {
    let term = r.u64()?;
    let node_id = r.u64()?;
    let committed = r.bool()?;
    Ok(Vote { leader_id: LeaderId::new(term, node_id), committed })
}

pub fn put_membership(w: &mut Writer, m: &Membership<u64, BasicNode>) {
    let configs = m.get_joint_config();
    w.len(configs.len());
    for config in configs {
        w.len(config.len());
        config.iter().for_each(|id| w.u64(*id));
    }
    let nodes: Vec<(&u64, &BasicNode)> = m.nodes().collect();
    w.len(nodes.len());
    for (id, node) in nodes {
        w.u64(*id);
        w.bytes(node.addr.as_bytes());
    }
}

pub fn get_membership(r: &mut Reader) -> Result<Membership<u64, BasicNode>> {
    let n = r.count(4)?;
    if n == 0 {
        return bad("a membership with no configuration");
    }
    let mut configs = Vec::with_capacity(n);
    for _ in 0..n {
        let ids = r.count(8)?;
        let mut config = BTreeSet::new();
        for _ in 0..ids {
            config.insert(r.u64()?);
        }
        configs.push(config);
    }
    let n = r.count(12)?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n {
        let id = r.u64()?;
        nodes.insert(id, BasicNode { addr: r.string()? });
    }
    // openraft asserts that every voter has a node: check here instead of panicking there.
    if let Some(missing) = configs.iter().flatten().find(|id| !nodes.contains_key(id)) {
        return bad(format!("voter {missing} has no address"));
    }
    Ok(Membership::new(configs, nodes))
}

pub fn put_stored_membership(w: &mut Writer, m: &StoredMembership<u64, BasicNode>) {
    put_opt_log_id(w, m.log_id().as_ref());
    put_membership(w, m.membership());
}

pub fn get_stored_membership(r: &mut Reader) -> Result<StoredMembership<u64, BasicNode>> {
    let log_id = get_opt_log_id(r)?;
    Ok(StoredMembership::new(log_id, get_membership(r)?))
}

pub fn put_entry(w: &mut Writer, entry: &Entry<TypeConfig>) {
    put_log_id(w, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => w.u8(0),
        EntryPayload::Normal(command) => {
            w.u8(1);
            w.bytes(command);
        }
        EntryPayload::Membership(m) => {
            w.u8(2);
            put_membership(w, m);
        }
    }
}

pub fn get_entry(r: &mut Reader) -> Result<Entry<TypeConfig>> {
    let log_id = get_log_id(r)?;
    let payload = match r.u8()? {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(r.bytes()?.to_vec()),
        2 => EntryPayload::Membership(get_membership(r)?),
        other => return bad(format!("entry payload tag {other}")),
    };
    Ok(Entry { log_id, payload })
}

/// The smallest encoded entry: a log id and a tag.
const MIN_ENTRY: usize = 25;

pub fn put_snapshot_meta(w: &mut Writer, meta: &SnapshotMeta<u64, BasicNode>) {
    put_opt_log_id(w, meta.last_log_id.as_ref());
    put_stored_membership(w, &meta.last_membership);
    w.bytes(meta.snapshot_id.as_bytes());
}

pub fn get_snapshot_meta(r: &mut Reader) -> Result<SnapshotMeta<u64, BasicNode>> {
    let last_log_id = get_opt_log_id(r)?;
    let last_membership = get_stored_membership(r)?;
    let snapshot_id = r.string()?;
    Ok(SnapshotMeta { last_log_id, last_membership, snapshot_id })
}

/// Commands carried by one log entry: the submitter puts every command waiting in its queue
/// into one entry, so a burst costs one append and one replication round, not one each.
pub fn encode_batch(commands: &[Vec<u8>]) -> Vec<u8> {
    let mut w = Writer::default();
    w.len(commands.len());
    commands.iter().for_each(|c| w.bytes(c));
    w.bytes
}

pub fn decode_batch(bytes: &[u8]) -> Result<Vec<&[u8]>> {
    let mut r = Reader::new(bytes);
    // Each command costs at least its 4-byte length.
    let n = r.count(4)?;
    let mut commands = Vec::with_capacity(n);
    for _ in 0..n {
        commands.push(r.bytes()?);
    }
    r.end()?;
    Ok(commands)
}

/// A request from one replica to another, as it travels.
#[derive(Debug)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<u64>),
    /// A whole snapshot, sent when a follower lacks entries the leader has purged.
    Snapshot {
        vote: Vote<u64>,
        meta: SnapshotMeta<u64, BasicNode>,
        data: Vec<u8>,
    },
    /// Replica `from` starts on an empty directory and asks whether it held the log before
    /// (`network::lost_log`): outside openraft, answered from the receiver's metrics.
    Probe {
        from: u64,
    },
}

/// What a replica answers a [`Request::Probe`]: its term, whether it leads, and — leading —
/// the index it has matched on the asker's log, which it can have only if the asker once held
/// entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub term: u64,
    pub leads: bool,
    pub matched: Option<u64>,
}

/// Its answer. `Refused` carries a receiver's reason for not handling it (it is shutting down,
/// or the bytes were malformed): the sender treats it as a network error and retries.
#[derive(Debug)]
pub enum Reply {
    Append(AppendEntriesResponse<u64>),
    Vote(VoteResponse<u64>),
    Snapshot(SnapshotResponse<u64>),
    Refused(String),
    Probe(ProbeAnswer),
}

pub fn encode_request(request: &Request) -> Vec<u8> {
    let mut w = Writer::default();
    match request {
        Request::Append(rpc) => {
            w.u8(1);
            put_vote(&mut w, &rpc.vote);
            put_opt_log_id(&mut w, rpc.prev_log_id.as_ref());
            put_opt_log_id(&mut w, rpc.leader_commit.as_ref());
            w.len(rpc.entries.len());
            rpc.entries.iter().for_each(|e| put_entry(&mut w, e));
        }
        Request::Vote(rpc) => {
            w.u8(2);
            put_vote(&mut w, &rpc.vote);
            put_opt_log_id(&mut w, rpc.last_log_id.as_ref());
        }
        Request::Snapshot { vote, meta, data } => {
            w.u8(3);
            put_vote(&mut w, vote);
            put_snapshot_meta(&mut w, meta);
            w.bytes(data);
        }
        Request::Probe { from } => {
            w.u8(4);
            w.u64(*from);
        }
    }
    w.bytes
}

pub fn decode_request(bytes: &[u8]) -> Result<Request> {
    let mut r = Reader::new(bytes);
    let request = match r.u8()? {
        1 => {
            let vote = get_vote(&mut r)?;
            let prev_log_id = get_opt_log_id(&mut r)?;
            let leader_commit = get_opt_log_id(&mut r)?;
            let n = r.count(MIN_ENTRY)?;
            let mut entries = Vec::with_capacity(n);
            for _ in 0..n {
                entries.push(get_entry(&mut r)?);
            }
            Request::Append(AppendEntriesRequest { vote, prev_log_id, leader_commit, entries })
        }
        2 => {
            let vote = get_vote(&mut r)?;
            Request::Vote(VoteRequest { vote, last_log_id: get_opt_log_id(&mut r)? })
        }
        3 => {
            let vote = get_vote(&mut r)?;
            let meta = get_snapshot_meta(&mut r)?;
            Request::Snapshot { vote, meta, data: r.bytes()?.to_vec() }
        }
        4 => Request::Probe { from: r.u64()? },
        other => return bad(format!("request kind {other}")),
    };
    r.end()?;
    Ok(request)
}

pub fn encode_reply(reply: &Reply) -> Vec<u8> {
    let mut w = Writer::default();
    match reply {
        Reply::Append(response) => {
            w.u8(1);
            match response {
                AppendEntriesResponse::Success => w.u8(0),
                AppendEntriesResponse::PartialSuccess(upto) => {
                    w.u8(1);
                    put_opt_log_id(&mut w, upto.as_ref());
                }
                AppendEntriesResponse::Conflict => w.u8(2),
                AppendEntriesResponse::HigherVote(vote) => {
                    w.u8(3);
                    put_vote(&mut w, vote);
                }
            }
        }
        Reply::Vote(response) => {
            w.u8(2);
            put_vote(&mut w, &response.vote);
            w.bool(response.vote_granted);
            put_opt_log_id(&mut w, response.last_log_id.as_ref());
        }
        Reply::Snapshot(response) => {
            w.u8(3);
            put_vote(&mut w, &response.vote);
        }
        Reply::Refused(why) => {
            w.u8(4);
            w.bytes(why.as_bytes());
        }
        Reply::Probe(answer) => {
            w.u8(5);
            w.u64(answer.term);
            w.bool(answer.leads);
            match answer.matched {
                None => w.u8(0),
                Some(index) => {
                    w.u8(1);
                    w.u64(index);
                }
            }
        }
    }
    w.bytes
}

pub fn decode_reply(bytes: &[u8]) -> Result<Reply> {
    let mut r = Reader::new(bytes);
    let reply = match r.u8()? {
        1 => Reply::Append(match r.u8()? {
            0 => AppendEntriesResponse::Success,
            1 => AppendEntriesResponse::PartialSuccess(get_opt_log_id(&mut r)?),
            2 => AppendEntriesResponse::Conflict,
            3 => AppendEntriesResponse::HigherVote(get_vote(&mut r)?),
            other => return bad(format!("append reply {other}")),
        }),
        2 => {
            let vote = get_vote(&mut r)?;
            let vote_granted = r.bool()?;
            let last_log_id = get_opt_log_id(&mut r)?;
            Reply::Vote(VoteResponse { vote, vote_granted, last_log_id })
        }
        3 => Reply::Snapshot(SnapshotResponse { vote: get_vote(&mut r)? }),
        4 => Reply::Refused(r.string()?),
        5 => {
            let term = r.u64()?;
            let leads = r.bool()?;
            let matched = match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                other => return bad(format!("probe answer's matched tag {other}")),
            };
            Reply::Probe(ProbeAnswer { term, leads, matched })
        }
        other => return bad(format!("reply kind {other}")),
    };
    r.end()?;
    Ok(reply)
}

/// One of every request and reply, for the tests and the fuzzers' seed corpus: not an API.
#[doc(hidden)]
pub mod examples {
    use super::*;

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode { addr: format!("127.0.0.1:{}", 7000 + id) }))
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
    }

    pub fn requests() -> Vec<Request> {
        let vote = Vote::new_committed(4, 2);
        vec![
            Request::Append(AppendEntriesRequest {
                vote,
                prev_log_id: Some(log_id(3, 1, 9)),
                leader_commit: None,
                entries: vec![
                    Entry { log_id: log_id(4, 2, 10), payload: EntryPayload::Blank },
                    Entry { log_id: log_id(4, 2, 11), payload: EntryPayload::Normal(vec![7; 5]) },
                    Entry {
                        log_id: log_id(4, 2, 12),
                        payload: EntryPayload::Membership(membership()),
                    },
                ],
            }),
            Request::Vote(VoteRequest { vote: Vote::new(5, 3), last_log_id: None }),
            Request::Snapshot {
                vote,
                meta: SnapshotMeta {
                    last_log_id: Some(log_id(4, 2, 12)),
                    last_membership: StoredMembership::new(Some(log_id(4, 2, 12)), membership()),
                    snapshot_id: "4-2-12".into(),
                },
                data: b"state".to_vec(),
            },
            Request::Probe { from: 3 },
        ]
    }

    pub fn replies() -> Vec<Reply> {
        vec![
            Reply::Append(AppendEntriesResponse::Success),
            Reply::Append(AppendEntriesResponse::PartialSuccess(Some(log_id(1, 1, 1)))),
            Reply::Append(AppendEntriesResponse::Conflict),
            Reply::Append(AppendEntriesResponse::HigherVote(Vote::new(9, 1))),
            Reply::Vote(VoteResponse {
                vote: Vote::new(2, 2),
                vote_granted: true,
                last_log_id: Some(log_id(1, 1, 3)),
            }),
            Reply::Snapshot(SnapshotResponse { vote: Vote::new_committed(2, 2) }),
            Reply::Refused("shutting down".into()),
            Reply::Probe(ProbeAnswer { term: 7, leads: true, matched: Some(41) }),
            Reply::Probe(ProbeAnswer { term: 2, leads: false, matched: None }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::examples::{replies, requests};
    use super::*;

    #[test]
    fn a_batch_is_its_commands_in_order_and_nothing_else() {
        let commands = vec![b"one".to_vec(), Vec::new(), vec![0; 300]];
        let bytes = encode_batch(&commands);
        assert_eq!(decode_batch(&bytes).unwrap(), commands);
        assert!(decode_batch(&encode_batch(&[])).unwrap().is_empty());
        for cut in 0..bytes.len() {
            assert!(decode_batch(&bytes[..cut]).is_err(), "a batch cut at {cut} is refused");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode_batch(&trailing).is_err());
        // A count of 2^32-1 commands in 4 bytes: refused before anything is reserved.
        assert!(decode_batch(&[255, 255, 255, 255]).is_err());
    }

    #[test]
    fn every_request_and_reply_survives_the_trip() {
        for request in requests() {
            let bytes = encode_request(&request);
            let back = decode_request(&bytes).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }
        for reply in replies() {
            let bytes = encode_reply(&reply);
            let back = decode_reply(&bytes).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{reply:?}"));
        }
    }

    #[test]
    fn every_prefix_and_every_flipped_byte_is_refused_or_decoded_without_panic() {
        for request in requests() {
            let bytes = encode_request(&request);
            for cut in 0..bytes.len() {
                assert!(decode_request(&bytes[..cut]).is_err(), "a prefix of {cut} bytes");
            }
            for i in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[i] ^= 0xA5;
                let _ = decode_request(&damaged);
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_request(&longer).is_err(), "trailing bytes");
        }
        for reply in replies() {
            let bytes = encode_reply(&reply);
            for cut in 0..bytes.len() {
                assert!(decode_reply(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn a_forged_count_is_refused_before_anything_is_reserved() {
        let mut w = Writer::default();
        w.u8(1);
        put_vote(&mut w, &Vote::new(1, 1));
        put_opt_log_id(&mut w, None);
        put_opt_log_id(&mut w, None);
        w.bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_request(&w.bytes).expect_err("four billion entries in no bytes");
        assert!(error.0.contains("cannot fit"), "{error}");
    }

    #[test]
    fn a_voter_without_an_address_is_refused() {
        let mut w = Writer::default();
        w.len(1);
        w.len(1);
        w.u64(5);
        w.len(0);
        let error = get_membership(&mut Reader::new(&w.bytes)).expect_err("voter 5 unknown");
        assert!(error.0.contains("voter 5"), "{error}");
    }
}
