-- ARGV: prefix, name. Returns how many messages went with the queue.
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
