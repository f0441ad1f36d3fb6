-- Moves the location part of a batch of devices' hot state forward,
-- atomically, and publishes what moved as one message.
-- KEYS: 1..3m the geo set, device set and transitions stream of each of
--       the call's m partitions (on a cluster m = 1: one hash slot), then
--       one device hash per location, partition by partition
-- ARGV: 1 the live channel, 2 m, 3 the live envelopes of all the call's
--       locations as one JSON array (what is published when all apply),
--       4 the byte length of each envelope in it, comma-separated,
--       5 the configuration version the memberships were computed with
--       (0: none loaded, memberships left alone),
--       6..5+m how many of the locations are in each partition, then per
--       location, laid out by the bridge so the script builds no
--       per-location table:
--         device id, ts, lat, lon, shape, membership (the ids of the
--         geofences holding the location, ascending, comma-separated),
--         overspeed (`<rule>:<for ms>` for each overspeed rule whose
--         limit the location's speed is above, comma-separated),
--         then, when all 4 optional fields are sent (k = 4), their
--         values: alt, speed, heading, accuracy; else a name and a value
--         for each of the k sent (in that order), then the names of the
--         4 - k not sent (removed from the hash).
--       shape is k, followed by '+' or '-' when the latitude is beyond
--       +85.05112878 or -85.05112878 (what the geo set gets instead).
-- The shared keys go once per partition, not once per location: a call's
-- locations are sorted by partition, so m stays small, and each key costs
-- Redis a parse and an object. Each partition's new devices go in one
-- SADD and its applied positions in one GEOADD. The envelopes come as one
-- argument: Redis's Lua hashes every byte of every string it makes, so
-- each envelope as its own argument, then again in the joined message,
-- cost two passes over it.
-- Geofence membership (docs/geofences.md) moves only with the location
-- that becomes the device's newest, in this same step, so two bridges,
-- redeliveries and out-of-order fixes cannot decide one change twice. It
-- moves only if the version is not older than the one that last judged the
-- device (`gv`): a bridge that has not yet reloaded changed fences cannot
-- undo what a reloaded one decided. A change is stored in `gf` and
-- appended to the partition's transitions stream, for the bridges' drain
-- to turn into events.
-- Overspeed episodes likewise: `os` holds `<rule>:<since ts>:<tripped>`
-- for each rule the device's newest location is above the limit of; an
-- episode trips once, at the first newest location at least `for` after
-- its start, appending `{d, ts, a=overspeed, r, since, speed}` to the
-- transitions stream. A location under the limit ends the episode.
-- Returns one integer per location: 2 applied and its membership changed
-- or an alert tripped,
-- 1 applied, 0 not newer than the stored one. The applied envelopes go out
-- as one JSON array on the live channel.
-- Hot path: per update HMGET, HSET; per partition GEOADD; one SPUBLISH
-- per call.
local call, tonumber, unpack = redis.call, tonumber, unpack
local SENT = {
  ['0'] = 0, ['1'] = 1, ['2'] = 2, ['3'] = 3, ['4'] = 4,
  ['0+'] = 0, ['1+'] = 1, ['2+'] = 2, ['3+'] = 3, ['4+'] = 4,
  ['0-'] = 0, ['1-'] = 1, ['2-'] = 2, ['3-'] = 3, ['4-'] = 4,
}
local out, np = {}, 0
local geo = {}
local m = tonumber(ARGV[2])
local vera = ARGV[5]
local ver = tonumber(vera)
local a = 6 + m
local m2 = 3 * m
local n = m2
-- Bounds each transitions stream should the drain stop (PostgreSQL away
-- for long); docs/geofences.md.
local TRANSITIONS_MAX = '20000' 
for p = 1, m do
  local g, added, na = 0, nil, 0
  for _ = 1, tonumber(ARGV[5 + p]) do
    n = n + 1
    local k = KEYS[n]
    local id, tsa, lat, lon, shape = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
    local sent = SENT[shape]
    -- Every field sent (the usual case): their 4 values follow, in order.
    -- Else a + 7 .. j: the fields sent, j + 1 .. d: the names of those not.
    local j = a + 6 + 2 * sent
    local d = j + 4 - sent
    local cur
    if sent == 4 then
      d = a + 10
      cur = call('HMGET', k, 'ts', 'last_seen', 'gf', 'gv', 'os')
    else
      cur = call('HMGET', k, 'ts', 'last_seen', 'gf', 'gv', 'os', unpack(ARGV, j + 1, d))
    end
    local old, seen = cur[1], cur[2]
    if not seen then
      na = na + 1
      added = added or {}
      added[na] = id
    end
    local ts = tonumber(tsa)
    -- last_seen >= the stored ts, so a stale location cannot move it either.
    if old and ts <= tonumber(old) then
      out[n - m2] = 0
    else
      local moves_seen = not seen or seen == old or ts > tonumber(seen)
      if sent == 4 then
        if moves_seen then
          call('HSET', k, 'ts', tsa, 'lat', lat, 'lon', lon, 'last_seen', tsa, 'alt', ARGV[a + 7],
            'speed', ARGV[a + 8], 'heading', ARGV[a + 9], 'accuracy', ARGV[a + 10])
        else
          call('HSET', k, 'ts', tsa, 'lat', lat, 'lon', lon, 'alt', ARGV[a + 7],
            'speed', ARGV[a + 8], 'heading', ARGV[a + 9], 'accuracy', ARGV[a + 10])
        end
      else
        if moves_seen then
          call('HSET', k, 'ts', tsa, 'lat', lat, 'lon', lon, 'last_seen', tsa, unpack(ARGV, a + 7, j))
        else
          call('HSET', k, 'ts', tsa, 'lat', lat, 'lon', lon, unpack(ARGV, a + 7, j))
        end
        -- Only the absent fields the hash holds: most devices send the
        -- same fields every time.
        for x = 6, 9 - sent do
          if cur[x] then
            call('HDEL', k, unpack(ARGV, j + 1, d))
            break
          end
        end
      end
      -- Redis geo cannot hold the poles; the exact position stays in the hash.
      if #shape > 1 then
        lat = string.byte(shape, 2) == 43 and '85.05112878' or '-85.05112878'
      end
      geo[g + 1], geo[g + 2], geo[g + 3] = lon, lat, id
      g = g + 3
      np = np + 1
      out[n - m2] = 1
      local gv = cur[4]
      if ver > 0 and (not gv or ver >= tonumber(gv)) then
        local mem, was = ARGV[a + 5], cur[3] or ''
        if mem ~= was then
          if mem == '' then
            call('HDEL', k, 'gf')
            call('HSET', k, 'gv', vera)
          else
            call('HSET', k, 'gf', mem, 'gv', vera)
          end
          call('XADD', KEYS[3 * p], 'MAXLEN', '~', TRANSITIONS_MAX, '*',
            'd', id, 'ts', tsa, 'prev', was, 'next', mem)
          out[n - m2] = 2
        elseif gv ~= vera then
          call('HSET', k, 'gv', vera)
        end
        local over, ep = ARGV[a + 6], cur[5]
        if over ~= '' or ep then
          local prev = {}
          if ep then
            for r, since, tripped in string.gmatch(ep, '(%d+):(%d+):(%d)') do
              prev[r] = { since, tripped }
            end
          end
          local now = {}
          for r, hold in string.gmatch(over, '(%d+):(%d+)') do
            local e = prev[r]
            local since, tripped = tsa, '0'
            if e then
              since, tripped = e[1], e[2]
            end
            if tripped == '0' and ts - tonumber(since) >= tonumber(hold) then
              tripped = '1'
              local speed = ARGV[a + 8]
              if sent < 4 then
                speed = ''
                for x = a + 7, j - 1, 2 do
                  if ARGV[x] == 'speed' then
                    speed = ARGV[x + 1]
                  end
                end
              end
              call('XADD', KEYS[3 * p], 'MAXLEN', '~', TRANSITIONS_MAX, '*',
                'd', id, 'ts', tsa, 'a', 'overspeed', 'r', r, 'since', since, 'speed', speed)
              out[n - m2] = 2
            end
            now[#now + 1] = r .. ':' .. since .. ':' .. tripped
          end
          local state = table.concat(now, ',')
          if state == '' then
            call('HDEL', k, 'os')
          elseif state ~= ep then
            call('HSET', k, 'os', state)
          end
        end
      end
    end
    a = d + 1
  end
  if added then
    call('SADD', KEYS[3 * p - 1], unpack(added, 1, na))
  end
  if g > 0 then
    call('GEOADD', KEYS[3 * p - 2], unpack(geo, 1, g))
  end
end
local total = n - m2
if np == total then
  call('SPUBLISH', ARGV[1], ARGV[3])
elseif np > 0 then
  local message, applied, pos, i = ARGV[3], {}, 2, 0
  for len in string.gmatch(ARGV[4], '%d+') do
    i = i + 1
    len = tonumber(len)
    if out[i] > 0 then
      applied[#applied + 1] = string.sub(message, pos, pos + len - 1)
    end
    pos = pos + len + 1
  end
  call('SPUBLISH', ARGV[1], '[' .. table.concat(applied, ',') .. ']')
end
return out
