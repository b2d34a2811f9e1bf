--[[ grid: the live slot grid of one hospital-day — publish what changed, or read a snapshot —
in one atomic step, so that every event and snapshot of a department-day is numbered from the
same counter and a snapshot numbered n already contains every event numbered n or less.

Mode "publish"
  KEYS     the changed slots' hashes (all of one day)
  ARGV[1]  "publish"
  ARGV[2]  channel prefix of the grid topics, e.g. "hy:ev:h1:grid:"
  ARGV[3]  the day, YYYY-MM-DD
  ARGV[4]  counter key prefix, e.g. "hy:{h1:2026-12-01}:gseq:" (same hash tag as the slots)
  ARGV[5]  event name (booked, cancelled, lock, ...)
  ARGV[6]  channels, comma separated (the per-channel places left are computed here, once)
  ARGV[7..] the slot ids, in the order of KEYS
  For each department among the slots (field d), in name order: INCR its counter and PUBLISH
  {"type":"delta","seq":n,"topic":"grid:<dept>:<day>","event":...,"at":<Redis clock, epoch ms>,
  "slots":[...]} on <prefix><dept>:<day>.
  Returns the number of messages published.

Mode "snapshot"
  KEYS[1]  the department's counter; KEYS[2..] its resources' slot indexes (sorted sets)
  ARGV[1]  "snapshot"
  ARGV[2]  slot key prefix, e.g. "hy:{h1:2026-12-01}:slot:"
  ARGV[3]  channels, comma separated
  Returns {"seq":n,"slots":[...]} as JSON. The slot keys read here are derived from the indexes;
  they carry the day's hash tag, so the script still touches one Redis Cluster slot.

A slot is {"id","r","s","e","st","cap","b","left":{channel: places},"lk":"ch1,ch2" or "*"}; the
places follow app/booking/availability.py::places_for (open pool plus the channel's reserved
quota, at most capacity - booked; none when closed or locked), apart from the past, which the
screen greys out by its own clock.
]]
local function split(text)
  local out = {}
  for part in string.gmatch(text, '[^,]+') do
    out[#out + 1] = part
  end
  return out
end

local function view(id, flat, channels)
  local f = {}
  for i = 1, #flat, 2 do
    f[flat[i]] = flat[i + 1]
  end
  local cap = tonumber(f['cap']) or 0
  local booked = tonumber(f['b']) or 0
  local open_left = tonumber(f['o']) or 0
  local all_locked = (tonumber(f['lk:*']) or 0) > 0
  local locked = {}
  if all_locked then
    locked[1] = '*'
  end
  local left = {}
  for _, ch in ipairs(channels) do
    local ch_locked = all_locked or (tonumber(f['lk:' .. ch]) or 0) > 0
    if ch_locked and not all_locked then
      locked[#locked + 1] = ch
    end
    local n = 0
    if f['st'] == 'open' and not ch_locked then
      n = math.min(cap - booked, open_left + (tonumber(f['q:' .. ch]) or 0))
      if n < 0 then
        n = 0
      end
    end
    left[ch] = n
  end
  return {
    id = tonumber(id), r = f['r'], s = tonumber(f['s']), e = tonumber(f['e']), st = f['st'],
    cap = cap, b = booked, left = left, lk = table.concat(locked, ','), d = f['d'] or ''
  }
end

local mode = ARGV[1]

if mode == 'publish' then
  local prefix, day, seq_prefix, event = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
  local channels = split(ARGV[6])
  local by_dept = {}
  local depts = {}
  for i, key in ipairs(KEYS) do
    local flat = redis.call('HGETALL', key)
    if #flat > 0 then
      local v = view(ARGV[6 + i], flat, channels)
      local d = v.d
      v.d = nil
      if by_dept[d] == nil then
        by_dept[d] = {}
        depts[#depts + 1] = d
      end
      table.insert(by_dept[d], v)
    end
  end
  table.sort(depts)
  local now = redis.call('TIME')
  local at = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _, d in ipairs(depts) do
    local seq = redis.call('INCR', seq_prefix .. d)
    local topic = 'grid:' .. d .. ':' .. day
    redis.call('PUBLISH', prefix .. d .. ':' .. day,
      cjson.encode({type = 'delta', seq = seq, topic = topic, event = event, at = at, slots = by_dept[d]}))
  end
  return #depts
end

if mode == 'snapshot' then
  local slot_prefix = ARGV[2]
  local channels = split(ARGV[3])
  local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
  local slots = {}
  for i = 2, #KEYS do
    for _, id in ipairs(redis.call('ZRANGE', KEYS[i], 0, -1)) do
      local flat = redis.call('HGETALL', slot_prefix .. id)
      if #flat > 0 then
        local v = view(id, flat, channels)
        v.d = nil
        slots[#slots + 1] = v
      end
    end
  end
  if #slots == 0 then
    return '{"seq":' .. seq .. ',"slots":[]}'
  end
  return cjson.encode({seq = seq, slots = slots})
end

return redis.error_reply('grid: unknown mode ' .. tostring(mode))
