//! The pool rules of `domain::pool`, in Lua, one script per operation.
//!
//! Each script touches the keys of one customer only: one pool's session hash,
//! the customer's set of pools, and tombstones, all under the customer's hash
//! tag, so it is atomic and works on Redis Cluster. Time is the caller's `now`
//! when given (tests drive it), else Redis's own `TIME`, so the clocks of the
//! nodes never matter. Dead sessions are dropped first by every script: expiry
//! never waits for a sweep. The pool's hash expires by itself when its last
//! session would, so nothing has to scan for dead pools.
//!
//! The customer's set of pools (KEYS[2]) is a sorted set: each pool scored by
//! the expiry of its longest-lived session, written by every script that
//! changes a pool. A pool scored above `now` holds a live session; the others
//! are dropped when counted. That count caps the pools a customer may hold.
//!
//! The records they keep and the replies they send are read by one codec,
//! [`super::record`]; a reply with more than one value is a JSON object, read by
//! field name. The keys they are given are built in [`super::keys`].

use crate::domain::PoolKey;

use super::keys;

/// Shared prologue. `@CONNECT@`, `@PONG@`, `@GRACE@` and `@TOMB@` are replaced by
/// milliseconds when the scripts are built.
const PRELUDE: &str = r#"
local pool, pools = KEYS[1], KEYS[2]
local now = tonumber(ARGV[1])
if now == nil or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local CONNECT, PONG, GRACE, TOMB = @CONNECT@, @PONG@, @GRACE@, @TOMB@

-- The pool's sessions alive at `now`, in creation order; dead ones are deleted.
local function load()
  local raw = redis.call('HGETALL', pool)
  local live = {}
  for i = 1, #raw, 2 do
    local rec = cjson.decode(raw[i + 1])
    if rec.e <= now then
      redis.call('HDEL', pool, raw[i])
    else
      rec.id = raw[i]
      live[#live + 1] = rec
    end
  end
  table.sort(live, function(a, b) if a.c == b.c then return a.id < b.id end return a.c < b.c end)
  return live
end

local function find(live, id)
  for i, rec in ipairs(live) do
    if rec.id == id then return i, rec end
  end
  return nil, nil
end

local function save(rec)
  redis.call('HSET', pool, rec.id, cjson.encode({s = rec.s, e = rec.e, h = rec.h, c = rec.c, n = rec.n}))
end

-- The hash lives as long as its longest-lived session, and the customer's set of
-- pools scores it so; the set lives as long as its longest-lived pool.
local function settle()
  local last = 0
  for _, v in ipairs(redis.call('HVALS', pool)) do
    local e = cjson.decode(v).e
    if e > last then last = e end
  end
  if last > 0 then
    redis.call('PEXPIREAT', pool, last + 1000)
    redis.call('ZADD', pools, last, pool)
  else
    redis.call('ZREM', pools, pool)
  end
  local top = redis.call('ZRANGE', pools, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIREAT', pools, tonumber(top[2]) + 1000) end
end

local function encode(rec)
  return cjson.encode({id = rec.id, s = rec.s, e = rec.e, h = rec.h, c = rec.c, n = rec.n})
end

-- The pool's live sessions and their sockets, to be pinged.
local function live_ones(live)
  local held = {}
  for _, rec in ipairs(live) do
    if rec.s == 'l' and rec.h ~= '' then held[#held + 1] = {id = rec.id, h = rec.h} end
  end
  return held
end
"#;

/// ARGV: now, id, name, limit, most pools per customer. Reply (JSON):
/// `{ok: "granted", now, live: [{id, h}]}`, `{ok: "full", held: [{id, n}]}`, or
/// `{ok: "too_many_pools"}` (the pool is empty and the customer holds sessions in
/// as many pools as allowed).
const ADMIT: &str = r#"
local live = load()
local limit = tonumber(ARGV[4])
if #live >= limit then
  local held = {}
  for _, rec in ipairs(live) do held[#held + 1] = {id = rec.id, n = rec.n} end
  settle()
  return cjson.encode({ok = 'full', held = held})
end
if #live == 0 then
  -- This session opens the pool: count the customer's pools alive at `now`.
  redis.call('ZREMRANGEBYSCORE', pools, '-inf', now)
  if not redis.call('ZSCORE', pools, pool) and redis.call('ZCARD', pools) >= tonumber(ARGV[5]) then
    settle()
    return cjson.encode({ok = 'too_many_pools'})
  end
end
save({id = ARGV[2], s = 'p', e = now + CONNECT, h = '', c = now, n = ARGV[3]})
settle()
return cjson.encode({ok = 'granted', now = now, live = live_ones(live)})
"#;

/// KEYS[3]: the victim's tombstone. ARGV: now, victim id, new id, new name.
/// Reply (JSON): `{ok: "gone"}` or `{ok: "taken", now, victim: record, live: [{id, h}]}`.
const TAKE_OVER: &str = r#"
local live = load()
local index, victim = find(live, ARGV[2])
if victim == nil then return cjson.encode({ok = 'gone'}) end
table.remove(live, index)
redis.call('HDEL', pool, victim.id)
redis.call('SET', KEYS[3], 'T' .. ARGV[4], 'PX', TOMB)
save({id = ARGV[3], s = 'p', e = now + CONNECT, h = '', c = now, n = ARGV[4]})
settle()
return cjson.encode({ok = 'taken', now = now, victim = victim, live = live_ones(live)})
"#;

/// ARGV: now, id, holder. Reply (JSON): `{ok: "gone"}`, or
/// `{ok: "attached", previous: holder or "", n: name}`.
const ATTACH: &str = r#"
local live = load()
local _, rec = find(live, ARGV[2])
if rec == nil then return cjson.encode({ok = 'gone'}) end
local previous = rec.h
if previous == ARGV[3] then previous = '' end
rec.h = ARGV[3]
rec.s = 'l'
rec.e = now + PONG
save(rec)
settle()
return cjson.encode({ok = 'attached', previous = previous, n = rec.n})
"#;

/// KEYS[3]: the session's tombstone. ARGV: now, id, holder. Reply (JSON):
/// `{ok: "refreshed"}`, `{ok: "elsewhere"}` (another socket holds it), or
/// `{ok: "gone", tombstone: text or ""}`.
const HEARTBEAT: &str = r#"
local live = load()
local _, rec = find(live, ARGV[2])
if rec == nil then
  return cjson.encode({ok = 'gone', tombstone = redis.call('GET', KEYS[3]) or ''})
end
if rec.h ~= ARGV[3] then return cjson.encode({ok = 'elsewhere'}) end
rec.e = now + PONG
save(rec)
settle()
return cjson.encode({ok = 'refreshed'})
"#;

/// ARGV: now, id, holder. Reply: 1 detached, 0 not held by this socket.
const DETACH: &str = r#"
local live = load()
local _, rec = find(live, ARGV[2])
if rec == nil or rec.h ~= ARGV[3] then return 0 end
rec.h = ''
rec.s = 'd'
rec.e = now + GRACE
save(rec)
settle()
return 1
"#;

/// KEYS[3]: the session's tombstone. ARGV: now, id, holder or "" (anyone),
/// tombstone text or "" (none). Reply: the ended record, or false.
const END: &str = r#"
local live = load()
local _, rec = find(live, ARGV[2])
if rec == nil or (ARGV[3] ~= '' and rec.h ~= ARGV[3]) then return false end
redis.call('HDEL', pool, rec.id)
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', TOMB) end
settle()
return encode(rec)
"#;

/// ARGV: now. Reply: the records alive at `now`.
const LIST: &str = r#"
local live = load()
local reply = {}
for _, rec in ipairs(live) do reply[#reply + 1] = encode(rec) end
return reply
"#;

/// ARGV: now, the prefix of the customer's tombstone keys ([`keys::tombstone_prefix`]).
/// Ends every session of the pool at once, each leaving an "E" tombstone (in the
/// customer's slot, like every key here) so its holder learns why even if the
/// order is lost. Reply: the ended records.
const END_ALL: &str = r#"
local live = load()
local reply = {}
for _, rec in ipairs(live) do
  redis.call('HDEL', pool, rec.id)
  redis.call('SET', ARGV[2] .. rec.id, 'E', 'PX', TOMB)
  reply[#reply + 1] = encode(rec)
end
settle()
return reply
"#;

/// ARGV: now, id, record JSON (`e` or `c` 0: now, plus the live allowance for `e`).
/// Puts back a session unless the pool has it. Reply: 1 restored, 0 already there.
const RESTORE: &str = r#"
load()
local rec = cjson.decode(ARGV[3])
if rec.e == 0 then rec.e = now + PONG end
if rec.c == 0 then rec.c = now end
local added = redis.call('HSETNX', pool, ARGV[2], cjson.encode(rec))
settle()
return added
"#;

pub struct Scripts {
    pub admit: redis::Script,
    pub take_over: redis::Script,
    pub attach: redis::Script,
    pub heartbeat: redis::Script,
    pub detach: redis::Script,
    pub end: redis::Script,
    pub end_all: redis::Script,
    pub list: redis::Script,
    pub restore: redis::Script,
}

impl Scripts {
    /// Builds the scripts with the lifecycle timings (ms) baked in.
    pub fn new(connect_ms: u64, pong_ms: u64, grace_ms: u64, tombstone_ms: u64) -> Self {
        let prelude = PRELUDE
            .replace("@CONNECT@", &connect_ms.to_string())
            .replace("@PONG@", &pong_ms.to_string())
            .replace("@GRACE@", &grace_ms.to_string())
            .replace("@TOMB@", &tombstone_ms.max(1).to_string());
        let build = |body: &str| redis::Script::new(&format!("{prelude}{body}"));
        Self {
            admit: build(ADMIT),
            take_over: build(TAKE_OVER),
            attach: build(ATTACH),
            heartbeat: build(HEARTBEAT),
            detach: build(DETACH),
            end: build(END),
            end_all: build(END_ALL),
            list: build(LIST),
            restore: build(RESTORE),
        }
    }
}

/// An invocation of `script` on `pool`, with the keys every script takes first:
/// the pool's hash and its customer's set of pools.
pub(crate) fn on_pool<'a>(script: &'a redis::Script, pool: &PoolKey) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.prepare_invoke();
    invocation.key(keys::pool(pool)).key(keys::pools(pool));
    invocation
}
