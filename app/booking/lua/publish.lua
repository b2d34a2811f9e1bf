--[[ publish: number an event with the topic's sequence and publish it, in one round trip.

KEYS[1]  seq      the topic's sequence counter
ARGV[1]  channel  the pub/sub channel
ARGV[2]  event    the event as a JSON object without its "seq" (e.g. {"topic":"...","event":"booked"})

Returns the sequence number given to the event. Subscribers that see a gap reload a snapshot.
]]
local seq = redis.call('INCR', KEYS[1])
local event = ARGV[2]
-- Splice the sequence number in as the first member of the JSON object.
local body = '{"seq":' .. seq .. (event == '{}' and '}' or ',' .. string.sub(event, 2))
redis.call('PUBLISH', ARGV[1], body)
return seq
