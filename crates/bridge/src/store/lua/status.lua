-- Moves the status part of a device's hot state forward, atomically.
-- KEYS: 1 device hash, 2 device set, 3 transitions stream (of the
--       device's partition)
-- ARGV: 1 device id, 2 ts, 3 online ('1'/'0'), 4 battery, 5 signal
--       ('' = not sent: the last known value stays), 6 live envelope,
--       7 the partition's live shard channel, 8 '1' when the device sent no ts (then ARGV[2] is
--       the receive time and ARGV[6] the envelope up to the ts value),
--       9 the rest of the envelope after the ts value (with ARGV[8] = '1'),
--       10 the device's low-battery rules, `<rule>:<level>` comma-separated,
--       11 its offline rules' ids, comma-separated
-- Alert rules (docs/alerts.md) are judged here, with the status that
-- moves the hot state, so each trips once: a low-battery rule when the
-- battery goes from at or above its level (or unknown) to below it, an
-- offline rule when a Last Will is applied. What tripped is appended to
-- the transitions stream for the bridges' drain to make the alerts.
-- Returns 1 when applied and published (2 when an alert tripped too), 0
-- when not newer than the stored one (or, without a ts, already applied).
local k = KEYS[1]
local ts = tonumber(ARGV[2])
local cur = redis.call('HMGET', k, 'sts', 'last_seen', 'swill', 'battery')
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
local alerted = 1
if ARGV[10] ~= '' and ARGV[4] ~= '' then
  local b, before = tonumber(ARGV[4]), tonumber(cur[4])
  local tripped = {}
  for r, level in string.gmatch(ARGV[10], '(%d+):([^,]+)') do
    level = tonumber(level)
    if b < level and (not before or before >= level) then
      tripped[#tripped + 1] = r
    end
  end
  if #tripped > 0 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', '20000', '*', 'd', ARGV[1], 'ts', tss,
      'a', 'low_battery', 'r', table.concat(tripped, ','), 'battery', ARGV[4])
    alerted = 2
  end
end
if untimed and ARGV[3] == '0' and ARGV[11] ~= '' then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', '20000', '*', 'd', ARGV[1], 'ts', tss,
    'a', 'offline', 'r', ARGV[11])
  alerted = 2
end
if untimed then
  redis.call('SPUBLISH', ARGV[7], ARGV[6] .. tss .. ARGV[9])
else
  redis.call('SPUBLISH', ARGV[7], ARGV[6])
end
return alerted
