--[[ grab: take 1..N slots of one hospital-day for one patient, all or nothing, as a hold.

KEYS[1]  holds      sorted set of the day's holds, scored by expiry (ms)
KEYS[2]  hold       the new hold's hash
KEYS[3]  patient    the patient's entries that day (slot id -> "start|end|exam|hold|state")
KEYS[4]  members    set of every key of the day
KEYS[5..4+n]        the slot hashes, one per requested slot
ARGV[1]  hold_id
ARGV[2]  patient_id
ARGV[3]  channel    clinic | desk | self | ward | emergency | checkup
ARGV[4]  now_ms
ARGV[5]  expires_ms
ARGV[6]  replacing  slot id of the patient's entry this grab replaces (a reschedule), or ""
ARGV[7..]           per slot, three values: slot_id, exam_code, order_id

Returns {1, pool_1, ..., pool_n} where pool_i is the counter the place came from ("o" for the
open pool, "q:<channel>" for the channel's reserved quota), or {0, reason_1, ..., reason_n}
where reason_i is one of:
  OK              this slot was fine (another one failed)
  NO_SLOT         the slot is not in the availability index
  CLOSED          the slot is closed
  PAST            the slot has already ended
  LOCKED          a lock covers the slot for this channel
  FULL            no capacity left
  QUOTA           capacity is left, but it is reserved for other channels
  OVERLAP         the patient already holds a slot overlapping this one (or the request does)
  DUPLICATE_EXAM  the patient already holds this exam that day (or the request names it twice)
]]
local holds, hold, patient, members = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local hold_id, patient_id, channel = ARGV[1], ARGV[2], ARGV[3]
local now_ms, expires_ms, replacing = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local n = #KEYS - 4

local reasons, pools, starts, ends, exams = {}, {}, {}, {}, {}
local failed = false

-- The patient's current entries that day, except the one being replaced.
local held = {}
local flat = redis.call('HGETALL', patient)
for i = 1, #flat, 2 do
  if flat[i] ~= replacing then
    local s, e, exam = string.match(flat[i + 1], '^(%d+)|(%d+)|([^|]*)|')
    held[#held + 1] = {tonumber(s), tonumber(e), exam}
  end
end

for i = 1, n do
  local key = KEYS[4 + i]
  local exam = ARGV[6 + (i - 1) * 3 + 2]
  local f = redis.call('HMGET', key, 's', 'e', 'st', 'cap', 'b', 'o', 'q:' .. channel, 'lk:*', 'lk:' .. channel)
  local reason = 'OK'
  if not f[1] then
    reason = 'NO_SLOT'
  else
    local s, e = tonumber(f[1]), tonumber(f[2])
    starts[i], ends[i], exams[i] = s, e, exam
    if f[3] ~= 'open' then
      reason = 'CLOSED'
    elseif e * 1000 <= now_ms then
      reason = 'PAST'
    elseif tonumber(f[8] or '0') > 0 or tonumber(f[9] or '0') > 0 then
      reason = 'LOCKED'
    elseif tonumber(f[4]) - tonumber(f[5]) <= 0 then
      reason = 'FULL'
    elseif tonumber(f[7] or '0') > 0 then
      pools[i] = 'q:' .. channel
    elseif tonumber(f[6] or '0') > 0 then
      pools[i] = 'o'
    else
      reason = 'QUOTA'
    end
    if reason == 'OK' then
      for _, h in ipairs(held) do
        if h[3] == exam then
          reason = 'DUPLICATE_EXAM'
        elseif s < h[2] and h[1] < e then
          reason = 'OVERLAP'
        end
        if reason ~= 'OK' then break end
      end
    end
    if reason == 'OK' then
      for j = 1, i - 1 do
        if starts[j] then
          if exams[j] == exam then
            reason = 'DUPLICATE_EXAM'
          elseif s < ends[j] and starts[j] < e then
            reason = 'OVERLAP'
          end
          if reason ~= 'OK' then break end
        end
      end
    end
  end
  reasons[i] = reason
  if reason ~= 'OK' then failed = true end
end

if failed then
  local out = {0}
  for i = 1, n do out[#out + 1] = reasons[i] end
  return out
end

local items = {}
for i = 1, n do
  local key = KEYS[4 + i]
  local base = 6 + (i - 1) * 3
  local slot_id, exam, order_id = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  redis.call('HINCRBY', key, 'b', 1)
  redis.call('HINCRBY', key, pools[i], -1)
  redis.call('HSET', patient, slot_id,
    starts[i] .. '|' .. ends[i] .. '|' .. exam .. '|' .. hold_id .. '|h|' .. order_id)
  items[#items + 1] = slot_id .. ':' .. pools[i]
end
redis.call('HSET', hold, 'patient', patient_id, 'channel', channel, 'exp', expires_ms,
  'items', table.concat(items, ','))
redis.call('ZADD', holds, expires_ms, hold_id)
redis.call('SADD', members, patient, hold)

local out = {1}
for i = 1, n do out[#out + 1] = pools[i] end
return out
