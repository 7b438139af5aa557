-- ARGV: prefix, name, record, max length ('' for none), now. Returns the stored record.
local q = ARGV[2]
if redis.call('HSETNX', P .. 'topo:q', q, ARGV[3]) == 1 then
  if ARGV[4] ~= '' then redis.call('HSET', P .. 'topo:maxlen', q, ARGV[4]) end
  bump()
end
redis.call('HSET', P .. 'used', q, ARGV[5])
return redis.call('HGET', P .. 'topo:q', q)
