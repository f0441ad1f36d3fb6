-- Moves the location part of a device's hot state forward, atomically.
-- KEYS: 1 device hash, 2 geo set, 3 device set
-- ARGV: 1 device id, 2 ts, 3 lat, 4 lon, 5 alt, 6 speed, 7 heading,
--       8 accuracy ('' = not sent), 9 live envelope, 10 live channel
-- Returns 1 when applied and published, 0 when not newer than the stored one.
-- Hot path: four Redis calls for an update (HMGET, HSET, GEOADD, PUBLISH).
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'ts', 'last_seen')
local old = tonumber(cur[1])
local seen = tonumber(cur[2])
if not seen then
  redis.call('SADD', KEYS[3], ARGV[1])
end
-- last_seen >= the stored ts, so a stale location cannot move it either.
if old and ts <= old then
  return 0
end
local set = { 'ts', ARGV[2], 'lat', ARGV[3], 'lon', ARGV[4] }
if not seen or ts > seen then
  set[#set + 1] = 'last_seen'
  set[#set + 1] = ARGV[2]
end
local names = { 'alt', 'speed', 'heading', 'accuracy' }
local del = {}
for i = 1, 4 do
  local v = ARGV[4 + i]
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
local lat = ARGV[3]
local latn = tonumber(lat)
if latn > 85.05112878 then
  lat = '85.05112878'
elseif latn < -85.05112878 then
  lat = '-85.05112878'
end
redis.call('GEOADD', KEYS[2], ARGV[4], lat, ARGV[1])
redis.call('PUBLISH', ARGV[10], ARGV[9])
return 1
