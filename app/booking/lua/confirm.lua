--[[ confirm: turn a hold into booked places, after PostgreSQL has committed the booking.

KEYS[1]  holds    the day's holds sorted set
KEYS[2]  hold     the hold's hash
KEYS[3]  patient  the patient's entries that day
KEYS[4]  rb       the day's rebuild counter (DayKeys.rebuilding)
KEYS[5]  rblog    the day's rebuild log
ARGV[1]  hold_id

Returns 1 when the hold was confirmed, 0 (NO_HOLD) when it no longer exists: it was released
or reaped before the confirm came, and the caller must reconcile the day from PostgreSQL.

While a rebuild of the day is under way (rb exists), the confirm is also logged, so that the
rebuild can count the booking if its snapshot of PostgreSQL was read before the commit
(reconcile.lua).
]]
local holds, hold, patient, rb, rblog = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local hold_id = ARGV[1]

local fields = redis.call('HMGET', hold, 'items', 'patient')
local items = fields[1]
if not items then
  return 0
end
-- Plain find: hold ids may hold characters that are magic in Lua patterns (such as '-').
local held, booked = '|' .. hold_id .. '|h|', '|' .. hold_id .. '|b|'
local done = {}
for slot_id, pool in string.gmatch(items, '([^:,]+):([^,]+)') do
  local entry = redis.call('HGET', patient, slot_id)
  if entry then
    local first, last = string.find(entry, held, 1, true)
    if first then
      entry = string.sub(entry, 1, first - 1) .. booked .. string.sub(entry, last + 1)
      redis.call('HSET', patient, slot_id, entry)
    end
  end
  done[#done + 1] = {slot_id, pool, entry or ''}
end
redis.call('DEL', hold)
redis.call('ZREM', holds, hold_id)
local ttl = redis.call('PTTL', rb)
if ttl > 0 then
  redis.call('RPUSH', rblog, cjson.encode({'confirm', hold_id, fields[2], done}))
  redis.call('PEXPIRE', rblog, ttl)
end
return 1
