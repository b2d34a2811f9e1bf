--[[ cancel: give one booked place back to the pool it came from (the booking was cancelled or
moved away in PostgreSQL).

KEYS[1]  slot     the slot's hash
KEYS[2]  patient  the patient's entries that day
ARGV[1]  slot_id
ARGV[2]  pool     "o" or "q:<channel>", as recorded on the appointment

Returns 1 when the place was returned, 0 (NO_ENTRY) when the patient holds no booked entry on
that slot (already returned, or the index was rebuilt since): nothing is changed then.
]]
local slot, patient = KEYS[1], KEYS[2]
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
return 1
