-- ARGV: prefix, binding field
if redis.call('HDEL', P .. 'topo:b', ARGV[2]) == 0 then return 0 end
return bump()
