-- kombu layout: move due delayed messages (KEYS[1], due time ARGV[1]) into their lists
-- (keys in each member, under the prefix ARGV[2]).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  local item = cjson.decode(member)
  for _, key in ipairs(item['keys']) do
    redis.call('LPUSH', ARGV[2] .. key, item['payload'])
  end
  redis.call('ZREM', KEYS[1], member)
end
return #due
