-- ARGV: prefix, connection, consumer tag, now, queues...
local c, t, now = ARGV[2], ARGV[3], ARGV[4]
local qs = slice(5, #ARGV - 4)
redis.call('HSET', P .. 'cc:' .. c, t, table.concat(qs, '\n'))
for _, q in ipairs(qs) do
  redis.call('SADD', P .. 'q:' .. q .. ':c', c .. '\n' .. t)
  if redis.call('HEXISTS', P .. 'topo:q', q) == 1 then redis.call('HSET', P .. 'used', q, now) end
end
return 1
