-- The chord's body was sent by the holder of the claim: drop the join and mark it 'done' (so a
-- late part sends nothing), only if the claim still holds. ARGV: .c, .j, .t, .s, .d keys, claim
-- token, seconds the done mark lasts. Returns 1 if done here, 0 if the claim was lost.
if redis.call('GET', ARGV[1]) ~= ARGV[6] then return 0 end
redis.call('DEL', ARGV[2], ARGV[3], ARGV[4], ARGV[5])
redis.call('SET', ARGV[1], 'done', 'EX', ARGV[7])
return 1
