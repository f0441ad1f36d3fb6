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
--       6..5+m how many of the locations are in each partition, then 8
--       per location:
--         device id, ts, the packed `loc` field (docs/redis-layout.md),
--         lon and lat for the geo set (lat clamped to what Redis geo
--         holds), the geo cell (`index_cell` in crates/core/src/geo.rs),
--         membership (the ids of the geofences holding the location,
--         ascending, comma-separated), overspeed (`<rule>:<for ms>` for
--         each overspeed rule whose limit the location's speed is above,
--         comma-separated).
-- What Redis spends per location is the point of this layout
-- (docs/benchmarks.md, "Cost per message"): the position and its optional
-- measurements are one hash field, so a location writes 2 to 4 fields and
-- Redis's Lua makes 8 strings of its arguments; the geo set is written
-- only when the device leaves the cell it was last indexed in (`gc`);
-- the shared keys go once per partition, not once per location (a call's
-- locations are sorted by partition, so m stays small), each partition's
-- new devices in one SADD and its moved positions in one GEOADD. The
-- envelopes come as one argument: Redis's Lua hashes every byte of every
-- string it makes, so each envelope as its own argument, then again in
-- the joined message, cost two passes over it.
-- A hash written before `loc` (one field per value) loses those fields
-- with its first newer location.
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
-- Hot path: per update HMGET, HSET; per partition GEOADD of the devices
-- that changed cells; one SPUBLISH per call.
local call, tonumber, unpack = redis.call, tonumber, unpack
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
    local id, tsa, loc, cell = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 5]
    -- 1 ts, 2 last_seen, 3 gc, then what geofences and alert rules
    -- need, when loaded.
    local cur
    if ver > 0 then
      cur = call('HMGET', k, 'ts', 'last_seen', 'gc', 'gf', 'gv', 'os')
    else
      cur = call('HMGET', k, 'ts', 'last_seen', 'gc')
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
      local moved = cell ~= cur[3]
      if moves_seen then
        if moved then
          call('HSET', k, 'ts', tsa, 'loc', loc, 'last_seen', tsa, 'gc', cell)
        else
          call('HSET', k, 'ts', tsa, 'loc', loc, 'last_seen', tsa)
        end
      elseif moved then
        call('HSET', k, 'ts', tsa, 'loc', loc, 'gc', cell)
      else
        call('HSET', k, 'ts', tsa, 'loc', loc)
      end
      -- A location without its cell: the hash is from before `loc`.
      if old and not cur[3] then
        call('HDEL', k, 'lat', 'lon', 'alt', 'speed', 'heading', 'accuracy')
      end
      if moved then
        geo[g + 1], geo[g + 2], geo[g + 3] = ARGV[a + 3], ARGV[a + 4], id
        g = g + 3
      end
      np = np + 1
      out[n - m2] = 1
      local gv = cur[5]
      if ver > 0 and (not gv or ver >= tonumber(gv)) then
        local mem, was = ARGV[a + 6], cur[4] or ''
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
        local over, ep = ARGV[a + 7], cur[6]
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
              -- The 4th value of `loc`.
              local speed = string.match(loc, '^[^,]*,[^,]*,[^,]*,([^,]*)') or ''
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
    a = a + 8
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
