-- ARGV: key. Returns {plain document or nil, flat worker -> document pairs}.
return {redis.call('GET', ARGV[1]), redis.call('HGETALL', ARGV[1] .. ':workers')}
