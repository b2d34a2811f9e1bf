--[[ login_failures: the lockout counter of a login name that has no active account
(app/security/sessions.py), kept like staff_user's so that the answers to repeated failures are
the same whether the account exists or not.

KEYS[1]  the name's hash: n (failures), last (epoch s of the last one), until (locked until)
ARGV[1]  now, epoch s
ARGV[2]  window_s  failures older than this start the count afresh
ARGV[3]  max       the max-th failure locks the name
ARGV[4]  lock_s    for this long

Counts one failure; returns the lock's end (epoch s, as a string) when this one locks the name,
else false. The key expires once nothing about it can matter any more.
]]
local now, window, max, lock = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
local n = 1
if last > 0 and now - last <= window then
  n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0') + 1
end
if n >= max then
  local ends = now + lock
  redis.call('HSET', KEYS[1], 'n', 0, 'last', 0, 'until', ends)
  redis.call('EXPIRE', KEYS[1], math.ceil(lock + window))
  return tostring(ends)
end
redis.call('HSET', KEYS[1], 'n', n, 'last', now)
redis.call('EXPIRE', KEYS[1], math.ceil(lock + window))
return false
