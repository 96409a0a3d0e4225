-- Sets fields of several user hashes and refreshes their TTL in one call (one round trip).
-- ARGV[1] = JSON {"ttl": seconds, "writes": {key: {field: value, ...}, ...}}
local req = cjson.decode(ARGV[1])
local n = 0
for key, fields in pairs(req.writes) do
  local args = {}
  for f, v in pairs(fields) do args[#args + 1] = f; args[#args + 1] = v end
  if #args > 0 then
    redis.call('HSET', key, unpack(args))
    redis.call('EXPIRE', key, req.ttl)
    n = n + 1
  end
end
return n
