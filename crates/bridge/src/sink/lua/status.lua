-- Moves the status part of a device's hot state forward, atomically.
-- KEYS: 1 device hash, 2 device set
-- ARGV: 1 device id, 2 ts, 3 online ('1'/'0'), 4 battery, 5 signal
--       ('' = not sent: the last known value stays), 6 live envelope,
--       7 live channel
-- Returns 1 when applied and published, 0 when not newer than the stored one.
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'sts', 'last_seen')
local old = tonumber(cur[1])
local seen = tonumber(cur[2])
if not seen then
  redis.call('SADD', KEYS[2], ARGV[1])
end
-- last_seen >= the stored sts, so a stale status cannot move it either.
if old and ts <= old then
  return 0
end
local set = { 'sts', ARGV[2], 'online', ARGV[3] }
if not seen or ts > seen then
  set[#set + 1] = 'last_seen'
  set[#set + 1] = ARGV[2]
end
if ARGV[4] ~= '' then
  set[#set + 1] = 'battery'
  set[#set + 1] = ARGV[4]
end
if ARGV[5] ~= '' then
  set[#set + 1] = 'signal'
  set[#set + 1] = ARGV[5]
end
redis.call('HSET', k, unpack(set))
redis.call('PUBLISH', ARGV[7], ARGV[6])
return 1
