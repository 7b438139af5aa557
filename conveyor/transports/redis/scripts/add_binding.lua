-- ARGV: prefix, binding field
if redis.call('HEXISTS', P .. 'topo:b', ARGV[2]) == 1 then return 0 end
redis.call('HSET', P .. 'topo:b', ARGV[2], redis.call('INCR', P .. 'topo:bseq'))
return bump()
