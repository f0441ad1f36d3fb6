-- Moves the location part of a device's hot state forward, atomically.
-- KEYS: 1 device hash, 2 geo set, 3 device set
-- ARGV: 1 device id, 2 ts, 3 lat, 4 lon, 5 alt, 6 speed, 7 heading,
--       8 accuracy ('' = not sent), 9 live envelope, 10 live channel
-- Returns 1 when applied and published, 0 when not newer than the stored one.
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'ts', 'last_seen')
local seen = tonumber(cur[2])
if not seen or ts > seen then
  redis.call('HSET', k, 'last_seen', ARGV[2])
end
redis.call('SADD', KEYS[3], ARGV[1])
local old = tonumber(cur[1])
if old and ts <= old then
  return 0
end
redis.call('HSET', k, 'ts', ARGV[2], 'lat', ARGV[3], 'lon', ARGV[4])
local names = { 'alt', 'speed', 'heading', 'accuracy' }
for i = 1, 4 do
  local v = ARGV[4 + i]
  if v == '' then
    redis.call('HDEL', k, names[i])
  else
    redis.call('HSET', k, names[i], v)
  end
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
