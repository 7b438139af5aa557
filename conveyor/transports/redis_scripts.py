"""The Lua scripts behind ``conveyor.transports.redis``: each one storage step, atomic in Redis.

Every script takes the key prefix as ``ARGV[1]`` and builds key names from it (the key layout is
described in ``conveyor.transports.redis``). Scripts are safe to resend after a lost reply:
``ENQUEUE`` skips a batch whose first message is already stored, ``DEQUEUE`` replays its answer
to a request id it has already served, and the others only move what is still where they expect.

Scores of ready messages are ``(255 - priority) * 2**45 + sequence``: lowest first gives the highest
priority first and FIFO within a level, and stays an exact integer in a double (below 2**53). Lua
prints numbers with 14 digits only, so scores travel as the strings Redis returns, and computed
numbers are only ever handed straight to ``redis.call``.

A lease is the string ``count|score|expires_at|connection`` in the queue's lease hash.
"""

from __future__ import annotations

__all__ = [
    "ACK",
    "ACTIVITY",
    "ADD_BINDING",
    "ADD_CONSUMER",
    "ADD_EXCHANGE",
    "ADD_QUEUE",
    "CLAIM_EXPIRED",
    "DEQUEUE",
    "DISCONNECT",
    "ENQUEUE",
    "NEXT_DUE",
    "PURGE",
    "REAP",
    "RELEASE",
    "REMOVE_BINDING",
    "REMOVE_CONSUMER",
    "REMOVE_EXCHANGE",
    "REMOVE_QUEUE",
    "RENEW",
    "STATS",
]

_COMMON = """
local P = ARGV[1]
local LEVEL = 35184372088832

local function each_chunk(list, fn)
  local n = #list
  local i = 1
  while i <= n do
    local j = math.min(i + 999, n)
    fn(unpack(list, i, j))
    i = j + 1
  end
end

local function split_tag(tag)
  local s = string.find(tag, ':', 1, true)
  if not s then return nil, nil end
  return string.sub(tag, 1, s - 1), string.sub(tag, s + 1)
end

local function parse_lease(v)
  return string.match(v, '^(%d+)|([^|]*)|([^|]*)|(.*)$')
end

-- A new message is one argument: "id\\nprio\\nnot_before\\nexpires_at\\nqueue length\\nqueue"
-- followed by the stored payload; the whole argument is what the body hash keeps.
local function parse_message(a)
  local p1 = string.find(a, '\\n', 1, true)
  local p2 = string.find(a, '\\n', p1 + 1, true)
  local p3 = string.find(a, '\\n', p2 + 1, true)
  local p4 = string.find(a, '\\n', p3 + 1, true)
  local p5 = string.find(a, '\\n', p4 + 1, true)
  local qlen = tonumber(string.sub(a, p4 + 1, p5 - 1))
  return string.sub(a, p5 + 1, p5 + qlen), string.sub(a, 1, p1 - 1),
    tonumber(string.sub(a, p1 + 1, p2 - 1)), string.sub(a, p2 + 1, p3 - 1),
    string.sub(a, p3 + 1, p4 - 1)
end

local function notify(q)
  redis.call('PUBLISH', P .. 'w:' .. q, '1')
end

local function ready_score(prio)
  return (255 - prio) * LEVEL + redis.call('INCR', P .. 'seq')
end

-- Lease message id of queue q (already out of its ready and delayed sets) to connection c.
local function lease(q, id, cnt, score, c)
  local tag = id .. ':' .. q
  local exp = ''
  if redis.call('EXISTS', P .. 'exp') == 1 then
    exp = redis.call('ZSCORE', P .. 'exp', tag) or ''
    if exp ~= '' then redis.call('ZREM', P .. 'exp', tag) end
  end
  redis.call('HSET', P .. 'q:' .. q .. ':l', id, cnt .. '|' .. score .. '|' .. exp .. '|' .. c)
  redis.call('SADD', P .. 'cl:' .. c, tag)
  return tag
end

-- Move the delayed messages of queue q that are due by now to the tail of its ready set.
local function promote(q, now)
  local base = P .. 'q:' .. q
  local due = redis.call('ZRANGEBYSCORE', base .. ':d', '-inf', now, 'LIMIT', 0, 1000)
  if #due == 0 then return 0 end
  for _, id in ipairs(due) do
    local prio = tonumber(redis.call('HGET', base .. ':dp', id) or '0')
    redis.call('ZADD', base .. ':r', ready_score(prio), id)
  end
  each_chunk(due, function(...) redis.call('ZREM', base .. ':d', ...) end)
  each_chunk(due, function(...) redis.call('HDEL', base .. ':dp', ...) end)
  return #due
end

-- Call fn(q, id, tag, base, cnt, score, exp) for each of tags leased to connection c.
local function each_own_lease(c, tags, fn)
  for _, tag in ipairs(tags) do
    local id, q = split_tag(tag)
    if id then
      local base = P .. 'q:' .. q
      local v = redis.call('HGET', base .. ':l', id)
      if v then
        local cnt, score, exp, owner = parse_lease(v)
        if owner == c then fn(q, id, tag, base, cnt, score, exp) end
      end
    end
  end
end

-- End the leases of c on tags (settled by the caller); returns how many.
local function end_leases(c, tags, settle)
  local done = {}
  each_own_lease(c, tags, function(q, id, tag, base, cnt, score, exp)
    redis.call('HDEL', base .. ':l', id)
    settle(q, id, tag, base, cnt, score, exp)
    done[#done + 1] = tag
  end)
  if #done > 0 then
    each_chunk(done, function(...) redis.call('SREM', P .. 'cl:' .. c, ...) end)
  end
  return #done
end

-- Ack tags leased to c; returns how many.
local function ack(c, tags)
  return end_leases(c, tags, function(q, id, tag, base, cnt)
    redis.call('HDEL', base .. ':m', id)
    if cnt ~= '1' then redis.call('HDEL', base .. ':n', id) end
  end)
end

-- Put tags leased to c back to ready at their old place; returns how many.
local function release(c, tags)
  local woken = {}
  local n = end_leases(c, tags, function(q, id, tag, base, cnt, score, exp)
    redis.call('ZADD', base .. ':r', score, id)
    redis.call('HSET', base .. ':n', id, cnt)
    if exp ~= '' then redis.call('ZADD', P .. 'exp', exp, tag) end
    woken[q] = true
  end)
  for q in pairs(woken) do notify(q) end
  return n
end

-- Remove consumer tag t of connection c; queues left without consumers go in idle.
local function drop_consumer(c, t, now, idle)
  local joined = redis.call('HGET', P .. 'cc:' .. c, t)
  if not joined then return end
  redis.call('HDEL', P .. 'cc:' .. c, t)
  for q in string.gmatch(joined, '[^\\n]+') do
    local set = P .. 'q:' .. q .. ':c'
    if redis.call('SREM', set, c .. '\\n' .. t) == 1 and redis.call('SCARD', set) == 0 then
      idle[#idle + 1] = q
    end
    if redis.call('HEXISTS', P .. 'topo:q', q) == 1 then
      redis.call('HSET', P .. 'used', q, now)
    end
  end
end

-- Release everything leased to c and drop its consumers; queues left idle go in idle.
local function disconnect(c, now, idle)
  release(c, redis.call('SMEMBERS', P .. 'cl:' .. c))
  for _, t in ipairs(redis.call('HKEYS', P .. 'cc:' .. c)) do drop_consumer(c, t, now, idle) end
  redis.call('DEL', P .. 'cl:' .. c, P .. 'cc:' .. c, P .. 'ch:' .. c)
  redis.call('ZREM', P .. 'conns', c)
end

local function live_consumers(q, now)
  local n = 0
  for _, member in ipairs(redis.call('SMEMBERS', P .. 'q:' .. q .. ':c')) do
    local s = string.find(member, '\\n', 1, true)
    local deadline = redis.call('ZSCORE', P .. 'conns', string.sub(member, 1, s - 1))
    if deadline and tonumber(deadline) >= tonumber(now) then n = n + 1 end
  end
  return n
end

local function bump()
  return redis.call('INCR', P .. 'topo:ver')
end

local function drop_bindings(pos, name)
  local gone = 0
  for _, f in ipairs(redis.call('HKEYS', P .. 'topo:b')) do
    if cjson.decode(f)[pos] == name then
      redis.call('HDEL', P .. 'topo:b', f)
      gone = gone + 1
    end
  end
  return gone
end

local function slice(from, count)
  local out = {}
  for i = from, from + count - 1 do out[#out + 1] = ARGV[i] end
  return out
end
"""


def _script(body: str) -> str:
    return _COMMON + body


# ARGV: prefix, now, group count, then per group (one enqueue call): topology version,
#       connection, settle count, settle tags..., message count, messages (see parse_message).
# Returns per group -1 for a stale topology, else the flat (queue, id, count, blob) of the
# messages pushed out of the head of a queue over its x-max-length, now leased to the group's
# connection. Listeners are woken for queues that had no ready message before (a consumer only
# sleeps after finding its queues empty) and for new delayed messages (due times changed).
ENQUEUE = _script("""
local now = ARGV[2]
local groups = tonumber(ARGV[3])
local version = redis.call('GET', P .. 'topo:ver') or '0'
local wake = {}
local results = {}
local at = 4
for g = 1, groups do
  local c, ns = ARGV[at + 1], tonumber(ARGV[at + 2])
  local n = tonumber(ARGV[at + 3 + ns])
  local first = at + 4 + ns
  local replay = false
  if n > 0 and ARGV[at] == version then
    local q, id = parse_message(ARGV[first])
    replay = redis.call('HEXISTS', P .. 'q:' .. q .. ':m', id) == 1
  end
  if ARGV[at] ~= version then
    results[g] = -1
  elseif replay then
    results[g] = {}
  else
    if ns > 0 then ack(c, slice(at + 3, ns)) end
    local touched = {}
    for j = first, first + n - 1 do
      local q, id, prio, nb, ex = parse_message(ARGV[j])
      local base = P .. 'q:' .. q
      if wake[q] == nil then
        wake[q] = redis.call('ZCARD', base .. ':r') == 0
        promote(q, now)
      end
      touched[q] = true
      redis.call('HSET', base .. ':m', id, ARGV[j])
      if nb == '' then
        redis.call('ZADD', base .. ':r', ready_score(prio), id)
      else
        redis.call('ZADD', base .. ':d', nb, id)
        redis.call('HSET', base .. ':dp', id, prio)
        wake[q] = true
      end
      if ex ~= '' then redis.call('ZADD', P .. 'exp', ex, id .. ':' .. q) end
    end
    local out = {}
    for q in pairs(touched) do
      local maxlen = redis.call('HGET', P .. 'topo:maxlen', q)
      if maxlen then
        local base = P .. 'q:' .. q
        local excess = redis.call('ZCARD', base .. ':r') - tonumber(maxlen)
        if excess > 0 then
          local popped = redis.call('ZPOPMIN', base .. ':r', excess)
          for i = 1, #popped, 2 do
            local id = popped[i]
            local cnt = redis.call('HGET', base .. ':n', id) or '0'
            lease(q, id, cnt, popped[i + 1], c)
            out[#out + 1] = q
            out[#out + 1] = id
            out[#out + 1] = cnt
            out[#out + 1] = redis.call('HGET', base .. ':m', id)
          end
        end
      end
    end
    results[g] = out
  end
  at = first + n
end
for q, yes in pairs(wake) do
  if yes then notify(q) end
end
return results
""")

# ARGV: prefix, connection, limit, now, request id, ack count, ack tags..., queues...
# Returns {the flat (queue, id, count, blob) of the messages leased, in delivery order; the
# earliest due time still ahead among the queues' delayed messages, or false}.
DEQUEUE = _script("""
local c, limit, now, req = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local chash = P .. 'ch:' .. c
local out = {}
if redis.call('HGET', chash, 'req') == req then
  local last = {}
  for tag in string.gmatch(redis.call('HGET', chash, 'last') or '', '[^\\n]+') do
    last[#last + 1] = tag
  end
  each_own_lease(c, last, function(q, id, tag, base, cnt)
    out[#out + 1] = q
    out[#out + 1] = id
    out[#out + 1] = cnt
    out[#out + 1] = redis.call('HGET', base .. ':m', id)
  end)
  return {out, false}
end
local na = tonumber(ARGV[6])
if na > 0 then ack(c, slice(7, na)) end
local tags = {}
local got = 0
local has_exp = redis.call('EXISTS', P .. 'exp') == 1
local used = {}
for qi = 7 + na, #ARGV do
  local q = ARGV[qi]
  used[#used + 1] = q
  used[#used + 1] = now
  if got < limit then
    local base = P .. 'q:' .. q
    local promoted = promote(q, now)
    local popped = redis.call('ZPOPMIN', base .. ':r', limit - got)
    if #popped > 0 then
      local counted = redis.call('EXISTS', base .. ':n') == 1
      local ids = {}
      local leases = {}
      for i = 1, #popped, 2 do
        local id = popped[i]
        local tag = id .. ':' .. q
        local cnt = 1
        if counted then cnt = tonumber(redis.call('HGET', base .. ':n', id) or '0') + 1 end
        local exp = ''
        if has_exp then
          exp = redis.call('ZSCORE', P .. 'exp', tag) or ''
          if exp ~= '' then redis.call('ZREM', P .. 'exp', tag) end
        end
        ids[#ids + 1] = id
        leases[#leases + 1] = id
        leases[#leases + 1] = cnt .. '|' .. popped[i + 1] .. '|' .. exp .. '|' .. c
        tags[#tags + 1] = tag
        out[#out + 1] = q
        out[#out + 1] = id
        out[#out + 1] = cnt
        out[#out + 1] = false
      end
      redis.call('HSET', base .. ':l', unpack(leases))
      local blobs = redis.call('HMGET', base .. ':m', unpack(ids))
      for i, blob in ipairs(blobs) do out[(got + i) * 4] = blob end
      got = got + #ids
      if promoted > 0 and redis.call('ZCARD', base .. ':r') > 0 then notify(q) end
    end
  end
end
if #tags > 0 then
  each_chunk(tags, function(...) redis.call('SADD', P .. 'cl:' .. c, ...) end)
end
local known = {}
for i = 1, #used, 2 do
  if redis.call('HEXISTS', P .. 'topo:q', used[i]) == 1 then
    known[#known + 1] = used[i]
    known[#known + 1] = used[i + 1]
  end
end
if #known > 0 then redis.call('HSET', P .. 'used', unpack(known)) end
redis.call('HSET', chash, 'req', req, 'last', table.concat(tags, '\\n'))
local due = false
for qi = 7 + na, #ARGV do
  local first = redis.call('ZRANGEBYSCORE', P .. 'q:' .. ARGV[qi] .. ':d', '(' .. now, '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  if #first > 0 and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
end
return {out, due}
""")

# ARGV: prefix, connection, limit, now. Leases ready messages (due or not) whose TTL passed.
# Returns the flat (queue, id, count, blob) of the messages leased.
CLAIM_EXPIRED = _script("""
local c, limit, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
local tags = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, limit)
for _, tag in ipairs(tags) do
  local id, q = split_tag(tag)
  if id then
    local base = P .. 'q:' .. q
    local score = redis.call('ZSCORE', base .. ':r', id)
    if score then
      redis.call('ZREM', base .. ':r', id)
    elseif redis.call('ZREM', base .. ':d', id) == 1 then
      local prio = tonumber(redis.call('HGET', base .. ':dp', id) or '0')
      redis.call('HDEL', base .. ':dp', id)
      score = string.format('%.0f', ready_score(prio))
    end
    if score then
      local cnt = redis.call('HGET', base .. ':n', id) or '0'
      lease(q, id, cnt, score, c)
      out[#out + 1] = q
      out[#out + 1] = id
      out[#out + 1] = cnt
      out[#out + 1] = redis.call('HGET', base .. ':m', id)
    else
      redis.call('ZREM', P .. 'exp', tag)
    end
  end
end
return out
""")

# ARGV: prefix, connection, tags... Returns how many were acked.
ACK = _script("""
return ack(ARGV[2], slice(3, #ARGV - 2))
""")

# ARGV: prefix, connection, tags... Returns how many went back to ready.
RELEASE = _script("""
return release(ARGV[2], slice(3, #ARGV - 2))
""")

# ARGV: prefix, connection, deadline. Returns 1 if the connection was registered, else 0.
RENEW = _script("""
local known = redis.call('ZSCORE', P .. 'conns', ARGV[2])
redis.call('ZADD', P .. 'conns', ARGV[3], ARGV[2])
if known then return 1 end
return 0
""")

# ARGV: prefix, connection, now. Returns the queues left without consumers.
DISCONNECT = _script("""
local idle = {}
disconnect(ARGV[2], ARGV[3], idle)
return idle
""")

# ARGV: prefix, now. Returns {dead connections, queues left without consumers}.
REAP = _script("""
local dead = redis.call('ZRANGEBYSCORE', P .. 'conns', '-inf', '(' .. ARGV[2], 'LIMIT', 0, 100)
local idle = {}
for _, c in ipairs(dead) do disconnect(c, ARGV[2], idle) end
return {dead, idle}
""")

# ARGV: prefix, connection, consumer tag, now, queues...
ADD_CONSUMER = _script("""
local c, t, now = ARGV[2], ARGV[3], ARGV[4]
local qs = slice(5, #ARGV - 4)
redis.call('HSET', P .. 'cc:' .. c, t, table.concat(qs, '\\n'))
for _, q in ipairs(qs) do
  redis.call('SADD', P .. 'q:' .. q .. ':c', c .. '\\n' .. t)
  if redis.call('HEXISTS', P .. 'topo:q', q) == 1 then redis.call('HSET', P .. 'used', q, now) end
end
return 1
""")

# ARGV: prefix, connection, consumer tag, now. Returns the queues left without consumers.
REMOVE_CONSUMER = _script("""
local idle = {}
drop_consumer(ARGV[2], ARGV[3], ARGV[4], idle)
return idle
""")

# ARGV: prefix, now, queues... Returns flat (queue, used_at, live consumers) of existing queues.
ACTIVITY = _script("""
local out = {}
for i = 3, #ARGV do
  local q = ARGV[i]
  if redis.call('HEXISTS', P .. 'topo:q', q) == 1 then
    out[#out + 1] = q
    out[#out + 1] = redis.call('HGET', P .. 'used', q) or '0'
    out[#out + 1] = live_consumers(q, ARGV[2])
  end
end
return out
""")

# ARGV: prefix, queue, now. Returns {ready (with delayed), leased, live consumers}.
STATS = _script("""
local base = P .. 'q:' .. ARGV[2]
return {
  redis.call('ZCARD', base .. ':r') + redis.call('ZCARD', base .. ':d'),
  redis.call('HLEN', base .. ':l'),
  live_consumers(ARGV[2], ARGV[3]),
}
""")

# ARGV: prefix, now, queues... Returns the earliest future not_before (as a string) or false.
NEXT_DUE = _script("""
local best = false
for i = 3, #ARGV do
  local first = redis.call('ZRANGEBYSCORE', P .. 'q:' .. ARGV[i] .. ':d', '(' .. ARGV[2], '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  if #first > 0 and (not best or tonumber(first[2]) < tonumber(best)) then best = first[2] end
end
return best
""")

# ARGV: prefix, queue. Removes ready and delayed messages; returns how many.
PURGE = _script("""
local q = ARGV[2]
local base = P .. 'q:' .. q
local ids = redis.call('ZRANGE', base .. ':r', 0, -1)
for _, id in ipairs(redis.call('ZRANGE', base .. ':d', 0, -1)) do ids[#ids + 1] = id end
if #ids > 0 then
  each_chunk(ids, function(...) redis.call('HDEL', base .. ':m', ...) end)
  each_chunk(ids, function(...) redis.call('HDEL', base .. ':n', ...) end)
  if redis.call('EXISTS', P .. 'exp') == 1 then
    local tags = {}
    for _, id in ipairs(ids) do tags[#tags + 1] = id .. ':' .. q end
    each_chunk(tags, function(...) redis.call('ZREM', P .. 'exp', ...) end)
  end
end
redis.call('DEL', base .. ':r', base .. ':d', base .. ':dp')
return #ids
""")

# ARGV: prefix, name, record. Returns the stored record.
ADD_EXCHANGE = _script("""
if redis.call('HSETNX', P .. 'topo:ex', ARGV[2], ARGV[3]) == 1 then bump() end
return redis.call('HGET', P .. 'topo:ex', ARGV[2])
""")

# ARGV: prefix, name
REMOVE_EXCHANGE = _script("""
local gone = redis.call('HDEL', P .. 'topo:ex', ARGV[2]) + drop_bindings(1, ARGV[2])
if gone > 0 then bump() end
return gone
""")

# ARGV: prefix, name, record, max length ('' for none), now. Returns the stored record.
ADD_QUEUE = _script("""
local q = ARGV[2]
if redis.call('HSETNX', P .. 'topo:q', q, ARGV[3]) == 1 then
  if ARGV[4] ~= '' then redis.call('HSET', P .. 'topo:maxlen', q, ARGV[4]) end
  bump()
end
redis.call('HSET', P .. 'used', q, ARGV[5])
return redis.call('HGET', P .. 'topo:q', q)
""")

# ARGV: prefix, name. Returns how many messages went with the queue.
REMOVE_QUEUE = _script("""
local q = ARGV[2]
local base = P .. 'q:' .. q
local ids = redis.call('HKEYS', base .. ':m')
local ready = #ids - redis.call('HLEN', base .. ':l')
if #ids > 0 and redis.call('EXISTS', P .. 'exp') == 1 then
  local tags = {}
  for _, id in ipairs(ids) do tags[#tags + 1] = id .. ':' .. q end
  each_chunk(tags, function(...) redis.call('ZREM', P .. 'exp', ...) end)
end
local gone = redis.call('HDEL', P .. 'topo:q', q) + drop_bindings(2, q)
redis.call('HDEL', P .. 'topo:maxlen', q)
redis.call('HDEL', P .. 'used', q)
redis.call('DEL', base .. ':r', base .. ':d', base .. ':dp', base .. ':m', base .. ':n',
  base .. ':l', base .. ':c')
if gone > 0 then
  bump()
  notify(q)
end
return ready
""")

# ARGV: prefix, binding field
ADD_BINDING = _script("""
if redis.call('HEXISTS', P .. 'topo:b', ARGV[2]) == 1 then return 0 end
redis.call('HSET', P .. 'topo:b', ARGV[2], redis.call('INCR', P .. 'topo:bseq'))
return bump()
""")

# ARGV: prefix, binding field
REMOVE_BINDING = _script("""
if redis.call('HDEL', P .. 'topo:b', ARGV[2]) == 0 then return 0 end
return bump()
""")
