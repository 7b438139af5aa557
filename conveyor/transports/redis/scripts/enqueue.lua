-- ARGV: prefix, now, group count, then per group (one enqueue call): topology version,
--       connection, settle count, settle tags..., message count, messages (see parse_message).
-- Returns per group -1 for a stale topology, else the flat (queue, id, count, blob) of the
-- messages pushed out of the head of a queue over its x-max-length, now leased to the group's
-- connection. Listeners are woken for queues that had no ready message before (a consumer only
-- sleeps after finding its queues empty) and for new delayed messages (due times changed).
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
