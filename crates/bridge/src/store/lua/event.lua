-- Logs and publishes a device event once, however often it is redelivered.
-- KEYS: 1 dedup key, 2 event stream, 3 event-log epoch (one hash slot, the
--       log's; the device's hot state is moved by touch.lua)
-- ARGV: 1 device id, 2 event JSON without cursor, 3 receive time ms,
--       4 the events' live shard channel, 5 stream MAXLEN, 6 dedup TTL
--       seconds, 7 a fresh random epoch, used if the log has none
-- Returns 1 when logged and published, 0 for a duplicate.
--
-- The epoch names one life of the event log. A log that is gone (Redis
-- restarted without persistence, a failover, an eviction) or that lost its
-- epoch starts a new one, so a cursor from before the loss no longer
-- matches and its holder gets cursor_expired instead of a silent gap.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[6]) then
  return 0
end
local epoch = redis.call('GET', KEYS[3])
if not epoch or redis.call('EXISTS', KEYS[2]) == 0 then
  epoch = ARGV[7]
  redis.call('SET', KEYS[3], epoch)
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'd', ARGV[1], 'j', ARGV[2])
redis.call('SPUBLISH', ARGV[4],
  '{"rx":' .. ARGV[3] .. ',"msg":' .. string.sub(ARGV[2], 1, -2) .. ',"cursor":"' .. epoch .. ':' .. id .. '"}}')
return 1
