--[[ lock: close slots of one day for all channels ("*") or for the channels given.

KEYS[1..n]  the slot hashes the lock covers
ARGV[1..]   the channels, or "*" for all

Returns the number of slots that were found in the index and marked. Locks nest: each lock adds
one to the slot's lk:<channel> counter and unlock takes one away, so overlapping locks from
different admins do not undo each other.
]]
local marked = 0
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    for _, channel in ipairs(ARGV) do
      redis.call('HINCRBY', key, 'lk:' .. channel, 1)
    end
    marked = marked + 1
  end
end
return marked
