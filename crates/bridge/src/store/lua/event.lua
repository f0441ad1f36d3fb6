-- Logs and publishes a device event once, however often it is redelivered.
-- KEYS: 1 device hash, 2 dedup key, 3 event stream, 4 device set,
--       5 event-log epoch
-- ARGV: 1 device id, 2 ts, 3 event JSON without cursor, 4 receive time ms,
--       5 live channel, 6 stream MAXLEN, 7 dedup TTL seconds,
--       8 a fresh random epoch, used if the log has none
-- Returns 1 when logged and published, 0 for a duplicate.
--
-- The epoch names one life of the event log. A log that is gone (Redis
-- restarted without persistence, a failover, an eviction) or that lost its
-- epoch starts a new one, so a cursor from before the loss no longer
-- matches and its holder gets cursor_expired instead of a silent gap.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[7]) then
  return 0
end
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local seen = tonumber(redis.call('HGET', k, 'last_seen'))
if not seen or ts > seen then
  redis.call('HSET', k, 'last_seen', ARGV[2])
end
redis.call('SADD', KEYS[4], ARGV[1])
local epoch = redis.call('GET', KEYS[5])
if not epoch or redis.call('EXISTS', KEYS[3]) == 0 then
  epoch = ARGV[8]
  redis.call('SET', KEYS[5], epoch)
end
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'd', ARGV[1], 'j', ARGV[3])
redis.call('PUBLISH', ARGV[5],
  '{"rx":' .. ARGV[4] .. ',"msg":' .. string.sub(ARGV[3], 1, -2) .. ',"cursor":"' .. epoch .. ':' .. id .. '"}}')
return 1
