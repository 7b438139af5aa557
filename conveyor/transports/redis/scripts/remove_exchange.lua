-- ARGV: prefix, name
local gone = redis.call('HDEL', P .. 'topo:ex', ARGV[2]) + drop_bindings(1, ARGV[2])
if gone > 0 then bump() end
return gone
