--[[ ratelimit: a sliding-window log for one rate-limit key (app/security/ratelimit.py).

KEYS[1]  log     sorted set of the attempts in the window (member unique per attempt, score = ms)
ARGV[1]  now     epoch ms; 0: the Redis server's clock (every worker then shares one clock)
ARGV[2]  limit   attempts allowed per window
ARGV[3]  window  the window in ms
ARGV[4]  member  a unique id of this attempt

Drops the attempts older than the window; when fewer than `limit` are left, records this one and
answers {1, 0}; otherwise records nothing and answers {0, ms until the oldest one leaves the window}.
The key expires a window after its last attempt.
]]
local now = tonumber(ARGV[1])
if now == 0 then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local used = redis.call('ZCARD', KEYS[1])
if used < limit then
    redis.call('ZADD', KEYS[1], now, ARGV[4])
    redis.call('PEXPIRE', KEYS[1], window)
    return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = window
if oldest[2] then
    wait = tonumber(oldest[2]) + window - now
end
if wait < 1 then
    wait = 1
end
return {0, wait}
