"""Time per call of the client next to a bare redis-py INCR round trip, on one server, in one
run: rounds alternate between the two, and the medians of the rounds are compared.

    python python/bench/client_calls.py redis://127.0.0.1:6379/ [backend] [calls per round] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time

import redis

from ml_api_rate_limiter import RateLimiter


def per_call_us(call: object, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()  # type: ignore[operator]
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    url = sys.argv[1]
    backend = sys.argv[2] if len(sys.argv) > 2 else "auto"
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 7
    bare = redis.Redis.from_url(url)
    limiter = RateLimiter.from_url(url, backend=backend)
    bare.flushall()
    limiter.check("rl:{bench}:warm", "1000000000/second")
    incr, check = [], []
    for _ in range(rounds):
        incr.append(per_call_us(lambda: bare.incr("bench:incr"), calls))
        check.append(per_call_us(lambda: limiter.check("rl:{bench}:a", "1000000000/second"), calls))
    i, c = statistics.median(incr), statistics.median(check)
    print(f"backend={limiter.backend} incr_us={i:.1f} check_us={c:.1f} ratio={c / i:.2f}")


if __name__ == "__main__":
    main()
