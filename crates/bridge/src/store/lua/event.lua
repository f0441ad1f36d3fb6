-- Records that a device was heard from (an event), then logs and publishes
-- the event once, however often it is redelivered.
-- KEYS (one hash slot, the device's partition): 1 device hash, 2 the
--       partition's device set, 3 dedup key, 4 the partition's event
--       stream, 5 its epoch, 6 its transitions stream
-- ARGV: 1 device id, 2 event JSON without cursor, 3 receive time ms,
--       4 the partition's live channel, 5 stream MAXLEN, 6 dedup TTL
--       seconds, 7 a fresh random epoch, used if the log has none, 8 the
--       event's ts, 9 the ids of the device's `event` alert rules naming
--       this event's kind (comma-separated; docs/alerts.md), 10 the
--       event's id, 11 its kind, 12 '1' when the bridge derived the event
--       (a geofence transition, an alert): not heard from the device, so
--       it leaves `last_seen` alone
-- Returns 1 when logged and published, 2 when an alert rule tripped too
-- (appended to the transitions stream, once, with the event), 0 for a
-- duplicate.
--
-- last_seen moves forward and the device joins its partition's set on
-- every delivery, duplicates included (idempotent).
--
-- The epoch names one life of the partition's log. A log that is gone
-- (Redis restarted without persistence, a failover, an eviction) or that
-- lost its epoch starts a new one, so a cursor from before the loss no
-- longer matches and its holder gets cursor_expired instead of a silent
-- gap. The live message carries the event's position in this log
-- (`pos`); the gateway turns the positions of every partition into the
-- client's cursor.
local ts = tonumber(ARGV[8])
if ARGV[12] ~= '1' then
  local seen = tonumber(redis.call('HGET', KEYS[1], 'last_seen'))
  if not seen or ts > seen then
    redis.call('HSET', KEYS[1], 'last_seen', ARGV[8])
  end
end
redis.call('SADD', KEYS[2], ARGV[1])
if not redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[6]) then
  return 0
end
local epoch = redis.call('GET', KEYS[5])
if not epoch or redis.call('EXISTS', KEYS[4]) == 0 then
  epoch = ARGV[7]
  redis.call('SET', KEYS[5], epoch)
end
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[5], '*', 'd', ARGV[1], 'j', ARGV[2])
redis.call('SPUBLISH', ARGV[4],
  '{"rx":' .. ARGV[3] .. ',"msg":' .. ARGV[2] .. ',"pos":"' .. epoch .. ':' .. id .. '"}')
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', '20000', '*', 'd', ARGV[1], 'ts', ARGV[8],
    'a', 'event', 'r', ARGV[9], 'e', ARGV[10], 'k', ARGV[11])
  return 2
end
return 1
