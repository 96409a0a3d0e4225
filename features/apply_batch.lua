-- Applies a batch of events to per-user feature hashes in one call (one round trip, atomic).
-- ARGV: ttl, ring_size, n_windows, (size, suffix)*n_windows, then per event:
--   key, digest(8 bytes), ts, want_state(0/1), n_counters, (name, amount)*, n_sets, (mode, field, value)*
-- mode "=" sets, ">" keeps the max, "<" keeps the min (numbers).
-- Returns per event: {applied(1) or duplicate(0), flat HGETALL of the key if want_state else {}}.
local ttl = tonumber(ARGV[1])
local ring_bytes = tonumber(ARGV[2]) * 8
local nw = tonumber(ARGV[3])
local sizes, suffixes = {}, {}
for w = 1, nw do
  sizes[w] = tonumber(ARGV[2 + 2 * w])
  suffixes[w] = ARGV[3 + 2 * w]
end
local i = 4 + 2 * nw
local out = {}
while i <= #ARGV do
  local key, digest, ts, want = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local nc = tonumber(ARGV[i + 4])
  local cstart = i + 5
  local ns = tonumber(ARGV[cstart + 2 * nc])
  local sstart = cstart + 2 * nc + 1
  i = sstart + 3 * ns
  local ring = redis.call('HGET', key, 'dd') or ''
  local dup = false
  for j = 1, #ring, 8 do
    if string.sub(ring, j, j + 7) == digest then dup = true; break end
  end
  if dup then
    out[#out + 1] = {0, {}}
  else
    local updates = {}
    for c = 0, nc - 1 do
      local name, amount = ARGV[cstart + 2 * c], tonumber(ARGV[cstart + 2 * c + 1])
      for w = 1, nw do
        local field = name .. suffixes[w]
        local bucket = math.floor(ts / sizes[w])
        local raw = redis.call('HGET', key, field)
        local b, cur, prev
        if raw then
          local s1, s2 = string.find(raw, ':', 1, true), nil
          s2 = string.find(raw, ':', s1 + 1, true)
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
        if not keep then
          updates[#updates + 1] = field
          updates[#updates + 1] = string.format('%d:%.10g:%.10g', b, cur, prev)
        end
      end
    end
    for s = 0, ns - 1 do
      local mode, field, value = ARGV[sstart + 3 * s], ARGV[sstart + 3 * s + 1], ARGV[sstart + 3 * s + 2]
      if mode == '=' then
        updates[#updates + 1] = field; updates[#updates + 1] = value
      else
        local old = tonumber(redis.call('HGET', key, field) or '')
        local v = tonumber(value)
        if old == nil or (mode == '>' and v > old) or (mode == '<' and v < old) then
          updates[#updates + 1] = field; updates[#updates + 1] = value
        end
      end
    end
    ring = string.sub(digest .. ring, 1, ring_bytes)
    updates[#updates + 1] = 'dd'; updates[#updates + 1] = ring
    redis.call('HSET', key, unpack(updates))
    redis.call('EXPIRE', key, ttl)
    if want == '1' then
      out[#out + 1] = {1, redis.call('HGETALL', key)}
    else
      out[#out + 1] = {1, {}}
    end
  end
end
return out
