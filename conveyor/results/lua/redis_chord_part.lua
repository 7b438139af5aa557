-- Count one chord header part; the keys and rules are Celery's (celery-taskset-meta-<group>.j
-- results by place, .t size adjustment, .s size, .d parts seen, .c body-send claim or 'done').
-- ARGV: .j, .t, .s, .d, .c keys, task id, encoded part, place (score), expiry seconds (0: none),
-- claim seconds, claim token. Returns {0} or, for the one caller that completes the count and
-- takes the claim, {1, parts in header order}.
local jkey, tkey, skey, dkey, ckey = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tid, part, score = ARGV[6], ARGV[7], ARGV[8]
local expires, claim_seconds, token = tonumber(ARGV[9]), tonumber(ARGV[10]), ARGV[11]
if redis.call('GET', ckey) == 'done' then return {0} end
-- a part counts once however often its task runs: seen by task id and place
local seen = tid .. ':' .. score
if redis.call('SISMEMBER', dkey, seen) == 0 then
  redis.call('ZADD', jkey, score, part)
  redis.call('SADD', dkey, seen)
end
if expires > 0 then
  for _, key in ipairs({jkey, tkey, skey, dkey}) do redis.call('EXPIRE', key, expires) end
end
local size = redis.call('GET', skey)
if not size then return {0} end
local total = tonumber(size) + tonumber(redis.call('GET', tkey) or '0')
if redis.call('ZCARD', jkey) ~= total then return {0} end
if not redis.call('SET', ckey, token, 'NX', 'EX', claim_seconds) then return {0} end
return {1, redis.call('ZRANGE', jkey, 0, -1)}
