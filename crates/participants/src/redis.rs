//! Redis as a participant: an open branch stages its writes; PREPARE is one Lua script that
//! checks every write can be applied, takes a lock on each key and records the writes under
//! the gid; COMMIT and ROLLBACK are idempotent scripts on that record.
//!
//! ```text
//!   statements   SET k v | DEL k | INCRBY k n | DECRBY k n      staged in the branch, not sent
//!   prepare      check durability (CONFIG GET) ─► script: locks free? writes apply? ─►
//!                concord:lock:{key} = gid (each key), concord:prepared:{gid} = {ops, at_ms}
//!   commit       script: check again, then apply every write, drop the locks and the record,
//!                concord:done:{gid} = committed (expires after the marker retention)
//!   rollback     script: drop the locks and the record
//!   recovery     SCAN concord:prepared:*
//! ```
//!
//! Redis runs a script alone and does not undo a script that fails half-way, so every script
//! checks everything first and writes only once nothing can fail. A prepare is only as durable
//! as Redis makes it: a YES needs `appendonly yes`, `appendfsync always` (the script's writes
//! are on disk before the answer) and `maxmemory-policy noeviction` (no prepared record or lock
//! is evicted); anything else is a NO that says why. The locks hold off other Concord branches
//! only: a client writing a locked key directly is not stopped, and a commit that finds its key
//! changed under it (no longer an integer, say) leaves the branch prepared and reports it
//! instead of applying half.

use ::redis::aio::MultiplexedConnection;
use concord_types::Decision;
use serde::Serialize;

use crate::database::{BranchState, Database, DbError, Finish, ListedBranch};

/// Keys under this prefix are Concord's own; statements may not touch them.
pub(crate) const RESERVED_PREFIX: &str = "concord:";
/// The longest key and value a statement may name.
const MAX_KEY_BYTES: usize = 1_024;
const MAX_VALUE_BYTES: usize = 1 << 20;
/// Integers stay exact in Redis's Lua (doubles) below this; INCRBY results are kept inside it.
const MAX_EXACT: i64 = 1 << 53;

#[derive(Debug)]
pub(crate) struct Redis {
    client: ::redis::Client,
}

/// One staged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Op {
    op: &'static str,
    key: String,
    /// SET: the value; INCRBY: the amount; DEL: empty.
    arg: String,
}

/// A connection, and the writes an open branch has staged on it.
#[derive(Debug)]
pub(crate) struct RedisConnection {
    pub(crate) conn: MultiplexedConnection,
    pub(crate) staged: Vec<Op>,
}

/// The words of a statement: separated by spaces; `"…"` keeps spaces, `\"` and `\\` escape.
fn words(statement: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = statement.chars().peekable();
    loop {
        while chars.peek().is_some_and(char::is_ascii_whitespace) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { return Ok(words) };
        let mut word = String::new();
        if first == '"' {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("an unclosed quote".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c @ ('"' | '\\')) => word.push(c),
                        _ => return Err("only \\\" and \\\\ escape inside quotes".into()),
                    },
                    Some(c) => word.push(c),
                }
            }
            if chars.peek().is_some_and(|c| !c.is_ascii_whitespace()) {
                return Err("a closing quote must end its word".into());
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_ascii_whitespace() {
                    break;
                }
                if c == '"' {
                    return Err("a quote inside a word".into());
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
}

fn amount(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|n| (1 - MAX_EXACT..MAX_EXACT).contains(n))
        .ok_or_else(|| format!("`{text}` is not an integer of magnitude below 2^53"))
}

/// A statement as the write it stages. Only these are accepted: `SET key value`, `DEL key`,
/// `INCRBY key n`, `DECRBY key n` (command names in any case).
pub(crate) fn parse(statement: &str) -> Result<Op, String> {
    let words = words(statement)?;
    let (command, rest) = words.split_first().ok_or("an empty statement")?;
    if !["SET", "DEL", "INCRBY", "DECRBY"].contains(&command.to_ascii_uppercase().as_str()) {
        let shown: String = command.chars().take(20).collect();
        return Err(format!("`{shown}` is not run here (SET, DEL, INCRBY and DECRBY are)"));
    }
    let key = rest.first().ok_or("no key")?.clone();
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("a key is 1 to {MAX_KEY_BYTES} bytes"));
    }
    if key.starts_with(RESERVED_PREFIX) {
        return Err(format!("keys under `{RESERVED_PREFIX}` are Concord's own"));
    }
    let args = &rest[1..];
    let op = match (command.to_ascii_uppercase().as_str(), args) {
        ("SET", [value]) if value.len() <= MAX_VALUE_BYTES => {
            Op { op: "set", key, arg: value.clone() }
        }
        ("SET", [_]) => return Err(format!("a value is at most {MAX_VALUE_BYTES} bytes")),
        ("DEL", []) => Op { op: "del", key, arg: String::new() },
        ("INCRBY", [n]) => Op { op: "incrby", key, arg: amount(n)?.to_string() },
        ("DECRBY", [n]) => Op { op: "incrby", key, arg: (-amount(n)?).to_string() },
        _ => {
            return Err(format!(
                "`{command}` takes {}",
                match command.to_ascii_uppercase().as_str() {
                    "SET" => "a key and a value",
                    "DEL" => "one key",
                    _ => "a key and an integer",
                }
            ))
        }
    };
    Ok(op)
}

fn record_key(gid: &str) -> String {
    format!("{RESERVED_PREFIX}prepared:{gid}")
}

fn done_key(gid: &str) -> String {
    format!("{RESERVED_PREFIX}done:{gid}")
}

/// Lua shared by prepare and commit: whether `ops` all apply to the keys as they are now,
/// as an error message or nil. INCRBY needs an integer (or no key) and a result that stays
/// exact; a SET or DEL earlier in the branch counts.
const CHECK_LUA: &str = r"
local function check(ops)
  local now = {}
  for _, op in ipairs(ops) do
    local value = now[op.key]
    if value == nil then
      local t = redis.call('TYPE', op.key).ok
      if t == 'none' then value = false
      elseif t == 'string' then value = redis.call('GET', op.key)
      else value = 'type:' .. t end
      now[op.key] = value
    end
    if op.op == 'set' then now[op.key] = op.arg
    elseif op.op == 'del' then now[op.key] = false
    elseif op.op == 'incrby' then
      local base = 0
      if value then
        if not string.match(value, '^-?%d+$') or string.len(value) > 17 then
          return 'key ' .. op.key .. ' does not hold an integer within 2^53'
        end
        base = tonumber(value)
      end
      local result = base + tonumber(op.arg)
      if result >= 9007199254740992 or result <= -9007199254740992 then
        return 'INCRBY on ' .. op.key .. ' would leave 2^53'
      end
      now[op.key] = tostring(result)
    end
  end
  return nil
end
";

/// KEYS[1] record; ARGV[1] gid, ARGV[2] ops (JSON).
const PREPARE_LUA: &str = r"
local gid = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'ops') == ARGV[2] then return 'prepared' end
  return redis.error_reply('CONCORD branch ' .. gid .. ' is already prepared with other writes')
end
if redis.call('EXISTS', 'concord:done:' .. gid) == 1 then
  return redis.error_reply('CONCORD branch ' .. gid .. ' has already finished')
end
local ops = cjson.decode(ARGV[2])
for _, op in ipairs(ops) do
  local holder = redis.call('GET', 'concord:lock:' .. op.key)
  if holder and holder ~= gid then
    return redis.error_reply('CONCORD key ' .. op.key .. ' is held by prepared branch ' .. holder)
  end
end
local problem = check(ops)
if problem then return redis.error_reply('CONCORD ' .. problem) end
for _, op in ipairs(ops) do redis.call('SET', 'concord:lock:' .. op.key, gid) end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'ops', ARGV[2], 'at_ms', t[1] * 1000 + math.floor(t[2] / 1000))
return 'prepared'
";

/// KEYS[1] record, KEYS[2] done marker; ARGV[1] gid, ARGV[2] marker retention (seconds).
const COMMIT_LUA: &str = r"
local ops_json = redis.call('HGET', KEYS[1], 'ops')
if not ops_json then return 'not-prepared' end
local ops = cjson.decode(ops_json)
local problem = check(ops)
if problem then
  return redis.error_reply('CONCORD cannot commit ' .. ARGV[1] .. ' (left prepared): ' .. problem .. ', changed outside Concord since the prepare')
end
for _, op in ipairs(ops) do
  if op.op == 'set' then redis.call('SET', op.key, op.arg)
  elseif op.op == 'del' then redis.call('DEL', op.key)
  else redis.call('INCRBY', op.key, op.arg) end
end
for _, op in ipairs(ops) do
  if redis.call('GET', 'concord:lock:' .. op.key) == ARGV[1] then
    redis.call('DEL', 'concord:lock:' .. op.key)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], 'committed', 'EX', ARGV[2])
return 'committed'
";

/// KEYS[1] record; ARGV[1] gid.
const ROLLBACK_LUA: &str = r"
local ops_json = redis.call('HGET', KEYS[1], 'ops')
if not ops_json then return 'not-prepared' end
for _, op in ipairs(cjson.decode(ops_json)) do
  if redis.call('GET', 'concord:lock:' .. op.key) == ARGV[1] then
    redis.call('DEL', 'concord:lock:' .. op.key)
  end
end
redis.call('DEL', KEYS[1])
return 'rolled-back'
";

fn script(body: &str) -> ::redis::Script {
    ::redis::Script::new(&format!("{CHECK_LUA}\n{body}"))
}

/// The server's message without the client library's wrapping.
fn server_says(e: &::redis::RedisError) -> String {
    let text = e.to_string();
    match text.split_once("CONCORD ") {
        Some((_, ours)) => ours.to_string(),
        None => text,
    }
}

impl Redis {
    pub(crate) fn new(url: &str) -> Result<Redis, String> {
        let client = ::redis::Client::open(url).map_err(|e| format!("url: {e}"))?;
        Ok(Redis { client })
    }

    pub(crate) async fn connect(&self, db: &Database) -> Result<RedisConnection, DbError> {
        let conn = db.bounded("connect", self.client.get_multiplexed_async_connection()).await?;
        Ok(RedisConnection { conn, staged: Vec::new() })
    }
}

/// Why this Redis cannot hold a prepared branch durably, if it cannot.
pub(crate) async fn durability_problem(
    db: &Database,
    conn: &mut MultiplexedConnection,
) -> Result<Option<String>, DbError> {
    // One round trip for the three settings (CONFIG GET takes one pattern before Redis 7).
    let mut pipe = ::redis::pipe();
    for name in ["appendonly", "appendfsync", "maxmemory-policy"] {
        pipe.cmd("CONFIG").arg("GET").arg(name);
    }
    let answers: Vec<Vec<String>> =
        db.bounded("CONFIG GET (durability check)", pipe.query_async(conn)).await?;
    let settings: Vec<String> =
        answers.iter().map(|pair| pair.get(1).cloned().unwrap_or_default()).collect();
    if settings.len() != 3 {
        return Ok(Some(format!("CONFIG GET answered {answers:?}")));
    }
    let problem = match (settings[0].as_str(), settings[1].as_str(), settings[2].as_str()) {
        ("yes", "always", "noeviction") => return Ok(None),
        (aof, _, _) if aof != "yes" => {
            format!("appendonly is `{aof}`: a prepared branch would not survive a Redis restart")
        }
        (_, fsync, _) if fsync != "always" => format!(
            "appendfsync is `{fsync}`: a prepared branch answered YES could be lost in a crash"
        ),
        (_, _, policy) => {
            format!("maxmemory-policy is `{policy}`: a prepared record or lock could be evicted")
        }
    };
    Ok(Some(format!(
        "{problem}; this Redis refuses to vote YES (set appendonly yes, appendfsync always, maxmemory-policy noeviction; docs/database-participants.md)"
    )))
}

pub(crate) async fn prepare(
    db: &Database,
    conn: &mut RedisConnection,
    gid: &str,
) -> Result<(), DbError> {
    let failed =
        |reason: String| DbError::Failed { database: db.name.clone(), what: "prepare", reason };
    if let Some(problem) = durability_problem(db, &mut conn.conn).await? {
        return Err(failed(problem));
    }
    let ops = serde_json::to_string(&conn.staged).expect("ops serialise");
    let script = script(PREPARE_LUA);
    let mut invocation = script.key(record_key(gid));
    invocation.arg(gid).arg(ops);
    let answer: Result<String, _> =
        tokio::time::timeout(db.timeout(), invocation.invoke_async(&mut conn.conn))
            .await
            .map_err(|_| failed(format!("no answer within {} ms", db.timeout().as_millis())))?;
    match answer {
        Ok(said) if said == "prepared" => Ok(()),
        Ok(other) => Err(failed(format!("unexpected answer `{other}`"))),
        Err(e) => Err(failed(server_says(&e))),
    }
}

pub(crate) async fn finish(
    db: &Database,
    conn: &mut RedisConnection,
    gid: &str,
    decision: Decision,
) -> Result<Finish, DbError> {
    let what = match decision {
        Decision::Commit => "commit",
        Decision::Abort => "rollback",
    };
    let failed = |reason: String| DbError::Failed { database: db.name.clone(), what, reason };
    let answer: Result<String, _> = match decision {
        Decision::Commit => {
            let script = script(COMMIT_LUA);
            let mut invocation = script.key(record_key(gid));
            invocation.key(done_key(gid)).arg(gid).arg(crate::database::MARKER_RETENTION_S);
            tokio::time::timeout(db.timeout(), invocation.invoke_async(&mut conn.conn)).await
        }
        Decision::Abort => {
            let script = script(ROLLBACK_LUA);
            let mut invocation = script.key(record_key(gid));
            invocation.arg(gid);
            tokio::time::timeout(db.timeout(), invocation.invoke_async(&mut conn.conn)).await
        }
    }
    .map_err(|_| failed(format!("no answer within {} ms", db.timeout().as_millis())))?;
    match answer.map_err(|e| failed(server_says(&e)))?.as_str() {
        "committed" | "rolled-back" => Ok(Finish::Done),
        "not-prepared" => Ok(Finish::NotPrepared),
        other => Err(failed(format!("unexpected answer `{other}`"))),
    }
}

pub(crate) async fn branch_state(
    db: &Database,
    conn: &mut RedisConnection,
    gid: &str,
) -> Result<BranchState, DbError> {
    let prepared: bool = db
        .bounded(
            "branch state",
            ::redis::cmd("EXISTS").arg(record_key(gid)).query_async(&mut conn.conn),
        )
        .await?;
    if prepared {
        return Ok(BranchState::Prepared);
    }
    let done: Option<String> = db
        .bounded("branch state", ::redis::cmd("GET").arg(done_key(gid)).query_async(&mut conn.conn))
        .await?;
    Ok(if done.as_deref() == Some("committed") {
        BranchState::Committed
    } else {
        BranchState::Absent
    })
}

/// Every prepared record (SCAN, a page at a time), with its age.
pub(crate) async fn list_prepared(
    db: &Database,
    conn: &mut RedisConnection,
) -> Result<Vec<ListedBranch>, DbError> {
    let (seconds, micros): (u64, u64) =
        db.bounded("TIME", ::redis::cmd("TIME").query_async(&mut conn.conn)).await?;
    let now_ms = seconds * 1_000 + micros / 1_000;
    let prefix = format!("{RESERVED_PREFIX}prepared:");
    let mut cursor = 0u64;
    let mut listed = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = db
            .bounded(
                "SCAN prepared branches",
                ::redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(format!("{prefix}*"))
                    .arg("COUNT")
                    .arg(1_000)
                    .query_async(&mut conn.conn),
            )
            .await?;
        for key in keys {
            let (at_ms, ops): (Option<u64>, Option<String>) = db
                .bounded(
                    "prepared branch",
                    ::redis::cmd("HMGET")
                        .arg(&key)
                        .arg("at_ms")
                        .arg("ops")
                        .query_async(&mut conn.conn),
                )
                .await?;
            let gid = key[prefix.len()..].to_string();
            let age_ms = at_ms.map(|at| now_ms.saturating_sub(at));
            listed.push(ListedBranch { gid, age_ms, locks: ops.map(|ops| locked_keys(&ops)) });
        }
        if next == 0 {
            return Ok(listed);
        }
        cursor = next;
    }
}

/// The keys a prepared record's writes lock (`concord:lock:{key}` each), from its `ops`.
fn locked_keys(ops: &str) -> Vec<String> {
    let ops: Vec<serde_json::Value> = serde_json::from_str(ops).unwrap_or_default();
    let mut keys: Vec<String> =
        ops.iter().filter_map(|op| Some(format!("key {}", op["key"].as_str()?))).collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prepared_records_locks_are_its_keys() {
        let ops = vec![
            Op { op: "set", key: "b".into(), arg: "1".into() },
            Op { op: "incrby", key: "a".into(), arg: "2".into() },
            Op { op: "del", key: "b".into(), arg: String::new() },
        ];
        let json = serde_json::to_string(&ops).unwrap();
        assert_eq!(locked_keys(&json), ["key a", "key b"]);
        assert!(locked_keys("not json").is_empty());
    }

    #[test]
    fn statements_are_the_four_writes_and_nothing_else() {
        let op =
            |op: &'static str, key: &str, arg: &str| Op { op, key: key.into(), arg: arg.into() };
        assert_eq!(parse("SET balance:bob 100"), Ok(op("set", "balance:bob", "100")));
        assert_eq!(
            parse("  set  note \"a \\\"quoted\\\" word\" "),
            Ok(op("set", "note", "a \"quoted\" word"))
        );
        assert_eq!(parse("DEL k"), Ok(op("del", "k", "")));
        assert_eq!(parse("incrby k -5"), Ok(op("incrby", "k", "-5")));
        assert_eq!(parse("DECRBY k 5"), Ok(op("incrby", "k", "-5")));
        for (statement, why) in [
            ("", "empty"),
            ("SET", "no key"),
            ("SET k", "a key and a value"),
            ("SET k v w", "a key and a value"),
            ("DEL k j", "one key"),
            ("INCRBY k x", "not an integer"),
            ("INCRBY k 9007199254740992", "2^53"),
            ("DECRBY k -9223372036854775808", "not an integer"),
            ("SET concord:lock:k x", "Concord's own"),
            ("FLUSHALL", "not run here"),
            ("EVAL \"return 1\" 0", "not run here"),
            ("SET k \"open", "unclosed"),
            ("SET k a\"b", "quote inside"),
            ("SET k \"a\"b", "closing quote"),
        ] {
            let e = parse(statement).unwrap_err();
            assert!(e.contains(why), "{statement:?}: {e}");
        }
        let long = format!("SET {} v", "k".repeat(MAX_KEY_BYTES + 1));
        assert!(parse(&long).unwrap_err().contains("1 to 1024"));
    }
}
