//! The pool rules of `domain::pool`, in Lua, one script per operation.
//!
//! Each operation's script touches the keys of one customer (one pool's session
//! hash, the customer's set of pools, tombstones, all under the customer's hash
//! tag), so it is atomic; beside them it reads the holding nodes' liveness keys
//! and writes the session-id index, which are in other hash slots: drisc runs
//! on one Redis, not on Redis Cluster. Time is the caller's `now` when given
//! (tests drive it), else Redis's own `TIME`, so the clocks of the nodes never
//! matter. Dead sessions are dropped first by every script: expiry never waits
//! for a sweep. The pool's hash expires by itself when its last session may, so
//! nothing has to scan for dead pools.
//!
//! The customer's set of pools (KEYS[2]) is a sorted set of offer ids, each
//! scored by the latest its pool's sessions may live, written by every script
//! that changes a pool. A pool scored at or below `now` is dead and dropped when
//! counted; one scored above may hold only sessions whose node stopped, so at
//! the cap the admission looks into each. That count caps the pools a customer
//! may hold.
//!
//! The records they keep and the replies they send are read by one codec,
//! [`super::record`]; a reply with more than one value is a JSON object, read by
//! field name. The keys they are given are built in [`super::keys`].

use crate::domain::PoolKey;

use super::keys;

/// Shared prologue. `@CONNECT@`, `@PONG@`, `@GRACE@`, `@TOMB@`, `@STALE@` and
/// `@EXTEND@` are replaced by milliseconds when the scripts are built, `@ALIVE@`
/// by the prefix of the nodes' liveness keys ([`keys::ALIVE_PREFIX`]), `@EPOCH@` by
/// the data-epoch key ([`keys::EPOCH`]).
///
/// A record is packed (`record.rs`): `state|expires|holder (hex)|created|name`.
/// A live record's own deadline is written when it is attached and then only
/// every `@EXTEND@` ms: between those writes, the holding node vouches for it
/// through its liveness key (rewritten every refresh round, deadline one PONG
/// timeout ahead), for at most `@STALE@` ms past the record's own deadline. So a
/// held session costs Redis nothing per PONG, and the sessions of a node that
/// stops die one PONG timeout after its last round, as they did when every PONG
/// was written. (The liveness keys are outside the customer's hash slot: drisc
/// runs on one Redis, not on Redis Cluster.)
const PRELUDE: &str = r#"
local pool, pools = KEYS[1], KEYS[2]
-- The pool's member in its customer's set of pools: its offer id.
local member = pools and pool:sub(#pools - 2)
local now = tonumber(ARGV[1])
if now == nil or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local CONNECT, PONG, GRACE, TOMB, STALE, EXTEND = @CONNECT@, @PONG@, @GRACE@, @TOMB@, @STALE@, @EXTEND@
local ALIVE = '@ALIVE@'
local EPOCH = '@EPOCH@'

local function decode(v)
  local s, e, h, c, n = string.match(v, '^(%a)|(%d+)|(%x*)|(%d+)|(.*)$')
  if s == nil then error('unreadable session record in ' .. pool) end
  return {s = s, e = tonumber(e), h = h, c = tonumber(c), n = n}
end

local function pack(rec)
  return rec.s .. '|' .. string.format('%d', rec.e) .. '|' .. rec.h .. '|' .. string.format('%d', rec.c) .. '|' .. rec.n
end

-- Until when each node vouches for its live sessions (0: it does not), read once a script.
local vouched = {}
local function node_until(h)
  local node = '0'
  if #h > 10 then node = h:sub(1, #h - 10) end
  local d = vouched[node]
  if d == nil then
    d = tonumber(redis.call('GET', ALIVE .. node) or '0') or 0
    vouched[node] = d
  end
  return d
end

-- Until when a record holds its slot: its own deadline, or for a live one as long
-- as its node vouches for it, within STALE of the deadline last written.
local function until_of(rec)
  if rec.s ~= 'l' or rec.h == '' then return rec.e end
  local horizon = rec.e + STALE
  if horizon <= now then return rec.e end
  return math.max(rec.e, math.min(node_until(rec.h), horizon))
end

-- The latest a record may hold its slot, whatever its node does: what the keys' TTLs cover.
local function horizon_of(rec)
  if rec.s == 'l' and rec.h ~= '' then return rec.e + STALE end
  return rec.e
end

-- The pool's sessions alive at `now`, in creation order; dead ones are deleted.
local function load()
  local raw = redis.call('HGETALL', pool)
  local live = {}
  for i = 1, #raw, 2 do
    local rec = decode(raw[i + 1])
    rec.id = raw[i]
    rec.till = until_of(rec)
    if rec.till <= now then
      redis.call('HDEL', pool, raw[i])
    else
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
  redis.call('HSET', pool, rec.id, pack(rec))
end

-- The hash lives as long as its longest-lived session may, and the customer's set
-- of pools scores it so; the set lives as long as its longest-lived pool.
local function settle()
  local last = 0
  for _, v in ipairs(redis.call('HVALS', pool)) do
    local h = horizon_of(decode(v))
    if h > last then last = h end
  end
  if last > 0 then
    redis.call('PEXPIREAT', pool, last + 1000)
    redis.call('ZADD', pools, last, member)
  else
    redis.call('ZREM', pools, member)
  end
  local top = redis.call('ZRANGE', pools, -1, -1, 'WITHSCORES')
  if top[2] then redis.call('PEXPIREAT', pools, tonumber(top[2]) + 1000) end
end

-- A pool's score is the latest its sessions may live: one whose live sessions'
-- node stopped may be scored ahead and hold nothing. Whether any session of the
-- customer's pool `m` is alive at `now`.
local function holds_any(m)
  local key = pools:sub(1, #pools - 5) .. 's:' .. m
  for _, v in ipairs(redis.call('HVALS', key)) do
    if until_of(decode(v)) > now then return true end
  end
  return false
end

local function encode(rec)
  return cjson.encode({id = rec.id, s = rec.s, e = rec.till or rec.e, h = rec.h, c = rec.c, n = rec.n})
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

/// KEYS[3]: the new session's index key. ARGV: now, id, name, limit, most pools
/// per customer, index value, index TTL (ms), the data epoch the node last saw
/// (empty: none yet), the household cap (empty: none). The index is written here, in the admission's own round
/// trip. Reply (JSON):
/// `{ok: "granted", now, live: [{id, h}]}`, `{ok: "full", held: [{id, n}]}`,
/// `{ok: "household", held: [{id, n}]}` (the customer's sessions across its
/// pools reach the household cap), `{ok: "too_many_pools"}` (the pool is empty and the customer holds sessions in
/// as many pools as allowed), or `{ok: "lost"}`: Redis is not in the epoch the
/// node knows (it restarted empty), so this node's held sessions may be missing
/// from the pool; the node puts them back first, then asks again.
const ADMIT: &str = r#"
if ARGV[8] ~= '' and redis.call('GET', EPOCH) ~= ARGV[8] then
  return cjson.encode({ok = 'lost'})
end
local live = load()
local limit = tonumber(ARGV[4])
if #live >= limit then
  local held = {}
  for _, rec in ipairs(live) do held[#held + 1] = {id = rec.id, n = rec.n} end
  settle()
  return cjson.encode({ok = 'full', held = held})
end
-- [household cap] ARGV[9]: the most sessions the customer may hold across all its
-- pools ('' or absent: no cap). Its pools share its hash slot: counted here, atomic
-- with the grant. Reply `{ok: "household", held: [{id, n}]}`, oldest first.
if ARGV[9] and ARGV[9] ~= '' then
  local held = {}
  for _, rec in ipairs(live) do held[#held + 1] = {id = rec.id, n = rec.n, c = rec.c} end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', pools, '(' .. now, '+inf')) do
    if m ~= member then
      -- The pool's key, derived as in holds_any.
      local raw = redis.call('HGETALL', pools:sub(1, #pools - 5) .. 's:' .. m)
      for i = 1, #raw, 2 do
        local rec = decode(raw[i + 1])
        if until_of(rec) > now then held[#held + 1] = {id = raw[i], n = rec.n, c = rec.c} end
      end
    end
  end
  if #held >= tonumber(ARGV[9]) then
    table.sort(held, function(a, b) if a.c == b.c then return a.id < b.id end return a.c < b.c end)
    for _, h in ipairs(held) do h.c = nil end
    settle()
    return cjson.encode({ok = 'household', held = held})
  end
end
-- [/household cap]
if #live == 0 then
  -- This session opens the pool: count the customer's pools alive at `now`.
  local most = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', pools, '-inf', now)
  if not redis.call('ZSCORE', pools, member) and redis.call('ZCARD', pools) >= most then
    -- At the cap: look whether each counted pool really holds a session.
    for _, m in ipairs(redis.call('ZRANGE', pools, 0, -1)) do
      if not holds_any(m) then redis.call('ZREM', pools, m) end
    end
    if redis.call('ZCARD', pools) >= most then
      settle()
      return cjson.encode({ok = 'too_many_pools'})
    end
  end
end
save({id = ARGV[2], s = 'p', e = now + CONNECT, h = '', c = now, n = ARGV[3]})
settle()
redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[7])
return cjson.encode({ok = 'granted', now = now, live = live_ones(live)})
"#;

/// KEYS[3]: the victim's tombstone, KEYS[4] its index key, KEYS[5] the new
/// session's index key. ARGV: now, victim id, new id, new name, index value,
/// index TTL (ms). Reply (JSON): `{ok: "gone"}` or
/// `{ok: "taken", now, victim: record, live: [{id, h}]}`.
const TAKE_OVER: &str = r#"
local live = load()
local index, victim = find(live, ARGV[2])
if victim == nil then return cjson.encode({ok = 'gone'}) end
table.remove(live, index)
redis.call('HDEL', pool, victim.id)
redis.call('SET', KEYS[3], 'T' .. ARGV[4], 'PX', TOMB)
save({id = ARGV[3], s = 'p', e = now + CONNECT, h = '', c = now, n = ARGV[4]})
settle()
redis.call('DEL', KEYS[4])
redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[6])
return cjson.encode({ok = 'taken', now = now, victim = victim, live = live_ones(live)})
"#;

/// ARGV: now, id, holder. Reply (JSON): `{ok: "gone"}`, or
/// `{ok: "attached", previous: holder or "", n: name, c: created}`.
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
return cjson.encode({ok = 'attached', previous = previous, n = rec.n, c = rec.c})
"#;

/// A node's liveness: KEYS[1] its key. ARGV: now. Until one PONG timeout from
/// now, the node vouches for the live sessions its sockets hold.
const VOUCH: &str = r#"
redis.call('SET', KEYS[1], string.format('%d', now + PONG), 'PX', PONG)
return 1
"#;

/// Checks many held sessions at once, in any pools: KEYS, three per session:
/// its pool, its customer's set of pools, its tombstone. ARGV: now, then per
/// session its id and holder. Reply: one code per session, `r` (held, and its
/// own deadline rewritten if older than EXTEND), `x` (another socket holds it),
/// or `g` followed by its tombstone, if any (it ended).
const CHECK: &str = r#"
local replies = {}
for i = 1, #KEYS / 3 do
  pool, pools = KEYS[3 * i - 2], KEYS[3 * i - 1]
  member = pool:sub(#pools - 2)
  local id, holder = ARGV[2 * i], ARGV[2 * i + 1]
  local v = redis.call('HGET', pool, id)
  local rec = v and decode(v)
  if not rec or until_of(rec) <= now then
    replies[i] = 'g' .. (redis.call('GET', KEYS[3 * i]) or '')
  elseif rec.h ~= holder then
    replies[i] = 'x'
  else
    if rec.e < now - EXTEND then
      rec.id, rec.e = id, now + PONG
      save(rec)
      local last = rec.e + STALE
      redis.call('PEXPIREAT', pool, last + 1000, 'GT')
      redis.call('ZADD', pools, 'GT', last, member)
      redis.call('PEXPIREAT', pools, last + 1000, 'GT')
    end
    replies[i] = 'r'
  end
end
return replies
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

/// KEYS[3]: the session's tombstone, KEYS[4] its index key. ARGV: now, id,
/// holder or "" (anyone), tombstone text or "" (none). Reply: the ended record,
/// or false.
const END: &str = r#"
local live = load()
local _, rec = find(live, ARGV[2])
if rec == nil or (ARGV[3] ~= '' and rec.h ~= ARGV[3]) then return false end
redis.call('HDEL', pool, rec.id)
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', TOMB) end
redis.call('DEL', KEYS[4])
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

/// ARGV: now, id, packed record (`e` or `c` 0: now, plus the live allowance for `e`).
/// Puts back a session unless the pool has it. Reply: 1 restored, 0 already there.
const RESTORE: &str = r#"
load()
local rec = decode(ARGV[3])
if rec.e == 0 then rec.e = now + PONG end
if rec.c == 0 then rec.c = now end
local added = redis.call('HSETNX', pool, ARGV[2], pack(rec))
settle()
return added
"#;

/// After the node could not vouch for longer than its liveness key lives (Redis
/// stalled, or was cut off from this node), puts back its held sessions of one
/// pool ([`super::refresh`]'s `reassert_after_outage`). KEYS[3..]: each
/// session's tombstone. ARGV: now, how far back (ms) the outage began, then per
/// session (oldest first) its id, holder and packed record (`e` 0: now plus the
/// live allowance). Reply, per session: `r` (still there, held by this socket),
/// `p` (put back), `x` (another socket holds it), `g` and the tombstone if any
/// (it ended), or `f`: not put back, as sessions admitted since the outage began
/// may have taken its slot.
///
/// The limit is not known here, yet holds: before the outage the pool held every
/// session now in it that is older than the outage, and every one of this node's
/// missing sessions, within the limit. So as many missing sessions come back as
/// there are missing ones, less one for each session admitted since: the newer
/// sessions keep their slots.
const REASSERT: &str = r#"
local live = load()
local since = now - tonumber(ARGV[2])
local newer = 0
for _, other in ipairs(live) do
  if other.c > since then newer = newer + 1 end
end
local replies, missing = {}, {}
for i = 1, (#ARGV - 2) / 3 do
  local id, holder = ARGV[3 * i], ARGV[3 * i + 1]
  local _, rec = find(live, id)
  if rec ~= nil then
    if rec.h == holder then replies[i] = 'r' else replies[i] = 'x' end
  else
    local tomb = redis.call('GET', KEYS[2 + i])
    if tomb then replies[i] = 'g' .. tomb else missing[#missing + 1] = i end
  end
end
for n, i in ipairs(missing) do
  if n <= #missing - newer then
    local back = decode(ARGV[3 * i + 2])
    if back.e == 0 then back.e = now + PONG end
    redis.call('HSET', pool, ARGV[3 * i], pack(back))
    replies[i] = 'p'
  else
    replies[i] = 'f'
  end
end
settle()
return replies
"#;

/// How long past its own deadline a live record may be vouched for by its node
/// (an hour): the keys' TTLs cover it, so a pool whose node stopped is gone from
/// Redis's memory within it even if nobody touches it again.
pub const STALE_MS: u64 = 3_600_000;

/// How old a live record's own deadline may grow before a check rewrites it (20
/// minutes, well inside [`STALE_MS`]).
pub const EXTEND_MS: u64 = 1_200_000;

pub struct Scripts {
    pub admit: redis::Script,
    pub take_over: redis::Script,
    pub attach: redis::Script,
    pub vouch: redis::Script,
    pub check: redis::Script,
    pub detach: redis::Script,
    pub end: redis::Script,
    pub end_all: redis::Script,
    pub list: redis::Script,
    pub restore: redis::Script,
    pub reassert: redis::Script,
}

impl Scripts {
    /// Every script, to be loaded into Redis at once.
    pub fn all(&self) -> [&redis::Script; 11] {
        [
            &self.admit,
            &self.take_over,
            &self.attach,
            &self.vouch,
            &self.check,
            &self.detach,
            &self.end,
            &self.end_all,
            &self.list,
            &self.restore,
            &self.reassert,
        ]
    }

    /// Builds the scripts with the lifecycle timings (ms) baked in.
    pub fn new(connect_ms: u64, pong_ms: u64, grace_ms: u64, tombstone_ms: u64) -> Self {
        let prelude = PRELUDE
            .replace("@CONNECT@", &connect_ms.to_string())
            .replace("@PONG@", &pong_ms.max(1).to_string())
            .replace("@GRACE@", &grace_ms.to_string())
            .replace("@TOMB@", &tombstone_ms.max(1).to_string())
            .replace("@STALE@", &STALE_MS.to_string())
            .replace("@EXTEND@", &EXTEND_MS.to_string())
            .replace("@ALIVE@", keys::ALIVE_PREFIX)
            .replace("@EPOCH@", keys::EPOCH);
        let build = |body: &str| redis::Script::new(&format!("{prelude}{body}"));
        Self {
            admit: build(ADMIT),
            take_over: build(TAKE_OVER),
            attach: build(ATTACH),
            vouch: build(VOUCH),
            check: build(CHECK),
            detach: build(DETACH),
            end: build(END),
            end_all: build(END_ALL),
            list: build(LIST),
            restore: build(RESTORE),
            reassert: build(REASSERT),
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
