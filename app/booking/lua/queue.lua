--[[ queue: one atomic change to a room's queue for one day, numbered and published.

KEYS[1]  line   list of the waiting entries' ids, in calling order
KEYS[2]  ent    hash: id -> entry JSON {id, t (ticket), pc (priority class 0 emergency .. 3 normal), mk (mark),
                at (appointment start, epoch s), ci (check-in, epoch ms), st (state), calls, passes,
                dur (minutes), nm (name as the screen shows it), ex (exam), ca (last called), sa (started), epoch ms}
KEYS[3]  seq    counter numbering the room-day's events
KEYS[4]  ok     present while the queue is loaded (an empty queue and a lost one look alike otherwise)
ARGV[1]  op     add | call | recall | pass | defer | resume | start | finish | leave | priority | load | state
Entry ids are the appointment ids, as strings.
ARGV[2]  channel  pub/sub channel of the room-day
ARGV[3]  topic    its topic name (queue:<room>:<day>)
ARGV[4]  now      epoch ms (the caller's clock: every entry of a room is stamped by the same server)
ARGV[5..]         the op's arguments:
  add      entry JSON                    place it before the first waiting entry with a greater key
  call     [id]                          the head of the line (or that waiting entry) becomes 'called'
  recall   id                            call a called entry again
  pass     id, n                         过号: a called (or waiting) entry goes back n places in the line
  defer    id                            暂缓: out of the line until resumed
  resume   id                            back into the line by its key
  start    id                            called or waiting -> in_exam
  finish   id                            in_exam -> done
  leave    id                            out of the queue (aborted, cancelled)
  priority id, pc, mk                    new priority class; re-placed by its key
  load     entries JSON array, in order  replace the whole queue (rebuilt from PostgreSQL);
           [fill]                        with 'fill': only if the queue is not loaded, else change nothing
                                         (two rebuilds racing must not load an older snapshot over a newer
                                         queue: the caller re-runs its op on whatever is loaded)
  state                                  read only

The key of an entry is (pc, at, ci, id): priority class, then appointment time, then check-in time.
Returns {code, id, seq, state}: code OK, or NOT_LOADED (rebuild from PostgreSQL first), EMPTY (no one
waiting), NO_ENTRY, BAD_STATE (the entry's state does not allow the op; id = its state), EXISTS.
A refused op changes nothing and publishes nothing. state is the queue as JSON:
{"seq":n,"calling":[..newest first],"in_exam":[..],"waiting":[..in order],"deferred":[..],"done":k}.
]]
local line, ent, seqk, okk = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local op, channel, topic, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])

local function get(id)
  local raw = redis.call('HGET', ent, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function put(e)
  redis.call('HSET', ent, e.id, cjson.encode(e))
end

local function less(a, b)
  if a.pc ~= b.pc then return a.pc < b.pc end
  if a.at ~= b.at then return a.at < b.at end
  if a.ci ~= b.ci then return a.ci < b.ci end
  return tonumber(a.id) < tonumber(b.id)
end

-- Into the line before the first waiting entry whose key is greater.
local function place(e)
  local ids = redis.call('LRANGE', line, 0, -1)
  for _, other in ipairs(ids) do
    local o = get(other)
    if o and less(e, o) then
      redis.call('LINSERT', line, 'BEFORE', other, e.id)
      return
    end
  end
  redis.call('RPUSH', line, e.id)
end

local function state(seq)
  local calling, in_exam, deferred = {}, {}, {}
  local done = 0
  local all = redis.call('HGETALL', ent)
  for i = 2, #all, 2 do
    local e = cjson.decode(all[i])
    if e.st == 'called' then table.insert(calling, e)
    elseif e.st == 'in_exam' then table.insert(in_exam, e)
    elseif e.st == 'deferred' then table.insert(deferred, e)
    elseif e.st == 'done' then done = done + 1 end
  end
  table.sort(calling, function(a, b)
    if a.ca ~= b.ca then return a.ca > b.ca end
    return tonumber(a.id) < tonumber(b.id)
  end)
  table.sort(in_exam, function(a, b) return tonumber(a.id) < tonumber(b.id) end)
  table.sort(deferred, function(a, b) return less(a, b) end)
  local function arr(list)
    local parts = {}
    for _, e in ipairs(list) do table.insert(parts, cjson.encode(e)) end
    return '[' .. table.concat(parts, ',') .. ']'
  end
  local waiting = {}
  for _, id in ipairs(redis.call('LRANGE', line, 0, -1)) do
    local raw = redis.call('HGET', ent, id)
    if raw then table.insert(waiting, raw) end
  end
  return '{"seq":' .. seq .. ',"calling":' .. arr(calling) .. ',"in_exam":' .. arr(in_exam) ..
    ',"waiting":[' .. table.concat(waiting, ',') .. '],"deferred":' .. arr(deferred) .. ',"done":' .. done .. '}'
end

local function current_seq()
  return tonumber(redis.call('GET', seqk) or '0')
end

if op == 'state' then
  if redis.call('EXISTS', okk) == 0 then return {'NOT_LOADED', '', current_seq(), ''} end
  local seq = current_seq()
  return {'OK', '', seq, state(seq)}
end

local id, e = '', nil
if op == 'load' then
  if ARGV[6] == 'fill' and redis.call('EXISTS', okk) == 1 then
    local seq = current_seq()
    return {'OK', '', seq, state(seq)}
  end
  redis.call('DEL', line, ent)
  for _, e in ipairs(cjson.decode(ARGV[5])) do
    put(e)
    if e.st == 'waiting' then redis.call('RPUSH', line, e.id) end
  end
  redis.call('SET', okk, '1')
else
  if redis.call('EXISTS', okk) == 0 then return {'NOT_LOADED', '', current_seq(), ''} end
  id = ARGV[5]
  if op == 'add' then
    e = cjson.decode(ARGV[5])
    id = e.id
    if redis.call('HEXISTS', ent, id) == 1 then return {'EXISTS', id, current_seq(), ''} end
    e.st = 'waiting'
    e.calls = e.calls or 0; e.passes = e.passes or 0; e.ca = e.ca or 0; e.sa = e.sa or 0
    put(e)
    place(e)
  elseif op == 'call' and (id == nil or id == '') then
    id = redis.call('LPOP', line)
    if not id then return {'EMPTY', '', current_seq(), ''} end
    e = get(id)
    e.st = 'called'; e.calls = e.calls + 1; e.ca = now
    put(e)
  else
    e = get(id)
    if not e then return {'NO_ENTRY', id, current_seq(), ''} end
    local st = e.st
    local function refuse() return {'BAD_STATE', st, current_seq(), ''} end
    if op == 'call' then
      if st ~= 'waiting' then return refuse() end
      redis.call('LREM', line, 0, id)
      e.st = 'called'; e.calls = e.calls + 1; e.ca = now
    elseif op == 'recall' then
      if st ~= 'called' then return refuse() end
      e.calls = e.calls + 1; e.ca = now
    elseif op == 'pass' then
      if st ~= 'called' and st ~= 'waiting' then return refuse() end
      local n = tonumber(ARGV[6])
      if st == 'waiting' then  -- n places behind where it stood
        local ids = redis.call('LRANGE', line, 0, -1)
        for i, other in ipairs(ids) do
          if other == id then n = n + i - 1; break end
        end
      end
      redis.call('LREM', line, 0, id)
      e.st = 'waiting'; e.passes = e.passes + 1
      local pivot = redis.call('LINDEX', line, n)
      if pivot then redis.call('LINSERT', line, 'BEFORE', pivot, id) else redis.call('RPUSH', line, id) end
    elseif op == 'defer' then
      if st ~= 'called' and st ~= 'waiting' then return refuse() end
      redis.call('LREM', line, 0, id)
      e.st = 'deferred'
    elseif op == 'resume' then
      if st ~= 'deferred' then return refuse() end
      e.st = 'waiting'
      place(e)
    elseif op == 'start' then
      if st ~= 'called' and st ~= 'waiting' then return refuse() end
      redis.call('LREM', line, 0, id)
      e.st = 'in_exam'; e.sa = now
    elseif op == 'finish' then
      if st ~= 'in_exam' then return refuse() end
      e.st = 'done'
    elseif op == 'leave' then
      if st == 'done' or st == 'left' then return refuse() end
      redis.call('LREM', line, 0, id)
      e.st = 'left'
    elseif op == 'priority' then
      if st ~= 'waiting' and st ~= 'deferred' then return refuse() end
      e.pc = tonumber(ARGV[6]); e.mk = ARGV[7]
      if st == 'waiting' then
        redis.call('LREM', line, 0, id)
        put(e)
        place(e)
      end
    else
      return redis.error_reply('unknown op ' .. op)
    end
    put(e)
  end
end

local seq = redis.call('INCR', seqk)
local body = state(seq)
redis.call('PUBLISH', channel,
  '{"type":"delta","seq":' .. seq .. ',"topic":' .. cjson.encode(topic) .. ',"event":' .. cjson.encode(op) ..
  ',"id":' .. cjson.encode(id) .. ',"at":' .. now .. ',"state":' .. body .. '}')
return {'OK', id, seq, body}
