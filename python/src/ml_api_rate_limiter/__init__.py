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

from .admission import Admission, Admitted, AsyncAdmission
from .aio import AsyncRateLimiter
from .client import BackendUnavailable, RateLimiter
from .leases import AsyncLease, Lease
from .limits import Limit
from .llm import AsyncReservation, AsyncTokenBudget, Reservation, TokenBudget, estimate_tokens, usage_of
from .policy import Answer, LimiterUnavailable, Policy, Quota, RateLimitExceeded, RequestRefused
from .replies import AcquireResult, CheckAllResult, CheckResult, RefundResult, ReplyError, ThrottleResult

__all__ = [
    "AcquireResult",
    "Admission",
    "Admitted",
    "Answer",
    "AsyncAdmission",
    "AsyncLease",
    "AsyncRateLimiter",
    "AsyncReservation",
    "AsyncTokenBudget",
    "BackendUnavailable",
    "CheckAllResult",
    "CheckResult",
    "Lease",
    "Limit",
    "LimiterUnavailable",
    "Policy",
    "Quota",
    "RateLimitExceeded",
    "RateLimiter",
    "RefundResult",
    "ReplyError",
    "RequestRefused",
    "Reservation",
    "ThrottleResult",
    "TokenBudget",
    "estimate_tokens",
    "usage_of",
]
__version__ = "0.1.0"
