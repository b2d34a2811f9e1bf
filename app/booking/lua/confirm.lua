--[[ confirm: turn a hold into booked places, after PostgreSQL has committed the booking.

KEYS[1]  holds    the day's holds sorted set
KEYS[2]  hold     the hold's hash
KEYS[3]  patient  the patient's entries that day
ARGV[1]  hold_id

Returns 1 when the hold was confirmed, 0 (NO_HOLD) when it no longer exists: it was released
or reaped before the confirm came, and the caller must reconcile the day from PostgreSQL.
]]
local holds, hold, patient = KEYS[1], KEYS[2], KEYS[3]
local hold_id = ARGV[1]

local items = redis.call('HGET', hold, 'items')
if not items then
  return 0
end
-- Plain find: hold ids may hold characters that are magic in Lua patterns (such as '-').
local held, booked = '|' .. hold_id .. '|h|', '|' .. hold_id .. '|b|'
for slot_id in string.gmatch(items, '([^:,]+):[^,]+') do
  local entry = redis.call('HGET', patient, slot_id)
  if entry then
    local first, last = string.find(entry, held, 1, true)
    if first then
      redis.call('HSET', patient, slot_id, string.sub(entry, 1, first - 1) .. booked .. string.sub(entry, last + 1))
    end
  end
end
redis.call('DEL', hold)
redis.call('ZREM', holds, hold_id)
return 1
