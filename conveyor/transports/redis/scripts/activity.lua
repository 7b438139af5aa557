-- ARGV: prefix, now, queues... Returns flat (queue, used_at, live consumers) of existing queues.
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
