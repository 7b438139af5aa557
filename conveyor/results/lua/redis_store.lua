-- ARGV: now, expiry in ms ('' for none), done zset, count, then per result
-- (key, worker field or '' for the plain result, task id, date_done, document, reply channel
-- or '').
local now, px, done = ARGV[1], ARGV[2], ARGV[3]
for j = 5, 4 + 6 * tonumber(ARGV[4]), 6 do
  local key, field, doc = ARGV[j], ARGV[j + 1], ARGV[j + 4]
  if ARGV[j + 5] ~= '' then redis.call('PUBLISH', ARGV[j + 5], doc) end
  if field == '' then
    if px == '' then redis.call('SET', key, doc) else redis.call('SET', key, doc, 'PX', px) end
  else
    redis.call('HSET', key .. ':workers', field, doc)
    if px ~= '' then redis.call('PEXPIRE', key .. ':workers', px) end
  end
  redis.call('ZADD', done, ARGV[j + 3], ARGV[j + 2])
  redis.call('PUBLISH', key, doc)
end
if px ~= '' then
  redis.call('ZREMRANGEBYSCORE', done, '-inf', '(' .. (tonumber(now) - tonumber(px) / 1000))
end
return 1
