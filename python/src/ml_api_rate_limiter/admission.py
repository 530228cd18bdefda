"""One request's admission under a :class:`~ml_api_rate_limiter.policy.Policy`, as every front
end does it (Flask, ASGI, FastAPI, the LLM token budget), sync (:class:`Admission`) and asyncio
(:class:`AsyncAdmission`):

1. the caller's concurrency lease, when the policy has a concurrency limit (refused: ``429``,
   nothing else charged);
2. every limit of the policy in one ``RL.CHECKALL``, all or none (refused: ``429``, and the
   lease is given back, so a refused request costs nothing anywhere);
3. admitted: the headers for the answer, and the lease renewed until :meth:`Admitted.finish`.

Any failure to ask Redis (down, slow past the client's timeout, the commands refused) ends as
``on_error`` says: ``deny`` answers ``503`` with ``Retry-After``, ``allow`` lets the request
through unlimited (no headers), ``raise`` raises :class:`LimiterUnavailable`. Never a ``500``
of ours: a lease taken before the failure is released.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

import redis

from .client import BackendUnavailable
from .leases import AsyncLease, Lease
from .policy import (
    Answer,
    Headers,
    LimiterUnavailable,
    Policy,
    check_on_error,
    concurrency_answer,
    rate_limit_headers,
    refusal,
    unavailable,
)
from .replies import CheckAllResult, ReplyError

if TYPE_CHECKING:
    from .aio import AsyncRateLimiter
    from .client import RateLimiter

log = logging.getLogger("ml_api_rate_limiter")

#: What counts as "the limiter cannot be asked" (``RedisClusterException``: no node of a
#: Cluster answers; ``asyncio.TimeoutError`` is not an ``OSError`` before Python 3.11).
FAILURES = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
    ReplyError,
    BackendUnavailable,
    OSError,
    asyncio.TimeoutError,
)

MAX_INTEGER = 2**63 - 1


def amount(name: str, value: object) -> int:
    """A cost or a token count as the module takes it: an ``int`` (not a bool), not negative;
    above 2**63-1 it is 2**63-1, which no bucket holds (a ``429`` that says never)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return min(value, MAX_INTEGER)


@dataclass
class Admitted:
    """What :meth:`Admission.admit` decided. ``answer``: send it instead of calling the
    application (``429`` or ``503``). Else add ``headers`` to the application's answer and
    call :meth:`finish` (sync) / :meth:`afinish` (async) once it is sent."""

    answer: Optional[Answer] = None
    headers: Headers = field(default_factory=list)
    result: Optional[CheckAllResult] = None
    identity_hash: str = ""
    lease: Union[Lease, AsyncLease, None] = None
    #: The limiter could not be asked and ``on_error="allow"`` let the request through.
    unlimited: bool = False

    def finish(self) -> None:
        if isinstance(self.lease, Lease):
            self.lease.release()

    async def afinish(self) -> None:
        if isinstance(self.lease, AsyncLease):
            # Shielded: a request cancelled at this point must still give its slot back.
            await asyncio.shield(self.lease.release())


class _Rules:
    def __init__(self, policy: Policy, on_error: str, error_retry_after: int) -> None:
        self.policy = policy
        self.on_error = check_on_error(on_error)
        if isinstance(error_retry_after, bool) or not isinstance(error_retry_after, int) or not 1 <= error_retry_after <= 86_400:
            raise ValueError(f"error_retry_after must be between 1 and 86400 seconds, not {error_retry_after!r}")
        self.error_retry_after = error_retry_after

    def failed(self, error: BaseException) -> Admitted:
        log.error("rate limiter unavailable (policy %s, on_error=%s): %s", self.policy.name, self.on_error, error)
        if self.on_error == "raise":
            raise LimiterUnavailable(f"the rate limiter could not be asked: {error}") from error
        if self.on_error == "allow":
            return Admitted(unlimited=True)
        return Admitted(answer=unavailable(self.error_retry_after))

    def decided(self, identity_hash: str, result: Optional[CheckAllResult]) -> Admitted:
        if result is None:
            return Admitted(identity_hash=identity_hash)
        if not result.allowed:
            return Admitted(answer=refusal(self.policy, result), result=result, identity_hash=identity_hash)
        return Admitted(headers=rate_limit_headers(self.policy, result), result=result, identity_hash=identity_hash)


class Admission(_Rules):
    """Admits requests under ``policy`` through a sync :class:`RateLimiter`."""

    def __init__(self, limiter: RateLimiter, policy: Policy, on_error: str = "deny", error_retry_after: int = 1) -> None:
        super().__init__(policy, on_error, error_retry_after)
        self.limiter = limiter

    def admit(self, identity: str, cost: int = 1, tokens: int = 0) -> Admitted:
        """``cost`` on the request limits, ``tokens`` on the token limits, for ``identity``."""
        cost, tokens = amount("cost", cost), amount("tokens", tokens)
        identity_hash = self.policy.identity_hash(identity)
        lease: Optional[Lease] = None
        try:
            if self.policy.concurrency is not None:
                lease = Lease(self.limiter, self.policy.lease_key(identity_hash), self.policy.concurrency, self.policy.lease_ms)
                taken = lease.acquire()
                if not taken.acquired:
                    return Admitted(answer=concurrency_answer(self.policy.name, taken), identity_hash=identity_hash)
            result = None
            if self.policy.quotas:
                result = self.limiter.check_all(self.policy.checks(identity_hash, cost, tokens))
        except FAILURES as e:
            if lease is not None:
                lease.release()
            return self.failed(e)
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        admitted = self.decided(identity_hash, result)
        if admitted.answer is not None:
            if lease is not None:
                lease.release()
        else:
            admitted.lease = lease
        return admitted


class AsyncAdmission(_Rules):
    """Admits requests under ``policy`` through an :class:`AsyncRateLimiter`."""

    def __init__(
        self, limiter: AsyncRateLimiter, policy: Policy, on_error: str = "deny", error_retry_after: int = 1
    ) -> None:
        super().__init__(policy, on_error, error_retry_after)
        self.limiter = limiter

    async def admit(self, identity: str, cost: int = 1, tokens: int = 0) -> Admitted:
        cost, tokens = amount("cost", cost), amount("tokens", tokens)
        identity_hash = self.policy.identity_hash(identity)
        lease: Optional[AsyncLease] = None
        try:
            if self.policy.concurrency is not None:
                key = self.policy.lease_key(identity_hash)
                lease = AsyncLease(self.limiter, key, self.policy.concurrency, self.policy.lease_ms)
                taken = await lease.acquire()
                if not taken.acquired:
                    return Admitted(answer=concurrency_answer(self.policy.name, taken), identity_hash=identity_hash)
            result = None
            if self.policy.quotas:
                result = await self.limiter.check_all(self.policy.checks(identity_hash, cost, tokens))
        except FAILURES as e:
            if lease is not None:
                await lease.release()
            return self.failed(e)
        except BaseException:  # cancelled, or a bug: the slot must not be renewed for ever
            if lease is not None:
                await asyncio.shield(lease.release())
            raise
        admitted = self.decided(identity_hash, result)
        if admitted.answer is not None:
            if lease is not None:
                await lease.release()
        else:
            admitted.lease = lease
        return admitted
