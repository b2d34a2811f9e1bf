--[[ unlock: undo one lock on slots of one day.

KEYS[1..n]  the slot hashes the lock covered
ARGV[1..]   the channels the lock named, or "*"

Returns the number of slots changed. A counter never goes below zero, so an unlock after a
reconcile (which rebuilt the counters from PostgreSQL without this lock) changes nothing.
]]
local changed = 0
for _, key in ipairs(KEYS) do
  local touched = false
  for _, channel in ipairs(ARGV) do
    local field = 'lk:' .. channel
    if tonumber(redis.call('HGET', key, field) or '0') > 0 then
      redis.call('HINCRBY', key, field, -1)
      touched = true
    end
  end
  if touched then changed = changed + 1 end
end
return changed
