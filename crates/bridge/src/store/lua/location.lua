-- Moves the location part of a batch of devices' hot state forward,
-- atomically, and publishes what moved as one message.
-- KEYS: 1..2m the geo set and device set of each of the call's m
--       partitions (on a cluster m = 1: one hash slot), then one device
--       hash per location
-- ARGV: 1 the live channel, 2 m, then 10 per location: its partition's
--       place among the m (1-based), device id, ts, lat, lon, alt, speed,
--       heading, accuracy ('' = not sent), live envelope
-- The shared keys go once per partition, not once per location: a call's
-- locations are sorted by partition, so m stays small, and each key costs
-- Redis a parse and an object.
-- Returns one integer per location: 1 applied, 0 not newer than the stored
-- one. The applied envelopes go out as one JSON array on the live channel.
-- Hot path: per update HMGET, HSET, GEOADD; one SPUBLISH per batch.
local names = { 'alt', 'speed', 'heading', 'accuracy' }
local out = {}
local published = {}
local m2 = tonumber(ARGV[2]) * 2
for n = 1, #KEYS - m2 do
  local k = KEYS[m2 + n]
  local a = 3 + (n - 1) * 10
  local p2 = tonumber(ARGV[a]) * 2
  local id, tsa = ARGV[a + 1], ARGV[a + 2]
  local ts = tonumber(tsa)
  local cur = redis.call('HMGET', k, 'ts', 'last_seen')
  local old = tonumber(cur[1])
  local seen = tonumber(cur[2])
  if not seen then
    redis.call('SADD', KEYS[p2], id)
  end
  -- last_seen >= the stored ts, so a stale location cannot move it either.
  if old and ts <= old then
    out[n] = 0
  else
    local set = { 'ts', tsa, 'lat', ARGV[a + 3], 'lon', ARGV[a + 4] }
    if not seen or ts > seen then
      set[#set + 1] = 'last_seen'
      set[#set + 1] = tsa
    end
    local del = {}
    for i = 1, 4 do
      local v = ARGV[a + 4 + i]
      if v == '' then
        del[#del + 1] = names[i]
      else
        set[#set + 1] = names[i]
        set[#set + 1] = v
      end
    end
    redis.call('HSET', k, unpack(set))
    if #del > 0 then
      redis.call('HDEL', k, unpack(del))
    end
    -- Redis geo cannot hold the poles; the exact position stays in the hash.
    local lat = ARGV[a + 3]
    local latn = tonumber(lat)
    if latn > 85.05112878 then
      lat = '85.05112878'
    elseif latn < -85.05112878 then
      lat = '-85.05112878'
    end
    redis.call('GEOADD', KEYS[p2 - 1], ARGV[a + 4], lat, id)
    published[#published + 1] = ARGV[a + 9]
    out[n] = 1
  end
end
if #published > 0 then
  redis.call('SPUBLISH', ARGV[1], '[' .. table.concat(published, ',') .. ']')
end
return out
