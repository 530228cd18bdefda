"""The asyncio client: :class:`AsyncRateLimiter`, the same methods as
:class:`ml_api_rate_limiter.RateLimiter`, awaited, on ``redis.asyncio`` (never blocking the
event loop). The same rules: one command per call, never sent twice once it may have reached
Redis.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import redis

from . import commands, connect
from .commands import (
    BACKENDS,
    Call,
    LimitLike,
    R,
    is_demoted_primary,
    is_missing_library,
    is_refused,
    is_unknown_command,
    library_source,
    library_version,
    script_source,
)
from .replies import AcquireResult, CheckAllResult, CheckResult, RefundResult, ThrottleResult

from .client import PROBE_KEY, BackendUnavailable




class AsyncRateLimiter:
    """The limiter's commands on one Redis (or Cluster): ``check``, ``check_all``, ``peek``,
    ``refund``, ``reset``, ``throttle``, ``acquire``, ``release``, ``renew``.

    ``backend``: ``auto`` (the module if loaded, else the Functions library, else the library
    as a script), or one of ``module``, ``functions``, ``scripts``.
    """

    def __init__(self, client: Any, backend: str = "auto", probe_key: str = PROBE_KEY) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.redis = client
        self._choice = backend
        self._backend: Optional[str] = None if backend in ("auto", "functions", "scripts") else backend
        self._sha = ""
        self._probe_key = probe_key
        self._source = library_source()

    @classmethod
    def from_url(cls, url: str, backend: str = "auto", timeout: float = 0.5, **kwargs: Any) -> AsyncRateLimiter:
        """A client for ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://`` (any node
        of a Cluster) or ``redis+sentinel://host:26379,host2:26379/service`` URLs (see
        :mod:`ml_api_rate_limiter.connect`). ``timeout`` bounds every call (connect, send,
        answer)."""
        client = connect.async_client(url, timeout, **kwargs)
        return cls(client, backend=backend)

    # --- which commands answer -------------------------------------------------------------

    @property
    def backend(self) -> Optional[str]:
        """``module``, ``functions`` or ``scripts`` once known (after the first call)."""
        return self._backend

    async def _choose(self) -> str:
        if self._choice in ("auto", "module"):
            try:
                await self.redis.execute_command("RL.PEEK", self._probe_key, 1, 1)
                self._backend = "module"
                return "module"
            except redis.RedisError as e:
                if self._choice == "module" or not is_unknown_command(e):
                    raise
        if self._choice in ("auto", "functions"):
            try:
                await self._install_functions(force=False)
                self._backend = "functions"
                return "functions"
            except BackendUnavailable:
                if self._choice == "functions":
                    raise
        await self._load_script()
        self._backend = "scripts"
        return "scripts"

    async def _install_functions(self, force: bool) -> None:
        ours = library_version(self._source)
        if not force:
            try:
                version = await self.redis.execute_command("FCALL_RO", "rl_version", 0)
                if int(version) >= ours:
                    return
            except redis.ResponseError as e:
                if is_unknown_command(e) or is_refused(e):
                    raise BackendUnavailable(f"Redis Functions cannot be used here: {e}") from e
                if not is_missing_library(e):
                    raise
        try:
            await self.redis.execute_command("FUNCTION", "LOAD", "REPLACE", self._source)
        except redis.ResponseError as e:
            if is_unknown_command(e) or is_refused(e):
                raise BackendUnavailable(f"the ratelimit library cannot be loaded here: {e}") from e
            raise

    async def _load_script(self) -> None:
        sha = await self.redis.script_load(script_source(self._source))
        self._sha = sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _run(self, call: Call[R]) -> R:
        backend = self._backend or await self._choose()
        # At most one resend for each reason, each safe because the command did not run: the
        # primary was demoted (a failover; the Sentinel-managed client finds the new one), or
        # the library is missing (a script flushed, a new primary without it: loaded again).
        resent: set[str] = set()
        while True:
            try:
                return call.decode(await self.redis.execute_command(*call.line(backend, self._sha)))
            except redis.ConnectionError as e:
                if not is_demoted_primary(e) or "demoted" in resent:
                    raise
                resent.add("demoted")
            except redis.ResponseError as e:
                if backend == "module" or not is_missing_library(e) or "missing" in resent:
                    raise
                resent.add("missing")
                if backend == "scripts":
                    await self._load_script()
                else:
                    await self._install_functions(force=True)

    # --- the commands ----------------------------------------------------------------------

    async def check(
        self, key: str, limit: LimitLike, cost: int = 1, keep: Optional[int] = None, force: bool = False
    ) -> CheckResult:
        """``RL.CHECK``: takes ``cost`` tokens if they are there (``force``: whatever is left,
        a debt bounded at one burst; ``keep``: only if ``keep`` tokens remain after)."""
        return await self._run(commands.check(key, limit, cost, keep, force))

    async def check_all(self, checks: Sequence[tuple[str, LimitLike, int]]) -> CheckAllResult:
        """``RL.CHECKALL``: ``(key, limit, cost)`` for each limit, all charged or none. On a
        Cluster the keys must share a hash slot (``rl:{user42}:rpm``, ``rl:{user42}:tpm``)."""
        return await self._run(commands.check_all(checks))

    async def peek(self, key: str, limit: LimitLike) -> CheckResult:
        """``RL.PEEK``: what a request of cost 1 would get, taking nothing."""
        return await self._run(commands.peek(key, limit))

    async def refund(self, key: str, limit: LimitLike, amount: int) -> RefundResult:
        """``RL.REFUND``: gives ``amount`` tokens back, never above the burst."""
        return await self._run(commands.refund(key, limit, amount))

    async def reset(self, key: str) -> bool:
        """``RL.RESET``: forgets the bucket (it is full again); ``True`` if a key was removed."""
        return await self._run(commands.reset(key))

    async def throttle(
        self, key: str, max_burst: int, count_per_period: int, period: int, quantity: int = 1
    ) -> ThrottleResult:
        """``CL.THROTTLE``: redis-cell's command and reply."""
        return await self._run(commands.throttle(key, max_burst, count_per_period, period, quantity))

    async def acquire(self, key: str, max_in_flight: int, lease_ms: int, lease_id: str) -> AcquireResult:
        """``RL.ACQUIRE``: one of ``max_in_flight`` slots for ``lease_id`` for ``lease_ms``."""
        return await self._run(commands.acquire(key, max_in_flight, lease_ms, lease_id))

    async def release(self, key: str, lease_id: str) -> bool:
        """``RL.RELEASE``: ``True`` if the lease was live."""
        return await self._run(commands.release(key, lease_id))

    async def renew(self, key: str, lease_id: str, lease_ms: int) -> bool:
        """``RL.RENEW``: the live lease now ends ``lease_ms`` from now; ``False`` if it had ended."""
        return await self._run(commands.renew(key, lease_id, lease_ms))

    async def close(self) -> None:
        await self.redis.aclose()
