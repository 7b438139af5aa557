-- ARGV: prefix, now, queues... Returns the earliest future not_before (as a string) or false.
local best = false
for i = 3, #ARGV do
  local first = redis.call('ZRANGEBYSCORE', P .. 'q:' .. ARGV[i] .. ':d', '(' .. ARGV[2], '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  if #first > 0 and (not best or tonumber(first[2]) < tonumber(best)) then best = first[2] end
end
return best
