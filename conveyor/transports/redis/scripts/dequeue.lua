-- ARGV: prefix, connection, limit, now, request id, ack count, ack tags..., queues...
-- Returns {the flat (queue, id, count, blob) of the messages leased, in delivery order; the
-- earliest due time still ahead among the queues' delayed messages, or false}.
local c, limit, now, req = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local chash = P .. 'ch:' .. c
local out = {}
if redis.call('HGET', chash, 'req') == req then
  local last = {}
  for tag in string.gmatch(redis.call('HGET', chash, 'last') or '', '[^\n]+') do
    last[#last + 1] = tag
  end
  each_own_lease(c, last, function(q, id, tag, base, cnt)
    out[#out + 1] = q
    out[#out + 1] = id
    out[#out + 1] = cnt
    out[#out + 1] = redis.call('HGET', base .. ':m', id)
  end)
  return {out, false}
end
local na = tonumber(ARGV[6])
if na > 0 then ack(c, slice(7, na)) end
local tags = {}
local got = 0
local has_exp = redis.call('EXISTS', P .. 'exp') == 1
local used = {}
for qi = 7 + na, #ARGV do
  local q = ARGV[qi]
  used[#used + 1] = q
  used[#used + 1] = now
  if got < limit then
    local base = P .. 'q:' .. q
    local promoted = promote(q, now)
    local popped = redis.call('ZPOPMIN', base .. ':r', limit - got)
    if #popped > 0 then
      local counted = redis.call('EXISTS', base .. ':n') == 1
      local ids = {}
      local leases = {}
      for i = 1, #popped, 2 do
        local id = popped[i]
        local tag = id .. ':' .. q
        local cnt = 1
        if counted then cnt = tonumber(redis.call('HGET', base .. ':n', id) or '0') + 1 end
        local exp = ''
        if has_exp then
          exp = redis.call('ZSCORE', P .. 'exp', tag) or ''
          if exp ~= '' then redis.call('ZREM', P .. 'exp', tag) end
        end
        ids[#ids + 1] = id
        leases[#leases + 1] = id
        leases[#leases + 1] = cnt .. '|' .. popped[i + 1] .. '|' .. exp .. '|' .. c
        tags[#tags + 1] = tag
        out[#out + 1] = q
        out[#out + 1] = id
        out[#out + 1] = cnt
        out[#out + 1] = false
      end
      redis.call('HSET', base .. ':l', unpack(leases))
      local blobs = redis.call('HMGET', base .. ':m', unpack(ids))
      for i, blob in ipairs(blobs) do out[(got + i) * 4] = blob end
      got = got + #ids
      if promoted > 0 and redis.call('ZCARD', base .. ':r') > 0 then notify(q) end
    end
  end
end
if #tags > 0 then
  each_chunk(tags, function(...) redis.call('SADD', P .. 'cl:' .. c, ...) end)
end
local known = {}
for i = 1, #used, 2 do
  if redis.call('HEXISTS', P .. 'topo:q', used[i]) == 1 then
    known[#known + 1] = used[i]
    known[#known + 1] = used[i + 1]
  end
end
if #known > 0 then redis.call('HSET', P .. 'used', unpack(known)) end
redis.call('HSET', chash, 'req', req, 'last', table.concat(tags, '\n'))
local due = false
for qi = 7 + na, #ARGV do
  local first = redis.call('ZRANGEBYSCORE', P .. 'q:' .. ARGV[qi] .. ':d', '(' .. now, '+inf',
    'WITHSCORES', 'LIMIT', 0, 1)
  if #first > 0 and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
end
return {out, due}
