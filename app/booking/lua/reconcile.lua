--[[ reconcile: replace one hospital-day of the availability index with the state computed from
PostgreSQL, in one atomic step, keeping the holds in flight.

KEYS[1]          members  set of every key of the day
KEYS[2]          version  the day's reconcile counter
KEYS[3..2+m]     the day's current keys (as read from members just before), deleted
KEYS[3+m..#-1]   the keys to write, referred to by the payload
KEYS[#-2]        holds    the day's live holds (sorted set; not among the members, kept)
KEYS[#-1]        rb       the day's rebuild counter (DayKeys.rebuilding)
KEYS[#KEYS]      rblog    the day's rebuild log
ARGV[1]  expected version (as read just before, "" if none)
ARGV[2]  m, the number of current keys
ARGV[3]  payload: JSON list of [key_index, kind, values...], kind "h" (HSET field value ...)
         or "z" (ZADD score member ...); key_index counts from 1 within the keys to write
ARGV[4]  the day's key tag (DayKeys.tag): hold, patient and slot keys are <tag>:hold:<id>,
         <tag>:pt:<id> and <tag>:slot:<id>, all in the day's hash slot
ARGV[5]  where this rebuild's part of the log starts ("" for a plain replace: no log, no window)

A hold that is live when the script runs (grabbed, not yet confirmed or released) survives:
- its booking is in the payload (PostgreSQL committed it before the snapshot was read: the
  patient's entry for its slot carries "|<hold_id>|b|"): the new counters already count it, and
  its hash is kept so that the confirm on its way finds it;
- otherwise (not committed yet, or never will be): its places are taken again from the pools it
  took them from, and its held entries come back, exactly as the grab left them. Its commit, its
  release or the reaper then ends it as if no rebuild had happened.
A slot the snapshot no longer has gets nothing back; the hold keeps its items (release and the
reaper skip a slot that is gone). An id in the holds set without a hash is dropped from it.

The snapshot was read from PostgreSQL some time before this script runs. A booking committed
meanwhile and already confirmed, or a booking cancelled meanwhile whose place was already given
back, would be lost between the two. So the caller opens a rebuild window before it reads the
snapshot (INCR rb: confirm.lua and cancel.lua log what they do while rb exists), and this script
replays the log onto the snapshot: a confirmed booking the snapshot lacks is counted, a cancelled
booking the snapshot still has is given back; each is checked against the snapshot, so a change
the snapshot already saw is not applied twice. Then the window is closed (DECR rb; the log goes
with the last rebuild under way).

Returns {1, new_version} when the day was replaced, {0, "STALE"} when the day's key set or
version changed since the caller read it (a grab or another reconcile ran in between): the caller
reads again and retries; {0, "WINDOW"} when the rebuild window expired (the log may have missed
changes): the caller reads PostgreSQL again.
]]
local members, version = KEYS[1], KEYS[2]
local holds, rb, rblog = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local expected, m = ARGV[1], tonumber(ARGV[2])
local payload = cjson.decode(ARGV[3])
local tag = ARGV[4]
local log_from = tonumber(ARGV[5])

if log_from and redis.call('EXISTS', rb) == 0 then
  return {0, 'WINDOW'}
end

local current = redis.call('GET', version) or ''
if current ~= expected or redis.call('SCARD', members) ~= m then
  return {0, 'STALE'}
end
for i = 1, m do
  if redis.call('SISMEMBER', members, KEYS[2 + i]) == 0 then
    return {0, 'STALE'}
  end
end

-- The live holds, as they are before the day's keys go.
local live = {}
for _, hold_id in ipairs(redis.call('ZRANGE', holds, 0, -1)) do
  local flat = redis.call('HGETALL', tag .. ':hold:' .. hold_id)
  if #flat > 0 then
    local f = {}
    for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
    local pkey = tag .. ':pt:' .. f.patient
    local items = {}
    local held = '|' .. hold_id .. '|h|'
    for slot_id, pool in string.gmatch(f.items, '([^:,]+):([^,]+)') do
      local entry = redis.call('HGET', pkey, slot_id)
      items[#items + 1] = {slot_id, pool, (entry and string.find(entry, held, 1, true)) and entry or ''}
    end
    live[#live + 1] = {hold_id, f, pkey, items}
  else
    -- No hash: confirmed, released or reaped (those delete both) or lost with an older rebuild.
    -- Left in the set, the reaper would claim it again every lease, for ever.
    redis.call('ZREM', holds, hold_id)
  end
end

for i = 1, m do
  redis.call('DEL', KEYS[2 + i])
end
redis.call('DEL', members)

local first_new = 3 + m
local written = {}
for _, op in ipairs(payload) do
  local key = KEYS[first_new + op[1] - 1]
  local args = {}
  for j = 3, #op do args[#args + 1] = op[j] end
  if op[2] == 'h' then
    redis.call('HSET', key, unpack(args))
  else
    redis.call('ZADD', key, unpack(args))
  end
  if not written[key] then
    written[key] = true
    redis.call('SADD', members, key)
  end
end

-- Whether the snapshot has the hold's booking: the patient's entry on one of its slots is booked
-- by this hold.
local function in_snapshot(hold_id, pkey, items)
  local booked = '|' .. hold_id .. '|b|'
  for _, item in ipairs(items) do
    local entry = redis.call('HGET', pkey, item[1])
    if entry and string.find(entry, booked, 1, true) then
      return true
    end
  end
  return false
end

-- Take the items' places again ({slot_id, pool field, patient entry or ""}) on the slots the
-- snapshot has, and put their entries back.
local function take(pkey, items)
  for _, item in ipairs(items) do
    local slot = tag .. ':slot:' .. item[1]
    if redis.call('EXISTS', slot) == 1 then
      redis.call('HINCRBY', slot, 'b', 1)
      redis.call('HINCRBY', slot, item[2], -1)
      if item[3] ~= '' then
        redis.call('HSET', pkey, item[1], item[3])
        redis.call('SADD', members, pkey)
      end
    end
  end
end

for _, h in ipairs(live) do
  local hold_id, f, pkey, items = h[1], h[2], h[3], h[4]
  if not in_snapshot(hold_id, pkey, items) then
    take(pkey, items)
  end
  local hkey = tag .. ':hold:' .. hold_id
  redis.call('HSET', hkey, 'patient', f.patient, 'channel', f.channel, 'exp', f.exp, 'items', f.items)
  redis.call('SADD', members, hkey, pkey)
end

-- Changes since the snapshot, replayed (see above).
if log_from then
  for _, raw in ipairs(redis.call('LRANGE', rblog, log_from, -1)) do
    local ev = cjson.decode(raw)
    if ev[1] == 'confirm' then
      local pkey = tag .. ':pt:' .. ev[3]
      if not in_snapshot(ev[2], pkey, ev[4]) then
        take(pkey, ev[4])
      end
    elseif ev[1] == 'cancel' then
      local slot_id, pkey, pool, gone = ev[2], tag .. ':pt:' .. ev[3], ev[4], ev[5]
      if redis.call('HGET', pkey, slot_id) == gone then
        redis.call('HDEL', pkey, slot_id)
        local slot = tag .. ':slot:' .. slot_id
        if redis.call('EXISTS', slot) == 1 then
          redis.call('HINCRBY', slot, 'b', -1)
          redis.call('HINCRBY', slot, pool, 1)
        end
      end
    end
  end
  if redis.call('DECR', rb) <= 0 then
    redis.call('DEL', rb, rblog)
  end
end

local new_version = redis.call('INCR', version)
return {1, new_version}
