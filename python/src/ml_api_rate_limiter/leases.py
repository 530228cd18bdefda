"""Concurrency leases as context managers: at most ``max_in_flight`` holders of one key at once,
each lease renewed in the background while its block runs (so a long model call keeps its slot)
and released when the block ends, however it ends.

    with Lease(limiter, "rl:{user42}:gpu", max_in_flight=2, lease_ms=30_000):
        run_the_model()           # raises RateLimitExceeded (a 429 answer) when 2 already run

    async with AsyncLease(async_limiter, "rl:{user42}:gpu", 2, 30_000):
        await run_the_model()

A lease whose holder's process dies is not renewed and ends by itself ``lease_ms`` later: a
crashed worker never holds a slot for ever. Within a running process the renewal stops only
at :meth:`Lease.release` (the ``with`` block's end): a lease acquired by hand must be released. Renewal runs every third of ``lease_ms``; a renewal that
fails is retried at the next turn (the lease lives ``lease_ms`` from the last one that worked).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Optional

from .policy import RateLimitExceeded, concurrency_answer
from .replies import AcquireResult

if TYPE_CHECKING:
    from .aio import AsyncRateLimiter
    from .client import RateLimiter

log = logging.getLogger("ml_api_rate_limiter")


def _check_bounds(max_in_flight: int, lease_ms: int) -> None:
    if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int) or not 1 <= max_in_flight <= 1_000_000:
        raise ValueError(f"max_in_flight must be between 1 and 1000000, not {max_in_flight!r}")
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int) or not 1 <= lease_ms <= 86_400_000:
        raise ValueError(f"lease_ms must be between 1 and 86400000, not {lease_ms!r}")


class Lease:
    """A slot of ``key`` (at most ``max_in_flight`` at once) for the ``with`` block."""

    def __init__(self, limiter: RateLimiter, key: str, max_in_flight: int, lease_ms: int = 60_000) -> None:
        _check_bounds(max_in_flight, lease_ms)
        self.limiter, self.key, self.max_in_flight, self.lease_ms = limiter, key, max_in_flight, lease_ms
        self.lease_id = uuid.uuid4().hex
        self.result: Optional[AcquireResult] = None
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    def acquire(self) -> AcquireResult:
        """Takes the slot (and starts renewing it) if one is free; says so either way."""
        self.result = self.limiter.acquire(self.key, self.max_in_flight, self.lease_ms, self.lease_id)
        if self.result.acquired:
            self._stop = threading.Event()
            self._renewer = threading.Thread(target=self._renew, name="rl-lease-renewal", daemon=True)
            self._renewer.start()
        return self.result

    def _renew(self) -> None:
        stop = self._stop
        while not stop.wait(self.lease_ms / 3000):
            try:
                if not self.limiter.renew(self.key, self.lease_id, self.lease_ms):
                    log.warning("lease %s on %s ended before its holder finished", self.lease_id, self.key)
                    return
            except Exception as e:  # the next turn tries again; the lease outlives one miss
                log.warning("could not renew lease %s on %s: %s", self.lease_id, self.key, e)

    def release(self) -> None:
        """Gives the slot back (once; a release that fails leaves it to end by itself)."""
        self._stop.set()
        if self._renewer is None:
            return
        self._renewer = None
        try:
            self.limiter.release(self.key, self.lease_id)
        except Exception as e:
            log.warning("could not release lease %s on %s (it ends by itself): %s", self.lease_id, self.key, e)

    def __enter__(self) -> Lease:
        result = self.acquire()
        if not result.acquired:
            raise RateLimitExceeded(concurrency_answer(self.key, result))
        return self

    def __exit__(
        self, kind: Optional[type[BaseException]], error: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.release()


class AsyncLease:
    """:class:`Lease` for asyncio: ``async with AsyncLease(limiter, key, 2):``."""

    def __init__(self, limiter: AsyncRateLimiter, key: str, max_in_flight: int, lease_ms: int = 60_000) -> None:
        _check_bounds(max_in_flight, lease_ms)
        self.limiter, self.key, self.max_in_flight, self.lease_ms = limiter, key, max_in_flight, lease_ms
        self.lease_id = uuid.uuid4().hex
        self.result: Optional[AcquireResult] = None
        self._renewer: Optional[asyncio.Task[None]] = None

    async def acquire(self) -> AcquireResult:
        self.result = await self.limiter.acquire(self.key, self.max_in_flight, self.lease_ms, self.lease_id)
        if self.result.acquired:
            self._renewer = asyncio.ensure_future(self._renew())
        return self.result

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                if not await self.limiter.renew(self.key, self.lease_id, self.lease_ms):
                    log.warning("lease %s on %s ended before its holder finished", self.lease_id, self.key)
                    return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("could not renew lease %s on %s: %s", self.lease_id, self.key, e)

    async def release(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        try:
            await self.limiter.release(self.key, self.lease_id)
        except Exception as e:
            log.warning("could not release lease %s on %s (it ends by itself): %s", self.lease_id, self.key, e)

    async def __aenter__(self) -> AsyncLease:
        result = await self.acquire()
        if not result.acquired:
            raise RateLimitExceeded(concurrency_answer(self.key, result))
        return self

    async def __aexit__(
        self, kind: Optional[type[BaseException]], error: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        await self.release()

