-- wrk script for POST /api/v1/appointments: every request books a distinct (patient, order) pair
-- into one of the bench slots, rotating over the slots.
--
--   wrk -t2 -c64 -d10s --latency -s load_tests/wrk_book.lua http://127.0.0.1:PORT \
--       -- PAIRS_FILE TOKEN SLOT_IDS THREADS
--
--   PAIRS_FILE  one "patient_id order_id" per line (thread k of THREADS takes lines k, k+THREADS, ...)
--   TOKEN       bearer token of a clerk
--   SLOT_IDS    comma-separated slot ids
--   THREADS     the -t value
--
-- Outcomes are counted per thread: 201 booked, 409 slot_unavailable (the slot is full: expected in
-- a release storm), anything else is an error. A thread that runs out of pairs sends one GET /ping
-- (a "filler", not counted as an attempt) and stops. done() prints one line "HYBENCH_JSON {...}".

local threads = {}
local next_tid = 0

function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
  table.insert(threads, thread)
end

local my_pairs = {}
local slots = {}
local pos = 0
local headers = {}

c201, c409_full, c409_other, c_other, c_filler, attempts, exhausted = 0, 0, 0, 0, 0, 0, 0

function init(args)
  local path, token, slot_list, nthreads = args[1], args[2], args[3], tonumber(args[4] or "1")
  if not path or not token or not slot_list then
    error("usage: -- PAIRS_FILE TOKEN SLOT_IDS THREADS")
  end
  for s in string.gmatch(slot_list, "%d+") do
    slots[#slots + 1] = s
  end
  local n = 0
  for line in io.lines(path) do
    if n % nthreads == tid then
      local p, o = string.match(line, "^(%d+)%s+(%d+)")
      if p then
        my_pairs[#my_pairs + 1] = { p, o }
      end
    end
    n = n + 1
  end
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. token
end

function request()
  pos = pos + 1
  local pair = my_pairs[pos]
  if pair == nil then
    exhausted = 1
    wrk.thread:stop()
    return wrk.format("GET", "/ping")
  end
  -- spread over the slots, and so that the two threads do not walk them in lock step
  local slot = slots[((pos + tid) % #slots) + 1]
  local body = '{"patient_id":' .. pair[1] .. ',"channel":"desk","items":[{"order_id":' .. pair[2]
    .. ',"slot_id":' .. slot .. '}]}'
  return wrk.format("POST", "/api/v1/appointments", headers, body)
end

function response(status, hdrs, body)
  if status == 201 then
    c201 = c201 + 1
    attempts = attempts + 1
  elseif status == 409 then
    attempts = attempts + 1
    if body and string.find(body, '"slot_unavailable"', 1, true) then
      c409_full = c409_full + 1
    else
      c409_other = c409_other + 1
      if c409_other <= 3 then
        io.stderr:write("409 not slot_unavailable: " .. tostring(body) .. "\n")
      end
    end
  elseif status == 200 and exhausted == 1 then
    c_filler = c_filler + 1
  else
    attempts = attempts + 1
    c_other = c_other + 1
    if c_other <= 3 then
      io.stderr:write("unexpected status " .. status .. ": " .. tostring(body) .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local t = { c201 = 0, c409_full = 0, c409_other = 0, c_other = 0, c_filler = 0, attempts = 0, exhausted = 0 }
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + (tonumber(thread:get(k)) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'HYBENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p95":%d,"p99":%d,"max":%d,"mean":%.1f},'
      .. '"booked":%d,"full":%d,"conflict_other":%d,"other":%d,"filler":%d,"attempts":%d,"threads_exhausted":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency.max, latency.mean,
    t.c201, t.c409_full, t.c409_other, t.c_other, t.c_filler, t.attempts, t.exhausted))
end
