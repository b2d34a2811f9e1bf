--[[ reconcile: replace one hospital-day of the availability index with the state computed from
PostgreSQL, in one atomic step.

KEYS[1]          members  set of every key of the day
KEYS[2]          version  the day's reconcile counter
KEYS[3..2+m]     the day's current keys (as read from members just before), deleted
KEYS[3+m..]      the keys to write, referred to by the payload
ARGV[1]  expected version (as read just before, "" if none)
ARGV[2]  m, the number of current keys
ARGV[3]  payload: JSON list of [key_index, kind, values...], kind "h" (HSET field value ...)
         or "z" (ZADD score member ...); key_index counts from 1 within the keys to write

Returns {1, new_version} when the day was replaced, {0, "STALE"} when the day's key set or
version changed since the caller read it (a grab or another reconcile ran in between): the caller
reads again and retries.
]]
local members, version = KEYS[1], KEYS[2]
local expected, m = ARGV[1], tonumber(ARGV[2])
local payload = cjson.decode(ARGV[3])

local current = redis.call('GET', version) or ''
if current ~= expected or redis.call('SCARD', members) ~= m then
  return {0, 'STALE'}
end
for i = 1, m do
  if redis.call('SISMEMBER', members, KEYS[2 + i]) == 0 then
    return {0, 'STALE'}
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
local new_version = redis.call('INCR', version)
return {1, new_version}
