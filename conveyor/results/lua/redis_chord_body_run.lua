-- Record the first send of a chord's body and say whether this send is it.
-- ARGV: key (celery-taskset-meta-<group>.b), this send's mark, expiry seconds. Returns 1 or 0.
local first = redis.call('GET', ARGV[1])
if not first then
  redis.call('SET', ARGV[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
if first == ARGV[2] then return 1 end
return 0
