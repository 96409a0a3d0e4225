-- Sets fields of several user hashes and refreshes their TTL in one call (one round trip).
-- ARGV[1] = JSON {"ttl": seconds, "writes": {key: {field: value, ...}, ...},
--                 "cas": field, "expect": {key: value or false, ...},
--                 "erased": set key ({ns}:erased:v2), "digests": {key: keyed user digest, ...}}
-- A key whose user's digest is in the erased set is not written (nor created again): one SISMEMBER per key.
-- A user without marketing consent ("cons" is "0", set by apply_batch.lua) gets no pending decisions (their
-- context vectors), device or segment: a write decided before the refusal reached Redis would bring them back.
-- "cons" is the consent of the latest event time (cons_t), whatever the arrival order: a decision of a late
-- event that opted in before a newer refusal stores nothing of the kind either.
-- Compare-and-set of field "cas": for a key in "expect", that field is written only if the hash holds the
-- expected value (false: the field is absent); otherwise the key's other fields are still written and the
-- reply lists the key with the value it holds. Reply: {key, current value (nil: absent), ...}, empty when
-- every field was written.
local req = cjson.decode(ARGV[1])
local cas = req.cas
local expect = req.expect or {}
local erased_set, digests = req.erased, req.digests
local conflicts = {}
for key, fields in pairs(req.writes) do
  if redis.call('SISMEMBER', erased_set, digests[key]) == 0 then
    local skip = nil
    local exp = expect[key]
    if cas and exp ~= nil then
      local cur = redis.call('HGET', key, cas)
      if cur ~= exp then
        skip = cas
        conflicts[#conflicts + 1] = key
        conflicts[#conflicts + 1] = cur
      end
    end
    local refused = redis.call('HGET', key, 'cons') == '0'
    local args = {}
    for f, v in pairs(fields) do
      local personal = refused and (f == 'dev' or f == 'seg' or string.sub(f, 1, 3) == 'pd:')
      if f ~= skip and not personal then args[#args + 1] = f; args[#args + 1] = v end
    end
    if #args > 0 then
      redis.call('HSET', key, unpack(args))
      redis.call('EXPIRE', key, req.ttl)
    end
  end
end
return conflicts
