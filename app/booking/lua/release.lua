--[[ release: give a hold's places back to the pools they came from (the booking failed, was
abandoned, or the reaper found no committed booking behind it).

KEYS[1]  holds    the day's holds sorted set
KEYS[2]  hold     the hold's hash
KEYS[3]  patient  the patient's entries that day
KEYS[4..]         the slot hashes named in the hold, in the order of its items
ARGV[1]  hold_id

Returns 1 when released, 0 (NO_HOLD) when the hold no longer exists (already confirmed,
released or reaped): nothing is changed then, so a release can be retried safely.
]]
local holds, hold, patient = KEYS[1], KEYS[2], KEYS[3]
local hold_id = ARGV[1]

local items = redis.call('HGET', hold, 'items')
if not items then
  return 0
end
local i = 0
for slot_id, pool in string.gmatch(items, '([^:,]+):([^,]+)') do
  i = i + 1
  local key = KEYS[3 + i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HINCRBY', key, 'b', -1)
    redis.call('HINCRBY', key, pool, 1)
  end
  local entry = redis.call('HGET', patient, slot_id)
  if entry and string.find(entry, '|' .. hold_id .. '|h|', 1, true) then
    redis.call('HDEL', patient, slot_id)
  end
end
redis.call('DEL', hold)
redis.call('ZREM', holds, hold_id)
return 1
