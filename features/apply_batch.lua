-- Applies a batch of events to per-user feature hashes in one call (one round trip, atomic).
-- ARGV[1] = JSON {"ttl": s, "ring": n, "windows": [[size, suffix]...], "erased": set key, "events": [event...]}
-- event = [key, digest_hex(16), ts, want_state(0/1), [[counter, amount]...], [[mode, field, value]...],
--          user_digest_hex(32): the user's keyed digest, features/keys.py UserDigest]
-- mode "=" sets, ">" keeps the max, "<" keeps the min (numbers). A user whose consent ("cons") is "0" after the
-- event keeps no device, segment or pending decisions (their context vectors): they are deleted, not set.
-- Consent goes by event time, whatever the arrival order: "cons" is set with "cons_t", its event's ts, and only
-- by an event whose ts is at or after cons_t (a tie: a refusal wins). A hash stored before cons_t: a refusal
-- counts as of its latest event time (the max of its "t:" fields and "fs", before this event), an opt-in as of
-- -inf (privacy first: an older opt-in never undoes a refusal, any refusal applies).
-- Returns JSON: per event 0 (duplicate), 1 (applied), -1 (the user's digest is in the erased set: nothing
-- written, the key is never created again) or the user's fields after the event (want_state), without the
-- binary dedup ring. The erased set is {ns}:erased:v2 (keyed digests); the unkeyed digests of erasures recorded
-- before keys ({ns}:erased) are checked by the engine before it calls this. Each event costs three commands:
-- HGETALL, HSET, EXPIRE; each key one SISMEMBER per call.
local req = cjson.decode(ARGV[1])
local ttl, ring_bytes, windows = req.ttl, req.ring * 8, req.windows
local erased_set, erased = req.erased, {}  -- key -> whether its user is erased
local out = {}
local function ts_text(x)  -- the shortest text that reads back as x (as Python's repr, for the usual ts)
  local t
  for p = 14, 17 do
    t = string.format('%.' .. p .. 'g', x)
    if tonumber(t) == x then return t end
  end
  return t
end
for n, ev in ipairs(req.events) do
  local key, hex, ts, want, counters, sets = ev[1], ev[2], ev[3], ev[4], ev[5], ev[6]
  local gone = erased[key]
  if gone == nil then
    gone = redis.call('SISMEMBER', erased_set, ev[7]) == 1
    erased[key] = gone
    if gone then redis.call('DEL', key) end  -- written before the erasure reached this check (an old worker)
  end
  local digest = string.gsub(hex, '..', function(cc) return string.char(tonumber(cc, 16)) end)
  local flat = gone and {} or redis.call('HGETALL', key)
  local h = {}
  for j = 1, #flat, 2 do h[flat[j]] = flat[j + 1] end
  local ring = h['dd'] or ''
  local dup = false
  for j = 1, #ring, 8 do
    if string.sub(ring, j, j + 7) == digest then dup = true; break end
  end
  if dup then
    if want == 1 then  -- the state lets the engine re-emit what the first delivery may have lost
      h['dd'] = nil
      h['__dup'] = '1'
      out[n] = h
    else
      out[n] = 0
    end
  else
    local updates = {}
    local cons_t = tonumber(h['cons_t'] or '')
    if cons_t == nil then
      cons_t = -math.huge
      if h['cons'] == '0' then  -- a refusal stored before cons_t: as of the hash's latest event time
        for f, v in pairs(h) do
          if f == 'fs' or string.sub(f, 1, 2) == 't:' then cons_t = math.max(cons_t, tonumber(v) or cons_t) end
        end
      end
    end
    local function put(field, value)
      h[field] = value
      updates[#updates + 1] = field; updates[#updates + 1] = value
    end
    for _, c in ipairs(counters) do
      local name, amount = c[1], c[2]
      for _, w in ipairs(windows) do
        local size, field = w[1], name .. w[2]
        local bucket = math.floor(ts / size)
        local raw = h[field]
        local b, cur, prev
        if raw then
          local s1 = string.find(raw, ':', 1, true)
          local s2 = string.find(raw, ':', s1 + 1, true)
          b = tonumber(string.sub(raw, 1, s1 - 1))
          cur = tonumber(string.sub(raw, s1 + 1, s2 - 1))
          prev = tonumber(string.sub(raw, s2 + 1))
        end
        local keep = false
        if not raw then b, cur, prev = bucket, amount, 0
        elseif bucket == b then cur = cur + amount
        elseif bucket == b + 1 then prev = cur; cur = amount; b = bucket
        elseif bucket > b + 1 then prev = 0; cur = amount; b = bucket
        elseif bucket == b - 1 then prev = prev + amount
        else keep = true end
        if not keep then put(field, string.format('%d:%.10g:%.10g', b, cur, prev)) end
      end
    end
    for _, s in ipairs(sets) do
      local mode, field, value = s[1], s[2], s[3]
      if field == 'cons' then  -- by event time (above); the event's own consent applies to its decision anyway
        if ts > cons_t or (ts == cons_t and value == '0') then
          if h[field] ~= value then put(field, value) end
          cons_t = ts
          local t = ts_text(ts)
          if h['cons_t'] ~= t then put('cons_t', t) end
        end
      elseif mode == '=' then
        if h[field] ~= value then put(field, value) end
      else
        local old = tonumber(h[field] or '')
        local v = tonumber(value)
        if old == nil or (mode == '>' and v > old) or (mode == '<' and v < old) then put(field, value) end
      end
    end
    if not gone and h['cons'] == '0' then  -- no marketing consent (this event's or stored): nothing describing the person stays
      local drop, kept = {}, {}
      for f in pairs(h) do
        if f == 'dev' or f == 'seg' or string.sub(f, 1, 3) == 'pd:' then drop[#drop + 1] = f end
      end
      for j = 1, #updates, 2 do
        local f = updates[j]
        if not (f == 'dev' or f == 'seg') then kept[#kept + 1] = f; kept[#kept + 1] = updates[j + 1] end
      end
      updates = kept
      for _, f in ipairs(drop) do h[f] = nil end
      if #drop > 0 then redis.call('HDEL', key, unpack(drop)) end
    end
    put('dd', string.sub(digest .. ring, 1, ring_bytes))
    if not gone then
      redis.call('HSET', key, unpack(updates))
      redis.call('EXPIRE', key, ttl)
    end
    if gone then
      out[n] = -1
    elseif want == 1 then
      h['dd'] = nil
      out[n] = h
    else
      out[n] = 1
    end
  end
end
return cjson.encode(out)
