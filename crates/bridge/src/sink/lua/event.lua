-- Logs and publishes a device event once, however often it is redelivered.
-- KEYS: 1 device hash, 2 dedup key, 3 event stream, 4 device set
-- ARGV: 1 device id, 2 ts, 3 event JSON without cursor, 4 receive time ms,
--       5 live channel, 6 stream MAXLEN, 7 dedup TTL seconds
-- Returns 1 when logged and published, 0 for a duplicate.
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
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'd', ARGV[1], 'j', ARGV[3])
redis.call('PUBLISH', ARGV[5],
  '{"rx":' .. ARGV[4] .. ',"msg":' .. string.sub(ARGV[3], 1, -2) .. ',"cursor":"' .. id .. '"}}')
return 1
