-- ARGV: prefix, name, record. Returns the stored record.
if redis.call('HSETNX', P .. 'topo:ex', ARGV[2], ARGV[3]) == 1 then bump() end
return redis.call('HGET', P .. 'topo:ex', ARGV[2])
