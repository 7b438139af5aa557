-- ARGV: prefix, connection, limit, now. Leases ready messages (due or not) whose TTL passed.
-- Returns the flat (queue, id, count, blob) of the messages leased.
local c, limit, now = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local out = {}
local tags = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now, 'LIMIT', 0, limit)
each_tagged(tags, function(q, id, tag, base)
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
end)
return out
