-- Moves the status part of a device's hot state forward, atomically.
-- KEYS: 1 device hash, 2 device set (of the device's partition)
-- ARGV: 1 device id, 2 ts, 3 online ('1'/'0'), 4 battery, 5 signal
--       ('' = not sent: the last known value stays), 6 live envelope,
--       7 the partition's live shard channel, 8 '1' when the device sent no ts (then ARGV[2] is
--       the receive time and ARGV[6] the envelope up to the ts value),
--       9 the rest of the envelope after the ts value (with ARGV[8] = '1')
-- Returns 1 when applied and published, 0 when not newer than the stored
-- one (or, without a ts, already applied).
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'sts', 'last_seen', 'swill')
local old = tonumber(cur[1])
local seen = tonumber(cur[2])
if not seen then
  redis.call('SADD', KEYS[2], ARGV[1])
end
local untimed = ARGV[8] == '1'
if untimed then
  -- A status without ts (the Last Will the broker sends for a vanished
  -- device) is the device's newest, even when its clock ran ahead
  -- (PROTOCOL.md §3). `swill` remembers its receive time so a redelivery
  -- or an outbox replay does not apply and push it a second time.
  if cur[3] == ARGV[2] then
    return 0
  end
  if old and ts <= old then
    ts = old + 1
  end
elseif old and ts <= old then
  -- last_seen >= the stored sts, so a stale status cannot move it either.
  return 0
end
local tss = string.format('%d', ts)
local set = { 'sts', tss, 'online', ARGV[3] }
if not seen or ts > seen then
  set[#set + 1] = 'last_seen'
  set[#set + 1] = tss
end
if ARGV[4] ~= '' then
  set[#set + 1] = 'battery'
  set[#set + 1] = ARGV[4]
end
if ARGV[5] ~= '' then
  set[#set + 1] = 'signal'
  set[#set + 1] = ARGV[5]
end
if untimed then
  set[#set + 1] = 'swill'
  set[#set + 1] = ARGV[2]
end
redis.call('HSET', k, unpack(set))
if untimed then
  redis.call('SPUBLISH', ARGV[7], ARGV[6] .. tss .. ARGV[9])
else
  redis.call('SPUBLISH', ARGV[7], ARGV[6])
end
return 1
