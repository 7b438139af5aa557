-- Shared by every storage script, loaded before its body: ARGV[1] is the key prefix.
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

-- A new message is one argument: "id\nprio\nnot_before\nexpires_at\nqueue length\nqueue"
-- followed by the stored payload; the whole argument is what the body hash keeps.
local function parse_message(a)
  local p1 = string.find(a, '\n', 1, true)
  local p2 = string.find(a, '\n', p1 + 1, true)
  local p3 = string.find(a, '\n', p2 + 1, true)
  local p4 = string.find(a, '\n', p3 + 1, true)
  local p5 = string.find(a, '\n', p4 + 1, true)
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

-- Call fn(q, id, tag, base) for each of tags that names a message of a queue (base: the
-- queue's key prefix).
local function each_tagged(tags, fn)
  for _, tag in ipairs(tags) do
    local id, q = split_tag(tag)
    if id then fn(q, id, tag, P .. 'q:' .. q) end
  end
end

-- Call fn(q, id, tag, base, cnt, score, exp) for each of tags leased to connection c.
local function each_own_lease(c, tags, fn)
  each_tagged(tags, function(q, id, tag, base)
    local v = redis.call('HGET', base .. ':l', id)
    if v then
      local cnt, score, exp, owner = parse_lease(v)
      if owner == c then fn(q, id, tag, base, cnt, score, exp) end
    end
  end)
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
  for q in string.gmatch(joined, '[^\n]+') do
    local set = P .. 'q:' .. q .. ':c'
    if redis.call('SREM', set, c .. '\n' .. t) == 1 and redis.call('SCARD', set) == 0 then
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
    local s = string.find(member, '\n', 1, true)
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
