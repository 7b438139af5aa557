-- ARGV: prefix, queue. Removes ready and delayed messages; returns how many.
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
