-- Records that a device was heard from (an event): its last_seen moves
-- forward and it joins its partition's device set. Idempotent, so it runs
-- for every delivery of an event, duplicates included.
-- KEYS: 1 device hash, 2 device set (of the device's partition)
-- ARGV: 1 device id, 2 ts
local ts = tonumber(ARGV[2])
local seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen'))
if not seen or ts > seen then
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
