-- ARGV: prefix, now. Returns {dead connections, queues left without consumers}.
local dead = redis.call('ZRANGEBYSCORE', P .. 'conns', '-inf', '(' .. ARGV[2], 'LIMIT', 0, 100)
local idle = {}
for _, c in ipairs(dead) do disconnect(c, ARGV[2], idle) end
return {dead, idle}
