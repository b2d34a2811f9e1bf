--[[ cancel: give one booked place back to the pool it came from (the booking was cancelled or
moved away in PostgreSQL).

KEYS[1]  slot     the slot's hash
KEYS[2]  patient  the patient's entries that day
KEYS[3]  rb       the day's rebuild counter (DayKeys.rebuilding)
KEYS[4]  rblog    the day's rebuild log
ARGV[1]  slot_id
ARGV[2]  pool     "o" or "q:<channel>", as recorded on the appointment
ARGV[3]  patient_id

Returns 1 when the place was returned, 0 (NO_ENTRY) when the patient holds no booked entry on
that slot (already returned, or the index was rebuilt since): nothing is changed then.

While a rebuild of the day is under way (rb exists), the cancel is also logged, so that the
rebuild can give the place back if its snapshot of PostgreSQL still had the booking
(reconcile.lua).
]]
local slot, patient, rb, rblog = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local slot_id, pool = ARGV[1], ARGV[2]

local entry = redis.call('HGET', patient, slot_id)
if not entry or not string.find(entry, '|b|', 1, true) then
  return 0
end
redis.call('HDEL', patient, slot_id)
if redis.call('EXISTS', slot) == 1 then
  redis.call('HINCRBY', slot, 'b', -1)
  redis.call('HINCRBY', slot, pool, 1)
end
local ttl = redis.call('PTTL', rb)
if ttl > 0 then
  redis.call('RPUSH', rblog, cjson.encode({'cancel', slot_id, ARGV[3], pool, entry}))
  redis.call('PEXPIRE', rblog, ttl)
end
return 1
