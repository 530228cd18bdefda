"""Exact GCRA rate limits, LLM token budgets and concurrency leases on Redis, from Python.

One client for the ``ratelimit`` Redis module and, where a server cannot load modules (hosted
Redis and Valkey), for the same commands as a Functions library shipped in this package: same
arguments, same replies, same stored state.

    from ml_api_rate_limiter import RateLimiter

    limiter = RateLimiter.from_url("redis://localhost:6379")
    result = limiter.check("rl:{user42}:rpm", "10/minute")
    if not result.allowed:
        print(f"retry in {result.retry_after_ms} ms")
"""

from .aio import AsyncRateLimiter
from .client import BackendUnavailable, RateLimiter
from .limits import Limit
from .replies import AcquireResult, CheckAllResult, CheckResult, RefundResult, ReplyError, ThrottleResult

__all__ = [
    "AcquireResult",
    "AsyncRateLimiter",
    "BackendUnavailable",
    "CheckAllResult",
    "CheckResult",
    "Limit",
    "RateLimiter",
    "RefundResult",
    "ReplyError",
    "ThrottleResult",
]
__version__ = "0.1.0"
