-- ARGV: prefix, connection, deadline. Returns 1 if the connection was registered, else 0.
local known = redis.call('ZSCORE', P .. 'conns', ARGV[2])
redis.call('ZADD', P .. 'conns', ARGV[3], ARGV[2])
if known then return 1 end
return 0
