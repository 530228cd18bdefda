-- wrk script of scripts/bench-gateway.sh: POST /v1/predict with a small JSON body, optionally
-- with an API key, optionally paced, and one machine-readable RESULT line at the end.
--
-- Environment (read by every wrk thread):
--   BENCH_API_KEY   sent as x-api-key when set (the gateway then limits by key, not by IP)
--   BENCH_RATE      total requests per second to pace to (0 or unset: as fast as possible)
--   BENCH_THREADS   wrk's -t, to split BENCH_RATE between the threads
--
-- Pacing: wrk has no rate flag, but calls delay() before each request when the script defines
-- it. A thread hands out send slots BENCH_RATE/threads apart, whichever of its connections asks
-- next; delay() returns how long until that slot. wrk counts a request's latency from when it
-- is written, so the wait is not in the latency. wrk truncates the delay to whole ms, so a
-- request may go up to 1 ms early; the slots do not move, so the rate holds.

wrk.method = "POST"
wrk.path = "/v1/predict"
wrk.body = '{"text": "I love this gateway, it is fast and helpful"}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key ~= nil and key ~= "" then
  wrk.headers["x-api-key"] = key
end

local rate = tonumber(os.getenv("BENCH_RATE") or "0") or 0
local threads = tonumber(os.getenv("BENCH_THREADS") or "1") or 1

if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef [[
    typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
    int clock_gettime(int clock, bench_timespec *tp);
  ]]
  local ts = ffi.new("bench_timespec")
  local CLOCK_MONOTONIC = 1
  local function now_ms()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = 1000 * threads / rate
  local next_slot = nil

  function delay()
    local now = now_ms()
    -- A slot missed by more than a few intervals (the server was slow) is not made up in a burst.
    if next_slot == nil or next_slot < now - 4 * interval then
      next_slot = now
    end
    local wait = next_slot - now
    next_slot = next_slot + interval
    if wait < 0 then
      return 0
    end
    return wait
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d mean_us=%.0f status_errors=%d socket_errors=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    e.status, e.connect + e.read + e.write + e.timeout))
end
