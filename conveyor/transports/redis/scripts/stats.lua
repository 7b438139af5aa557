-- ARGV: prefix, queue, now. Returns {ready (with delayed), leased, live consumers}.
local base = P .. 'q:' .. ARGV[2]
return {
  redis.call('ZCARD', base .. ':r') + redis.call('ZCARD', base .. ':d'),
  redis.call('HLEN', base .. ':l'),
  live_consumers(ARGV[2], ARGV[3]),
}
