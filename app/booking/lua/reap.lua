--[[ reap: claim the day's expired holds for the reaper.

KEYS[1]  holds    the day's holds sorted set, scored by expiry (ms)
ARGV[1]  now_ms
ARGV[2]  lease_ms  how long a claim keeps other reapers off the hold
ARGV[3]  limit     at most this many holds per call

Returns the claimed hold ids. A claim only pushes the hold's expiry forward by the lease: the
reaper then asks PostgreSQL whether a booking committed with that hold, and calls confirm if so,
release if not. A reaper that dies after claiming leaves the hold to be claimed again.
]]
local holds = KEYS[1]
local now_ms, lease_ms, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local ids = redis.call('ZRANGEBYSCORE', holds, '-inf', now_ms, 'LIMIT', 0, limit)
for _, id in ipairs(ids) do
  redis.call('ZADD', holds, now_ms + lease_ms, id)
end
return ids
