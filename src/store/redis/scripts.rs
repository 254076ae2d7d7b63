//! The pool rules of `domain::pool`, in Lua, one script per operation.
//!
//! Each script touches the keys of one shard ([`super::keys`]): the customer's
//! hash of sessions (every offer's), the shard's session index, the shard's
//! liveness keys and epoch, tombstones. They share one hash slot, so each
//! script is atomic on a single Redis and on a Redis Cluster alike. Time is the
//! caller's `now` when given (tests drive it), else Redis's own `TIME`, so the
//! clocks of the nodes never matter. A dead session never holds a slot: every
//! script reads a record past its deadline as gone. Only the scripts that say
//! which ones they deleted (admit, take-over, attach, and the purge that walks a
//! shard's index, [`super::purge`]) delete dead records, so that the node running
//! them reports each one's end, once; the others leave them for those. A live
//! record whose node stopped vouching is first marked lost (`x`) and deleted
//! and reported only `cluster.node_lost_after` later, so that a node cut off
//! and back within that time puts it back with nothing reported (`fate_of`). A
//! customer's hash outlives its last session's horizon by [`LINGER_MS`], long
//! enough for a purge round to meet a record that died with no socket before
//! Redis forgets it.
//!
//! A pool is the customer's records whose offer is the pool's. The cap on
//! pools per customer counts the distinct offers of the customer's live
//! records: exact, with no set of pools to keep in step.
//!
//! The records they keep and the replies they send are read by one codec,
//! [`super::record`]; a reply with more than one value is a JSON object, read by
//! field name. The keys they are given are built in [`super::keys`].

use crate::domain::PoolKey;

use super::keys;

/// The time every script reads first: ARGV[1], the caller's `now` (0: Redis's
/// own clock), and the lifecycle timings. `@CONNECT@`, `@PONG@`, `@GRACE@`,
/// `@TOMB@`, `@STALE@`, `@EXTEND@`, `@LINGER@` and `@LOST_AFTER@` are replaced by milliseconds
/// when the scripts are built.
const NOW: &str = r#"
local now = tonumber(ARGV[1])
if now == nil or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local CONNECT, PONG, GRACE, TOMB, STALE, EXTEND = @CONNECT@, @PONG@, @GRACE@, @TOMB@, @STALE@, @EXTEND@
local LINGER, LOST_AFTER = @LINGER@, @LOST_AFTER@
"#;

/// The prologue of the scripts on a pool: KEYS[1] the customer's hash, KEYS[2]
/// what the shard's index buckets start with ([`keys::index_prefix`]), KEYS[3]
/// what the shard's liveness keys start with ([`keys::alive_prefix`]; both in
/// the shard's slot, so they route like keys); ARGV[1] now, ARGV[2] the pool's
/// offer. Session ids are compact ([`keys::compact`]); `ix_of` names the
/// bucket of one as `keys::index` does.
///
/// A record is packed (`record.rs`): `state|expires (base 36)|holder
/// (hex)|created (base 36)|offer length|offer|name`. A live record's own deadline is written when it is
/// attached and then only every `@EXTEND@` ms: between those writes, the
/// holding node vouches for it through its liveness key in the shard
/// (rewritten by its refresh rounds, living one PONG timeout), for at
/// most `@STALE@` ms past the record's own deadline. So a held session costs
/// Redis nothing per PONG, and the sessions of a node that stops die one PONG
/// timeout after its last vouch.
const PRELUDE: &str = r#"
local cust, ixp, alive = KEYS[1], KEYS[2], KEYS[3]
local MOVED = '@MOVED@'
local offer = ARGV[2]

-- The index bucket of a compact id: its first character's value modulo BUCKETS.
local BUCKETS = @BUCKETS@
local B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
local function ix_of(id)
  local v = B64:find(id:sub(1, 1), 1, true) or 1
  return ixp .. ((v - 1) % BUCKETS)
end

local B36 = '0123456789abcdefghijklmnopqrstuvwxyz'
local function b36(n)
  n = math.floor(n)
  if n <= 0 then return '0' end
  local out = ''
  while n > 0 do
    local d = n % 36
    out = B36:sub(d + 1, d + 1) .. out
    n = (n - d) / 36
  end
  return out
end

local function decode(v)
  local s, e, h, c, ol, rest = string.match(v, '^(%a)|(%w+)|(%x*)|(%w+)|(%d+)|(.*)$')
  if s == nil then error('unreadable session record in ' .. cust) end
  ol = tonumber(ol)
  if rest:sub(ol + 1, ol + 1) ~= '|' then error('unreadable session record in ' .. cust) end
  return {s = s, e = tonumber(e, 36), h = h, c = tonumber(c, 36), o = rest:sub(1, ol), n = rest:sub(ol + 2)}
end

local function pack(rec)
  return rec.s .. '|' .. b36(rec.e) .. '|' .. rec.h .. '|' .. b36(rec.c)
    .. '|' .. #rec.o .. '|' .. rec.o .. '|' .. rec.n
end

-- The node a socket id names: its hex digits above the socket's 40 bits.
local function node_of(h)
  if #h > 10 then return h:sub(1, #h - 10) end
  return '0'
end

-- Until when each node vouches for its live sessions in the shard (0: it does
-- not), read once a script.
local vouched = {}
local function node_until(h)
  local node = node_of(h)
  local d = vouched[node]
  if d == nil then
    local v = redis.call('GET', alive .. node)
    -- MOVED: set with Redis's clock, and flagged by `flag_moved`.
    if v == 'r' or v == MOVED then
      -- Set with Redis's clock: vouched for as long as the key lives.
      local ttl = redis.call('PTTL', alive .. node)
      d = 0
      if ttl > 0 then d = now + ttl end
    else
      d = tonumber(v or '0') or 0
    end
    vouched[node] = d
  end
  return d
end

-- The session `id`, held by socket `h`, ended or moved, and `by` (the node
-- running this script, '' if unknown) is not the node holding it: that node's
-- liveness key in the shard is flagged (MOVED), keeping its TTL, and the id is
-- added to the node's set of moved sessions there (`keys::moved`, living one
-- PONG timeout: the holder pops it within a third of one, or its key has run
-- out and it checks every session there anyway). The node's next vouch (`SET …
-- XX GET`, which reads the old value and writes 'r' in one command) reads the
-- flag, and the node checks those sessions that round: a lost order costs one
-- vouch period, and one HGET per session moved, not per session held there.
-- Only a key set with Redis's clock ('r') is flagged: one holding the caller's
-- deadline (tests) is read as a number by `node_until`, and its node checks
-- every session once a minute.
local function flag_moved(h, by, id)
  if h == nil or h == '' then return end
  local node = node_of(h)
  if node == by then return end
  local v = redis.call('GET', alive .. node)
  if v ~= 'r' and v ~= MOVED then return end
  local set = alive .. node .. ':moved'
  redis.call('SADD', set, id)
  redis.call('PEXPIRE', set, PONG)
  if v == 'r' then redis.call('SET', alive .. node, MOVED, 'KEEPTTL', 'XX') end
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
  if rec.s == 'x' then return rec.e + LOST_AFTER end
  return rec.e
end

-- Keeps `key` (if it exists) until `at` at least.
local function keep_until(key, at)
  local t = redis.call('PEXPIRETIME', key)
  if t == -1 or (t >= 0 and t < at) then redis.call('PEXPIREAT', key, at) end
end

-- Why a dead record died, as `EndCause` names it: no node ends these, so the
-- script that deletes them says why (a live one whose node stopped vouching lost
-- its node; one still vouched for outlived its horizon unchecked).
local function why_dead(rec)
  if rec.s == 'x' then return 'node_lost' end
  if rec.s == 'p' then return 'connect_timeout' end
  if rec.s == 'd' then return 'grace_expired' end
  if rec.h ~= '' and node_until(rec.h) <= now then return 'node_lost' end
  return 'expired'
end

-- What to do with a dead record a script that reports ends meets: 'mark' a
-- live one whose node stopped vouching (state 'x', `e` the time it was marked:
-- it holds no slot, and stays in the hash and the index), 'wait' with one
-- marked less than LOST_AFTER ago, else 'report' it (delete it and name its
-- end). Its node, cut off from Redis or frozen rather than gone, may still come
-- back within LOST_AFTER and put it back (REASSERT), with nothing reported; a
-- node whose outage lasted longer puts back nothing.
local function fate_of(rec)
  if rec.s == 'x' then
    if now < rec.e + LOST_AFTER then return 'wait' end
    return 'report'
  end
  if why_dead(rec) == 'node_lost' then return 'mark' end
  return 'report'
end

local function mark_lost(rec)
  rec.s, rec.e = 'x', now
  redis.call('HSET', cust, rec.id, pack(rec))
end

-- The dead records `load` deleted ({id, o, n, c}: c the cause), for the reply:
-- the node that freed their slots reports their end.
local purged = {}

-- Set by the scripts whose reply cannot name the dead records (detach, end,
-- list, end-all, restore, re-assert): `load` leaves those records in place for
-- a script that reports them (an admission, or the purge), rather than delete
-- them unreported.
local keep_dead = false

-- A JSON reply, naming the dead sessions `load` deleted (`gone`, when any): the
-- one way every script whose reply is JSON (admit, take-over, attach) says so.
local function answer(t)
  if #purged > 0 then t.gone = purged end
  return cjson.encode(t)
end

-- The customer's sessions alive at `now` (dead ones are deleted, with their
-- index entries): the pool's, in creation order, and all of them.
local function load()
  local raw = redis.call('HGETALL', cust)
  local mine, all = {}, {}
  for i = 1, #raw, 2 do
    local rec = decode(raw[i + 1])
    rec.id = raw[i]
    rec.till = until_of(rec)
    if rec.till <= now then
      if not keep_dead then
        local fate = fate_of(rec)
        if fate == 'mark' then
          mark_lost(rec)
        elseif fate == 'report' then
          redis.call('HDEL', cust, rec.id)
          redis.call('HDEL', ix_of(rec.id), rec.id)
          purged[#purged + 1] = {id = rec.id, o = rec.o, n = rec.n, c = why_dead(rec)}
        end
      end
    else
      all[#all + 1] = rec
      if rec.o == offer then mine[#mine + 1] = rec end
    end
  end
  table.sort(mine, function(a, b) if a.c == b.c then return a.id < b.id end return a.c < b.c end)
  return mine, all
end

local function find(live, id)
  for i, rec in ipairs(live) do
    if rec.id == id then return i, rec end
  end
  return nil, nil
end

local function save(rec)
  redis.call('HSET', cust, rec.id, pack(rec))
end

-- The customer's hash lives as long as its longest-lived session may, and the
-- index buckets naming its sessions at least as long, both LINGER more: a session
-- that dies with no socket (granted and never connected, detached past its grace)
-- is still there for the next purge round to report.
local function settle()
  local last, buckets = 0, {}
  local raw = redis.call('HGETALL', cust)
  for i = 1, #raw, 2 do
    local h = horizon_of(decode(raw[i + 1]))
    if h > last then last = h end
    buckets[ix_of(raw[i])] = true
  end
  if last > 0 then
    redis.call('PEXPIREAT', cust, last + LINGER)
    for bucket in pairs(buckets) do keep_until(bucket, last + LINGER) end
  end
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

/// KEYS[4]: the shard's epoch. ARGV (after now, offer): id, name, limit, most
/// pools per customer, the customer's tag (the index's value), the shard's
/// epoch the node last saw (empty: none yet), a new epoch should the shard
/// have none, the household cap (empty: none). The index is written here, in
/// the admission's own round trip. Reply (JSON):
/// `{ok: "granted", now, live: [{id, h}], others: how many sessions the pool held beside it, epoch}`,
/// `{ok: "full", held: [{id, n}]}`,
/// `{ok: "household", held: [{id, n}]}` (the customer's sessions across its
/// pools reach the household cap),
/// `{ok: "too_many_pools"}` (the pool is empty and the customer holds sessions in
/// as many pools as allowed), each with `gone: [{id, o, n, c}]` when it deleted
/// dead sessions of the customer (`c`: why they died, an `EndCause`), or `{ok: "lost", epoch}`: the shard is not in the epoch
/// the node knows (its Redis restarted empty), so this node's held sessions may
/// be missing from it; the node puts them back first, then asks again.
///
/// Each admission also looks at three entries of its index bucket at random and drops those
/// whose session is gone from its customer's hash (a customer's hash that
/// expired by itself took its sessions with it, but not their entries): the
/// index then holds at most about half as many stale entries as live ones.
const ADMIT: &str = r#"
local ep = redis.call('GET', KEYS[4])
if not ep then
  ep = ARGV[9]
  redis.call('SET', KEYS[4], ep)
end
if ARGV[8] ~= '' and ep ~= ARGV[8] then
  return cjson.encode({ok = 'lost', epoch = ep})
end
local mine, all = load()
if #mine >= tonumber(ARGV[5]) then
  local held = {}
  for _, rec in ipairs(mine) do held[#held + 1] = {id = rec.id, n = rec.n} end
  settle()
  return answer({ok = 'full', held = held})
end
-- [household cap] ARGV[10]: the most sessions the customer may hold across all its
-- pools ('' or absent: no cap). They are all in its one hash: counted here, atomic
-- with the grant. Reply `{ok: "household", held: [{id, n}]}`, oldest first.
if ARGV[10] and ARGV[10] ~= '' and #all >= tonumber(ARGV[10]) then
  local held = {}
  for _, rec in ipairs(all) do held[#held + 1] = {id = rec.id, n = rec.n, c = rec.c} end
  table.sort(held, function(a, b) if a.c == b.c then return a.id < b.id end return a.c < b.c end)
  for _, h in ipairs(held) do h.c = nil end
  settle()
  return answer({ok = 'household', held = held})
end
-- [/household cap]
if #mine == 0 then
  -- This session opens the pool: count the customer's pools alive at `now`.
  local offers, n = {}, 0
  for _, rec in ipairs(all) do
    if not offers[rec.o] then
      offers[rec.o] = true
      n = n + 1
    end
  end
  if n >= tonumber(ARGV[6]) then
    settle()
    return answer({ok = 'too_many_pools'})
  end
end
save({id = ARGV[3], s = 'p', e = now + CONNECT, h = '', c = now, o = offer, n = ARGV[4]})
local ix = ix_of(ARGV[3])
redis.call('HSET', ix, ARGV[3], ARGV[7])
settle()
local prefix = cust:sub(1, #cust - #ARGV[7])
local sample = redis.call('HRANDFIELD', ix, 3, 'WITHVALUES')
for i = 1, #sample, 2 do
  if redis.call('HEXISTS', prefix .. sample[i + 1], sample[i]) == 0 then
    redis.call('HDEL', ix, sample[i])
  end
end
return answer({ok = 'granted', now = now, live = live_ones(mine), others = #mine, epoch = ep})
"#;

/// KEYS[4]: the victim's tombstone. ARGV (after now, offer): victim id, new id,
/// new name, the customer's tag, the node running it (hex; '' unknown: the
/// victim's holder is flagged whatever its node). Reply (JSON): `{ok: "gone"}` or
/// `{ok: "taken", now, victim: record, live: [{id, h}], others: how many sessions
/// are left beside the new one}`, each with `gone` as
/// the admit script's.
const TAKE_OVER: &str = r#"
local mine = load()
local index, victim = find(mine, ARGV[3])
if victim == nil then return answer({ok = 'gone'}) end
flag_moved(victim.h, ARGV[7] or '', victim.id)
table.remove(mine, index)
redis.call('HDEL', cust, victim.id)
redis.call('HDEL', ix_of(victim.id), victim.id)
redis.call('SET', KEYS[4], 'T' .. ARGV[5], 'PX', TOMB)
save({id = ARGV[4], s = 'p', e = now + CONNECT, h = '', c = now, o = offer, n = ARGV[5]})
redis.call('HSET', ix_of(ARGV[4]), ARGV[4], ARGV[6])
settle()
return answer({ok = 'taken', now = now, victim = victim, live = live_ones(mine), others = #mine})
"#;

/// KEYS[4]: the shard's epoch. ARGV (after now, offer): id, holder. Reply
/// (JSON): `{ok: "gone"}`, or `{ok: "attached", previous: holder or "", n:
/// name, c: created, epoch: the shard's epoch or ""}`, each with `gone` as the
/// admit script's.
const ATTACH: &str = r#"
local mine = load()
local _, rec = find(mine, ARGV[3])
if rec == nil then return answer({ok = 'gone'}) end
local previous = rec.h
if previous == ARGV[4] then previous = '' end
-- The socket attaching is of the node running this script.
flag_moved(previous, node_of(ARGV[4]), rec.id)
rec.h = ARGV[4]
rec.s = 'l'
rec.e = now + PONG
save(rec)
settle()
return answer({ok = 'attached', previous = previous, n = rec.n, c = rec.c,
  epoch = redis.call('GET', KEYS[4]) or ''})
"#;

/// Checks many held sessions of one shard at once, in any pools: KEYS[1] the
/// shard's epoch, KEYS[2] its index prefix, KEYS[3] its liveness prefix, then two per
/// session: its customer's hash, its tombstone. ARGV: now, the shard's epoch
/// the node last saw, a new epoch should the shard have none, then per session
/// its id, holder and offer. Reply: `lost|<epoch>` if a session is missing and
/// the shard is not in the epoch the node knows (it lost its data: the node
/// restores its sessions there rather than tell their sockets they ended),
/// else one code per session, `r` (held, and its own deadline rewritten if
/// older than EXTEND), `x` (another socket holds it), or `g` followed by its
/// tombstone, if any (it ended).
///
/// A held session costs one HGET: the epoch is read only when a session is
/// missing (a shard that lost its data has lost them all), and the checking
/// node's own liveness key is not read, since the node vouched there before
/// this call in the same round (its refresh stops at a vouch that fails), so
/// its records live until their horizon.
const CHECK: &str = r#"
local replies, missing = {}, false
for i = 1, (#KEYS - 3) / 2 do
  cust = KEYS[2 + 2 * i]
  local id, holder, off = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
  local v = redis.call('HGET', cust, id)
  local rec = v and decode(v)
  if rec and rec.o == off and rec.h == holder and horizon_of(rec) > now then
    if rec.e < now - EXTEND then
      rec.id, rec.e = id, now + PONG
      save(rec)
      keep_until(cust, rec.e + STALE + 1000)
      keep_until(ix_of(id), rec.e + STALE + 1000)
    end
    replies[i] = 'r'
  elseif rec and rec.o == off and rec.h ~= holder and until_of(rec) > now then
    replies[i] = 'x'
  else
    missing = true
    replies[i] = 'g' .. (redis.call('GET', KEYS[3 + 2 * i]) or '')
  end
end
if missing then
  local ep = redis.call('GET', KEYS[1])
  if not ep then
    ep = ARGV[3]
    redis.call('SET', KEYS[1], ep)
  end
  if ARGV[2] ~= '' and ep ~= ARGV[2] then return 'lost|' .. ep end
end
return replies
"#;

/// The writes that end or detach sessions, one or many of one shard in a call:
/// the queued writes of a refresh round (or before an operation), a graceful
/// stop's detaches, and each single end or detach. One call for many, since
/// one call per write paid the call itself (the clock read, the prelude's
/// functions made anew, the liveness key's look-up) for every session: about a
/// third of an end's Redis CPU (`bench/analysis.md`, round eighteen).
///
/// KEYS: as every script, the first write's customer, the shard's index and
/// liveness prefixes; then the first write's tombstone; then, per further
/// write, its customer and its tombstone. ARGV (after now): per write its offer,
/// its kind, the session id, the holder, the tombstone text and the node
/// running it:
/// - `e`, an end: the session ends if `holder` (a socket id; "" for anyone)
///   holds it, and its tombstone text ("" for none) is left for the holder's
///   next check. Ended by anyone but its socket, its holder's node is flagged
///   (`flag_moved`; the node running it, hex, '' unknown, is not). Reply: the
///   ended record, `again` (a socket's end whose tombstone,
///   `record::socket_tombstone`, is already there: the same end, retried after
///   its reply was lost, ended it), or false.
/// - `d`, a detach: the session, if `holder` holds it, waits the reconnect
///   grace with no socket. Reply: 1 detached, 0 not held by this socket.
///
/// Reply: a list, per write in order, of its reply.
const WRITES: &str = r#"
keep_dead = true
local replies = {}
for i = 1, (#ARGV - 1) / 6 do
  local a = 6 * (i - 1) + 1
  if i > 1 then cust = KEYS[2 * i + 1] end
  offer = ARGV[a + 1]
  local kind, id, holder, tomb, by = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  local tomb_key = KEYS[2 * i + 2]
  local _, rec = find(load(), id)
  local anyone = holder == '' and kind == 'e'
  if rec == nil or (not anyone and rec.h ~= holder) then
    if kind == 'd' then
      replies[i] = 0
    else
      replies[i] = holder ~= '' and tomb ~= '' and redis.call('GET', tomb_key) == tomb and 'again'
    end
  elseif kind == 'd' then
    rec.h = ''
    rec.s = 'd'
    rec.e = now + GRACE
    save(rec)
    settle()
    replies[i] = 1
  else
    if anyone then flag_moved(rec.h, by, rec.id) end
    redis.call('HDEL', cust, rec.id)
    redis.call('HDEL', ix_of(rec.id), rec.id)
    if tomb ~= '' then redis.call('SET', tomb_key, tomb, 'PX', TOMB) end
    settle()
    replies[i] = encode(rec)
  end
end
return replies
"#;

/// ARGV: now, offer. Reply: the pool's records alive at `now`.
const LIST: &str = r#"
keep_dead = true
local mine = load()
local reply = {}
for _, rec in ipairs(mine) do reply[#reply + 1] = encode(rec) end
return reply
"#;

/// ARGV (after now, offer): the prefix of the shard's tombstone keys
/// ([`keys::tombstone_prefix`]), the node running it (hex; '' unknown). Ends
/// every session of the pool at once, each leaving an "E" tombstone (in the
/// shard's slot, like every key here) and flagging its holder's node
/// (`flag_moved`) so its holder learns why even if the order is lost. Reply:
/// the ended records.
const END_ALL: &str = r#"
keep_dead = true
local mine = load()
local reply = {}
for _, rec in ipairs(mine) do
  flag_moved(rec.h, ARGV[4] or '', rec.id)
  redis.call('HDEL', cust, rec.id)
  redis.call('HDEL', ix_of(rec.id), rec.id)
  redis.call('SET', ARGV[3] .. rec.id, 'E', 'PX', TOMB)
  reply[#reply + 1] = encode(rec)
end
settle()
return reply
"#;

/// ARGV (after now, offer): id, the record as `record::encode` packs it
/// (`s|e|h|c|n`; `e` or `c` 0: now, plus the live allowance for `e`), the
/// customer's tag. Puts back a session unless the customer has it alive, and
/// indexes it. Reply: 1 restored, 0 already there.
const RESTORE: &str = r#"
keep_dead = true
local _, all = load()
local s, e, h, c, n = string.match(ARGV[4], '^(%a)|(%d+)|(%x*)|(%d+)|(.*)$')
if s == nil then error('unreadable session to restore in ' .. cust) end
local rec = {s = s, e = tonumber(e), h = h, c = tonumber(c), o = offer, n = n}
if rec.e == 0 then rec.e = now + PONG end
if rec.c == 0 then rec.c = now end
-- A dead record of the same id (this node's own, dead while it could not vouch)
-- is written over: the session is back.
local added = 0
if find(all, ARGV[3]) == nil then
  redis.call('HSET', cust, ARGV[3], pack(rec))
  added = 1
end
redis.call('HSET', ix_of(ARGV[3]), ARGV[3], ARGV[5])
settle()
return added
"#;

/// After the node could not vouch for longer than its liveness key in the
/// shard lives (Redis stalled, or was cut off from this node), puts back its
/// held sessions of one pool ([`super::refresh`]'s `reassert_after_outage`).
/// KEYS[4..]: each session's tombstone. ARGV (after now, offer): how far back
/// (ms) the outage began, the customer's tag (the index's value), then per
/// session (oldest first) its id, holder and record as `record::encode` packs
/// it (`s|e|h|c|n`; `e` 0: now plus the live allowance). Reply, per session:
/// `r` (still there, held by this socket), `p` (put back, and indexed), `x`
/// (another socket holds it), `g` and the tombstone if any (it ended), or `f`:
/// not put back, as sessions admitted since the outage began may have taken its
/// slot, or the outage lasted `cluster.node_lost_after` or more (another node
/// may have reported it ended: see `fate_of`). A missing session is one whose
/// record is gone, dead, or marked lost (`x`) by another node's script.
///
/// The limit is not known here, yet holds: before the outage the pool held every
/// session now in it that is older than the outage, and every one of this node's
/// missing sessions, within the limit. So as many missing sessions come back as
/// there are missing ones, less one for each session admitted since: the newer
/// sessions keep their slots.
const REASSERT: &str = r#"
keep_dead = true
local mine = load()
local back = tonumber(ARGV[3])
local since = now - back
local newer = 0
for _, other in ipairs(mine) do
  if other.c > since then newer = newer + 1 end
end
local replies, missing = {}, {}
for i = 1, (#ARGV - 4) / 3 do
  local id, holder = ARGV[3 * i + 2], ARGV[3 * i + 3]
  local _, rec = find(mine, id)
  if rec ~= nil then
    if rec.h == holder then replies[i] = 'r' else replies[i] = 'x' end
  else
    local tomb = redis.call('GET', KEYS[3 + i])
    if tomb then replies[i] = 'g' .. tomb else missing[#missing + 1] = i end
  end
end
-- After an outage of LOST_AFTER or more, a missing session may have been
-- marked lost that long ago and reported ended since: none comes back.
if back >= LOST_AFTER then newer = #missing end
for n, i in ipairs(missing) do
  if n <= #missing - newer then
    local s, e, h, c, name = string.match(ARGV[3 * i + 4], '^(%a)|(%d+)|(%x*)|(%d+)|(.*)$')
    if s == nil then error('unreadable session to re-assert in ' .. cust) end
    local back = {id = ARGV[3 * i + 2], s = s, e = tonumber(e), h = h, c = tonumber(c), o = offer, n = name}
    if back.e == 0 then back.e = now + PONG end
    if back.c == 0 then back.c = now end
    save(back)
    redis.call('HSET', ix_of(back.id), back.id, ARGV[4])
    replies[i] = 'p'
  else
    replies[i] = 'f'
  end
end
settle()
return replies
"#;

/// Where a session is: KEYS[1] its index bucket. ARGV: its compact id, the prefix of the
/// shard's customer keys. Reply: `[customer tag, offer]`, or false if the index
/// does not name it or its customer no longer has it (the stale entry is
/// dropped).
const LOCATE: &str = r#"
local tag = redis.call('HGET', KEYS[1], ARGV[1])
if not tag then return false end
local v = redis.call('HGET', ARGV[2] .. tag, ARGV[1])
if not v then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return false
end
local ol, rest = string.match(v, '^%a|%w+|%x*|%w+|(%d+)|(.*)$')
if ol == nil then error('unreadable session record for ' .. ARGV[1]) end
return {tag, rest:sub(1, tonumber(ol))}
"#;

/// Walks a shard's index for the records that died with nobody to end them (a
/// session whose node stopped, one granted and never connected, one detached
/// past its grace), deletes them, and names them so that the node running it
/// reports each end, once. KEYS[1] what the shard's customer keys start with
/// ([`keys::customer_prefix`]; the index's values follow), KEYS[2] and KEYS[3] as
/// for a pool. ARGV: now, '' (no offer), the first bucket to walk (from 0), and
/// how many index entries to read before stopping at the end of a bucket: a
/// call stays short (Redis runs nothing else meanwhile) whatever the shard
/// holds. Entries whose customer no longer has the session are dropped.
/// Reply (JSON): `{next, gone: [{t, id, o, n, c}]}`: the bucket to go on from
/// (-1: the shard is done), and each deleted record with its customer's tag.
const PURGE: &str = r#"
local prefix = cust
local b, budget, seen = tonumber(ARGV[3]), tonumber(ARGV[4]), 0
local gone = {}
while b < BUCKETS and seen < budget do
  local bucket = ixp .. b
  local entries = redis.call('HGETALL', bucket)
  for i = 1, #entries, 2 do
    local id, tag = entries[i], entries[i + 1]
    cust = prefix .. tag
    local v = redis.call('HGET', cust, id)
    if not v then
      redis.call('HDEL', bucket, id)
    else
      local rec = decode(v)
      rec.id = id
      if until_of(rec) <= now then
        local fate = fate_of(rec)
        if fate == 'mark' then
          mark_lost(rec)
          keep_until(cust, horizon_of(rec) + LINGER)
          keep_until(bucket, horizon_of(rec) + LINGER)
        elseif fate == 'report' then
          redis.call('HDEL', cust, id)
          redis.call('HDEL', bucket, id)
          gone[#gone + 1] = {t = tag, id = id, o = rec.o, n = rec.n, c = why_dead(rec)}
        end
      end
    end
  end
  seen = seen + #entries / 2
  b = b + 1
end
if b >= BUCKETS then b = -1 end
if #gone == 0 then return cjson.encode({next = b}) end
return cjson.encode({next = b, gone = gone})
"#;

/// A node's vouch in one shard ([`super::refresh`]): KEYS, the node's liveness
/// keys there (`SET … XX GET`: rewritten only if still there); ARGV, their value
/// and TTL (ms). Reply: each key's old value ('' where it was gone), then which
/// server answered: its `run_id` (a new process, or one restarted) and its
/// `master_replid` (a new one on every promotion), so that a node notices a
/// shard served by another master than before, which may lack the last writes
/// the old one took (a failover to a lagging replica) even though every key the
/// node looks at survived. `INFO` with two sections (Redis 7, Valkey) costs a
/// few microseconds, once a shard and vouch period, not per session.
const VOUCH: &str = r#"
local old = {}
for i, key in ipairs(KEYS) do
  old[i] = redis.call('SET', key, ARGV[1], 'PX', ARGV[2], 'XX', 'GET') or ''
end
local info = redis.call('INFO', 'server', 'replication')
old[#KEYS + 1] = (string.match(info, 'run_id:(%x+)') or '?') .. '/' .. (string.match(info, 'master_replid:(%x+)') or '?')
return old
"#;

/// How long past its own deadline a live record may be vouched for by its node
/// (an hour): the keys' TTLs cover it, so a pool whose node stopped is gone from
/// Redis's memory within it even if nobody touches it again.
pub const STALE_MS: u64 = 3_600_000;

/// How old a live record's own deadline may grow before a check rewrites it (20
/// minutes, well inside [`STALE_MS`]).
pub const EXTEND_MS: u64 = 1_200_000;

/// How long a customer's hash outlives its last session's horizon (and the
/// index buckets naming its sessions with it): fifteen minutes, more than two
/// purge rounds at the longest `cluster.purge_interval` allowed (five minutes,
/// and half of one to walk the shards), so a record that dies with no socket
/// is met by a purge before Redis drops it unread.
pub const LINGER_MS: u64 = 900_000;

pub struct Scripts {
    pub admit: redis::Script,
    pub take_over: redis::Script,
    pub attach: redis::Script,
    pub check: redis::Script,
    pub writes: redis::Script,
    pub end_all: redis::Script,
    pub list: redis::Script,
    pub restore: redis::Script,
    pub reassert: redis::Script,
    pub locate: redis::Script,
    pub vouch: redis::Script,
    pub purge: redis::Script,
}

impl Scripts {
    /// Every script, to be loaded into Redis at once.
    pub fn all(&self) -> [&redis::Script; 12] {
        [
            &self.admit,
            &self.take_over,
            &self.attach,
            &self.check,
            &self.writes,
            &self.end_all,
            &self.list,
            &self.restore,
            &self.reassert,
            &self.locate,
            &self.vouch,
            &self.purge,
        ]
    }

    /// Builds the scripts with the lifecycle timings (ms) baked in.
    pub fn new(connect_ms: u64, pong_ms: u64, grace_ms: u64, tombstone_ms: u64, lost_after_ms: u64) -> Self {
        let now = NOW
            .replace("@CONNECT@", &connect_ms.to_string())
            .replace("@PONG@", &pong_ms.max(1).to_string())
            .replace("@GRACE@", &grace_ms.to_string())
            .replace("@TOMB@", &tombstone_ms.max(1).to_string())
            .replace("@STALE@", &STALE_MS.to_string())
            .replace("@EXTEND@", &EXTEND_MS.to_string())
            .replace("@LINGER@", &LINGER_MS.to_string())
            .replace("@LOST_AFTER@", &lost_after_ms.max(1).to_string());
        let prelude = PRELUDE
            .replace("@BUCKETS@", &keys::INDEX_BUCKETS.to_string())
            .replace("@MOVED@", keys::MOVED);
        let on_pool = |body: &str| redis::Script::new(&format!("{now}{prelude}{body}"));
        Self {
            admit: on_pool(ADMIT),
            take_over: on_pool(TAKE_OVER),
            attach: on_pool(ATTACH),
            check: on_pool(CHECK),
            writes: on_pool(WRITES),
            end_all: on_pool(END_ALL),
            list: on_pool(LIST),
            restore: on_pool(RESTORE),
            reassert: on_pool(REASSERT),
            locate: redis::Script::new(LOCATE),
            vouch: redis::Script::new(VOUCH),
            purge: on_pool(PURGE),
        }
    }
}

/// An invocation of `script` on `pool`, with the keys and arguments every
/// script on a pool takes first: the customer's hash, the shard's index and
/// liveness prefix; `now` (0: Redis's clock) and the pool's offer.
pub(crate) fn on_pool<'a>(script: &'a redis::Script, pool: &PoolKey, now: u64) -> redis::ScriptInvocation<'a> {
    let shard = pool.shard();
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys::customer(pool))
        .key(keys::index_prefix(shard))
        .key(keys::alive_prefix(shard))
        .arg(now)
        .arg(pool.offer_id());
    invocation
}
