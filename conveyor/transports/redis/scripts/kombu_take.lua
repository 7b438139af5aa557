-- Pop up to ARGV[1] messages from the lists KEYS[3..] in order and record each in kombu's
-- unacked hash (KEYS[1]) and index (KEYS[2]) at time ARGV[2], keeping the payload verbatim.
-- Returns key, payload, tag triples; a payload without a readable tag is returned unrecorded.
local taken = {}
local room = tonumber(ARGV[1])
for i = 3, #KEYS do
  while room > 0 do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    room = room - 1
    local ok, payload = pcall(cjson.decode, item)
    local tag = ''
    if ok and type(payload) == 'table' and type(payload['properties']) == 'table' then
      local props = payload['properties']
      local info = props['delivery_info']
      if type(props['delivery_tag']) == 'string' and type(info) == 'table' then
        tag = props['delivery_tag']
        if ARGV[3] == '1' then
          local entry = '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ',' ..
            cjson.encode(info['routing_key'] or '') .. ']'
          redis.call('HSET', KEYS[1], tag, entry)
          redis.call('ZADD', KEYS[2], ARGV[2], tag)
        end
      end
    end
    taken[#taken + 1] = KEYS[i]
    taken[#taken + 1] = item
    taken[#taken + 1] = tag
  end
end
return taken
