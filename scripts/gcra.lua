-- GCRA as a Lua script, written for the benchmark comparison with RL.CHECK (BENCHMARKS.md).
-- It follows what rate-limit client libraries typically ship, with RL.CHECK's parameters
-- and reply so both do the same work:
--
--   EVALSHA <sha> 1 key limit window_seconds cost burst
--   -> {allowed, remaining, retry_after_ms (0 allowed, -1 never), reset_after_ms, burst}
--
-- Times are integer microseconds from the server's TIME (exact in a Lua double until
-- year 2255); the emission interval window/limit is a float in microseconds, as in the
-- libraries. The TAT is stored as a decimal microsecond count, written with
-- `SET key tat PX ms` only when the request is admitted (denied requests write nothing).
-- Redis 7 replicates a script's effects (the SET), not the script.

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local interval = window * 1000000 / limit -- microseconds per token
local tolerance = interval * burst         -- the bucket as time

local tat = tonumber(redis.call('GET', key)) or now
if tat < now then
  tat = now
end

-- Whole tokens left when the TAT is `at`; the epsilon absorbs float error (6.67/3.33 = 1.999...).
local function remaining_at(at)
  local left = math.floor((tolerance - (at - now)) / interval + 1e-9)
  if left < 0 then return 0 end
  if left > burst then return burst end
  return left
end

local reset_ms = math.ceil((tat - now) / 1000)
if cost > burst then
  return {0, remaining_at(tat), -1, reset_ms, burst}
end

local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, remaining_at(tat), math.ceil((allow_at - now) / 1000), reset_ms, burst}
end
if cost == 0 then
  return {1, remaining_at(tat), 0, reset_ms, burst}
end

local remaining = remaining_at(new_tat)
new_tat = math.ceil(new_tat)
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', key, string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, remaining, 0, ttl_ms, burst}
