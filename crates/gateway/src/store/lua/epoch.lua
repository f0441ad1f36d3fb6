-- Starts a new life of the event log when it has none, and returns the
-- log's epoch.
-- KEYS: 1 event stream, 2 event-log epoch
-- ARGV: 1 a fresh random epoch, used if the log has none
--
-- The rule is the bridge's (crates/bridge/src/sink/lua/event.lua): no
-- epoch, or no stream, means a new life. Both sides apply it atomically, so
-- neither ever rotates the epoch of a stream the other has just started.
-- The stream is created empty (a consumer group made with MKSTREAM and
-- dropped again), so the bridge's next XADD finds it and keeps this epoch.
local epoch = redis.call('GET', KEYS[2])
if epoch and redis.call('EXISTS', KEYS[1]) == 1 then
  return epoch
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[1], 'fc-epoch', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[1], 'fc-epoch')
end
redis.call('SET', KEYS[2], ARGV[1])
return redis.call('GET', KEYS[2])
